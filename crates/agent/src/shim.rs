//! The per-container shim: a tiny single-threaded process (no tokio: one poll
//! loop) that outlives the agent. It runs `runc create` with its own pipes (or
//! a pty) as the container's stdio, writes the Docker json-file log, serves
//! attach and control sockets, reaps the container as subreaper, records the
//! exit status and deletes the runc container when it ends.
//!
//! Protocol with the agent:
//! - readiness: one line on the shim's original stdout, `ok <pid>` or
//!   `err <message>`; then the shim detaches its stdio (the agent may die).
//! - `attach.sock`: the client sends `{"stdin":b,"stdout":b,"stderr":b}\n`,
//!   gets `ok\n` once that is read, then all output from then on (Docker
//!   frames unless tty), and may send stdin.
//! - `control.sock`: `wait\n` → `{"exit_code":N,"oom_killed":b,"finished_at":".."}`
//!   once exited; `pid\n` → `{"pid":N}`; `resize <rows> <cols>\n` (tty only).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::bundle::ContainerPaths;
use crate::nsexec::{self, ExecPlan, Target};
use crate::runc::{RuntimeError, runc_error_message};

/// The attach socket's answer to the header.
pub const ATTACH_ACK: &[u8] = b"ok\n";
/// Container output read per wakeup.
const READ_CHUNK: usize = 32 * 1024;
/// An attach client this far behind stops the shim reading container output.
const CLIENT_HIGH_WATER: usize = 256 * 1024;
/// Stdin bytes buffered for the container before attach clients are not read.
const STDIN_HIGH_WATER: usize = 64 * 1024;
/// Docker's json-file splits lines longer than this.
const MAX_LOG_LINE: usize = 16 * 1024;
/// How long output is still read after the init exited (other holders of the
/// pipes are gone by then: the pid namespace died with its init).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long attach/control clients get to take their last bytes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Quiet time after which an idle shim drops its clean pages.
const IDLE_TRIM_MS: libc::c_int = 1000;
/// How long an exec shim waits for `start` before it gives up.
const EXEC_START_TIMEOUT: Duration = Duration::from_secs(60);
/// The OCI process of an exec, in the exec's state dir.
pub const EXEC_PROCESS_FILE: &str = "process.json";
/// How long the agent waits for the shim's readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything the shim needs, passed on its command line as `key=value` words
/// (no leading dashes, so the atoll binary's argument parser leaves them alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub id: String,
    pub bundle: PathBuf,
    /// The container's state dir (`ContainerPaths::root`).
    pub state_dir: PathBuf,
    pub runc_root: PathBuf,
    pub runc_binary: PathBuf,
    pub tty: bool,
    pub open_stdin: bool,
    /// json-file rotation: bytes per file (0 = never rotate), files kept.
    pub log_max_size: u64,
    pub log_max_files: u32,
    /// Exec mode: `state_dir` is the exec's own dir (holding `process.json`);
    /// the shim waits for `start` on its control socket, then runs `runc exec`
    /// in the running container `id`. No log file, no `runc delete`.
    pub exec: bool,
}

impl ShimArgs {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            format!("id={}", self.id),
            format!("bundle={}", self.bundle.display()),
            format!("state-dir={}", self.state_dir.display()),
            format!("runc-root={}", self.runc_root.display()),
            format!("runc={}", self.runc_binary.display()),
            format!("tty={}", self.tty),
            format!("open-stdin={}", self.open_stdin),
            format!("log-max-size={}", self.log_max_size),
            format!("log-max-files={}", self.log_max_files),
            format!("exec={}", self.exec),
        ]
    }

    pub fn parse(args: &[String]) -> Result<ShimArgs, RuntimeError> {
        let bad = |m: String| RuntimeError::Invalid(format!("shim arguments: {m}"));
        let mut a = ShimArgs {
            id: String::new(),
            bundle: PathBuf::new(),
            state_dir: PathBuf::new(),
            runc_root: PathBuf::new(),
            runc_binary: PathBuf::from("runc"),
            tty: false,
            open_stdin: false,
            log_max_size: 0,
            log_max_files: 1,
            exec: false,
        };
        let bool_of = |k: &str, v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad(format!("{k} must be true or false"))),
        };
        for w in args {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| bad(format!("expected key=value, got {w:?}")))?;
            match k {
                "id" => a.id = v.to_string(),
                "bundle" => a.bundle = v.into(),
                "state-dir" => a.state_dir = v.into(),
                "runc-root" => a.runc_root = v.into(),
                "runc" => a.runc_binary = v.into(),
                "tty" => a.tty = bool_of(k, v)?,
                "open-stdin" => a.open_stdin = bool_of(k, v)?,
                "exec" => a.exec = bool_of(k, v)?,
                "log-max-size" => {
                    a.log_max_size = v.parse().map_err(|_| bad(format!("bad {k}")))?
                }
                "log-max-files" => {
                    a.log_max_files = v.parse().map_err(|_| bad(format!("bad {k}")))?
                }
                _ => return Err(bad(format!("unknown key {k}"))),
            }
        }
        if a.id.is_empty() || a.bundle.as_os_str().is_empty() || a.state_dir.as_os_str().is_empty()
        {
            return Err(bad("id, bundle and state-dir are required".into()));
        }
        if a.runc_root.as_os_str().is_empty() {
            return Err(bad("runc-root is required".into()));
        }
        Ok(a)
    }
}

/// A started shim: the container's init pid and the shim's own pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShimHandle {
    pub pid: u32,
    pub shim_pid: u32,
}

/// What the shim records when the container exits (exit.json, `wait` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub exit_code: i32,
    pub oom_killed: bool,
    pub finished_at: String,
}

