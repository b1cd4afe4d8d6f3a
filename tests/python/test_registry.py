"""docker-py's registry calls (login, push, pull) through atoll against a real
TLS registry with htpasswd auth (Debian's docker-registry, started by the
testkit's `test-registry`)."""
import json
import subprocess

import docker
import pytest

from atoll_harness import ROOT, target_dir


@pytest.fixture
def registry():
    """(address, user, password) of a TLS registry that takes only that user."""
    binary = target_dir() / "release" / "test-registry"
    if not binary.exists():
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "testkit", "--bin",
                        "test-registry"], cwd=ROOT, check=True)
    proc = subprocess.Popen([str(binary), "alice", "s3cret"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "test-registry did not start"
        yield json.loads(line)["addr"], "alice", "s3cret"
    finally:
        proc.stdin.close()
        proc.wait(30)


def push_lines(client, repo, tag, **kw):
    return list(client.api.push(repo, tag=tag, stream=True, decode=True, **kw))


def test_login_push_pull_with_docker_py(fresh_atoll, test_images, registry):
    addr, user, password = registry
    client = fresh_atoll.client
    repo = "%s/py/busybox" % addr
    client.images.get("busybox").tag(repo, "1")

    with pytest.raises(docker.errors.APIError) as e:
        client.login(username=user, password="wrong", registry=addr, reauth=True)
    assert e.value.status_code == 401
    assert "401 Unauthorized" in str(e.value)

    # Not logged in: the push fails in the stream, with the registry's reason.
    lines = push_lines(client, repo, "1")
    assert any("authentication required" in l.get("error", "") for l in lines), lines

    # Positive control: logged in, docker-py sends X-Registry-Auth.
    r = client.login(username=user, password=password, registry=addr, reauth=True)
    assert r["Status"] == "Login Succeeded"
    lines = push_lines(client, repo, "1")
    assert not any("error" in l for l in lines), lines
    statuses = [l.get("status", "") for l in lines]
    assert "The push refers to repository [%s]" % repo in statuses
    assert "Pushed" in statuses
    aux = [l["aux"] for l in lines if "aux" in l]
    assert len(aux) == 1 and aux[0]["Tag"] == "1"
    digest = aux[0]["Digest"]
    assert "1: digest: %s size: %d" % (digest, aux[0]["Size"]) in statuses
    assert any(l.get("progressDetail", {}).get("total") for l in lines
               if l.get("status") == "Pushing"), lines
    assert "%s@%s" % (repo, digest) in client.images.get(repo + ":1").attrs["RepoDigests"]

    client.images.remove(repo + ":1")
    pulled = client.images.pull(repo, tag="1",
                                auth_config={"username": user, "password": password})
    assert pulled.id == test_images.busybox["id"]
    assert "%s@%s" % (repo, digest) in pulled.attrs["RepoDigests"]
    with pytest.raises(docker.errors.APIError) as e:
        client.images.pull(repo, tag="nosuchtag",
                           auth_config={"username": user, "password": password})
    assert e.value.status_code == 404
    assert "manifest unknown" in str(e.value)
