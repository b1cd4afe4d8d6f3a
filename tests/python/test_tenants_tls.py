"""docker-py as two tenants over TLS (client certificates from `atoll account
cert`): each runs its own `web`, sees only its own objects, and a client without
a certificate gets nothing."""
import docker
import pytest
import requests


def test_two_tenants_over_tls(fresh_atoll, test_images, tmp_path, monkeypatch):
    # requests lets these override the CA a session was given (psf/requests#3829).
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    alice = fresh_atoll.tenant_client("alice", tmp_path / "alice")
    bob = fresh_atoll.tenant_client("bob", tmp_path / "bob")
    for who, c in (("alice", alice), ("bob", bob)):
        with open(test_images.busybox["path"], "rb") as f:
            c.images.load(f.read())
        c.containers.run("busybox", ["sh", "-c", "echo I am %s; sleep 300" % who],
                         name="web", detach=True)
    assert [c.name for c in alice.containers.list()] == ["web"]
    a_web = alice.containers.get("web")
    b_web = bob.containers.get("web")
    assert a_web.id != b_web.id
    assert a_web.exec_run("echo hi").output == b"hi\n"
    with pytest.raises(docker.errors.NotFound):
        bob.containers.get(a_web.id)
    with pytest.raises(docker.errors.NotFound):
        bob.api.kill(a_web.id)
    assert alice.info()["Containers"] == 1
    # Without a client certificate there is no API at all.
    addr = (fresh_atoll.data_dir / "head" / "docker-tls.addr").read_text().strip()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get("https://%s/_ping" % addr, verify=str(tmp_path / "alice" / "ca.pem"),
                     timeout=10)
    a_web.remove(force=True)
    b_web.remove(force=True)
