#!/usr/bin/env python3
"""Benchmark: docker push and docker pull of a 5-layer, ~200 MB image to and
from a loopback TLS registry (Debian's docker-registry with htpasswd auth,
started by the testkit's `test-registry`), atoll against Docker in one run.

Each round starts a fresh registry (so every blob really travels), pushes the
image from both sides, removes it on both sides and pulls it back; the order
of the two sides alternates per round. atoll pushes the layers as it holds them
(uncompressed tars, from `docker load`), Docker gzips them; so atoll also pulls
Docker's gzipped push, to show a pull that decompresses (while hashing). Prints medians of wall time, MB/s
(image bytes as stored locally over wall time), the ratios, and the most the
`atoll up` process's RSS grew above idle while pulling.

Usage: bench/registry.py [--rounds N]   (root; after scripts/install-deps.sh
and cargo build --release)
"""

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_docker import DOCKER, ROOT, rss_kb, side_by_side  # noqa: E402

LAYERS = 5
LAYER_BYTES = 40_000_000
USER, PASSWORD = "bench", "bench-pw"


def make_image(path):
    """A docker-save archive: LAYERS layers of LAYER_BYTES of text-like data
    (base64 of random bytes: compressible as real files are, about 3:4)."""
    layers, diff_ids = [], []
    for i in range(LAYERS):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            data = base64.b64encode(os.urandom(LAYER_BYTES * 3 // 4))
            info = tarfile.TarInfo(f"data/layer{i}.txt")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        tar = buf.getvalue()
        layers.append(tar)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["true"]},
        "created": "2026-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    with tarfile.open(path, "w") as out:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        names = []
        for i, tar in enumerate(layers):
            names.append(f"layer{i}/layer.tar")
            add(names[-1], tar)
        add(config_name, config)
        add("manifest.json", json.dumps([{
            "Config": config_name, "RepoTags": ["bench/big:1"], "Layers": names,
        }]).encode())
    return sum(len(t) for t in layers)


class Registry:
    """A fresh TLS registry; its CA trusted by both atoll and dockerd."""

    def __init__(self, binary):
        self.proc = subprocess.Popen([binary, USER, PASSWORD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = json.loads(self.proc.stdout.readline())
        self.addr = line["addr"]
        self.docker_certs = f"/etc/docker/certs.d/{self.addr}"
        os.makedirs(self.docker_certs, exist_ok=True)
        with open(os.path.join(self.docker_certs, "ca.crt"), "w") as f:
            f.write(line["ca"])

    def close(self):
        shutil.rmtree(self.docker_certs, ignore_errors=True)
        self.proc.stdin.close()
        self.proc.wait(30)


def run(sock, env, *args):
    r = subprocess.run([DOCKER, "-H", f"unix://{sock}", *args], capture_output=True, env=env)
    if r.returncode != 0:
        sys.exit(f"docker {' '.join(args)} on {sock}: {r.stderr.decode()}")
    return r.stdout.decode()


def timed(sock, env, *args):
    t = time.perf_counter()
    run(sock, env, *args)
    dt = time.perf_counter() - t
    time.sleep(0.1)
    return dt


class PeakRss:
    """Samples a process's RSS every 20 ms while in the `with` block."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    registry_bin = os.path.join(ROOT, "target/release/test-registry")
    if not os.path.exists(registry_bin):
        sys.exit("no target/release/test-registry: run cargo build --release")

    tmp = tempfile.mkdtemp(prefix="atoll-bench-reg-")
    env = dict(os.environ, DOCKER_CONFIG=os.path.join(tmp, "cli"))
    try:
        archive = os.path.join(tmp, "big.tar")
        image_bytes = make_image(archive)
        with side_by_side("atoll-bench-") as pair:
            socks = {"atoll": pair.a_sock, "docker": pair.d_sock}
            for s in socks.values():
                run(s, env, "load", "-i", archive)
            push = {"atoll": [], "docker": []}
            pull = {"atoll": [], "docker": [], "atoll, Docker's gzip layers": []}
            growth = []
            for r in range(args.rounds):
                reg = Registry(registry_bin)
                try:
                    order = ["atoll", "docker"] if r % 2 == 0 else ["docker", "atoll"]
                    ref = {side: f"{reg.addr}/bench/{side}:1" for side in socks}
                    for side in order:
                        s = socks[side]
                        run(s, env, "login", reg.addr, "-u", USER, "-p", PASSWORD)
                        run(s, env, "tag", "bench/big:1", ref[side])
                        push[side].append(timed(s, env, "push", ref[side]))
                    for side in order:
                        s = socks[side]
                        run(s, env, "rmi", "bench/big:1", ref[side])
                        time.sleep(0.5)
                        if side == "atoll":
                            idle = rss_kb(pair.atoll_proc.pid)
                            with PeakRss(pair.atoll_proc.pid) as peak:
                                pull[side].append(timed(s, env, "pull", ref[side]))
                            growth.append(peak.peak - idle)
                        else:
                            pull[side].append(timed(s, env, "pull", ref[side]))
                        run(s, env, "tag", ref[side], "bench/big:1")
                        run(s, env, "rmi", ref[side])
                    # atoll pulling the gzip layers Docker pushed: what a pull
                    # from a registry filled by Docker costs (decompressed
                    # once, while hashing, to check the config's diff_ids).
                    s = socks["atoll"]
                    run(s, env, "rmi", "bench/big:1")
                    time.sleep(0.5)
                    idle = rss_kb(pair.atoll_proc.pid)
                    with PeakRss(pair.atoll_proc.pid) as peak:
                        pull["atoll, Docker's gzip layers"].append(timed(s, env, "pull", ref["docker"]))
                    growth.append(peak.peak - idle)
                    run(s, env, "rmi", ref["docker"])
                    run(s, env, "load", "-i", archive)
                finally:
                    reg.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mb = image_bytes / 1e6
    print()
    print(f"image: {LAYERS} layers, {mb:.0f} MB; {args.rounds} rounds, a fresh TLS registry each")
    ok = True
    for what, times in (("docker push", push), ("docker pull", pull)):
        md = statistics.median(times["docker"])
        print()
        print(f"| {what} | median (s) | min (s) | max (s) | MB/s |")
        print("|---|---:|---:|---:|---:|")
        for side, t in times.items():
            m = statistics.median(t)
            print(f"| {side} | {m:.2f} | {min(t):.2f} | {max(t):.2f} | {mb / m:.0f} |")
        for side, t in times.items():
            if side != "docker":
                ratio = statistics.median(t) / md
                print(f"| ratio {side}/docker | {ratio:.3f} (target <= 0.8) | | | |")
                ok = ok and ratio <= 0.8
    peak = max(growth) / 1024
    print()
    print(f"atoll RSS growth while pulling (max over rounds): {peak:.1f} MB (target < 64 MB)")
    ok = ok and peak < 64
    print("targets met" if ok else "TARGETS NOT MET")


if __name__ == "__main__":
    main()