/// Spawns `exe shim <args>` and waits for its readiness line. Blocking: the
/// agent calls it from `spawn_blocking`. On failure the error is runc's message.
pub fn spawn_shim(exe: &Path, args: &ShimArgs) -> Result<ShimHandle, RuntimeError> {
    let line = match spawn_by_zygote(exe, args) {
        Some(line) => line?,
        None => spawn_by_exec(exe, args)?,
    };
    let paths = ContainerPaths::from_root(&args.state_dir);
    if let Some(rest) = line.strip_prefix("ok ") {
        let pid = rest
            .trim()
            .parse()
            .map_err(|_| RuntimeError::Runtime(format!("bad shim readiness line: {line}")))?;
        let shim_pid = std::fs::read_to_string(&paths.shim_pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(ShimHandle { pid, shim_pid })
    } else if let Some(msg) = line.strip_prefix("err ") {
        Err(RuntimeError::Runtime(msg.trim_end().to_string()))
    } else {
        let log = std::fs::read_to_string(&paths.shim_log).unwrap_or_default();
        Err(RuntimeError::Runtime(format!(
            "shim exited without reporting readiness{}",
            if log.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", log.trim())
            }
        )))
    }
}

/// Forks the shim from the zygote (see [`crate::zygote`]); `None` when there is
/// none. Its readiness line.
fn spawn_by_zygote(exe: &Path, args: &ShimArgs) -> Option<Result<String, RuntimeError>> {
    let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return Some(Err(RuntimeError::io("a pipe for the shim", e.into()))),
    };
    let mut argv = vec![exe.display().to_string(), "shim".to_string()];
    argv.extend(args.to_args());
    if let Err(e) = crate::zygote::spawn(&argv, &write)? {
        return Some(Err(RuntimeError::io("starting the shim", e)));
    }
    drop(write);
    Some(read_line_timeout(File::from(read), READY_TIMEOUT))
}

/// Execs `exe shim <args>`; its readiness line.
fn spawn_by_exec(exe: &Path, args: &ShimArgs) -> Result<String, RuntimeError> {
    let mut child = Command::new(exe)
        .arg("shim")
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| RuntimeError::io("starting the shim", e))?;
    let Some(out) = child.stdout.take() else {
        return Err(RuntimeError::Runtime("shim has no stdout".into()));
    };
    let line = read_line_timeout(out, READY_TIMEOUT);
    // The first shim process only forks and exits; reap it.
    let _ = child.wait();
    line
}

/// Reads one line (without the newline); empty if the writer closed first.
fn read_line_timeout(
    mut r: impl Read + AsRawFd,
    timeout: Duration,
) -> Result<String, RuntimeError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RuntimeError::Timeout("the container's shim".into()));
        }
        let mut p = [libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(RuntimeError::io("waiting for the shim", e));
        }
        if n == 0 {
            continue;
        }
        match r.read(&mut chunk) {
            Ok(0) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    buf.truncate(i);
                    return Ok(String::from_utf8_lossy(&buf).into_owned());
                }
                if buf.len() > 64 * 1024 {
                    return Err(RuntimeError::Runtime("shim readiness line too long".into()));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(RuntimeError::io("reading from the shim", e)),
        }
    }
}

/// The shim's entry point (`atoll shim ...`). Must run before any other thread
/// exists: it forks. Returns the process exit code.
pub fn shim_main(args: ShimArgs) -> i32 {
    // Fork once so the real shim is not the agent's child: it is reparented
    // to init (or a subreaper) and the agent never has to reap it.
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            report(&format!("err cannot fork the shim: {e}\n"));
            return 1;
        }
    }
    run_shim(args)
}

/// The shim proper, in this process: a new session, setup, the loop. The
/// zygote's child calls it directly (it is nobody's to reap already).
pub(crate) fn run_shim(args: ShimArgs) -> i32 {
    let _ = nix::unistd::setsid();
    match Shim::setup(args) {
        Ok(mut shim) => {
            shim.run();
            0
        }
        Err(msg) => {
            report(&format!("err {}\n", one_line(&msg)));
            1
        }
    }
}

/// Queues container output for an attach client: Docker's 8-byte frame header
/// (stream, big-endian length) unless there is a tty.
fn push_output(c: &mut AttachClient, tty: bool, stream: usize, data: &[u8]) {
    if !tty {
        let mut h = [0u8; 8];
        h[0] = stream as u8 + 1;
        h[4..].copy_from_slice(&(data.len() as u32).to_be_bytes());
        c.out.push(&h);
    }
    c.out.push(data);
}

/// Docker's exit code for an exec that could not start: 127 when the command
/// does not exist, 126 when it cannot be run.
fn exec_failure_code(msg: &str) -> i32 {
    if msg.contains("executable file not found") || msg.contains("no such file or directory") {
        127
    } else {
        126
    }
}

fn one_line(s: &str) -> String {
    s.trim().replace(['\n', '\r'], " ")
}

/// Writes to the original stdout (the agent's readiness pipe).
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: plain fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The json-file writer: one JSON object per line, rotated by size.
struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_size: u64,
    max_files: u32,
    /// Incomplete last line per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    buf: Vec<u8>,
}

impl LogWriter {
    fn open(path: PathBuf, max_size: u64, max_files: u32) -> LogWriter {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        LogWriter {
            path,
            file,
            size,
            max_size,
            max_files,
            partial: [Vec::new(), Vec::new()],
            buf: Vec::new(),
        }
    }

