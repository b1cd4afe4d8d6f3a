//! A temporary `atoll up` for integration tests, driven through the real `docker` CLI.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::http::{self, Body, Response};
use crate::testimages::{ImageFacts, target_dir, test_images, workspace_root};
use crate::wait::try_wait_for_some;

/// How long `start`/`restart` wait for `/_ping` (override: `ATOLL_TEST_START_TIMEOUT`
/// in seconds).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one docker CLI command may take before the test fails.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long atoll gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of the atoll log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// `$ATOLL_BIN`, else the newer of `<target>/release/atoll` and `<target>/debug/atoll`
/// (looking in `$CARGO_TARGET_DIR` and `<workspace>/target`).
pub fn atoll_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ATOLL_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for t in [target_dir(), workspace_root().join("target")] {
        for profile in ["release", "debug"] {
            let p = t.join(profile).join("atoll");
            if let Ok(m) = p.metadata().and_then(|m| m.modified())
                && best.as_ref().is_none_or(|(bm, _)| m > *bm)
            {
                best = Some((m, p));
            }
        }
    }
    match best {
        Some((_, p)) => p,
        None => panic!(
            "no atoll binary: run `cargo build --release` (or set ATOLL_BIN); looked in {}",
            target_dir().display()
        ),
    }
}

/// `$ATOLL_DOCKER_CLI`, else `/usr/local/bin/docker` if present, else `docker` on PATH.
pub fn docker_cli() -> PathBuf {
    if let Some(p) = std::env::var_os("ATOLL_DOCKER_CLI").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let local = Path::new("/usr/local/bin/docker");
    if local.exists() {
        local.to_path_buf()
    } else {
        PathBuf::from("docker")
    }
}

/// A running `atoll up` with its own data dir and Docker socket.
///
/// Dropping it stops atoll (SIGTERM), runs `atoll reset --data-dir` (which removes the
/// containers, network devices and the data dir) and, when the test is failing,
/// prints the tail of atoll's log and keeps a copy under `<target>/atoll-test-logs/`.
pub struct AtollInstance {
    bin: PathBuf,
    data_dir: PathBuf,
    socket: PathBuf,
    log_path: PathBuf,
    command: String,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    docker_config: tempfile::TempDir,
    child: Option<Child>,
}

/// How to start an [`AtollInstance`]; `Default` is what [`AtollInstance::start`] uses.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The binary to run instead of [`atoll_bin`].
    pub bin: Option<PathBuf>,
    /// The subcommand instead of `up` (e.g. `head`).
    pub command: Option<String>,
    /// Extra arguments to `atoll up`.
    pub args: Vec<String>,
    /// Extra environment of `atoll up` (e.g. `ATOLL_CRASH_AT`); see
    /// [`AtollInstance::set_env`] to change it for the next start.
    pub env: Vec<(String, String)>,
    /// The data dir (short: sockets live under it) instead of a fresh one in /tmp.
    pub data_dir: Option<PathBuf>,
}

/// A btrfs filesystem in a sparse image file, loop-mounted at a short path
/// under /tmp; unmounted and deleted on drop (even after a failure).
pub struct BtrfsMount {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl BtrfsMount {
    pub fn new(size_mb: u64) -> BtrfsMount {
        let dir = tempfile::Builder::new()
            .prefix("atb")
            .rand_bytes(4)
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("creating a mount point: {e}"));
        let image = PathBuf::from(format!("{}.img", dir.path().display()));
        let file = File::create(&image).unwrap_or_else(|e| panic!("creating the image: {e}"));
        file.set_len(size_mb << 20).expect("sizing the image");
        let run = |args: &[&str]| {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let img = image.to_string_lossy().into_owned();
        let mnt = dir.path().to_string_lossy().into_owned();
        let m = BtrfsMount { dir, image };
        run(&["mkfs.btrfs", "-q", &img]);
        run(&["mount", "-o", "loop", &img, &mnt]);
        m
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BtrfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
        let _ = std::fs::remove_file(&self.image);
    }
}

impl AtollInstance {
    /// Starts atoll in a fresh data dir under /tmp and waits until `/_ping` answers.
    /// Panics (with the log) if it does not come up.
    pub fn start() -> AtollInstance {
        Self::start_with(StartOptions::default())
    }

    /// Like [`start`](Self::start), with options.
    pub fn start_with(opts: StartOptions) -> AtollInstance {
        // As short as possible (`/tmp/atlXXXX`): unix socket paths are limited to 108
        // bytes, and atoll puts sockets under `<data>/agent/containers/<64 hex>/`.
        let data_dir = opts.data_dir.unwrap_or_else(|| {
            tempfile::Builder::new()
                .prefix("atl")
                .rand_bytes(4)
                .tempdir_in("/tmp")
                .unwrap_or_else(|e| panic!("creating a data dir in /tmp: {e}"))
                .keep()
        });
        std::fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", data_dir.display()));
        let docker_config = tempfile::Builder::new()
            .prefix("atoll-docker-config-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a DOCKER_CONFIG dir: {e}"));
        let mut inst = AtollInstance {
            bin: opts.bin.unwrap_or_else(atoll_bin),
            socket: data_dir.join("docker.sock"),
            log_path: data_dir.join("atoll-test.log"),
            data_dir,
            command: opts.command.unwrap_or_else(|| "up".into()),
            extra_args: opts.args,
            extra_env: opts.env,
            docker_config,
            child: None,
        };
        inst.spawn_and_wait();
        inst
    }

