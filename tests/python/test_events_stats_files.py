"""events, stats, top, cp (put/get archive), export and diff through docker-py."""
import io
import tarfile
import time

import docker
import pytest


def test_events_with_filters(client):
    since = time.time()
    c = client.containers.run("busybox", ["true"], name="pyev", detach=True)
    c.wait()
    c.remove()
    evs = list(client.events(since=since, until=time.time() + 0.5, decode=True,
                             filters={"container": "pyev"}))
    actions = [e["Action"] for e in evs]
    assert actions == ["create", "start", "die", "destroy"], actions
    assert evs[2]["Actor"]["Attributes"]["exitCode"] == "0"
    assert all(e["Type"] == "container" and e["Actor"]["Attributes"]["name"] == "pyev" for e in evs)


def test_stats_and_top(client):
    c = client.containers.run("busybox", ["sh", "-c", "while true; do :; done"], detach=True, mem_limit="32m")
    try:
        s = c.stats(stream=False)
        assert s["memory_stats"]["limit"] == 32 << 20
        cpu = s["cpu_stats"]["cpu_usage"]["total_usage"] - s["precpu_stats"]["cpu_usage"]["total_usage"]
        assert cpu > 0
        stream = c.stats(stream=True, decode=True)
        first, second = next(stream), next(stream)
        assert second["precpu_stats"]["cpu_usage"]["total_usage"] == first["cpu_stats"]["cpu_usage"]["total_usage"]
        top = c.top()
        assert "PID" in top["Titles"] and len(top["Processes"]) == 1
    finally:
        c.remove(force=True)


def test_put_get_archive_export_and_diff(client):
    c = client.containers.run("busybox", ["sleep", "100"], detach=True)
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            data = b"from docker-py"
            info = tarfile.TarInfo("py.txt")
            info.size = len(data)
            info.mode = 0o600
            t.addfile(info, io.BytesIO(data))
        assert c.put_archive("/tmp", buf.getvalue())
        stream, stat = c.get_archive("/tmp/py.txt")
        assert stat["name"] == "py.txt" and stat["size"] == 14
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
            assert t.extractfile("py.txt").read() == b"from docker-py"
        with pytest.raises(docker.errors.NotFound):
            c.get_archive("/nonexistent")
        assert {"Path": "/tmp/py.txt", "Kind": 1} in c.diff()
        names = tarfile.open(fileobj=io.BytesIO(b"".join(c.export()))).getnames()
        assert "tmp/py.txt" in names and "bin/busybox" in names
    finally:
        c.remove(force=True)