    fn stream_name(s: usize) -> &'static str {
        if s == 0 { "stdout" } else { "stderr" }
    }

    fn entry(&mut self, stream: usize, line: &[u8], time: &str) {
        let log = serde_json::to_string(&String::from_utf8_lossy(line)).unwrap_or_default();
        let e = format!(
            "{{\"log\":{log},\"stream\":\"{}\",\"time\":\"{time}\"}}\n",
            Self::stream_name(stream)
        );
        self.buf.extend_from_slice(e.as_bytes());
        self.size += e.len() as u64;
        if self.max_size > 0 && self.size >= self.max_size {
            self.flush();
            self.rotate();
        }
    }

    /// Splits `data` into lines; a partial line waits for the rest unless it
    /// grew past Docker's 16 KiB.
    fn write(&mut self, stream: usize, data: &[u8]) {
        let time = now_rfc3339();
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[stream]);
            line.extend_from_slice(&rest[..=i]);
            rest = &rest[i + 1..];
            for piece in line.chunks(MAX_LOG_LINE) {
                self.entry(stream, piece, &time);
            }
        }
        self.partial[stream].extend_from_slice(rest);
        while self.partial[stream].len() >= MAX_LOG_LINE {
            let piece: Vec<u8> = self.partial[stream].drain(..MAX_LOG_LINE).collect();
            self.entry(stream, &piece, &time);
        }
        self.flush();
    }

    /// Writes out incomplete lines (at EOF of a stream).
    fn finish(&mut self, stream: usize) {
        let p = std::mem::take(&mut self.partial[stream]);
        if !p.is_empty() {
            let time = now_rfc3339();
            self.entry(stream, &p, &time);
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            // A full disk must not kill the container's shim: drop the bytes.
            let _ = f.write_all(&self.buf);
        }
        self.buf.clear();
    }

    fn rotate(&mut self) {
        if self.max_files <= 1 {
            if let Some(f) = &self.file {
                let _ = f.set_len(0);
            }
            self.size = 0;
            return;
        }
        let name = |i: u32| {
            let mut s = self.path.clone().into_os_string();
            s.push(format!(".{i}"));
            PathBuf::from(s)
        };
        for i in (1..self.max_files - 1).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(&self.path, name(1));
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }
}

#[derive(Default, Clone, Copy)]
struct AttachOpts {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

/// The first line an attach client sends.
#[derive(Deserialize)]
struct AttachHeader {
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    stdout: bool,
    #[serde(default)]
    stderr: bool,
    /// Docker's detach sequence (e.g. ctrl-p ctrl-q = [16, 17]); only with a tty.
    #[serde(default)]
    detach_keys: Vec<u8>,
}

/// Docker's escape proxy: passes stdin through, holding back a partial match of
/// the detach sequence. Returns the bytes to forward and whether it completed.
fn scan_detach(keys: &[u8], matched: &mut usize, data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(data.len());
    for &b in data {
        if b == keys[*matched] {
            *matched += 1;
            if *matched == keys.len() {
                *matched = 0;
                return (out, true);
            }
            continue;
        }
        // A broken partial match was ordinary input after all.
        out.extend_from_slice(&keys[..*matched]);
        *matched = 0;
        if b == keys[0] {
            *matched = 1;
            if keys.len() == 1 {
                *matched = 0;
                return (out, true);
            }
        } else {
            out.push(b);
        }
    }
    (out, false)
}

/// Bytes waiting to be written to a non-blocking socket or pipe.
#[derive(Default)]
struct OutBuf {
    data: Vec<u8>,
    pos: usize,
}

impl OutBuf {
    fn len(&self) -> usize {
        self.data.len() - self.pos
    }

    fn push(&mut self, b: &[u8]) {
        if self.pos > 0 && self.pos == self.data.len() {
            self.data.clear();
            self.pos = 0;
        }
        self.data.extend_from_slice(b);
    }

