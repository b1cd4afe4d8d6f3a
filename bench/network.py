#!/usr/bin/env python3
"""Benchmark (issue 5): fabric networks.

1. Per-container network cost: `docker run --rm busybox true` on the default
   network against `--network none`, interleaved, on atoll and on Docker
   (Debian's docker.io) started beside it. The difference of the medians is
   what wiring a container's network adds to a run (atoll's teardown runs
   after the exit is reported, so it is mostly setup). Target: <= 5 ms.
2. Name resolution from inside a container: from the network namespace of a
   client on a user network, queries for a peer's name to the resolver at
   127.0.0.11 (the host's python, entered with nsenter, so nothing but the
   resolver is timed); median and p99 on atoll and on Docker's embedded DNS.
   Also what `-p 18080:80` adds to the run (a host port: no public network).
3. Cross-server TCP throughput: `atoll up --nodes 2`, two containers on
   different servers, iperf3 (the host's binary, run in the containers'
   network namespaces) over the VXLAN fabric, against a bare veth pair
   between two namespaces this script makes, in the same run. Target: ratio
   >= 0.6. On the same datacenter: what a public address (`-p 8080:80`)
   adds to `docker run --rm busybox true`.

Usage: bench/network.py [--runs N] [--lookups N] [--seconds S]
(root; run scripts/install-deps.sh and `cargo build --release` first)
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_docker import ROOT, docker, side_by_side, timed, wait_socket  # noqa: E402


def ms(xs):
    return statistics.median(xs) * 1000


def p99(xs):
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


# Runs inside a container's network namespace (nsenter, the host's python):
# N queries for "peer" (type A) to the resolver at 127.0.0.11, each timed.
LOOKUP_PROBE = r"""
import json, socket, struct, sys, time
n = int(sys.argv[1])
q = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x04peer\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
out = []
for i in range(n):
    m = struct.pack(">H", i & 0xFFFF) + q[2:]
    t = time.perf_counter_ns()
    s.sendto(m, ("127.0.0.11", 53))
    r = s.recv(512)
    out.append(time.perf_counter_ns() - t)
    if r[:2] != m[:2] or r[3] & 0x0F or struct.unpack(">H", r[6:8])[0] < 1:
        sys.exit("bad answer")
print(json.dumps(out))
"""


def lookups(sock, n):
    """Per-query milliseconds from inside the `client` container's namespace."""
    pid = docker(sock, "inspect", "-f", "{{.State.Pid}}", "client").stdout.decode().strip()
    r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", LOOKUP_PROBE, str(n)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"lookups on {sock} failed: {r.stderr}")
    return [x / 1e6 for x in json.loads(r.stdout)]


