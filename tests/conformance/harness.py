#!/usr/bin/env python3
"""Differential conformance: the same Docker API calls sent to Debian's dockerd
and to atoll, their answers compared.

Scenarios are data (scenarios/<area>.toml): steps of API calls with values to
carry from one answer to the next call. Each step runs on both daemons (a fresh
`atoll up` and a fresh dockerd, on their own sockets and data dirs; see
bench/compare_docker.py) at the API versions the scenario names, and the answers
are compared: status, the headers clients read, and bodies structurally (keys,
types, values, with ids, times, sizes and addresses normalised). A difference is
reported unless divergences.toml explains it; that file also generates the
conformance section of docs/divergence.md, so the two never disagree.

Usage:
  tests/conformance/harness.py [--fast] [--only AREA] [-v]   run (needs root)
  tests/conformance/harness.py --write-docs                  regenerate the docs section
  tests/conformance/harness.py --check-docs                  fail if it is stale
"""
import argparse
import fnmatch
import http.client
import json
import pathlib
import re
import secrets
import socket
import sys
import tomllib
import urllib.parse

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOCS = ROOT / "docs" / "divergence.md"
DOCS_BEGIN = "<!-- conformance: generated from tests/conformance/divergences.toml -->"
DOCS_END = "<!-- conformance: end -->"
# The newest API version Debian's dockerd (20.10) speaks, and the oldest
# clients pin.
DEFAULT_VERSIONS = ["1.41"]
MAX_BODY = 16 << 20
TIMEOUT = 60

# Values that differ between any two daemons: compared by type only.
LOCAL_KEYS = {
    "Id", "ID", "Created", "CreatedAt", "StartedAt", "FinishedAt", "Pid", "Size", "SizeRw",
    "SizeRootFs", "VirtualSize", "SharedSize", "Mountpoint", "LogPath", "ResolvConfPath",
    "HostnamePath", "HostsPath", "SandboxID", "SandboxKey", "EndpointID", "NetworkID",
    "IPAddress", "Gateway", "MacAddress", "IPPrefixLen", "Subnet", "IPRange", "Hostname",
    "Image", "Container", "Parent", "Driver", "Scope", "Time", "timeNano", "time",
    "ExecIDs", "Labels", "UpperDir", "LowerDir", "MergedDir", "WorkDir",
}
HEX_ID = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
SHORT_ID = re.compile(r"^[0-9a-f]{12}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
ZERO_TIME = "0001-01-01T00:00:00Z"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=TIMEOUT)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect(self.unix_path)
        self.sock = s


class Answer:
    def __init__(self, status, headers, raw):
        self.status, self.headers, self.raw = status, headers, raw
        self.body = decode(headers.get("content-type", ""), raw)


def decode(ctype, raw):
    """JSON, JSON lines, Docker's multiplexed stream (as [stream, text] frames) or text."""
    if not raw:
        return None
    if "multiplexed" in ctype or (raw[:1] in (b"\x01", b"\x02") and raw[1:4] == b"\0\0\0"):
        frames, i = [], 0
        while i + 8 <= len(raw):
            n = int.from_bytes(raw[i + 4:i + 8], "big")
            frames.append([raw[i], raw[i + 8:i + 8 + n].decode(errors="replace")])
            i += 8 + n
        return frames
    text = raw.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return text


def call(sock, method, path, body=None):
    c = UnixHTTP(sock)
    headers = {"Host": "docker"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    raw = r.read(MAX_BODY)
    c.close()
    return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, raw)


HEX_IN_TEXT = re.compile(r"(sha256:)?\b[0-9a-f]{64}\b")


def normalise(v):
    if isinstance(v, str):
        if SHORT_ID.match(v):
            return "<short-id>"
        if TIME.match(v) and v != ZERO_TIME:
            return "<time>"
        return HEX_IN_TEXT.sub("<id>", v)
    return v