    fn spawn_and_wait(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning the log handle: {e}"));
        let mut cmd = Command::new(&self.bin);
        cmd.arg(&self.command)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--docker-socket")
            .arg(&self.socket)
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if !self.extra_args.iter().any(|a| a == "--tls-listen") {
            // Tests run side by side: any free port (see `tls_address`).
            cmd.args(["--tls-listen", "127.0.0.1:0"]);
        }
        if std::env::var_os("ATOLL_LOG").is_none() {
            cmd.env("ATOLL_LOG", "info");
        }
        // A log file, not a terminal: no colour codes.
        cmd.env("NO_COLOR", "1");
        let child = spawn_with_parent_death_signal(cmd)
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);

        let timeout = std::env::var("ATOLL_TEST_START_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(START_TIMEOUT);
        let ready = try_wait_for_some(
            || {
                if let Some(c) = self.child.as_mut()
                    && let Ok(Some(st)) = c.try_wait()
                {
                    return Some(Err(st));
                }
                self.ping().then_some(Ok(()))
            },
            timeout,
        );
        match ready {
            Some(Ok(())) => {}
            Some(Err(st)) => {
                self.child = None;
                panic!(
                    "atoll exited during startup ({st}); data dir {} ; log tail:\n{}",
                    self.data_dir.display(),
                    self.log_tail(LOG_TAIL_LINES)
                )
            }
            None => panic!(
                "atoll did not answer /_ping on {} within {timeout:?}; log tail:\n{}",
                self.socket.display(),
                self.log_tail(LOG_TAIL_LINES)
            ),
        }
    }

    /// The data dir (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The Docker API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>`, for `DOCKER_HOST` or API clients.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// atoll's combined stdout/stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The pid of the running `atoll up`, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the `atoll up` process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// True when `GET /_ping` answers 200 "OK".
    pub fn ping(&self) -> bool {
        matches!(
            http::unix_request(&self.socket, "GET", "/_ping", None, Duration::from_secs(2)),
            Ok(r) if r.status == 200 && r.body == b"OK"
        )
    }

    /// One raw Docker API request (for what the CLI cannot express). `body` is sent as
    /// JSON when given.
    pub fn api(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Response {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let body = bytes.as_deref().map(|b| Body {
            content_type: "application/json",
            bytes: b,
        });
        http::unix_request(&self.socket, method, path, body, DOCKER_TIMEOUT)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A server's state as `atoll server ls` reports it (`up`, `down`, …), or
    /// `absent` when the head does not know it.
    pub fn server_state(&self, id: &str) -> String {
        let list = crate::json(&self.operator_ok(&["server", "ls", "--json"]));
        list.as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"] == id)
            .and_then(|s| s["state"].as_str())
            .unwrap_or("absent")
            .to_string()
    }

    /// `ADDR:PORT` of the Docker API over TLS (as atoll wrote it).
    pub fn tls_address(&self) -> String {
        let f = self.data_dir.join("head/docker-tls.addr");
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("reading {}: {e}", f.display()))
            .trim()
            .to_string()
    }

    /// A new account `name` with a client certificate, to drive the Docker
    /// API over TLS as that tenant.
    pub fn tenant(&self, name: &str) -> crate::Tenant {
        self.operator_ok(&["account", "create", name]);
        let tenant = crate::Tenant::new(name, &self.tls_address());
        self.operator_ok(&[
            "account",
            "cert",
            name,
            "--out",
            tenant.cert_dir().to_str().expect("a UTF-8 path"),
        ]);
        tenant
    }

    /// The docker CLI set up for this instance, not yet run (for a test
    /// that spawns it and acts while it runs).
    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(docker_cli());
        cmd.args(args)
            .env("DOCKER_HOST", self.docker_host())
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION");
        cmd
    }

