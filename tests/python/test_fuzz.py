"""The Docker API fuzzed as a hostile tenant: schemathesis, driven by Docker's
own OpenAPI description of API 1.50 (tests/fuzz), against a live atoll over
TLS with a tenant's certificate, for a bounded time. Nothing it sends may get
a 5xx or hang a request (schemathesis' not_a_server_error check and request
time-out), atoll must still run, and another tenant's container must be
untouched. A longer run: ATOLL_FUZZ_SECONDS=600 tests/fuzz/run_fuzz.sh (see
its header)."""
import os
import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[1] / "fuzz" / "run_fuzz.sh"


def test_fuzzing_the_api_as_a_tenant(fresh_atoll, test_images, tmp_path, monkeypatch):
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    bob = fresh_atoll.tenant_client("bob", tmp_path / "bob")
    mallory = fresh_atoll.tenant_client("mallory", tmp_path / "mallory")
    for c in (bob, mallory):
        with open(test_images.busybox["path"], "rb") as f:
            c.images.load(f.read())
    victim = bob.containers.run(
        "busybox", ["sh", "-c", "echo alive; sleep 3600"], name="victim", detach=True)
    # Something of mallory's own for the fuzzer to find.
    mallory.containers.run("busybox", ["sleep", "3600"], name="fz", detach=True)

    addr = (fresh_atoll.data_dir / "head" / "docker-tls.addr").read_text().strip()
    env = dict(os.environ)
    env.update({
        "ATOLL_FUZZ_URL": "https://%s" % addr,
        "ATOLL_FUZZ_CERT_DIR": str(tmp_path / "mallory"),
        "ATOLL_FUZZ_SECONDS": os.environ.get("ATOLL_FUZZ_CI_SECONDS", "60"),
        "SCHEMATHESIS": str(Path(sys.executable).parent / "schemathesis"),
    })
    run = subprocess.run(
        ["bash", str(FUZZ), "--seed", "1"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    # Positive control: the run really sent requests.
    assert "generated" in out and "API Operations" in out, out[-3000:]
    assert run.returncode == 0, out[-6000:]

    # atoll still serves, and the other tenant's container is as it was.
    assert fresh_atoll.proc.poll() is None, fresh_atoll.log_tail()
    victim.reload()
    assert victim.status == "running"
    assert victim.logs() == b"alive\n"
    assert [c.name for c in bob.containers.list()] == ["victim"]
