//! `docker exec` on the node: each exec gets its own shim (`atoll shim exec=true`)
//! in `<container>/exec/<exec-id>/`, so its stdio, attach framing, backpressure
//! and exit status work exactly as for the container itself, and it survives an
//! agent restart. The shim runs `runc exec --detach` only once the attach client
//! is connected, so no early output is lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use agent_client::{ExecSpec, ExecState};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::bundle::{ContainerPaths, DEFAULT_CAPS};
use crate::error::AgentError;
use crate::manager::{Agent, PendingAttach, connect_attach, connect_sock};
use crate::nsexec;
use crate::shim::{EXEC_PROCESS_FILE, ShimArgs, spawn_shim};
use crate::user::resolve_user;

/// The exec's own spec, beside its OCI process.
const EXEC_SPEC_FILE: &str = "exec.json";
/// Every capability the agent itself holds, for `docker exec --privileged`: a
/// server (or a sandbox) may withhold some, and asking for one we lack fails.
fn held_capabilities() -> Vec<&'static str> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    agent_client::caps::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| bounding & (1 << i) != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// Exec ids are the head's: 64 lower-case hex characters.
fn check_exec_id(eid: &str) -> Result<(), AgentError> {
    if eid.len() == 64 && eid.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AgentError::BadRequest(format!("invalid exec id: {eid}")))
    }
}

/// `<container>/exec/`: removed when the container starts again or is removed.
pub(crate) fn exec_root(container: &ContainerPaths) -> PathBuf {
    container.root.join("exec")
}

