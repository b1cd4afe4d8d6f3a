//! The OCI runtime (runc) behind a small trait, so the manager's logic can be
//! unit-tested with a recording fake. `create` is not here: the shim runs it,
//! because the container's stdio must belong to the shim.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::Deserialize;
use thiserror::Error;

/// Errors of the runtime pieces (rootfs, bundle, runc, shim). Messages are meant
/// to reach a Docker user, so runc's own error text is kept as is.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// runc (or the shim running it) refused; the text is runc's message.
    #[error("{0}")]
    Runtime(String),
    /// Bad input from the container's configuration (unknown user, bad option).
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What `runc state` says about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// "created", "running", "paused" or "stopped".
    pub status: String,
    pub pid: u32,
}

/// One entry of `runc list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub id: String,
    pub status: String,
    pub pid: u32,
}

pub trait Runtime: Send + Sync {
    /// Starts a created container (runs the user's process).
    fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Sends `signal` ("SIGTERM", "TERM" or "15") to the init, or to every
    /// process of the container with `all`.
    fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError>;
    /// Deletes the container's runc state (and cgroup); `force` kills it first.
    /// Deleting a container runc does not know is not an error.
    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError>;
    /// None if runc does not know the container.
    fn state(&self, id: &str) -> Result<Option<State>, RuntimeError>;
    fn list(&self) -> Result<Vec<ListEntry>, RuntimeError>;
    /// Freezes every process of the container (freezer cgroup).
    fn pause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Thaws a paused container.
    fn resume(&self, id: &str) -> Result<(), RuntimeError>;
    /// Applies new cgroup limits (an OCI `linux.resources` object) to a
    /// running container.
    fn update(&self, id: &str, resources: &serde_json::Value) -> Result<(), RuntimeError>;
}

/// The real runc binary, with its state in `root` (one per atoll instance, so
/// two instances on one server never see each other's containers).
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

#[derive(Deserialize)]
struct RawState {
    #[serde(default)]
    id: String,
    status: String,
    #[serde(default)]
    pid: u32,
}

impl Runc {
    pub fn new(binary: PathBuf, root: PathBuf) -> Runc {
        Runc { binary, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Runs runc with the global flags; returns stdout, or runc's error message.
    fn run(&self, args: &[&str]) -> Result<Vec<u8>, RuntimeError> {
        self.run_with_input(args, None)
    }

    /// As `run`, with `input` on runc's stdin.
    fn run_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, RuntimeError> {
        let mut child = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RuntimeError::io("running runc", e))?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            stdin
                .write_all(data)
                .map_err(|e| RuntimeError::io("writing to runc", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| RuntimeError::io("running runc", e))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuntimeError::Runtime(runc_error_message(&out.stderr)))
        }
    }
}

/// Turns runc's stderr (JSON log lines with `--log-format json`, or plain text)
/// into one readable message: the last error-level `msg`, else the raw text.
pub fn runc_error_message(stderr: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Line {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    let text = String::from_utf8_lossy(stderr);
    let mut last = None;
    for l in text.lines() {
        if let Ok(line) = serde_json::from_str::<Line>(l)
            && (line.level == "error" || line.level == "fatal")
            && !line.msg.is_empty()
        {
            last = Some(line.msg);
        }
    }
    match last {
        Some(m) => m,
        None => {
            let t = text.trim();
            if t.is_empty() {
                "runc failed without a message".to_string()
            } else {
                t.lines().last().unwrap_or(t).to_string()
            }
        }
    }
}

/// runc no longer knows the container (it exited and was deleted).
pub fn is_not_exist(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Runtime(m) if m.contains("does not exist") || m.contains("not exist"))
}

/// runc accepts "KILL", "SIGKILL" and "9"; Docker users also write "sigkill".
fn normalize_signal(signal: &str) -> String {
    let s = signal.trim();
    if s.is_empty() {
        return "SIGKILL".into();
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return s.into();
    }
    let up = s.to_ascii_uppercase();
    if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    }
}

