#!/usr/bin/env python3
"""Benchmark (issue 6): what hardening costs `docker run --rm busybox true`.

atoll with its default confinement (the default seccomp profile; user
namespaces are not built yet) against atoll with `--security-opt
seccomp=unconfined`, and Docker (Debian's docker.io, started here) with its
default seccomp profile and unconfined, interleaved in one run. Prints the
medians and atoll's hardened/unhardened ratio (target <= 1.25) beside Docker's.

Usage: bench/hardening.py [--runs N]   (root; run scripts/install-deps.sh and
`cargo build --release` first)
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_docker import SETTLE, docker, side_by_side  # noqa: E402


def timed_run(sock, *opts):
    t = time.perf_counter()
    r = docker(sock, "run", "--rm", *opts, "busybox", "true", check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"run {opts} failed on {sock}: {r.stderr.decode()}")
    time.sleep(SETTLE)
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=25)
    args = ap.parse_args()
    unconfined = ("--security-opt", "seccomp=unconfined")
    with side_by_side("atoll-hardening-") as pair:
        # The profile really is on by default on both sides.
        for sock in (pair.a_sock, pair.d_sock):
            status = docker(sock, "run", "--rm", "busybox", "cat", "/proc/self/status").stdout.decode()
            if "Seccomp:\t2" not in status:
                sys.exit(f"no seccomp filter by default on {sock}")
        times = {k: [] for k in ("atoll", "atoll-unconfined", "docker", "docker-unconfined")}
        for _ in range(args.runs):
            times["atoll"].append(timed_run(pair.a_sock))
            times["atoll-unconfined"].append(timed_run(pair.a_sock, *unconfined))
            times["docker"].append(timed_run(pair.d_sock))
            times["docker-unconfined"].append(timed_run(pair.d_sock, *unconfined))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    ratio_a = med["atoll"] / med["atoll-unconfined"]
    ratio_d = med["docker"] / med["docker-unconfined"]
    print(f"\n| `docker run --rm busybox true`, {args.runs} runs | hardened (ms) | unconfined (ms) | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| atoll (default seccomp profile) | {med['atoll']:.1f} | {med['atoll-unconfined']:.1f} | {ratio_a:.3f} (target <= 1.25) |")
    print(f"| docker (its default seccomp profile) | {med['docker']:.1f} | {med['docker-unconfined']:.1f} | {ratio_d:.3f} |")
    print(f"| atoll hardened / docker hardened | | | {med['atoll'] / med['docker']:.3f} |")
    print("targets met" if ratio_a <= 1.25 else "TARGET MISSED")


if __name__ == "__main__":
    main()
