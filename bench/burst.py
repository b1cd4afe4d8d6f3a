#!/usr/bin/env python3
"""Benchmark (issue 4): a burst of `docker run -d` from 8 concurrent clients.

200 containers (`busybox sleep 600`, `-m 64m` on both sides) on a 3-server
simulated datacenter (`atoll up --nodes 3`) against 200 on one Docker host
(Debian's docker.io, a dockerd started here on its own socket and data root), in
the same run. Rounds alternate atoll and Docker; every container is removed
between rounds. Prints containers/s and p50/p99 latency per side (medians over
rounds) and the ratio. Target: atoll >= 2x Docker's rate.

Usage: bench/burst.py [--containers N] [--clients C] [--rounds R]   (root; run
scripts/install-deps.sh and `cargo build --release` first)
"""

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_docker import DOCKER, docker, side_by_side  # noqa: E402


def burst(sock, n, clients):
    """Wall seconds for n `docker run -d` from `clients` threads, and each latency."""
    def one(i):
        t = time.perf_counter()
        r = subprocess.run([DOCKER, "-H", f"unix://{sock}", "run", "-d", "-m", "64m",
                            "--name", f"burst-{i}", "busybox", "sleep", "600"],
                           capture_output=True)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"run failed on {sock}: {r.stderr.decode()}")
        return dt

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as ex:
        lat = list(ex.map(one, range(n)))
    return time.perf_counter() - t0, lat


def clean(sock):
    ids = docker(sock, "ps", "-aq").stdout.decode().split()
    for i in range(0, len(ids), 50):
        docker(sock, "rm", "-f", *ids[i:i + 50], check=False)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    with side_by_side("atoll-burst-", ("--nodes", "3")) as pair:
        a_sock, d_sock = pair.a_sock, pair.d_sock
        # Every atoll server gets the layers once before timing (Docker has one host).
        for i in range(3):
            docker(a_sock, "run", "-d", "--name", f"warm-{i}", "-m", "64m", "busybox", "true")
        clean(a_sock)

        res = {"atoll": [], "docker": []}
        for _ in range(args.rounds):
            for side, sock in (("atoll", a_sock), ("docker", d_sock)):
                wall, lat = burst(sock, args.containers, args.clients)
                res[side].append((args.containers / wall, pct(lat, 50), pct(lat, 99)))
                clean(sock)
                time.sleep(1)
        print()
        print(f"| burst: {args.containers} x `docker run -d`, {args.clients} clients | containers/s | p50 (ms) | p99 (ms) | rounds |")
        print("|---|---:|---:|---:|---:|")
        med = {}
        for side, label in (("atoll", "atoll, 3 simulated servers"), ("docker", "docker, one host")):
            rate = statistics.median(r[0] for r in res[side])
            p50 = statistics.median(r[1] for r in res[side])
            p99 = statistics.median(r[2] for r in res[side])
            med[side] = rate
            print(f"| {label} | {rate:.1f} | {p50*1000:.0f} | {p99*1000:.0f} | {len(res[side])} |")
        ratio = med["atoll"] / med["docker"]
        print(f"| ratio atoll/docker (rate) | {ratio:.2f} (target >= 2) | | | |")
        print("targets met" if ratio >= 2 else "TARGETS NOT MET")


if __name__ == "__main__":
    main()
