#!/usr/bin/env python3
"""Benchmark (issue 6): what hardening costs `docker run --rm busybox true`.

atoll as a tenant (its own user namespace, the default seccomp profile,
Docker's capabilities) against atoll as the operator with neither (host ids,
`--security-opt seccomp=unconfined`), and as the operator with seccomp only,
all three over the same mutual-TLS Docker API; beside Docker (Debian's
docker.io, started here) with its default seccomp profile and unconfined, on
its unix socket. Interleaved in one run. Prints the medians and atoll's
hardened/unhardened ratio (target <= 1.25) beside Docker's.

Usage: bench/hardening.py [--runs N]   (root; run scripts/install-deps.sh and
`cargo build --release` first)
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_docker import DOCKER, SETTLE, docker, side_by_side  # noqa: E402


class TlsClient:
    """The docker CLI over atoll's TLS port with one certificate."""

    def __init__(self, addr, cert_dir):
        self.env = dict(os.environ, DOCKER_HOST=f"tcp://{addr}", DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=cert_dir)
        self.env.pop("REQUESTS_CA_BUNDLE", None)

    def run(self, *args, check=True):
        return subprocess.run([DOCKER, *args], capture_output=True, check=check, env=self.env)


def timed(call, *opts):
    t = time.perf_counter()
    r = call("run", "--rm", *opts, "busybox", "true", check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"run {opts} failed: {r.stderr.decode()}")
    time.sleep(SETTLE)
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=25)
    args = ap.parse_args()
    unconfined = ("--security-opt", "seccomp=unconfined")
    with side_by_side("atoll-hardening-") as pair, tempfile.TemporaryDirectory() as certs:
        op = lambda *a: subprocess.run([pair.atoll, *a, "--data-dir", pair.a_data], capture_output=True, check=True)  # noqa: E731
        op("account", "create", "alice")
        op("account", "cert", "alice", "--out", os.path.join(certs, "alice"))
        op("cert", "--name", "bench", "--out", os.path.join(certs, "operator"))
        addr = open(os.path.join(pair.a_data, "head", "docker-tls.addr")).read().strip()
        tenant = TlsClient(addr, os.path.join(certs, "alice"))
        operator = TlsClient(addr, os.path.join(certs, "operator"))
        busybox = os.path.join(os.environ.get("ATOLL_TEST_IMAGES", ""), "busybox.tar")
        tenant.run("load", "-i", busybox)
        tenant.run("run", "--rm", "busybox", "true")  # warm up
        # The tenant really is confined: a user namespace and a seccomp filter.
        status = tenant.run("run", "--rm", "busybox", "cat", "/proc/self/status", "/proc/self/uid_map").stdout.decode()
        if "Seccomp:\t2" not in status or status.split()[-3:][1] == "0":
            sys.exit(f"the tenant is not confined: {status}")
        for sock in (pair.d_sock,):
            if "Seccomp:\t2" not in docker(sock, "run", "--rm", "busybox", "cat", "/proc/self/status").stdout.decode():
                sys.exit("no seccomp filter by default on docker")
        d = lambda *a, check=True: docker(pair.d_sock, *a, check=check)  # noqa: E731
        cols = {
            "atoll tenant": lambda: timed(tenant.run),
            "atoll operator, seccomp": lambda: timed(operator.run),
            "atoll operator, unconfined": lambda: timed(operator.run, *unconfined),
            "docker": lambda: timed(d),
            "docker unconfined": lambda: timed(d, *unconfined),
        }
        times = {k: [] for k in cols}
        for _ in range(args.runs):
            for k, f in cols.items():
                times[k].append(f())
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    ratio_a = med["atoll tenant"] / med["atoll operator, unconfined"]
    ratio_s = med["atoll operator, seccomp"] / med["atoll operator, unconfined"]
    ratio_d = med["docker"] / med["docker unconfined"]
    print(f"\n`docker run --rm busybox true`, {args.runs} runs each, interleaved; medians\n")
    print("| | hardened (ms) | unconfined (ms) | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| atoll over TLS: tenant (user namespace + seccomp) / operator (neither) "
        f"| {med['atoll tenant']:.1f} | {med['atoll operator, unconfined']:.1f} | {ratio_a:.3f} (target <= 1.25) |"
    )
    print(
        f"| atoll over TLS: operator with seccomp only / neither "
        f"| {med['atoll operator, seccomp']:.1f} | {med['atoll operator, unconfined']:.1f} | {ratio_s:.3f} |"
    )
    print(f"| docker (unix socket), its default seccomp / unconfined | {med['docker']:.1f} | {med['docker unconfined']:.1f} | {ratio_d:.3f} |")
    print(f"| atoll tenant / docker default | | | {med['atoll tenant'] / med['docker']:.3f} |")
    print("targets met" if ratio_a <= 1.25 else "TARGET MISSED")


if __name__ == "__main__":
    main()