def compare(a, d, path, out):
    """Appends (field, kind, detail) for each way atoll's `a` differs from Docker's `d`."""
    key = path.rsplit(".", 1)[-1].split("[")[0]
    if type(a) is not type(d) and not (isinstance(a, (int, float)) and isinstance(d, (int, float))):
        if d is None or a is None:
            out.append((path, "value", f"docker {short(d)}, atoll {short(a)}"))
        else:
            out.append((path, "type", f"docker {type(d).__name__}, atoll {type(a).__name__}"))
        return
    if isinstance(d, dict):
        for k in d.keys() - a.keys():
            out.append((join(path, k), "missing", f"docker has {short(d[k])}"))
        for k in a.keys() - d.keys():
            out.append((join(path, k), "extra", f"atoll has {short(a[k])}"))
        for k in d.keys() & a.keys():
            if key in LOCAL_KEYS and not path.endswith("]"):
                continue
            compare(a[k], d[k], join(path, k), out)
    elif isinstance(d, list):
        if key in LOCAL_KEYS:
            return
        if len(a) != len(d):
            out.append((path, "length", f"docker {len(d)}, atoll {len(a)}"))
        for i, (x, y) in enumerate(zip(a, d)):
            compare(x, y, f"{path}[{i}]", out)
    elif key not in LOCAL_KEYS and normalise(a) != normalise(d):
        out.append((path, "value", f"docker {short(d)}, atoll {short(a)}"))


def join(path, k):
    return f"{path}.{k}" if path else k


def short(v):
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def get(body, dotted):
    for part in dotted.split("."):
        body = body[int(part)] if isinstance(body, list) else body[part]
    return body


def fill(v, values, quote=False):
    if isinstance(v, str):
        def value(m):
            got = str(values.get(m.group(1), m.group(0)))
            return urllib.parse.quote(got, safe=":@") if quote else got
        return re.sub(r"\{(\w+)\}", value, v)
    if isinstance(v, list):
        return [fill(x, values) for x in v]
    if isinstance(v, dict):
        return {fill(k, values): fill(x, values) for k, x in v.items()}
    return v


def load_scenarios(only=None, fast=False):
    out = []
    for f in sorted((HERE / "scenarios").glob("*.toml")):
        area = f.stem
        if only and area not in only:
            continue
        for s in tomllib.loads(f.read_text()).get("scenario", []):
            if fast and not s.get("fast", False):
                continue
            s["area"] = area
            out.append(s)
    return out


def load_divergences():
    return tomllib.loads((HERE / "divergences.toml").read_text()).get("divergence", [])


def fields(d):
    f = d.get("field", "*")
    return f if isinstance(f, list) else [f]


def explained(divs, call_tpl, field, kind, scenario="", step=0):
    """The entry explaining a difference: by call, field and kind, and, where
    an entry names them, only in that scenario (`area/name`) and step."""
    for d in divs:
        if fnmatch.fnmatchcase(call_tpl, d["where"]) \
                and any(fnmatch.fnmatchcase(field, f) for f in fields(d)) \
                and d.get("kind", "*") in ("*", kind) \
                and fnmatch.fnmatchcase(scenario, d.get("scenario", "*")) \
                and d.get("step", step) == step:
            return d
    return None


