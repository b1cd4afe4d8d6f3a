#!/usr/bin/env python3
"""Benchmark: atoll against Docker itself, side by side in one run.

- `docker run --rm busybox true` end to end;
- `docker exec C true` latency and `docker exec C cat /big` throughput (100 MB);
- memory: atoll's idle head + agent, and one shim per container on both sides.


Starts a temporary `atoll up` and a temporary dockerd (Debian's docker.io, on its own
socket and data root), loads the same locally built busybox image into both, then
times N runs of each, interleaved so that machine noise hits both alike. Prints
medians, the ratio, atoll's idle memory (RSS of the `atoll up` process: head and agent
run in it) and the memory of one shim per container (idle and chatty), beside
Docker's containerd-shim. Everything it starts is stopped and removed.

Usage: bench/compare_docker.py [--runs N]   (needs root; run scripts/install-deps.sh first)
"""

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = "/usr/local/bin/docker"
# An idle atoll shim drops its clean pages after 1 s without events.
SHIM_SETTLE = 2.5
# Size of the file streamed through `docker exec cat`.
BIG = 100_000_000
# Pause after each timed command, on both sides alike, so that one side's
# trailing background work (dockerd/containerd cleaning up after a container or
# an exec, atoll's exit bookkeeping) is not charged to the next measurement.
SETTLE = 0.1


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rollup_kb(pid):
    """Pss and Private (Private_Clean + Private_Dirty) from smaps_rollup, in kB."""
    vals = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":"):
                vals[parts[0][:-1]] = int(parts[1]) if parts[1].isdigit() else 0
    return vals.get("Pss", 0), vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)