    /// Writes as much as the fd takes; Err on a broken peer.
    fn flush_to(&mut self, w: &mut impl Write) -> std::io::Result<()> {
        while self.len() > 0 {
            match w.write(&self.data[self.pos..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.len() == 0 {
            self.data.clear();
            self.pos = 0;
            if self.data.capacity() > 64 * 1024 {
                self.data.shrink_to(16 * 1024);
            }
        } else if self.pos > self.data.len() / 2 {
            self.data.drain(..self.pos);
            self.pos = 0;
        }
        Ok(())
    }
}

struct AttachClient {
    sock: UnixStream,
    header: Vec<u8>,
    opts: Option<AttachOpts>,
    detach_keys: Vec<u8>,
    /// How much of `detach_keys` the input has matched so far.
    detach_matched: usize,
    out: OutBuf,
    read_closed: bool,
    dead: bool,
}

impl AttachClient {
    fn wants(&self, stream: usize) -> bool {
        match self.opts {
            Some(o) => (stream == 0 && o.stdout) || (stream == 1 && o.stderr),
            None => false,
        }
    }
}

struct ControlClient {
    sock: UnixStream,
    input: Vec<u8>,
    waiting: bool,
    out: OutBuf,
    /// Answered: close once `out` is flushed.
    done: bool,
    dead: bool,
}

/// One container output: a pipe (stdout, stderr) or the pty master.
struct Output {
    file: File,
    /// 0 = stdout, 1 = stderr.
    stream: usize,
    open: bool,
}

struct Shim {
    args: ShimArgs,
    paths: ContainerPaths,
    sigfd: SignalFd,
    attach_listener: UnixListener,
    control_listener: UnixListener,
    outputs: Vec<Output>,
    /// The container's stdin (pipe write end, or a dup of the pty master).
    stdin: Option<File>,
    stdin_buf: OutBuf,
    close_stdin: bool,
    /// The pty master, for resize.
    pty: Option<RawFd>,
    attach: Vec<AttachClient>,
    control: Vec<ControlClient>,
    /// The json-file log; None for execs (Docker does not log exec output).
    log: Option<LogWriter>,
    pid: i32,
    exit: Option<i32>,
    exited_at: Option<Instant>,
    finished: Option<ExitStatus>,
    finished_at: Option<Instant>,
    read_buf: Vec<u8>,
    /// Clean pages were dropped and nothing happened since.
    trimmed: bool,
    /// Exec mode: when to give up waiting for `start` (the agent went away).
    start_by: Option<Instant>,
    /// Inodes of the socket files we bound (attach, control).
    socket_inodes: (Option<u64>, Option<u64>),
}

fn bind_socket(path: &Path, name: &str) -> Result<UnixListener, String> {
    let _ = std::fs::remove_file(name);
    // Bound by a relative name (cwd is the state dir) so long state dirs do
    // not hit the 108-byte limit of socket paths.
    // Mode 0600 from creation: the shim is single-threaded, so the umask
    // can be narrowed around the bind alone (the container keeps its own).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(name);
    nix::sys::stat::umask(old);
    let l = bound.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    Ok(l)
}

fn dev_null() -> Result<File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null: {e}"))
}

fn pipe() -> Result<(File, File), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    Ok((File::from(r), File::from(w)))
}

/// Receives the pty master that runc sends over the console socket.
fn receive_console(listener: &UnixListener) -> Result<File, String> {
    let (conn, _) = listener
        .accept()
        .map_err(|e| format!("runc did not send the container's terminal: {e}"))?;
    nsexec::receive_fd(&conn)
}

fn read_runc_log(path: &Path) -> String {
    let b = std::fs::read(path).unwrap_or_default();
    runc_error_message(&b)
}

/// oom_kill counter of the container's memory cgroup (v1 or v2), read
/// before `runc delete` removes the cgroup.
fn oom_killed(bundle: &Path) -> bool {
    let Ok(b) = std::fs::read(bundle.join("config.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else {
        return false;
    };
    let Some(cg) = v["linux"]["cgroupsPath"].as_str() else {
        return false;
    };
    let cg = cg.trim_start_matches('/');
    let candidates = [
        Path::new("/sys/fs/cgroup/memory")
            .join(cg)
            .join("memory.oom_control"),
        Path::new("/sys/fs/cgroup").join(cg).join("memory.events"),
    ];
    candidates.iter().any(|p| {
        std::fs::read_to_string(p)
            .map(|t| {
                t.lines().any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
            .unwrap_or(false)
    })
}

enum Slot {
    Signal,
    AttachListen,
    ControlListen,
    Output(usize),
    Stdin,
    Attach(usize),
    Control(usize),
}

impl Shim {
    /// Everything up to the readiness line; Err is the message for the agent.
    fn setup(args: ShimArgs) -> Result<Shim, String> {
        let paths = ContainerPaths::from_root(&args.state_dir);
        nix::unistd::chdir(&args.state_dir)
            .map_err(|e| format!("cannot enter the container's directory: {e}"))?;
        let _ = std::fs::write(&paths.shim_pid_file, format!("{}\n", std::process::id()));
        let _ = nix::sys::prctl::set_child_subreaper(true);
        // SAFETY: setting a signal disposition to SIG_IGN.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()
            .map_err(|e| format!("cannot block SIGCHLD: {e}"))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("cannot create a signalfd: {e}"))?;
        let attach_listener = bind_socket(&paths.attach_sock, "attach.sock")?;
        let control_listener = bind_socket(&paths.control_sock, "control.sock")?;
        let ino = |name: &str| std::fs::symlink_metadata(name).ok().map(|m| m.ino());
        let socket_inodes = (ino("attach.sock"), ino("control.sock"));
        if !args.exec {
            // Leftovers of the container's previous run (an exec's directory is new).
            let _ = std::fs::remove_file(&paths.pid_file);
            let _ = std::fs::remove_file(&paths.runc_log);
            let _ = std::fs::remove_file(&paths.exit_file);
        }

        let mut shim = Shim {
            args,
            paths,
            sigfd,
            attach_listener,
            control_listener,
            outputs: Vec::new(),
            stdin: None,
            stdin_buf: OutBuf::default(),
            close_stdin: false,
            pty: None,
            attach: Vec::new(),
            control: Vec::new(),
            log: None,
            pid: 0,
            exit: None,
            exited_at: None,
            finished: None,
            finished_at: None,
            read_buf: vec![0u8; READ_CHUNK],
            trimmed: false,
            socket_inodes,
            start_by: None,
        };
        if shim.args.exec {
            // The process starts on `start`, once the agent has connected the
            // exec's attach client: no early output is lost.
            shim.start_by = Some(Instant::now() + EXEC_START_TIMEOUT);
            report("ok 0\n");
        } else {
            shim.spawn_process()?;
            shim.log = Some(LogWriter::open(
                shim.paths.log.clone(),
                shim.args.log_max_size,
                shim.args.log_max_files,
            ));
            report(&format!("ok {}\n", shim.pid));
        }
        detach_stdio(&shim.paths.shim_log);
        Ok(shim)
    }

    /// `runc create` (container) or a native exec (exec mode) with our pipes or
    /// a pty as the process's stdio; sets `pid`, `outputs`, `stdin`, `pty`.
    fn spawn_process(&mut self) -> Result<(), String> {
        if self.args.exec {
            return self.spawn_exec();
        }
        let (args, paths) = (&self.args, &self.paths);
        let mut cmd = Command::new(&args.runc_binary);
        cmd.arg("--root")
            .arg(&args.runc_root)
            .arg("--log")
            .arg(&paths.runc_log)
            .arg("--log-format")
            .arg("json");
        cmd.arg("create").arg("--bundle").arg(&args.bundle);
        cmd.arg("--pid-file").arg(&paths.pid_file);
        let mut outputs = Vec::new();
        let mut stdin = None;
        let console_listener = if args.tty {
            let l = bind_socket(&paths.console_sock, "console.sock")?;
            l.set_nonblocking(false).map_err(|e| e.to_string())?;
            let abs = paths.console_sock.as_os_str();
            // runc chdirs into the bundle: a relative path must be from there.
            let arg = if abs.len() < 100 {
                paths.console_sock.clone()
            } else {
                PathBuf::from("../console.sock")
            };
            cmd.arg("--console-socket").arg(arg);
            cmd.stdin(dev_null()?)
                .stdout(dev_null()?)
                .stderr(dev_null()?);
            Some(l)
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            if args.open_stdin {
                let (in_r, in_w) = pipe()?;
                cmd.stdin(in_r);
                set_nonblocking(in_w.as_raw_fd());
                stdin = Some(in_w);
            } else {
                cmd.stdin(dev_null()?);
            }
            cmd.stdout(out_w).stderr(err_w);
            set_nonblocking(out_r.as_raw_fd());
            set_nonblocking(err_r.as_raw_fd());
            outputs.push(Output {
                file: out_r,
                stream: 0,
                open: true,
            });
            outputs.push(Output {
                file: err_r,
                stream: 1,
                open: true,
            });
            None
        };
        cmd.arg(&args.id);
        let status = cmd.status();
        // Drop our copies of the process's ends so EOF means "all closed".
        drop(cmd);
        let failed = match status {
            Ok(s) if s.success() => None,
            Ok(_) => Some(read_runc_log(&paths.runc_log)),
            Err(e) => Some(format!("cannot run runc: {e}")),
        };
        if let Some(msg) = failed {
            // A half-created container would block the next start of this id.
            let _ = Command::new(&args.runc_binary)
                .arg("--root")
                .arg(&args.runc_root)
                .args(["delete", "--force", &args.id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            for p in [&paths.attach_sock, &paths.control_sock, &paths.console_sock] {
                let _ = std::fs::remove_file(p);
            }
            return Err(msg);
        }
        let pid: i32 = std::fs::read_to_string(&paths.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| "runc did not report the process's pid".to_string())?;
        if let Some(l) = console_listener {
            let master = receive_console(&l);
            let _ = std::fs::remove_file(&paths.console_sock);
            let master = master?;
            set_nonblocking(master.as_raw_fd());
            self.pty = Some(master.as_raw_fd());
            stdin = Some(
                master
                    .try_clone()
                    .map_err(|e| format!("cannot duplicate the terminal: {e}"))?,
            );
            outputs.push(Output {
                file: master,
                stream: 0,
                open: true,
            });
        }
        self.pid = pid;
        self.outputs = outputs;
        self.stdin = stdin;
        Ok(())
    }

    /// Exec mode: starts `process.json` inside the running container (see
    /// `nsexec`), with our pipes or a pty from inside the container.
    fn spawn_exec(&mut self) -> Result<(), String> {
        let process: serde_json::Value = std::fs::read(self.paths.root.join(EXEC_PROCESS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the exec's process is missing")?;
        let plan = ExecPlan::from_process(&process)?;
        // The container's init, as `runc create` recorded it.
        let container = self.args.bundle.parent().unwrap_or(Path::new("/"));
        let init_pid: i32 = std::fs::read_to_string(ContainerPaths::from_root(container).pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or("the container is not running")?;
        let target = Target::open(init_pid)?;
        if plan.tty {
            let spawned = nsexec::spawn(&plan, &target, None)?;
            let master = spawned.pty_master.ok_or("no terminal")?;
            set_nonblocking(master.as_raw_fd());
            self.pty = Some(master.as_raw_fd());
            self.stdin = Some(
                master
                    .try_clone()
                    .map_err(|e| format!("cannot duplicate the terminal: {e}"))?,
            );
            self.outputs.push(Output {
                file: master,
                stream: 0,
                open: true,
            });
            self.pid = spawned.pid;
            return Ok(());
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (in_r, in_w) = if self.args.open_stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            (dev_null()?, None)
        };
        let spawned = nsexec::spawn(
            &plan,
            &target,
            Some([in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]),
        )?;
        // Our copies of the process's ends go, so EOF means "all closed".
        drop((in_r, out_w, err_w));
        for (file, stream) in [(out_r, 0), (err_r, 1)] {
            set_nonblocking(file.as_raw_fd());
            self.outputs.push(Output {
                file,
                stream,
                open: true,
            });
        }
        if let Some(w) = in_w {
            set_nonblocking(w.as_raw_fd());
            self.stdin = Some(w);
        }
        self.pid = spawned.pid;
        Ok(())
    }

    /// Exec mode's `start`: runs the process, or records why it could not run
    /// (Docker's 126/127), tells the attach clients, and ends.
    fn start_exec(&mut self) -> String {
        if self.pid != 0 || self.exit.is_some() {
            return "{\"error\":\"already started\"}".into();
        }
        self.start_by = None;
        match self.spawn_process() {
            Ok(()) => format!("{{\"pid\":{}}}", self.pid),
            Err(msg) => {
                // runc's error class ends the message, as in Docker's.
                let msg = format!("OCI runtime exec failed: {}: unknown", one_line(&msg));
                let text = format!("{msg}\r\n");
                for c in self.attach.iter_mut().filter(|c| c.wants(0)) {
                    push_output(c, self.args.tty, 0, text.as_bytes());
                }
                self.set_exit(exec_failure_code(&msg));
                serde_json::json!({ "error": msg }).to_string()
            }
        }
    }

    fn run(&mut self) {
        loop {
            if let Some(t) = self.finished_at {
                let flushed = self.attach.iter().all(|c| c.out.len() == 0)
                    && self.control.iter().all(|c| c.out.len() == 0);
                if flushed || t.elapsed() > FLUSH_TIMEOUT {
                    break;
                }
            } else if self.exit.is_some() {
                let drained = self.outputs.iter().all(|o| !o.open);
                let late = self.exited_at.is_some_and(|t| t.elapsed() > DRAIN_TIMEOUT);
                if drained || late {
                    self.finish();
                    continue;
                }
            }
            self.poll_once();
        }
        // Only our own sockets: a new shim for the same id may already have
        // bound fresh ones at these paths.
        for (p, ino) in [
            (&self.paths.attach_sock, self.socket_inodes.0),
            (&self.paths.control_sock, self.socket_inodes.1),
        ] {
            if std::fs::symlink_metadata(p).is_ok_and(|m| Some(m.ino()) == ino) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Attach clients far behind stop the reading of output (backpressure),
    /// except after the exit, when what is left in the pipes is bounded.
    fn output_blocked(&self) -> bool {
        self.exit.is_none()
            && self
                .attach
                .iter()
                .any(|c| !c.dead && c.out.len() >= CLIENT_HIGH_WATER)
    }

    fn poll_once(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        let mut add = |fds: &mut Vec<libc::pollfd>, fd: RawFd, events: i16, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        add(&mut fds, self.sigfd.as_raw_fd(), libc::POLLIN, Slot::Signal);
        add(
            &mut fds,
            self.attach_listener.as_raw_fd(),
            libc::POLLIN,
            Slot::AttachListen,
        );
        add(
            &mut fds,
            self.control_listener.as_raw_fd(),
            libc::POLLIN,
            Slot::ControlListen,
        );
        let blocked = self.output_blocked();
        for (i, o) in self.outputs.iter().enumerate() {
            if o.open && !blocked {
                add(&mut fds, o.file.as_raw_fd(), libc::POLLIN, Slot::Output(i));
            }
        }
        if let Some(s) = &self.stdin
            && self.stdin_buf.len() > 0
        {
            add(&mut fds, s.as_raw_fd(), libc::POLLOUT, Slot::Stdin);
        }
        let stdin_room = self.stdin_buf.len() < STDIN_HIGH_WATER;
        for (i, c) in self.attach.iter().enumerate() {
            let mut ev = 0;
            let wants_input = c.opts.is_none() || (c.opts.is_some_and(|o| o.stdin) && stdin_room);
            if !c.read_closed && wants_input {
                ev |= libc::POLLIN;
            }
            if c.out.len() > 0 {
                ev |= libc::POLLOUT;
            }
            add(&mut fds, c.sock.as_raw_fd(), ev, Slot::Attach(i));
        }
        for (i, c) in self.control.iter().enumerate() {
            let mut ev = 0;
            if !c.done && !c.waiting {
                ev |= libc::POLLIN;
            }
            if c.out.len() > 0 {
                ev |= libc::POLLOUT;
            }
            add(&mut fds, c.sock.as_raw_fd(), ev, Slot::Control(i));
        }
        let timeout = if self.exit.is_some() {
            50
        } else if let Some(by) = self.start_by {
            if Instant::now() >= by {
                // Nobody will start this exec: end as a failed start.
                self.start_by = None;
                self.set_exit(126);
                return;
            }
            IDLE_TRIM_MS
        } else if self.trimmed {
            -1
        } else {
            IDLE_TRIM_MS
        };
        // SAFETY: `fds` is a valid array of pollfds for the call.
        let mut n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n == 0 && self.exit.is_none() && !self.trimmed {
            // Idle: give back the pages the last burst of work faulted in,
            // then sleep until something happens.
            drop_clean_pages();
            self.trimmed = true;
            if self.start_by.is_none() {
                // SAFETY: as above.
                n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            }
        }
        if n <= 0 {
            return;
        }
        self.trimmed = false;
        for (p, slot) in fds.iter().zip(slots) {
            if p.revents == 0 {
                continue;
            }
            match slot {
                Slot::Signal => self.reap(),
                Slot::AttachListen => self.accept_attach(),
                Slot::ControlListen => self.accept_control(),
                Slot::Output(i) => self.read_output(i),
                Slot::Stdin => self.flush_stdin(),
                Slot::Attach(i) => self.service_attach(i, p.revents),
                Slot::Control(i) => self.service_control(i, p.revents),
            }
        }
        self.attach.retain(|c| !c.dead);
        self.control.retain(|c| !c.dead);
        if self.close_stdin && self.stdin_buf.len() == 0 && self.pty.is_none() {
            self.stdin = None;
        }
    }

    fn reap(&mut self) {
        while let Ok(Some(_)) = self.sigfd.read_signal() {}
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == self.pid => {
                    self.set_exit(code)
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == self.pid => {
                    self.set_exit(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn set_exit(&mut self, code: i32) {
        if self.exit.is_none() {
            self.exit = Some(code);
            self.exited_at = Some(Instant::now());
        }
    }

    fn accept_attach(&mut self) {
        while let Ok((sock, _)) = self.attach_listener.accept() {
            if self.finished.is_some() {
                // Nothing more will be produced.
                continue;
            }
            let _ = sock.set_nonblocking(true);
            self.attach.push(AttachClient {
                sock,
                header: Vec::new(),
                opts: None,
                detach_keys: Vec::new(),
                detach_matched: 0,
                out: OutBuf::default(),
                read_closed: false,
                dead: false,
            });
        }
    }

    fn accept_control(&mut self) {
        while let Ok((sock, _)) = self.control_listener.accept() {
            let _ = sock.set_nonblocking(true);
            self.control.push(ControlClient {
                sock,
                input: Vec::new(),
                waiting: false,
                out: OutBuf::default(),
                done: false,
                dead: false,
            });
        }
    }

    fn read_output(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let r = self.outputs[i].file.read(&mut buf);
        match r {
            Ok(0) => self.close_output(i),
            Ok(n) => {
                let stream = self.outputs[i].stream;
                if let Some(log) = &mut self.log {
                    log.write(stream, &buf[..n]);
                }
                let tty = self.args.tty;
                for c in self.attach.iter_mut().filter(|c| c.wants(stream)) {
                    push_output(c, tty, stream, &buf[..n]);
                }
                // Write right away: most clients keep up, and this keeps
                // buffers small.
                for c in self.attach.iter_mut().filter(|c| c.out.len() > 0) {
                    if c.out.flush_to(&mut c.sock).is_err() {
                        c.dead = true;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            // EIO: the pty's other side is gone.
            Err(_) => self.close_output(i),
        }
        self.read_buf = buf;
    }

    fn close_output(&mut self, i: usize) {
        if self.outputs[i].open {
            self.outputs[i].open = false;
            if let Some(log) = &mut self.log {
                log.finish(self.outputs[i].stream);
            }
        }
    }

    fn flush_stdin(&mut self) {
        if let Some(s) = &mut self.stdin
            && self.stdin_buf.flush_to(s).is_err()
        {
            // The container closed its stdin: drop what it will never read.
            self.stdin = None;
            self.stdin_buf = OutBuf::default();
        }
    }

    fn service_attach(&mut self, i: usize, revents: i16) {
        let mut buf = [0u8; 8192];
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
            && !self.attach[i].read_closed
        {
            match self.attach[i].sock.read(&mut buf) {
                Ok(0) => {
                    let c = &mut self.attach[i];
                    c.read_closed = true;
                    match c.opts {
                        // Docker's StdinOnce: the client's EOF closes stdin.
                        Some(o) if o.stdin => self.close_stdin = true,
                        Some(o) if !o.stdout && !o.stderr => c.dead = true,
                        Some(_) => {}
                        None => c.dead = true,
                    }
                }
                Ok(n) => self.attach_input(i, &buf[..n]),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.attach[i].dead = true,
            }
        }
        let c = &mut self.attach[i];
        if c.out.len() > 0 && c.out.flush_to(&mut c.sock).is_err() {
            c.dead = true;
        }
        // A hang-up (not a half-close, which only ends reading): the client is
        // gone. poll reports it whatever we asked for, so it must be acted on.
        if c.read_closed && revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            c.dead = true;
        }
    }

    fn attach_input(&mut self, i: usize, data: &[u8]) {
        let c = &mut self.attach[i];
        let data = if c.opts.is_none() {
            c.header.extend_from_slice(data);
            let Some(nl) = c.header.iter().position(|&b| b == b'\n') else {
                if c.header.len() > 4096 {
                    c.dead = true;
                }
                return;
            };
            match serde_json::from_slice::<AttachHeader>(&c.header[..nl]) {
                Ok(h) => {
                    c.opts = Some(AttachOpts {
                        stdin: h.stdin,
                        stdout: h.stdout,
                        stderr: h.stderr,
                    });
                    c.detach_keys = h.detach_keys;
                    // The ack tells the client that output from now on is its.
                    c.out.push(ATTACH_ACK);
                    if c.out.flush_to(&mut c.sock).is_err() {
                        c.dead = true;
                    }
                }
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
            let rest = c.header.split_off(nl + 1);
            c.header = Vec::new();
            rest
        } else {
            data.to_vec()
        };
        let wants_stdin = c.opts.is_some_and(|o| o.stdin);
        // Docker honours the detach sequence on terminals only (binary stdin
        // without a tty may contain anything).
        let data = if wants_stdin && self.args.tty && !c.detach_keys.is_empty() {
            let (data, detached) = scan_detach(&c.detach_keys, &mut c.detach_matched, &data);
            if detached {
                // This client leaves; the container keeps running.
                c.dead = true;
            }
            data
        } else {
            data
        };
        // An exec's stdin is kept until its process starts.
        let awaiting_start = self.start_by.is_some();
        if wants_stdin
            && !data.is_empty()
            && (self.stdin.is_some() || awaiting_start)
            && !self.close_stdin
        {
            self.stdin_buf.push(&data);
            self.flush_stdin();
        }
    }

    fn service_control(&mut self, i: usize, revents: i16) {
        let mut buf = [0u8; 512];
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
            && !self.control[i].done
            && !self.control[i].waiting
        {
            match self.control[i].sock.read(&mut buf) {
                Ok(0) => self.control[i].dead = true,
                Ok(n) => {
                    self.control[i].input.extend_from_slice(&buf[..n]);
                    if let Some(nl) = self.control[i].input.iter().position(|&b| b == b'\n') {
                        let line =
                            String::from_utf8_lossy(&self.control[i].input[..nl]).into_owned();
                        self.control_command(i, line.trim());
                    } else if self.control[i].input.len() > 1024 {
                        self.control[i].dead = true;
                    }
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.control[i].dead = true,
            }
        }
        let c = &mut self.control[i];
        if c.out.len() > 0 && c.out.flush_to(&mut c.sock).is_err() {
            c.dead = true;
        }
        if c.done && c.out.len() == 0 {
            c.dead = true;
        }
        // A waiter that hung up (the agent restarted): reported on every poll.
        if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            c.dead = true;
        }
    }

    fn control_command(&mut self, i: usize, line: &str) {
        let mut words = line.split_whitespace();
        let reply = match words.next() {
            Some("wait") => match &self.finished {
                Some(st) => serde_json::to_string(st).unwrap_or_default(),
                None => {
                    self.control[i].waiting = true;
                    return;
                }
            },
            Some("pid") => format!("{{\"pid\":{}}}", self.pid),
            Some("start") if self.args.exec => self.start_exec(),
            Some("resize") => {
                let rows = words.next().and_then(|w| w.parse::<u16>().ok());
                let cols = words.next().and_then(|w| w.parse::<u16>().ok());
                match (self.pty, rows, cols) {
                    (Some(fd), Some(r), Some(c)) => {
                        let ws = libc::winsize {
                            ws_row: r,
                            ws_col: c,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ on our pty master with a valid winsize.
                        let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
                        if rc == 0 {
                            "{\"ok\":true}".to_string()
                        } else {
                            "{\"error\":\"resize failed\"}".to_string()
                        }
                    }
                    (None, _, _) => "{\"error\":\"the container has no terminal\"}".into(),
                    _ => "{\"error\":\"usage: resize <rows> <cols>\"}".into(),
                }
            }
            _ => "{\"error\":\"unknown command\"}".to_string(),
        };
        let c = &mut self.control[i];
        c.out.push(reply.as_bytes());
        c.out.push(b"\n");
        c.done = true;
    }

    /// The container is gone and its output drained: record, delete, answer.
    fn finish(&mut self) {
        for i in 0..self.outputs.len() {
            self.close_output(i);
        }
        if let Some(log) = &mut self.log {
            log.finish(0);
            log.finish(1);
        }
        self.stdin = None;
        let st = ExitStatus {
            exit_code: self.exit.unwrap_or(255),
            oom_killed: !self.args.exec && oom_killed(&self.args.bundle),
            finished_at: now_rfc3339(),
        };
        let json = serde_json::to_string(&st).unwrap_or_default();
        let tmp = self.paths.exit_file.with_extension("json.tmp");
        if std::fs::write(&tmp, &json).is_ok() {
            let _ = std::fs::rename(&tmp, &self.paths.exit_file);
        }
        // So the same id can be created again on the next start.
        if !self.args.exec {
            let _ = Command::new(&self.args.runc_binary)
                .arg("--root")
                .arg(&self.args.runc_root)
                .args(["delete", "--force", &self.args.id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.reap_quietly();
        for c in self.control.iter_mut().filter(|c| c.waiting) {
            c.out.push(json.as_bytes());
            c.out.push(b"\n");
            c.waiting = false;
            c.done = true;
            if c.out.flush_to(&mut c.sock).is_err() {
                c.dead = true;
            }
        }
        // Attach clients get what is buffered, then EOF.
        for c in self.attach.iter_mut() {
            c.read_closed = true;
            if c.out.flush_to(&mut c.sock).is_err() {
                c.dead = true;
            }
        }
        self.finished = Some(st);
        self.finished_at = Some(Instant::now());
    }

    fn reap_quietly(&mut self) {
        while let Ok(s) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// After readiness: the agent may go away, so stdio must not be its pipe.
/// Gives back the read-only pages that work faulted in (setup, `runc create`,
/// a burst of output), so that an idle shim holds little more than its own data:
/// shims are many, and the kernel's fault-around maps code in 64 KB chunks, so
/// code is most of their RSS. Only segments that are never written (code,
/// rodata) are zapped: they fault back, identical, from the page cache on the
/// next use (~1 µs each).
fn drop_clean_pages() {
    /// (start, len) of page ranges to drop; collected first because the
    /// program headers live inside the first segment of each object.
    struct Ranges {
        n: usize,
        r: [(usize, usize); 64],
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands us a valid dl_phdr_info and its headers;
        // `data` is the `Ranges` passed below.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Ranges)) };
        if info.dlpi_addr == 0 && info.dlpi_name.is_null() {
            return 0;
        }
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
            let end = start + ph.p_memsz as usize;
            // Whole pages strictly inside the segment: an edge page may be
            // shared with a writable neighbour.
            let first = start.div_ceil(PAGE) * PAGE;
            let last = end / PAGE * PAGE;
            if last > first && out.n < out.r.len() {
                out.r[out.n] = (first, last - first);
                out.n += 1;
            }
        }
        0
    }
    const PAGE: usize = 4096;
    let mut ranges = Ranges {
        n: 0,
        r: [(0, 0); 64],
    };
    // SAFETY: the callback only reads loader data into `ranges`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut ranges as *mut Ranges).cast()) };
    for &(start, len) in &ranges.r[..ranges.n] {
        // SAFETY: read-only file-backed pages (no PF_W segment): dropping them
        // only forces a re-fault of identical pages from the page cache.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    }
    // SAFETY: plain glibc call, single-threaded.
    unsafe { libc::malloc_trim(0) };
}

fn detach_stdio(shim_log: &Path) {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(shim_log);
    if let Ok(null) = &null {
        // SAFETY: dup2 onto the standard fds of this process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
    if let Ok(err) = err.as_ref().or(null.as_ref()) {
        // SAFETY: as above.
        unsafe {
            libc::dup2(err.as_raw_fd(), 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_sequence_is_held_back_and_completes() {
        let keys = [16u8, 17];
        let mut m = 0;
        assert_eq!(scan_detach(&keys, &mut m, b"ab"), (b"ab".to_vec(), false));
        // A partial match waits for the next read...
        assert_eq!(scan_detach(&keys, &mut m, b"x\x10"), (b"x".to_vec(), false));
        assert_eq!(m, 1);
        // ...and is passed on when it breaks.
        assert_eq!(scan_detach(&keys, &mut m, b"y"), (b"\x10y".to_vec(), false));
        assert_eq!(
            scan_detach(&keys, &mut m, b"\x10\x10\x11rest"),
            (b"\x10".to_vec(), true)
        );
        let mut m = 0;
        assert_eq!(
            scan_detach(&[3], &mut m, b"ab\x03c"),
            (b"ab".to_vec(), true)
        );
    }

    #[test]
    fn args_round_trip() {
        let a = ShimArgs {
            id: "abc".into(),
            bundle: "/x/bundle".into(),
            state_dir: "/x".into(),
            runc_root: "/r".into(),
            runc_binary: "/usr/sbin/runc".into(),
            tty: true,
            open_stdin: false,
            log_max_size: 1000,
            log_max_files: 3,
            exec: true,
        };
        assert_eq!(ShimArgs::parse(&a.to_args()).expect("parse"), a);
        assert!(ShimArgs::parse(&["id=a".to_string()]).is_err());
        assert!(ShimArgs::parse(&["bogus".to_string()]).is_err());
        let mut bad = a.to_args();
        bad.push("tty=maybe".into());
        assert!(ShimArgs::parse(&bad).is_err());
    }

    fn read_entries(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[test]
    fn log_lines_split_and_partial() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("c.log");
        let mut w = LogWriter::open(p.clone(), 0, 1);
        w.write(0, b"hello\nwor");
        w.write(1, b"err\n");
        w.write(0, b"ld\n");
        w.write(0, &vec![b'x'; MAX_LOG_LINE + 10]);
        w.finish(0);
        let e = read_entries(&p);
        assert_eq!(e[0]["log"], "hello\n");
        assert_eq!(e[0]["stream"], "stdout");
        assert_eq!(e[1]["log"], "err\n");
        assert_eq!(e[1]["stream"], "stderr");
        assert_eq!(e[2]["log"], "world\n");
        assert_eq!(e[3]["log"].as_str().map(str::len), Some(MAX_LOG_LINE));
        assert_eq!(e[4]["log"].as_str().map(str::len), Some(10));
        let t = e[0]["time"].as_str().expect("time");
        assert!(t.ends_with('Z') && t.len() == 30, "{t}");
    }

    #[test]
    fn log_rotation_keeps_max_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("c.log");
        let mut w = LogWriter::open(p.clone(), 200, 3);
        for i in 0..40 {
            w.write(0, format!("line {i}\n").as_bytes());
        }
        let names: Vec<String> = std::fs::read_dir(d.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let newest = read_entries(&p);
        let older = read_entries(&d.path().join("c.log.1"));
        assert!(newest.iter().any(|e| e["log"] == "line 39\n") || newest.is_empty());
        assert!(!older.is_empty());
        for f in ["c.log", "c.log.1", "c.log.2"] {
            assert!(std::fs::metadata(d.path().join(f)).expect("meta").len() <= 200 + 100);
        }
        // One file: truncated in place.
        let p1 = d.path().join("one.log");
        let mut w1 = LogWriter::open(p1.clone(), 150, 1);
        for i in 0..20 {
            w1.write(1, format!("l{i}\n").as_bytes());
        }
        assert!(std::fs::metadata(&p1).expect("meta").len() < 150);
        assert!(!d.path().join("one.log.1").exists());
    }

    #[test]
    fn outbuf_compacts() {
        let mut b = OutBuf::default();
        b.push(b"hello");
        let mut sink = Vec::new();
        b.flush_to(&mut sink).expect("flush");
        assert_eq!(sink, b"hello");
        assert_eq!(b.len(), 0);
    }
}