/// The OCI process of an exec: the container's own process (capabilities,
/// rlimits, user, cwd, env) with the exec's command and overrides.
pub fn exec_process(
    container: &Value,
    spec: &ExecSpec,
    rootfs: &Path,
    group_add: &[String],
) -> Result<Value, AgentError> {
    let mut p = container
        .get("process")
        .cloned()
        .ok_or_else(|| AgentError::Internal("the container's config has no process".into()))?;
    if spec.args.is_empty() {
        return Err(AgentError::BadRequest("No exec command specified".into()));
    }
    p["args"] = json!(spec.args);
    p["terminal"] = json!(spec.tty);
    if let Some(o) = p.as_object_mut() {
        o.remove("consoleSize");
    }
    let mut env: Vec<String> = p["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut set = |e: &str| {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or(e);
        match env
            .iter_mut()
            .find(|x| x.split_once('=').map(|(k, _)| k).unwrap_or(x) == key)
        {
            Some(slot) => *slot = e.to_string(),
            None => env.push(e.to_string()),
        }
    };
    if spec.tty {
        set("TERM=xterm");
    }
    for e in &spec.env {
        set(e);
    }
    p["env"] = json!(env);
    if !spec.cwd.is_empty() {
        if !spec.cwd.starts_with('/') {
            return Err(AgentError::BadRequest(format!(
                "the working directory '{}' is invalid, it needs to be an absolute path",
                spec.cwd
            )));
        }
        p["cwd"] = json!(spec.cwd);
    }
    if !spec.user.is_empty() {
        // The container's `--group-add` holds for an exec's own user too.
        let u = resolve_user(rootfs, &spec.user, group_add)
            .map_err(|e| AgentError::Runtime(e.to_string()))?;
        p["user"] = json!({"uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids});
        if !spec.env.iter().any(|e| e.starts_with("HOME=")) {
            let home = format!("HOME={}", u.home);
            let mut env: Vec<Value> = p["env"].as_array().cloned().unwrap_or_default();
            env.retain(|v| !v.as_str().is_some_and(|s| s.starts_with("HOME=")));
            env.push(json!(home));
            p["env"] = json!(env);
        }
    }
    if spec.privileged {
        let all = held_capabilities();
        p["capabilities"] = json!({
            "bounding": all, "effective": all, "permitted": all,
        });
    } else if p.get("capabilities").is_none() {
        p["capabilities"] = json!({
            "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS,
        });
    }
    // The container is confined by the default profile: so is the exec, by the
    // same profile for its own capabilities (see nsexec).
    if container["linux"]
        .get("seccomp")
        .is_some_and(|s| !s.is_null())
    {
        p[nsexec::DEFAULT_SECCOMP] = json!(true);
    }
    Ok(p)
}

impl Agent {
    fn exec_paths(&self, id: &str, eid: &str) -> ContainerPaths {
        ContainerPaths::from_root(&self.exec_dir(id, eid))
    }

    /// `<container>/exec/<exec-id>`.
    pub(crate) fn exec_dir(&self, id: &str, eid: &str) -> PathBuf {
        exec_root(&self.paths(id)).join(eid)
    }

    /// The container must be running and not paused, as for Docker's exec.
    fn exec_target(&self, id: &str) -> Result<(), AgentError> {
        let ctr = self.running_ctr(id)?;
        if ctr.paused.load(Ordering::SeqCst) {
            return Err(AgentError::Conflict(format!(
                "Container {id} is paused, unpause the container before exec"
            )));
        }
        Ok(())
    }

    /// Prepares an exec: writes its OCI process. Nothing runs yet.
    pub async fn exec_create(&self, id: &str, eid: &str, spec: ExecSpec) -> Result<(), AgentError> {
        check_exec_id(eid)?;
        self.exec_target(id)?;
        let paths = self.paths(id);
        // Only the process and whether a seccomp profile is set: the profile
        // itself (a few hundred names) is skipped, not built, on every exec.
        #[derive(serde::Deserialize)]
        struct ConfigView {
            process: Value,
            #[serde(default)]
            linux: LinuxView,
        }
        #[derive(serde::Deserialize, Default)]
        struct LinuxView {
            #[serde(default)]
            seccomp: Option<serde::de::IgnoredAny>,
        }
        let view: ConfigView = serde_json::from_slice(&std::fs::read(&paths.config)?)
            .map_err(|e| AgentError::Internal(format!("the container's config: {e}")))?;
        let config = json!({
            "process": view.process,
            "linux": {"seccomp": view.linux.seccomp.map(|_| json!({}))},
        });
        let group_add = self
            .ctr(id)
            .map(|c| {
                c.spec
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .process
                    .group_add
                    .clone()
            })
            .unwrap_or_default();
        let process = exec_process(&config, &spec, &paths.rootfs, &group_add)?;
        let dir = exec_root(&paths).join(eid);
        if dir.exists() {
            return Err(AgentError::Conflict(format!("exec {eid} exists already")));
        }
        std::fs::create_dir_all(&dir)?;
        let write = |name: &str, v: Vec<u8>| std::fs::write(dir.join(name), v);
        write(
            EXEC_PROCESS_FILE,
            serde_json::to_vec(&process).map_err(|e| AgentError::Internal(e.to_string()))?,
        )?;
        write(
            EXEC_SPEC_FILE,
            serde_json::to_vec(&spec).map_err(|e| AgentError::Internal(e.to_string()))?,
        )?;
        Ok(())
    }

    /// Starts the shim of a created exec (readiness only: the process starts
    /// with [`Agent::exec_run`]).
    pub async fn exec_spawn(&self, id: &str, eid: &str) -> Result<(), AgentError> {
        check_exec_id(eid)?;
        self.exec_target(id)?;
        let paths = self.exec_paths(id, eid);
        let spec: ExecSpec = match std::fs::read(paths.root.join(EXEC_SPEC_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| AgentError::Internal(e.to_string()))?,
            Err(_) => {
                return Err(AgentError::NotFound(format!(
                    "No such exec instance: {eid}"
                )));
            }
        };
        if paths.shim_pid_file.exists() {
            return Err(AgentError::Conflict(format!(
                "Error: Exec command {eid} is already running"
            )));
        }
        let args = ShimArgs {
            id: id.to_string(),
            bundle: self.paths(id).bundle,
            state_dir: paths.root.clone(),
            runc_root: self.runc.root().to_path_buf(),
            runc_binary: PathBuf::from("runc"),
            tty: spec.tty,
            open_stdin: spec.open_stdin,
            log_max_size: 0,
            log_max_files: 1,
            exec: true,
        };
        let exe = self.cfg.exe.clone();
        tokio::task::spawn_blocking(move || spawn_shim(&exe, &args))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
            .map_err(|e| AgentError::Runtime(e.to_string()))?;
        Ok(())
    }

    /// Connects the attach client (if any) and runs the exec's process. A
    /// process that cannot start is not an error here: the shim tells the
    /// attach client and records Docker's 126/127.
    pub async fn exec_run(
        &self,
        id: &str,
        eid: &str,
        attach: Option<PendingAttach>,
    ) -> Result<ExecState, AgentError> {
        let paths = self.exec_paths(id, eid);
        if let Some(p) = attach {
            connect_attach(&paths, p).await?;
        }
        let answer = control(&paths, "start").await?;
        if let Some(e) = answer["error"].as_str() {
            return Err(AgentError::Runtime(e.to_string()));
        }
        Ok(ExecState {
            running: true,
            pid: answer["pid"].as_u64().unwrap_or(0) as u32,
            exit_code: None,
        })
    }

    /// Running, exited (with its code), or created and never started.
    pub async fn exec_state(&self, id: &str, eid: &str) -> Result<ExecState, AgentError> {
        check_exec_id(eid)?;
        let paths = self.exec_paths(id, eid);
        if !paths.root.join(EXEC_SPEC_FILE).exists() {
            return Err(AgentError::NotFound(format!(
                "No such exec instance: {eid}"
            )));
        }
        if let Some(st) = exited(&paths) {
            return Ok(st);
        }
        match control(&paths, "pid").await {
            Ok(v) => {
                let pid = v["pid"].as_u64().unwrap_or(0) as u32;
                Ok(ExecState {
                    running: pid != 0,
                    pid,
                    exit_code: None,
                })
            }
            // The shim may have just finished; else it never started, or was
            // killed without a word.
            Err(_) => Ok(exited(&paths).unwrap_or(ExecState {
                running: false,
                pid: 0,
                exit_code: paths.shim_pid_file.exists().then_some(137),
            })),
        }
    }

    /// Blocks until the exec has ended; its final state.
    pub async fn exec_wait(&self, id: &str, eid: &str) -> Result<ExecState, AgentError> {
        check_exec_id(eid)?;
        let paths = self.exec_paths(id, eid);
        if let Some(st) = exited(&paths) {
            return Ok(st);
        }
        match control(&paths, "wait").await {
            Ok(v) if v.get("exit_code").is_some() => Ok(ExecState {
                running: false,
                pid: 0,
                exit_code: v["exit_code"].as_i64().map(|c| c as i32),
            }),
            _ => self.exec_state(id, eid).await,
        }
    }

    /// Sets the window size of an exec's terminal.
    pub async fn exec_resize(
        &self,
        id: &str,
        eid: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), AgentError> {
        check_exec_id(eid)?;
        let paths = self.exec_paths(id, eid);
        let v = control(&paths, &format!("resize {rows} {cols}"))
            .await
            .map_err(|_| AgentError::Conflict(format!("exec {eid} is not running")))?;
        match v["error"].as_str() {
            Some(e) => Err(AgentError::Conflict(e.to_string())),
            None => Ok(()),
        }
    }
}

/// The exec's recorded end, if it has ended.
fn exited(paths: &ContainerPaths) -> Option<ExecState> {
    let v: Value = serde_json::from_slice(&std::fs::read(&paths.exit_file).ok()?).ok()?;
    Some(ExecState {
        running: false,
        pid: 0,
        exit_code: v["exit_code"].as_i64().map(|c| c as i32),
    })
}

/// One command on a shim's control socket, one JSON line back.
async fn control(paths: &ContainerPaths, cmd: &str) -> Result<Value, AgentError> {
    let mut s = connect_sock(&paths.control_sock).await?;
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await?;
    serde_json::from_str(&line)
        .map_err(|e| AgentError::Internal(format!("bad answer from shim: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Value {
        json!({"process": {
            "terminal": false, "args": ["sleep", "1"], "cwd": "/srv",
            "env": ["PATH=/bin", "A=1"],
            "user": {"uid": 5, "gid": 6, "additionalGids": []},
            "capabilities": {"bounding": ["CAP_CHOWN"]},
            "consoleSize": {"height": 1, "width": 1},
        }})
    }

    #[test]
    fn exec_inherits_the_container_process_and_overrides() {
        let spec = ExecSpec {
            args: vec!["sh".into()],
            env: vec!["A=2".into(), "B=3".into()],
            tty: true,
            ..Default::default()
        };
        let p = exec_process(&container(), &spec, Path::new("/nonexistent"), &[]).unwrap();
        assert_eq!(p["args"], json!(["sh"]));
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["user"]["uid"], 5);
        assert_eq!(p["terminal"], true);
        assert!(p.get("consoleSize").is_none());
        assert_eq!(p["env"], json!(["PATH=/bin", "A=2", "TERM=xterm", "B=3"]));
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_CHOWN"]));
    }

    #[test]
    fn exec_options_are_checked() {
        let mut spec = ExecSpec::default();
        assert!(matches!(
            exec_process(&container(), &spec, Path::new("/"), &[]),
            Err(AgentError::BadRequest(_))
        ));
        spec.args = vec!["true".into()];
        spec.cwd = "relative".into();
        assert!(matches!(
            exec_process(&container(), &spec, Path::new("/"), &[]),
            Err(AgentError::BadRequest(_))
        ));
        spec.cwd = String::new();
        spec.privileged = true;
        let p = exec_process(&container(), &spec, Path::new("/"), &[]).unwrap();
        assert!(p["capabilities"]["bounding"].as_array().unwrap().len() > 30);
        assert!(check_exec_id("../../etc").is_err());
    }

    #[test]
    fn exec_user_is_resolved_in_the_container() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:33:44:web:/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), "root:x:0:\nweb:x:44:\n").unwrap();
        let spec = ExecSpec {
            args: vec!["id".into()],
            user: "web".into(),
            ..Default::default()
        };
        let p = exec_process(&container(), &spec, root.path(), &[]).unwrap();
        assert_eq!(p["user"]["uid"], 33);
        assert_eq!(p["user"]["gid"], 44);
        assert!(
            p["env"]
                .as_array()
                .unwrap()
                .contains(&json!("HOME=/var/www"))
        );
        let spec = ExecSpec {
            user: "nobody-here".into(),
            ..spec
        };
        assert!(exec_process(&container(), &spec, root.path(), &[]).is_err());
    }
}
