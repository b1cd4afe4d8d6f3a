"""Harness for the docker-py tests: a temporary `atoll up` (the same as the Rust
testkit's AtollInstance) and the locally built test images.

Tests use the fixtures in conftest.py; `wait_for` is importable:
`from atoll_harness import wait_for`.
"""
import ctypes
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import string
import subprocess
import time

import docker

ROOT = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("ATOLL_TEST_START_TIMEOUT", "20"))
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 80


def target_dir():
    t = os.environ.get("CARGO_TARGET_DIR")
    if not t:
        return ROOT / "target"
    t = pathlib.Path(t)
    return t if t.is_absolute() else ROOT / t


def atoll_bin():
    """$ATOLL_BIN, else the newer of <target>/release/atoll and <target>/debug/atoll."""
    if os.environ.get("ATOLL_BIN"):
        return pathlib.Path(os.environ["ATOLL_BIN"])
    found = [p for p in (target_dir() / "release" / "atoll", target_dir() / "debug" / "atoll")
             if p.exists()]
    if not found:
        raise RuntimeError("no atoll binary: run `cargo build --release` or set ATOLL_BIN")
    return max(found, key=lambda p: p.stat().st_mtime)


_images_dir = None


def test_images_dir():
    """$ATOLL_TEST_IMAGES (set by scripts/test.sh), else built by the testkit's
    make-test-images (once per machine; cached under the target dir)."""
    global _images_dir
    if _images_dir is None:
        d = os.environ.get("ATOLL_TEST_IMAGES")
        if not d:
            d = subprocess.run(
                ["cargo", "run", "-q", "--release", "-p", "testkit", "--bin", "make-test-images"],
                cwd=ROOT, check=True, capture_output=True, text=True,
            ).stdout.strip()
        _images_dir = pathlib.Path(d)
    return _images_dir


class TestImages:
    """Paths and known facts (ids, tags, diff_ids) of the test images; see
    crates/testkit/src/testimages.rs for what each contains."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        facts = json.loads((self.dir / "facts.json").read_text())
        for name in ("busybox", "busybox_oci", "multilayer"):
            f = dict(facts[name])
            f["path"] = self.dir / f.pop("file")
            setattr(self, name, f)


def wait_for(cond, timeout=10.0, what="condition"):
    """Polls `cond` (10 ms, backing off to 200 ms) until it returns something truthy,
    and returns that; raises AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        v = cond()
        if v:
            return v
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.2)


def _pdeathsig():
    # atoll gets SIGTERM if pytest dies, so no instance outlives the run.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def unix_get(sock_path, path, timeout=2.0):
    """GET `path` over a unix socket; returns (status, body bytes)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock_path))
        s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2:]
        body = out
    return status, body


class Atoll:
    """A running `atoll up` with its own data dir and socket. `close()` stops it and
    runs `atoll reset --data-dir`, which removes everything it created."""

    def __init__(self, extra_args=()):
        self.bin = atoll_bin()
        self.data_dir = _short_temp_dir()
        self.socket = self.data_dir / "docker.sock"
        self.log_path = self.data_dir / "atoll-test.log"
        self.base_url = "unix://%s" % self.socket
        self.extra_args = list(extra_args)
        self.proc = None
        self._client = None
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    def start(self):
        env = dict(os.environ)
        env.setdefault("ATOLL_LOG", "info")
        env["NO_COLOR"] = "1"  # a log file, not a terminal
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bin), "up", "--data-dir", str(self.data_dir),
                 "--docker-socket", str(self.socket),
                 # any free port for the TLS API: tests run beside other instances
                 "--tls-listen", "127.0.0.1:0", *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, preexec_fn=_pdeathsig,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError("atoll exited during startup (%s); log tail:\n%s"
                                   % (code, self.log_tail()))
            if time.monotonic() > deadline:
                raise RuntimeError("atoll did not answer /_ping within %ss; log tail:\n%s"
                                   % (START_TIMEOUT, self.log_tail()))
            time.sleep(0.02)

    def ping(self):
        try:
            return unix_get(self.socket, "/_ping") == (200, b"OK")
        except (OSError, ValueError, IndexError):
            return False

    @property
    def client(self):
        """A docker-py client for this instance (created on first use)."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.base_url, timeout=120)
        return self._client

    def operator(self, *args):
        """Runs an `atoll` operator command against this instance; its stdout."""
        out = subprocess.run([str(self.bin), *args, "--data-dir", str(self.data_dir)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError("atoll %s: %s" % (" ".join(args), out.stderr))
        return out.stdout

    def tenant_client(self, account, cert_dir):
        """A docker-py client over TLS as `account` (created, with a new
        certificate written to `cert_dir`)."""
        self.operator("account", "create", account)
        self.operator("account", "cert", account, "--out", str(cert_dir))
        addr = (self.data_dir / "head" / "docker-tls.addr").read_text().strip()
        tls = docker.tls.TLSConfig(
            client_cert=(str(cert_dir / "cert.pem"), str(cert_dir / "key.pem")),
            ca_cert=str(cert_dir / "ca.pem"), verify=True)
        return docker.DockerClient(base_url="https://%s" % addr, tls=tls, timeout=120)

    def api_client(self):
        """A low-level docker.APIClient for raw calls."""
        return docker.APIClient(base_url=self.base_url, timeout=120)

    def load(self, archive):
        """`docker load` of an archive file; returns the loaded docker-py Images."""
        with open(archive, "rb") as f:
            return self.client.images.load(f.read())

    def load_busybox(self):
        return self.load(TestImages(test_images_dir()).busybox["path"])

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=LOG_TAIL_LINES):
        return "\n".join(self.log().splitlines()[-n:])

    def stop(self):
        """SIGTERM and wait (SIGKILL after 15 s). Containers keep running."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def restart(self):
        self.stop()
        self.start()

    def close(self, failed=False):
        self.stop()
        if failed:
            print("\n---- atoll log tail (%s) ----\n%s\n---- end of atoll log ----"
                  % (self.data_dir, self.log_tail()))
        r = subprocess.run([str(self.bin), "reset", "--data-dir", str(self.data_dir)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            print("atoll reset --data-dir %s failed: %s" % (self.data_dir, r.stderr))
        if self.data_dir.exists() and not _mounts_under(self.data_dir):
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _short_temp_dir():
    """A new dir `/tmp/atlXXXX`: as short as possible, since unix socket paths are
    limited to 108 bytes and atoll puts sockets under
    `<data>/agent/containers/<64 hex>/`."""
    chars = string.ascii_letters + string.digits
    for _ in range(1000):
        p = pathlib.Path("/tmp/atl" + "".join(random.choice(chars) for _ in range(4)))
        try:
            p.mkdir(mode=0o700)
            return p
        except FileExistsError:
            continue
    raise RuntimeError("no free temporary data dir name under /tmp")


def _mounts_under(d):
    d = os.path.realpath(d)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split(" ")[4].replace("\\040", " ")
                if mp == d or mp.startswith(d + "/"):
                    return True
    except OSError:
        return True
    return False
