"""The core flows through docker-py against a real `atoll up`."""
import time

import docker
import pytest


def test_version_and_info(client):
    v = client.version()
    assert v["ApiVersion"] == "1.50"
    info = client.info()
    assert info["NCPU"] >= 1
    assert info["MemTotal"] > 0
    assert info["Images"] >= 1


def test_images_list_and_get(client):
    img = client.images.get("busybox:latest")
    assert "busybox:latest" in img.tags
    assert any("busybox:latest" in i.tags for i in client.images.list())
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("nosuch:image")


def test_run_foreground_output_and_exit_code(client):
    out = client.containers.run("busybox", ["echo", "hello"], remove=True)
    assert out == b"hello\n"
    with pytest.raises(docker.errors.ContainerError) as e:
        client.containers.run("busybox", ["sh", "-c", "exit 3"], remove=True)
    assert e.value.exit_status == 3


def test_detached_lifecycle(client):
    c = client.containers.run(
        "busybox",
        ["sh", "-c", "echo up; while true; do sleep 0.1; done"],
        detach=True,
        name="pyweb",
        labels={"who": "py"},
        environment={"X": "1"},
    )
    try:
        c.reload()
        assert c.status == "running"
        assert c.labels["who"] == "py"
        assert "X=1" in c.attrs["Config"]["Env"]
        deadline = time.time() + 10
        while b"up" not in c.logs() and time.time() < deadline:
            time.sleep(0.1)
        assert b"up" in c.logs()
        names = [x.name for x in client.containers.list(filters={"label": "who=py"})]
        assert names == ["pyweb"]
        with pytest.raises(docker.errors.APIError) as e:
            c.remove()
        assert e.value.status_code == 409
        c.stop(timeout=1)
        c.reload()
        assert c.status == "exited"
        assert c.wait()["StatusCode"] == 137
        c.rename("pyweb2")
        c.reload()
        assert c.name == "pyweb2"
    finally:
        c.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("pyweb2")


def test_create_errors(client):
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.create("nosuch:image")
    with pytest.raises(docker.errors.APIError) as e:
        client.containers.create("busybox", name="bad name!")
    assert e.value.status_code == 400
