"""docker exec through docker-py: exit codes, streams, stdin, environment, errors."""
import docker
import pytest


@pytest.fixture
def box(client):
    c = client.containers.run("busybox", ["sleep", "1000"], detach=True, environment={"FROM_CTR": "yes"})
    yield c
    c.remove(force=True)


def test_exec_run_output_exit_code_and_options(box):
    r = box.exec_run(["sh", "-c", "echo $FROM_CTR $X; pwd; id -u; exit 3"],
                     environment={"X": "1"}, workdir="/tmp", user="65534")
    assert r.exit_code == 3
    assert r.output.decode().split() == ["yes", "1", "/tmp", "65534"]
    out = box.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
    assert out.output == (b"out\n", b"err\n")


def test_exec_stream_and_socket_stdin(client, box):
    r = box.exec_run(["sh", "-c", "for i in 1 2 3; do echo $i; done"], stream=True)
    assert b"".join(r.output) == b"1\n2\n3\n"
    api = client.api
    eid = api.exec_create(box.id, ["cat"], stdin=True)["Id"]
    sock = api.exec_start(eid, socket=True)
    raw = sock._sock
    raw.sendall(b"through stdin\n")
    raw.shutdown(1)  # half-close: cat sees EOF and exits
    data = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            break
        data += chunk
    # Docker framing: stream 1 (stdout), big-endian length, payload.
    assert data[0] == 1 and data[8:] == b"through stdin\n"
    info = api.exec_inspect(eid)
    assert info["ExitCode"] == 0 and info["Running"] is False and info["ContainerID"] == box.id


def test_exec_errors(client, box):
    r = box.exec_run(["nosuchcmd"])
    assert r.exit_code == 127
    assert b"executable file not found" in r.output
    with pytest.raises(docker.errors.NotFound):
        client.api.exec_inspect("0" * 64)
    box.stop(timeout=1)
    with pytest.raises(docker.errors.APIError) as e:
        box.exec_run(["true"])
    assert e.value.status_code == 409
    assert "is not running" in str(e.value)