def wait_socket(sock, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early with {proc.returncode}")
        r = subprocess.run([DOCKER, "-H", f"unix://{sock}", "version"], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    sys.exit(f"{what} did not come up on {sock}")


def docker(sock, *args, check=True):
    return subprocess.run([DOCKER, "-H", f"unix://{sock}", *args], capture_output=True, check=check)


def timed_run(sock):
    t = time.perf_counter()
    r = docker(sock, "run", "--rm", "busybox", "true", check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"run failed on {sock}: {r.stderr.decode()}")
    time.sleep(SETTLE)
    return dt


def timed(sock, *args):
    t = time.perf_counter()
    r = docker(sock, *args, check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"docker {' '.join(args)} failed on {sock}: {r.stderr.decode()}")
    time.sleep(SETTLE)
    return dt


def stream_seconds(sock, *args):
    """Wall time of a command whose (large) stdout is read and thrown away."""
    t = time.perf_counter()
    p = subprocess.Popen([DOCKER, "-H", f"unix://{sock}", *args], stdout=subprocess.PIPE)
    n = 0
    while True:
        b = p.stdout.read(1 << 20)
        if not b:
            break
        n += len(b)
    p.wait()
    dt = time.perf_counter() - t
    if p.returncode != 0 or n != BIG:
        sys.exit(f"docker {' '.join(args)} on {sock}: exit {p.returncode}, {n} bytes")
    return dt



class Pair:
    """A temporary `atoll up` and a temporary dockerd, busybox loaded in both."""
    atoll_proc = None
    a_sock = d_sock = None


def _exit_on_signal(signum, _frame):
    # A killed benchmark still stops its atoll and dockerd (the `finally` below).
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def side_by_side(prefix, atoll_args=()):
    """Starts `atoll up [atoll_args]` and a dockerd (Debian's docker.io) on their
    own sockets and data dirs, loads the same busybox image into both and warms
    them up; stops and removes everything afterwards."""
    atoll = os.environ.get("ATOLL_BIN", os.path.join(ROOT, "target/release/atoll"))
    images = os.environ.get("ATOLL_TEST_IMAGES") or subprocess.run(
        [os.path.join(os.path.dirname(atoll), "make-test-images")], capture_output=True, check=True, text=True
    ).stdout.strip().splitlines()[-1]
    busybox_tar = os.path.join(images, "busybox.tar")

    tmp = tempfile.mkdtemp(prefix=prefix)
    os.chmod(tmp, 0o711)  # tenants' container roots (user namespaces) pass through it
    a_data, a_sock = os.path.join(tmp, "atoll"), os.path.join(tmp, "atoll.sock")
    d_root, d_exec, d_sock = os.path.join(tmp, "docker"), os.path.join(tmp, "dexec"), os.path.join(tmp, "docker.sock")
    had_docker0 = os.path.exists("/sys/class/net/docker0")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    procs = []
    try:
        a = subprocess.Popen([atoll, "up", "--tls-listen", "127.0.0.1:0", *atoll_args, "--data-dir", a_data, "--docker-socket", a_sock],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "atoll.log"), "w"))
        procs.append(a)
        d = subprocess.Popen(["dockerd", "--host", f"unix://{d_sock}", "--data-root", d_root,
                              "--exec-root", d_exec, "--pidfile", os.path.join(tmp, "docker.pid")],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "dockerd.log"), "w"))
        procs.append(d)
        wait_socket(a_sock, a, "atoll")
        wait_socket(d_sock, d, "dockerd")
        for s in (a_sock, d_sock):
            docker(s, "load", "-i", busybox_tar)
            docker(s, "run", "--rm", "busybox", "true")  # warm up: layer unpack, caches
        pair = Pair()
        pair.atoll_proc, pair.a_sock, pair.d_sock = a, a_sock, d_sock
        pair.atoll, pair.a_data = atoll, a_data
        yield pair
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([atoll, "reset", "--data-dir", a_data], capture_output=True)
        if not had_docker0 and os.path.exists("/sys/class/net/docker0"):
            subprocess.run(["ip", "link", "del", "docker0"], capture_output=True)
        subprocess.run(["umount", "-R", "-l", d_root], capture_output=True)
        subprocess.run(["umount", "-R", "-l", d_exec], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()

    with side_by_side("atoll-bench-") as pair:
        a, a_sock, d_sock = pair.atoll_proc, pair.a_sock, pair.d_sock
        time.sleep(1)
        idle_kb = rss_kb(a.pid)

        # Per-container overhead: the shim of one idle and one chatty container,
        # on both sides (Docker's is containerd-shim-runc-v2), measured after
        # SHIM_SETTLE seconds, when atoll's shim has gone idle and trimmed.
        shims = {}
        for kind, cmd in (("idle", ["sleep", "300"]),
                          ("chatty", ["sh", "-c", "while true; do echo tick; usleep 50000; done"])):
            for side, sock, pattern in (("atoll", a_sock, "atoll shim.*{}"),
                                        ("docker", d_sock, "containerd-shim.*-id {}")):
                cid = docker(sock, "run", "-d", "busybox", *cmd).stdout.decode().strip()
                time.sleep(SHIM_SETTLE)
                pids = subprocess.run(["pgrep", "-f", pattern.format(cid)],
                                      capture_output=True, text=True).stdout.split()
                shims[(kind, side)] = (rss_kb(int(pids[0])), *rollup_kb(int(pids[0]))) if pids else (0, 0, 0)
                docker(sock, "rm", "-f", cid)

        ta, td = [], []
        for _ in range(args.runs):
            ta.append(timed_run(a_sock))
            td.append(timed_run(d_sock))
        ma, md = statistics.median(ta), statistics.median(td)

        # exec: latency of `true`, throughput of `cat` of 100 MB, same container
        # shape on both sides.
        ea, ed, sa, sd = [], [], [], []
        for sock in (a_sock, d_sock):
            docker(sock, "run", "-d", "--name", "bench-exec", "busybox", "sleep", "1000")
            docker(sock, "exec", "bench-exec", "sh", "-c", f"head -c {BIG} /dev/urandom > /big")
        for _ in range(args.runs):
            ea.append(timed(a_sock, "exec", "bench-exec", "true"))
            ed.append(timed(d_sock, "exec", "bench-exec", "true"))
        for _ in range(5):
            sa.append(stream_seconds(a_sock, "exec", "bench-exec", "cat", "/big"))
            sd.append(stream_seconds(d_sock, "exec", "bench-exec", "cat", "/big"))
        for sock in (a_sock, d_sock):
            docker(sock, "rm", "-f", "bench-exec")
        mea, med = statistics.median(ea), statistics.median(ed)
        tpa, tpd = BIG / 1e6 / statistics.median(sa), BIG / 1e6 / statistics.median(sd)
        print()
        print("| docker run --rm busybox true | median (ms) | min (ms) | max (ms) | runs |")
        print("|---|---:|---:|---:|---:|")
        print(f"| atoll  | {ma*1000:.1f} | {min(ta)*1000:.1f} | {max(ta)*1000:.1f} | {len(ta)} |")
        print(f"| docker | {md*1000:.1f} | {min(td)*1000:.1f} | {max(td)*1000:.1f} | {len(td)} |")
        print(f"| ratio atoll/docker | {ma/md:.3f} | | | |")
        print()
        print("| docker exec C true | median (ms) | min (ms) | max (ms) | runs |")
        print("|---|---:|---:|---:|---:|")
        print(f"| atoll  | {mea*1000:.1f} | {min(ea)*1000:.1f} | {max(ea)*1000:.1f} | {len(ea)} |")
        print(f"| docker | {med*1000:.1f} | {min(ed)*1000:.1f} | {max(ed)*1000:.1f} | {len(ed)} |")
        print(f"| ratio atoll/docker | {mea/med:.3f} (target <= 0.333) | | | |")
        print()
        print("| docker exec C cat /big (100 MB) | median MB/s | runs |")
        print("|---|---:|---:|")
        print(f"| atoll  | {tpa:.0f} | {len(sa)} |")
        print(f"| docker | {tpd:.0f} | {len(sd)} |")
        print(f"| ratio atoll/docker | {tpa/tpd:.2f} (target >= 1) | |")
        print()
        print(f"atoll idle RSS (head + agent, one process): {idle_kb/1024:.1f} MB (target < 60 MB)")
        print()
        print("| shim per container | RSS (MB) | PSS (MB) | private (MB) |")
        print("|---|---:|---:|---:|")
        for (kind, side), (rss, pss, priv) in shims.items():
            print(f"| {side} {kind} | {rss/1024:.2f} | {pss/1024:.2f} | {priv/1024:.2f} |")
        shim_kb = shims[("idle", "atoll")][0]
        print(f"atoll idle shim RSS: {shim_kb/1024:.2f} MB (target < 2 MB)")
        ok = (ma <= md / 4 and idle_kb < 60 * 1024 and 0 < shim_kb < 2 * 1024
              and mea <= med / 3 and tpa >= tpd)
        print("targets met" if ok else "TARGETS NOT MET")


if __name__ == "__main__":
    main()
