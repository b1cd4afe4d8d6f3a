#!/usr/bin/env python3
"""Benchmark: `docker build` on atoll against Docker's classic builder
(`DOCKER_BUILDKIT=0`, Debian's dockerd) in one run, the same Dockerfiles on
both sides:

- a 10-step single-stage build (RUN, ENV, WORKDIR, COPY, LABEL, CMD);
- a 3-stage build with a 50 MB context (COPY into a builder stage, a RUN
  over it, COPY --from into a second and into the final stage);

each uncached (`--no-cache`) and fully cached (the same build again), and
the context upload alone (a `FROM busybox` build of a 500 MB context, which
the builder receives whole before the first step). The order of the two
sides alternates per round. Prints medians, the ratios against the targets
(uncached <= 0.7, cached <= 0.5 of Docker's time, upload >= 500 MB/s).

Usage: bench/build.py [--rounds N]   (root; after scripts/install-deps.sh and
cargo build --release)
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_docker import DOCKER, side_by_side  # noqa: E402

SINGLE = """\
FROM busybox
ENV APP=/srv/app
WORKDIR /srv/app
COPY small/ ./small/
RUN echo one > /srv/app/one && sha256sum small/* > sums
RUN mkdir -p /srv/app/data && dd if=/dev/zero of=/srv/app/data/blob bs=1M count=8 2>/dev/null
RUN for i in 1 2 3 4 5 6 7 8; do echo line $i >> /srv/app/log; done
COPY small/a.txt /srv/app/a-copy.txt
RUN ls -la /srv/app > /srv/app/listing
LABEL bench=single
CMD ["cat", "/srv/app/listing"]
"""

MULTI = """\
FROM busybox AS fetch
COPY big/ /src/
RUN cat /src/* | sha256sum > /sum && mkdir /out && cp /src/part-00 /out/first
FROM busybox AS tools
COPY --from=fetch /sum /tools/sum
RUN echo tools > /tools/ready
FROM busybox
COPY --from=tools /tools/ /opt/tools/
COPY --from=fetch /out/first /opt/first
CMD ["cat", "/opt/tools/sum"]
"""


def make_contexts(tmp):
    single = os.path.join(tmp, "single")
    os.makedirs(os.path.join(single, "small"))
    for name in "abcdefgh":
        with open(os.path.join(single, "small", f"{name}.txt"), "w") as f:
            f.write(name * 4096)
    with open(os.path.join(single, "Dockerfile"), "w") as f:
        f.write(SINGLE)
    multi = os.path.join(tmp, "multi")
    os.makedirs(os.path.join(multi, "big"))
    for i in range(10):
        with open(os.path.join(multi, "big", f"part-{i:02}"), "wb") as f:
            f.write(os.urandom(5_000_000))
    with open(os.path.join(multi, "Dockerfile"), "w") as f:
        f.write(MULTI)
    upload = os.path.join(tmp, "upload")
    os.makedirs(upload)
    chunk = os.urandom(1 << 20)
    for i in range(10):
        with open(os.path.join(upload, f"blob-{i}"), "wb") as f:
            for _ in range(50):
                f.write(chunk)
    with open(os.path.join(upload, "Dockerfile"), "w") as f:
        f.write("FROM busybox\n")
    return {"single": single, "multi": multi, "upload": upload}


def build(sock, env, ctx, *extra):
    t = time.perf_counter()
    r = subprocess.run([DOCKER, "-H", f"unix://{sock}", "build", *extra, ctx],
                       capture_output=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"build {ctx} on {sock}: {r.stdout.decode()}{r.stderr.decode()}")
    time.sleep(0.2)
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="atoll-bench-build-")
    env = dict(os.environ, DOCKER_BUILDKIT="0", DOCKER_CONFIG=os.path.join(tmp, "cli"))
    results = {}
    try:
        ctx = make_contexts(tmp)
        upload_mb = sum(os.path.getsize(os.path.join(ctx["upload"], f))
                        for f in os.listdir(ctx["upload"])) / 1e6
        with side_by_side("atoll-bench-") as pair:
            socks = {"atoll": pair.a_sock, "docker": pair.d_sock}
            for r in range(args.rounds):
                order = ["atoll", "docker"] if r % 2 == 0 else ["docker", "atoll"]
                for name in ("single", "multi"):
                    for side in order:
                        s = socks[side]
                        results.setdefault((name, "uncached", side), []).append(
                            build(s, env, ctx[name], "--no-cache", "-t", f"bench-{name}"))
                        results.setdefault((name, "cached", side), []).append(
                            build(s, env, ctx[name], "-t", f"bench-{name}"))
                for side in order:
                    results.setdefault(("upload", "context", side), []).append(
                        build(socks[side], env, ctx["upload"], "-q"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ok = True
    print()
    print(f"{args.rounds} rounds; classic builder on both sides")
    print()
    print("| build | atoll median (s) | Docker median (s) | ratio | target |")
    print("|---|---:|---:|---:|---:|")
    for name in ("single", "multi"):
        for kind, target in (("uncached", 0.7), ("cached", 0.5)):
            a = statistics.median(results[(name, kind, "atoll")])
            d = statistics.median(results[(name, kind, "docker")])
            ratio = a / d
            ok = ok and ratio <= target
            label = {"single": "10-step single stage", "multi": "3 stages, 50 MB context"}[name]
            print(f"| {label}, {kind} | {a:.2f} | {d:.2f} | {ratio:.3f} | <= {target} |")
    a = statistics.median(results[("upload", "context", "atoll")])
    d = statistics.median(results[("upload", "context", "docker")])
    print()
    print(f"context upload, {upload_mb:.0f} MB: atoll {upload_mb / a:.0f} MB/s ({a:.2f} s), "
          f"Docker {upload_mb / d:.0f} MB/s ({d:.2f} s); target >= 500 MB/s")
    ok = ok and upload_mb / a >= 500
    print("targets met" if ok else "TARGETS NOT MET")


if __name__ == "__main__":
    main()