    /// Opens a hijacked stream (`POST path` with `Upgrade`, JSON `body`) and
    /// returns the connection once the 101 has arrived; panics otherwise.
    pub fn hijack(&self, path: &str, body: &str) -> std::os::unix::net::UnixStream {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write request");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                other => panic!("POST {path}: closed before the 101 ({other:?})"),
            }
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "POST {path}: {}",
            String::from_utf8_lossy(&head)
        );
        s
    }

    /// Runs the docker CLI against this instance; panics only if it cannot run or
    /// takes longer than [`DOCKER_TIMEOUT`].
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_with(args, None, DOCKER_TIMEOUT)
    }

    /// Runs the docker CLI with `input` on its stdin.
    pub fn docker_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        self.docker_with(args, Some(input), DOCKER_TIMEOUT)
    }

    /// Runs the docker CLI with optional stdin and a custom timeout.
    pub fn docker_with(&self, args: &[&str], input: Option<&[u8]>, timeout: Duration) -> Output {
        run_with_timeout(self.docker_command(args), input, timeout)
            .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
    }

    /// Runs the docker CLI, panics with its stderr unless it exits 0, and returns its
    /// stdout with trailing whitespace trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        expect_success(args, &out)
    }

    /// Runs the docker CLI and panics unless it fails; returns its stderr.
    pub fn docker_err(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if out.status.success() {
            panic!(
                "docker {} succeeded but should have failed; stdout:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs an operator command (`atoll server ls`, …) against this instance's
    /// data dir.
    pub fn operator(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).arg("--data-dir").arg(&self.data_dir);
        run_with_timeout(cmd, None, DOCKER_TIMEOUT)
            .unwrap_or_else(|e| panic!("atoll {}: {e}", args.join(" ")))
    }

    /// [`operator`](Self::operator) that must succeed; its stdout, trimmed.
    pub fn operator_ok(&self, args: &[&str]) -> String {
        let out = self.operator(args);
        expect_success(args, &out)
    }

    /// [`operator`](Self::operator) that must fail; its stderr.
    pub fn operator_err(&self, args: &[&str]) -> String {
        let out = self.operator(args);
        assert!(
            !out.status.success(),
            "atoll {} succeeded but should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `docker load -i <archive>`; returns the CLI's output.
    pub fn load_image(&self, image: &ImageFacts) -> String {
        let path = image.path.to_string_lossy();
        self.docker_ok(&["load", "-i", &path])
    }

    /// Loads `busybox:latest` from the test images.
    pub fn load_busybox(&self) -> String {
        self.load_image(&test_images().busybox)
    }

    /// SIGTERM, then waits (killing it after 15 s). Containers keep running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }

    /// SIGKILL without any chance to clean up, as in a crash.
    pub fn kill_hard(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Stops atoll (if running) and starts it again on the same data dir and socket.
    /// The extra environment of the next (re)start.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.extra_env = env;
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    fn keep_failed_log(&self) {
        let log = self.log();
        let tail = self.log_tail(LOG_TAIL_LINES);
        let name = std::thread::current().name().unwrap_or("test").replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-',
            "_",
        );
        let dir = target_dir().join("atoll-test-logs");
        let dd = self
            .data_dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kept = dir.join(format!("{name}-{dd}.log"));
        let saved = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&kept, log.as_bytes()))
            .is_ok();
        eprintln!(
            "---- atoll log tail ({}) ----\n{tail}\n---- end of atoll log{} ----",
            self.data_dir.display(),
            if saved {
                format!("; full log: {}", kept.display())
            } else {
                String::new()
            }
        );
    }

    fn reset(&self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("reset").arg("--data-dir").arg(&self.data_dir);
        match run_with_timeout(cmd, None, Duration::from_secs(60)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "atoll reset --data-dir {} failed ({}): {}",
                self.data_dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("atoll reset --data-dir {}: {e}", self.data_dir.display()),
        }
        // Whatever reset left: only remove plain files, never through a mount.
        if self.data_dir.exists() {
            if mounts_under(&self.data_dir) {
                eprintln!(
                    "leaving {}: mounts remain under it after reset",
                    self.data_dir.display()
                );
            } else {
                let _ = std::fs::remove_dir_all(&self.data_dir);
            }
        }
    }
}

impl std::fmt::Debug for AtollInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtollInstance")
            .field("bin", &self.bin)
            .field("data_dir", &self.data_dir)
            .field("socket", &self.socket)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Drop for AtollInstance {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        self.stop();
        if failed {
            self.keep_failed_log();
        }
        self.reset();
    }
}

/// True if any mount point lies in or under `dir`.
fn mounts_under(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(&unescape_mountinfo(mp)).starts_with(&dir))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Panics with the command's stderr unless it succeeded; returns trimmed stdout.
pub fn expect_success<S: AsRef<OsStr>>(args: &[S], out: &Output) -> String {
    if !out.status.success() {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        panic!(
            "docker {} failed ({}):\nstderr: {}\nstdout: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Runs `cmd` to completion with optional stdin, capturing stdout and stderr; kills it
/// and returns `TimedOut` after `timeout`.
pub fn run_with_timeout(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let writer = match (input, child.stdin.take()) {
        (Some(data), Some(mut w)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                // A child that exits without reading its stdin is not an error here.
                let _ = w.write_all(&data);
            }))
        }
        _ => None,
    };
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(st) => st?,
        Err(_) => {
            // The child is not reaped yet, so its pid cannot have been reused.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = rx.recv();
            let _ = out_t.join();
            let stderr = err_t.join().unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "timed out after {timeout:?}; stderr so far: {}",
                    String::from_utf8_lossy(&stderr)
                ),
            ));
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it gets SIGTERM if the test process dies (e.g. killed by a
/// test-runner timeout), so no atoll is left behind.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, and test threads end
/// with each test; so every spawn goes through one thread that lives as long as the
/// process, and an instance may outlive the test thread that started it.
pub fn spawn_with_parent_death_signal(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap_or_else(|e| panic!("starting the spawner thread: {e}"));
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe; the closure touches no locks or allocations.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread gone"))?
}
