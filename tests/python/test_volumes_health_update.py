"""Volumes, healthchecks and update through docker-py."""
import time

import docker
import pytest


def test_volumes_lifecycle(client):
    v = client.volumes.create("pyvol", labels={"k": "v"})
    assert v.name == "pyvol" and v.attrs["Labels"] == {"k": "v"}
    out = client.containers.run("busybox", ["sh", "-c", "echo hi > /v/f; cat /v/f"],
                                volumes={"pyvol": {"bind": "/v", "mode": "rw"}}, remove=True)
    assert out == b"hi\n"
    c = client.containers.run("busybox", ["sleep", "100"], detach=True,
                              volumes={"pyvol": {"bind": "/v", "mode": "ro"}})
    try:
        assert [m["Name"] for m in c.attrs["Mounts"]] == ["pyvol"]
        with pytest.raises(docker.errors.APIError) as e:
            v.remove()
        assert e.value.status_code == 409
    finally:
        c.remove(force=True)
    v.remove()
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get("pyvol")


def test_healthcheck_and_update(client):
    c = client.containers.run(
        "busybox", ["sleep", "100"], detach=True,
        healthcheck={"test": ["CMD-SHELL", "test -f /tmp/ok"], "interval": 200_000_000, "retries": 1},
        mem_limit="64m")
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            c.reload()
            if c.attrs["State"]["Health"]["Status"] == "unhealthy":
                break
            time.sleep(0.1)
        assert c.attrs["State"]["Health"]["Status"] == "unhealthy"
        c.exec_run(["touch", "/tmp/ok"])
        deadline = time.time() + 20
        while time.time() < deadline:
            c.reload()
            if c.attrs["State"]["Health"]["Status"] == "healthy":
                break
            time.sleep(0.1)
        assert c.attrs["State"]["Health"]["Status"] == "healthy"
        c.update(mem_limit="128m", memswap_limit="256m")
        limit = c.exec_run(["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]).output
        assert int(limit) == 128 << 20
    finally:
        c.remove(force=True)