def setup_and_dns(runs, n_lookups):
    with side_by_side("atoll-network-") as pair:
        socks = {"atoll": pair.a_sock, "docker": pair.d_sock}
        times = {(k, m): [] for k in socks for m in ("net", "none", "port")}
        for _ in range(runs):
            for k, s in socks.items():
                times[(k, "net")].append(timed(s, "run", "--rm", "busybox", "true"))
                times[(k, "none")].append(timed(s, "run", "--rm", "--network", "none", "busybox", "true"))
                times[(k, "port")].append(timed(s, "run", "--rm", "-p", "18080:80", "busybox", "true"))
        print(f"\n`docker run --rm busybox true`, {runs} interleaved runs each, medians (ms):")
        print(f"{'':10}{'network':>10}{'none':>10}{'-p':>10}{'network cost':>14}{'-p cost':>10}")
        for k in socks:
            net, none, port = (ms(times[(k, m)]) for m in ("net", "none", "port"))
            print(f"{k:10}{net:10.1f}{none:10.1f}{port:10.1f}{net - none:14.1f}{port - net:10.1f}")
        print("(-p: a host port on one server, no public network)")

        for s in socks.values():
            docker(s, "network", "create", "bench")
            docker(s, "run", "-d", "--name", "peer", "--network", "bench", "busybox", "sleep", "3600")
            docker(s, "run", "-d", "--name", "client", "--network", "bench", "busybox", "sleep", "3600")
        res = {k: [] for k in socks}
        for _ in range(5):
            for k, s in socks.items():
                res[k].extend(lookups(s, n_lookups // 5))
        print(f"\nname lookups from inside a container ({n_lookups} queries each, 5 interleaved rounds), ms:")
        print(f"{'':10}{'median':>10}{'p99':>10}")
        for k in socks:
            print(f"{k:10}{statistics.median(res[k]):10.2f}{p99(res[k]):10.2f}")
        print(f"ratio atoll/docker (median): {statistics.median(res['atoll']) / statistics.median(res['docker']):.3f}")


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, check=check, text=True)


def iperf(server_ns, client_ns, ip, seconds):
    srv = subprocess.Popen(["nsenter", f"--net={server_ns}", "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            r = sh("nsenter", f"--net={client_ns}", "iperf3", "-c", ip, "-t", str(seconds), "-J", check=False)
            try:
                return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
            except (ValueError, KeyError):
                time.sleep(0.1)  # the server was not listening yet
        sys.exit(f"iperf3 to {ip} failed: {r.stdout[-500:]}")
    finally:
        srv.kill()
        srv.wait()


def throughput(seconds, rounds, publish_runs):
    if not shutil.which("iperf3"):
        sys.exit("iperf3 is missing: run scripts/install-deps.sh")
    atoll = os.environ.get("ATOLL_BIN", os.path.join(ROOT, "target/release/atoll"))
    images = os.environ.get("ATOLL_TEST_IMAGES") or subprocess.run(
        [os.path.join(os.path.dirname(atoll), "make-test-images")], capture_output=True, check=True, text=True
    ).stdout.strip().splitlines()[-1]
    tmp = tempfile.mkdtemp(prefix="atoll-iperf-")
    os.chmod(tmp, 0o711)
    data, sock = os.path.join(tmp, "atoll"), os.path.join(tmp, "atoll.sock")
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"atbench{tag}a", f"atbench{tag}b"
    proc = subprocess.Popen([atoll, "up", "--nodes", "2", "--tls-listen", "none", "--data-dir", data,
                             "--docker-socket", sock],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "atoll.log"), "w"))
    try:
        wait_socket(sock, proc, "atoll")
        docker(sock, "load", "-i", os.path.join(images, "busybox.tar"))
        ids = []
        for n in ("t1", "t2"):
            ids.append(docker(sock, "run", "-d", "--name", n, "busybox", "sleep", "3600").stdout.decode().strip())
        placed = {c["name"]: c["server"] for c in json.loads(
            sh(atoll, "container", "ls", "--json", "--data-dir", data).stdout)}
        if placed["t1"] == placed["t2"]:
            sys.exit(f"both containers on {placed['t1']}")
        netns = [os.path.join(data, "nodes", placed[n], "agent", "netns", i) for n, i in zip(("t1", "t2"), ids)]
        ip2 = docker(sock, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", "t2").stdout.decode().strip()

        # The kernel's own path for comparison: a veth pair between two namespaces.
        sh("ip", "netns", "add", ns_a)
        sh("ip", "netns", "add", ns_b)
        sh("ip", "link", "add", "atbv" + tag, "netns", ns_a, "type", "veth", "peer", "atbw" + tag, "netns", ns_b)
        sh("ip", "-n", ns_a, "addr", "add", "10.99.0.1/24", "dev", "atbv" + tag)
        sh("ip", "-n", ns_b, "addr", "add", "10.99.0.2/24", "dev", "atbw" + tag)
        for ns, dev in ((ns_a, "atbv" + tag), (ns_b, "atbw" + tag)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        fabric, bare = [], []
        for _ in range(rounds):
            fabric.append(iperf(netns[1], netns[0], ip2, seconds))
            bare.append(iperf(f"/run/netns/{ns_b}", f"/run/netns/{ns_a}", "10.99.0.2", seconds))
        # What a public address costs a run: `-p` on the datacenter's public
        # network (an address, its route and proxy entry, the router's DNAT)
        # against the same run without ports.
        pub = {"plain": [], "public": []}
        for _ in range(publish_runs):
            pub["plain"].append(timed(sock, "run", "--rm", "busybox", "true"))
            pub["public"].append(timed(sock, "run", "--rm", "-p", "8080:80", "busybox", "true"))
        plain, public = ms(pub["plain"]), ms(pub["public"])
        print(f"\n`docker run --rm [-p 8080:80] busybox true` on `atoll up --nodes 2` ({publish_runs} interleaved runs, medians):")
        print(f"  no ports {plain:.1f} ms, a public address {public:.1f} ms: cost {public - plain:.1f} ms")
        f, b = statistics.median(fabric), statistics.median(bare)
        print(f"\nTCP throughput (iperf3, {seconds} s x {rounds} rounds, medians), Gbit/s:")
        print(f"  atoll fabric, container to container across servers: {f:.2f}")
        print(f"  bare veth pair between two namespaces:               {b:.2f}")
        print(f"  ratio: {f / b:.3f} (target >= 0.6)")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run([atoll, "reset", "--data-dir", data], capture_output=True)
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    setup_and_dns(args.runs, args.lookups)
    throughput(args.seconds, args.rounds, args.runs)


if __name__ == "__main__":
    main()