def run_scenario(s, version, socks, divs, verbose=False):
    """Runs `s` on both daemons; returns the unexplained differences."""
    unexplained = []
    values = {"name": f"conf-{secrets.token_hex(4)}", "version": version}
    side_values = {side: dict(values) for side in socks}
    for i, step in enumerate(s["step"]):
        method, tpl = step["call"].split(" ", 1)
        answers = {}
        for side, sock in socks.items():
            vals = side_values[side]
            path = fill(tpl, vals, quote=True)
            if not step.get("unversioned"):
                path = f"/v{version}{path}"
            try:
                answers[side] = call(sock, method, path, fill(step.get("body"), vals))
            except (OSError, http.client.HTTPException) as e:
                answers[side] = Answer(0, {}, f"{type(e).__name__}: {e}".encode())
            for name, dotted in step.get("save", {}).items():
                try:
                    vals[name] = get(answers[side].body, dotted)
                except (KeyError, IndexError, TypeError, ValueError):
                    vals[name] = f"<no {dotted}>"
        a, d = answers["atoll"], answers["docker"]
        diffs = []
        if a.status != d.status:
            diffs.append(("", "status", f"docker {d.status} {short(d.body)}, atoll {a.status} {short(a.body)}"))
        else:
            mode = step.get("compare", "full")
            for h in step.get("headers", []):
                if a.headers.get(h.lower()) != d.headers.get(h.lower()):
                    diffs.append((f"header {h}", "value",
                                  f"docker {d.headers.get(h.lower())!r}, atoll {a.headers.get(h.lower())!r}"))
            if mode == "full":
                compare(a.body, d.body, "", diffs)
            elif mode == "keys" and isinstance(d.body, dict) and isinstance(a.body, dict):
                for k in d.body.keys() - a.body.keys():
                    diffs.append((k, "missing", f"docker has {short(d.body[k])}"))
        call_tpl = f"{method} {tpl.split('?')[0]}"
        for field, kind, detail in diffs:
            why = explained(divs, call_tpl, field, kind, f"{s['area']}/{s['name']}", i + 1)
            line = f"{s['area']}/{s['name']} @{version} step {i + 1} {call_tpl}: {field or 'status'} ({kind}): {detail}"
            if why is None:
                unexplained.append(line)
            elif verbose:
                print(f"  explained: {line} [{why['reason']}]")
    return unexplained


def docs_section(divs):
    lines = [DOCS_BEGIN, "", "| call | field | Docker (20.10, API 1.41) and atoll | why |", "|---|---|---|---|"]
    for d in divs:
        what = d.get("what", d.get("kind", ""))
        shown = ", ".join(f"`{f}`" for f in fields(d))
        lines.append(f"| `{d['where']}` | {shown} | {what} | {d['reason']} |")
    lines += ["", DOCS_END]
    return "\n".join(lines)


def write_docs(check=False):
    text = DOCS.read_text()
    section = docs_section(load_divergences())
    if DOCS_BEGIN in text:
        start = text.index(DOCS_BEGIN)
        end = text.index(DOCS_END) + len(DOCS_END)
        new = text[:start] + section + text[end:]
    else:
        new = text.rstrip("\n") + "\n\n## API answers that differ (conformance harness)\n\n" + section + "\n"
    if check:
        return new == text
    DOCS.write_text(new)
    return True


def run(only=None, fast=False, verbose=False):
    sys.path.insert(0, str(ROOT / "bench"))
    from compare_docker import side_by_side  # noqa: E402 (the bench's daemons)

    divs = load_divergences()
    scenarios = load_scenarios(only, fast)
    failures = []
    with side_by_side("atoll-conformance-") as pair:
        socks = {"atoll": pair.a_sock, "docker": pair.d_sock}
        for s in scenarios:
            for v in s.get("versions", DEFAULT_VERSIONS):
                found = run_scenario(s, v, socks, divs, verbose)
                print(f"{'ok  ' if not found else 'DIFF'} {s['area']}/{s['name']} @{v}")
                failures += found
    for f in failures:
        print(f"  {f}")
    print(f"{len(scenarios)} scenarios, {len(failures)} unexplained differences")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the scenarios marked fast (CI)")
    ap.add_argument("--only", action="append", help="an area (file name under scenarios/), repeatable")
    ap.add_argument("-v", "--verbose", action="store_true", help="show explained differences too")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--check-docs", action="store_true")
    args = ap.parse_args()
    if args.write_docs:
        write_docs()
        return 0
    if args.check_docs:
        ok = write_docs(check=True)
        print("docs/divergence.md is up to date" if ok else "docs/divergence.md is stale: run --write-docs")
        return 0 if ok else 1
    return 1 if run(args.only, args.fast, args.verbose) else 0


if __name__ == "__main__":
    sys.exit(main())
