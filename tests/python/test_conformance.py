"""The differential conformance harness (tests/conformance/harness.py): its
comparison logic, the docs its allow-list generates, and its fast scenarios run
against Debian's dockerd and atoll side by side."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "conformance"))

import harness  # noqa: E402


def diffs(atoll, docker):
    out = []
    harness.compare(atoll, docker, "", out)
    return out


def test_compare_reports_each_kind_of_difference():
    # Control: equal bodies, and bodies equal once ids and times are normalised.
    assert diffs({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) == []
    assert diffs({"Id": "a" * 64, "T": "2026-12-03T17:00:00.1Z", "M": "No such container: " + "b" * 64},
                 {"Id": "c" * 64, "T": "2020-01-01T00:00:00Z", "M": "No such container: " + "d" * 64}) == []
    found = diffs({"a": 2, "x": 1, "l": [1], "t": "s", "n": None},
                  {"a": 1, "m": 1, "l": [1, 2], "t": 5, "n": 0})
    kinds = {(f, k) for f, k, _ in found}
    assert kinds == {("a", "value"), ("x", "extra"), ("m", "missing"), ("l", "length"),
                     ("t", "type"), ("n", "value")}, found
    # A zero time stays a value: Docker's "never" is not any time.
    assert diffs({"S": "0001-01-01T00:00:00Z"}, {"S": "2026-01-01T00:00:00Z"}) != []


def test_the_allow_list_explains_by_call_field_and_kind():
    divs = [{"where": "GET /containers/*/json", "field": "HostConfig.Memory", "kind": "value", "reason": "r"}]
    assert harness.explained(divs, "GET /containers/{cid}/json", "HostConfig.Memory", "value")
    assert not harness.explained(divs, "GET /containers/{cid}/json", "HostConfig.Memory", "missing")
    assert not harness.explained(divs, "GET /images/{x}/json", "HostConfig.Memory", "value")
    narrow = [{"where": "POST /x", "field": "", "kind": "status", "scenario": "a/b", "step": 2, "reason": "r"}]
    assert harness.explained(narrow, "POST /x", "", "status", "a/b", 2)
    assert not harness.explained(narrow, "POST /x", "", "status", "a/b", 3)
    assert not harness.explained(narrow, "POST /x", "", "status", "a/c", 2)


def test_docs_are_generated_from_the_allow_list():
    r = subprocess.run([sys.executable, str(ROOT / "tests/conformance/harness.py"), "--check-docs"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fast_scenarios_answer_as_dockerd_does():
    r = subprocess.run([sys.executable, str(ROOT / "tests/conformance/harness.py"), "--fast"],
                       capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " 0 unexplained differences" in r.stdout, r.stdout[-3000:]