impl Runtime for Runc {
    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&["start", id]).map(|_| ())
    }

    fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&["pause", id]).map(|_| ())
    }

    fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&["resume", id]).map(|_| ())
    }

    fn update(&self, id: &str, resources: &serde_json::Value) -> Result<(), RuntimeError> {
        let json = serde_json::to_vec(resources)
            .map_err(|e| RuntimeError::Runtime(format!("encoding resources: {e}")))?;
        self.run_with_input(&["update", "--resources", "-", id], Some(&json))
            .map(|_| ())
    }

    fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError> {
        let sig = normalize_signal(signal);
        if all {
            self.run(&["kill", "--all", id, &sig]).map(|_| ())
        } else {
            self.run(&["kill", id, &sig]).map(|_| ())
        }
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let r = if force {
            self.run(&["delete", "--force", id])
        } else {
            self.run(&["delete", id])
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_not_exist(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn state(&self, id: &str) -> Result<Option<State>, RuntimeError> {
        match self.run(&["state", id]) {
            Ok(out) => {
                let s: RawState = serde_json::from_slice(&out)
                    .map_err(|e| RuntimeError::Runtime(format!("bad runc state output: {e}")))?;
                Ok(Some(State {
                    status: s.status,
                    pid: s.pid,
                }))
            }
            Err(e) if is_not_exist(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self) -> Result<Vec<ListEntry>, RuntimeError> {
        let out = self.run(&["list", "--format", "json"])?;
        // runc prints `null` when there are no containers.
        let v: Option<Vec<RawState>> = serde_json::from_slice(&out)
            .map_err(|e| RuntimeError::Runtime(format!("bad runc list output: {e}")))?;
        Ok(v.unwrap_or_default()
            .into_iter()
            .map(|s| ListEntry {
                id: s.id,
                status: s.status,
                pid: s.pid,
            })
            .collect())
    }
}

/// One recorded call of the fake runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeCall {
    Start(String),
    Kill {
        id: String,
        signal: String,
        all: bool,
    },
    Delete {
        id: String,
        force: bool,
    },
    State(String),
    List,
    Pause(String),
    Resume(String),
    Update(String, serde_json::Value),
}

/// A recording fake: remembers every call and keeps a map of container states
/// that tests set up; `kill` with SIGKILL marks a container stopped.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    pub calls: Mutex<Vec<RuntimeCall>>,
    pub states: Mutex<std::collections::BTreeMap<String, State>>,
    /// When set, every call fails with this message (to test error paths).
    pub fail_with: Mutex<Option<String>>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    pub fn calls(&self) -> Vec<RuntimeCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a container as runc would after a successful create.
    pub fn set_state(&self, id: &str, status: &str, pid: u32) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.to_string(),
                State {
                    status: status.to_string(),
                    pid,
                },
            );
    }

    fn record(&self, c: RuntimeCall) -> Result<(), RuntimeError> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        match &*self.fail_with.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(m) => Err(RuntimeError::Runtime(m.clone())),
            None => Ok(()),
        }
    }

    fn with_state<T>(&self, id: &str, f: impl FnOnce(&mut State) -> T) -> Result<T, RuntimeError> {
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(id) {
            Some(s) => Ok(f(s)),
            None => Err(RuntimeError::Runtime(format!(
                "container {id} does not exist"
            ))),
        }
    }
}

impl Runtime for FakeRuntime {
    fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(RuntimeCall::Pause(id.into()))?;
        self.with_state(id, |s| {
            if s.status == "running" {
                s.status = "paused".into();
                Ok(())
            } else {
                Err(RuntimeError::Runtime(format!(
                    "container not running: {}",
                    s.status
                )))
            }
        })?
    }

    fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(RuntimeCall::Resume(id.into()))?;
        self.with_state(id, |s| {
            if s.status == "paused" {
                s.status = "running".into();
                Ok(())
            } else {
                Err(RuntimeError::Runtime("container not paused".into()))
            }
        })?
    }

    fn update(&self, id: &str, resources: &serde_json::Value) -> Result<(), RuntimeError> {
        self.record(RuntimeCall::Update(id.into(), resources.clone()))?;
        self.with_state(id, |_| Ok(()))?
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(RuntimeCall::Start(id.into()))?;
        self.with_state(id, |s| {
            if s.status == "created" {
                s.status = "running".into();
                Ok(())
            } else {
                Err(RuntimeError::Runtime(
                    "cannot start a container that has stopped".into(),
                ))
            }
        })?
    }

    fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError> {
        let sig = normalize_signal(signal);
        self.record(RuntimeCall::Kill {
            id: id.into(),
            signal: sig.clone(),
            all,
        })?;
        self.with_state(id, |s| {
            if sig == "SIGKILL" || sig == "9" {
                s.status = "stopped".into();
                s.pid = 0;
            }
        })
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        self.record(RuntimeCall::Delete {
            id: id.into(),
            force,
        })?;
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get(id)
            && s.status == "running"
            && !force
        {
            return Err(RuntimeError::Runtime(
                "cannot delete container that is not stopped: running".into(),
            ));
        }
        m.remove(id);
        Ok(())
    }

    fn state(&self, id: &str) -> Result<Option<State>, RuntimeError> {
        self.record(RuntimeCall::State(id.into()))?;
        Ok(self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned())
    }

    fn list(&self) -> Result<Vec<ListEntry>, RuntimeError> {
        self.record(RuntimeCall::List)?;
        Ok(self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, s)| ListEntry {
                id: id.clone(),
                status: s.status.clone(),
                pid: s.pid,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_from_json_log() {
        let stderr = br#"{"level":"warning","msg":"something","time":"x"}
{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nosuchcmd\": executable file not found in $PATH","time":"x"}
"#;
        assert_eq!(
            runc_error_message(stderr),
            "runc create failed: unable to start container process: exec: \"nosuchcmd\": executable file not found in $PATH"
        );
        assert_eq!(runc_error_message(b"plain failure\n"), "plain failure");
        assert_eq!(runc_error_message(b""), "runc failed without a message");
    }

    #[test]
    fn signals_are_normalized() {
        assert_eq!(normalize_signal("kill"), "SIGKILL");
        assert_eq!(normalize_signal("SIGTERM"), "SIGTERM");
        assert_eq!(normalize_signal("15"), "15");
        assert_eq!(normalize_signal(""), "SIGKILL");
    }

    #[test]
    fn fake_records_and_tracks_state() {
        let f = FakeRuntime::new();
        f.set_state("a", "created", 42);
        f.start("a").expect("start");
        assert!(f.delete("a", false).is_err());
        f.kill("a", "kill", true).expect("kill");
        assert_eq!(
            f.state("a").expect("state").map(|s| s.status),
            Some("stopped".into())
        );
        f.delete("a", false).expect("delete");
        assert_eq!(f.state("a").expect("state"), None);
        assert!(f.start("a").is_err());
        assert_eq!(
            f.calls()[..3],
            [
                RuntimeCall::Start("a".into()),
                RuntimeCall::Delete {
                    id: "a".into(),
                    force: false
                },
                RuntimeCall::Kill {
                    id: "a".into(),
                    signal: "SIGKILL".into(),
                    all: true
                },
            ]
        );
    }
}
