//! `docker exec`: exec instances live in the head's memory, like Docker's (they
//! do not survive a head restart); the process itself runs under its own shim on
//! the container's server. Finished execs are forgotten after [`EXEC_KEEP`], and
//! all of a container's when it is removed.

use agent_client::{ExecSpec, ExecState};
use chrono::{DateTime, Utc};

use crate::cluster::Cluster;
use crate::containers::upstream;
use crate::error::{Error, Result};
use crate::model::{ContainerRecord, Status};
use crate::names::new_id;

/// How long a finished exec can still be inspected.
const EXEC_KEEP: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
/// At most this many exec records per container (the oldest finished go first).
const MAX_EXECS_PER_CONTAINER: usize = 256;

/// Docker's ExecConfig (the create body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub privileged: bool,
    pub detach_keys: String,
}

#[derive(Debug, Clone)]
pub struct ExecRecord {
    pub id: String,
    pub account: String,
    pub container_id: String,
    pub node: String,
    pub config: ExecConfig,
    pub created: DateTime<Utc>,
    pub started: bool,
    pub running: bool,
    pub pid: u32,
    pub exit_code: Option<i32>,
    /// When it was seen finished (for forgetting it).
    pub finished: Option<DateTime<Utc>>,
}

/// Docker's detach sequence when the client names none.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// Docker's `--detach-keys` syntax: comma-separated keys, each a single
/// character or `ctrl-<c>` for `c` in `a-z @ [ \\ ] ^ _`. Empty means the
/// default. The bytes, for the shim.
pub fn parse_detach_keys(s: &str) -> Result<Vec<u8>> {
    let s = if s.is_empty() { DEFAULT_DETACH_KEYS } else { s };
    let bad = || Error::InvalidArgument(format!("Invalid detach keys ({s}) provided"));
    s.split(',')
        .map(|k| {
            let lower = k.to_ascii_lowercase();
            if let Some(c) = lower.strip_prefix("ctrl-") {
                match c.as_bytes() {
                    [b @ b'a'..=b'z'] => Ok(b - b'a' + 1),
                    [b'@'] => Ok(0),
                    [b @ (b'[' | b'\\' | b']' | b'^' | b'_')] => Ok(b - b'@'),
                    _ => Err(bad()),
                }
            } else if k.len() == 1 {
                Ok(k.as_bytes()[0])
            } else {
                Err(bad())
            }
        })
        .collect()
}

impl Cluster {
    /// Prepares an exec in a running container; its id.
    pub async fn create_exec(
        &self,
        account: &str,
        key: &str,
        config: ExecConfig,
    ) -> Result<String> {
        let c = self.find_container(account, key).await?;
        match c.state.status {
            Status::Running => {}
            Status::Paused => {
                return Err(Error::Conflict(format!(
                    "Container {} is paused, unpause the container before exec",
                    c.id
                )));
            }
            Status::Restarting => {
                return Err(Error::Conflict(format!(
                    "Container {} is restarting, wait until the container is running",
                    c.id
                )));
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "container {} is not running",
                    c.id
                )));
            }
        }
        if config.cmd.is_empty() || config.cmd.iter().all(|a| a.is_empty()) {
            return Err(Error::InvalidArgument("No exec command specified".into()));
        }
        parse_detach_keys(&config.detach_keys)?;
        if config.privileged && account != crate::model::OPERATOR {
            return Err(Error::Forbidden("privileged exec is not allowed".into()));
        }
        let id = new_id();
        let spec = ExecSpec {
            args: config.cmd.clone(),
            env: config.env.clone(),
            cwd: config.working_dir.clone(),
            user: config.user.clone(),
            tty: config.tty,
            open_stdin: config.attach_stdin,
            privileged: config.privileged,
        };
        self.agent(&c.node)?
            .exec_create(&c.id, &id, &spec)
            .await
            .map_err(upstream)?;
        let rec = ExecRecord {
            id: id.clone(),
            account: account.to_string(),
            container_id: c.id.clone(),
            node: c.node.clone(),
            config,
            created: Utc::now(),
            started: false,
            running: false,
            pid: 0,
            exit_code: None,
            finished: None,
        };
        let action = format!("exec_create: {}", rec.config.cmd.join(" "));
        {
            let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
            forget_old(&mut execs, &c.id);
            execs.insert(id.clone(), rec);
        }
        self.emit_container(&c, action, &[("execID", id.clone())]);
        Ok(id)
    }

    /// The caller's exec `eid`; another account's is "no such exec", as one
    /// that does not exist.
    fn exec_record(&self, account: &str, eid: &str) -> Result<ExecRecord> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(eid)
            .filter(|e| e.account == account)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("No such exec instance: {eid}")))
    }

    fn update_exec(&self, eid: &str, f: impl FnOnce(&mut ExecRecord)) {
        if let Some(e) = self
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(eid)
        {
            f(e)
        }
    }

    /// Marks the exec started (once); Conflict if it already was.
    /// Marks the exec started; it and its (running) container.
    async fn claim_start(&self, account: &str, eid: &str) -> Result<(ExecRecord, ContainerRecord)> {
        let rec = self.exec_record(account, eid)?;
        let c = self.find_container(account, &rec.container_id).await?;
        if c.state.status == Status::Paused {
            return Err(Error::Conflict(format!(
                "Container {} is paused, unpause the container before exec",
                c.id
            )));
        }
        if !c.state.status.is_running() {
            return Err(Error::Conflict(format!(
                "container {} is not running",
                c.id
            )));
        }
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        let e = execs
            .get_mut(eid)
            .ok_or_else(|| Error::NotFound(format!("No such exec instance: {eid}")))?;
        if e.started {
            return Err(Error::Conflict(if e.exit_code.is_some() {
                format!("exec {eid} has already run")
            } else {
                format!("Error: Exec command {eid} is already running")
            }));
        }
        e.started = true;
        e.running = true;
        Ok((e.clone(), c))
    }

    /// Starts an exec attached; (tty, stream). The stream ends when it exits.
    pub async fn start_exec_attached(
        &self,
        account: &str,
        eid: &str,
    ) -> Result<(bool, hyper::upgrade::Upgraded)> {
        let (rec, ctr) = self.claim_start(account, eid).await?;
        let c = &rec.config;
        let keys: Vec<String> = parse_detach_keys(&c.detach_keys)?
            .iter()
            .map(|b| b.to_string())
            .collect();
        let q = format!(
            "stdin={}&stdout={}&stderr={}&detach_keys={}",
            c.attach_stdin,
            c.attach_stdout,
            c.attach_stderr,
            keys.join(",")
        );
        match self
            .agent(&rec.node)?
            .exec_start_attached(&rec.container_id, eid, &q)
            .await
        {
            Ok(up) => {
                self.exec_started(&rec, ctr);
                Ok((c.tty, up))
            }
            Err(e) => {
                self.update_exec(eid, |r| r.running = false);
                Err(upstream(e))
            }
        }
    }

    /// Starts an exec detached (`docker exec -d`).
    pub async fn start_exec_detached(&self, account: &str, eid: &str) -> Result<()> {
        let (rec, ctr) = self.claim_start(account, eid).await?;
        match self
            .agent(&rec.node)?
            .exec_start_detached(&rec.container_id, eid)
            .await
        {
            Ok(st) => {
                self.update_exec(eid, |r| r.pid = st.pid);
                self.exec_started(&rec, ctr);
                Ok(())
            }
            Err(e) => {
                self.update_exec(eid, |r| {
                    r.running = false;
                    r.exit_code = Some(126);
                    r.finished = Some(Utc::now());
                });
                Err(upstream(e))
            }
        }
    }

    /// `exec_start` now, and `exec_die` when it ends (a long poll on its server).
    fn exec_started(&self, rec: &ExecRecord, c: ContainerRecord) {
        let cmd = rec.config.cmd.join(" ");
        self.emit_container(
            &c,
            format!("exec_start: {cmd}"),
            &[("execID", rec.id.clone())],
        );
        let Ok(agent) = self.agent(&rec.node) else {
            return;
        };
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let (cid, eid) = (rec.container_id.clone(), rec.id.clone());
        tokio::spawn(async move {
            let Ok(st) = agent.exec_wait(&cid, &eid).await else {
                return;
            };
            let code = st.exit_code.unwrap_or(137);
            me.update_exec(&eid, |r| {
                r.running = false;
                r.pid = 0;
                r.exit_code = Some(code);
                r.finished = Some(Utc::now());
            });
            me.emit_container(
                &c,
                "exec_die",
                &[("execID", eid.clone()), ("exitCode", code.to_string())],
            );
        });
    }

    /// The exec with its current state from its server.
    pub async fn inspect_exec(&self, account: &str, eid: &str) -> Result<ExecRecord> {
        let rec = self.exec_record(account, eid)?;
        if !rec.started || rec.finished.is_some() {
            return Ok(rec);
        }
        let st = match self.agent(&rec.node) {
            Ok(a) => a.exec_state(&rec.container_id, eid).await,
            Err(_) => return Ok(rec),
        };
        let st = match st {
            Ok(st) => st,
            // Its container was removed or restarted on the server: it is over.
            Err(agent_client::ClientError::Status { status: 404, .. }) => ExecState {
                running: false,
                pid: 0,
                exit_code: rec.exit_code.or(Some(137)),
            },
            // The server is unreachable: what we knew last.
            Err(_) => return Ok(rec),
        };
        self.update_exec(eid, |r| {
            r.running = st.running;
            r.pid = st.pid;
            if !st.running {
                r.exit_code = st.exit_code.or(r.exit_code);
                r.finished = Some(Utc::now());
            }
        });
        self.exec_record(account, eid)
    }

    pub async fn resize_exec(&self, account: &str, eid: &str, rows: u16, cols: u16) -> Result<()> {
        let rec = self.exec_record(account, eid)?;
        if !rec.config.tty {
            // Docker accepts and ignores a resize without a terminal.
            return Ok(());
        }
        self.agent(&rec.node)?
            .exec_resize(&rec.container_id, eid, rows, cols)
            .await
            .map_err(upstream)
    }

    /// Ids of the container's execs (its inspect's `ExecIDs`).
    pub fn exec_ids(&self, container_id: &str) -> Vec<String> {
        let execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<&ExecRecord> = execs
            .values()
            .filter(|e| e.container_id == container_id && e.finished.is_none())
            .collect();
        v.sort_by_key(|e| e.created);
        v.into_iter().map(|e| e.id.clone()).collect()
    }

    /// Forgets every exec of a removed container.
    pub(crate) fn forget_execs(&self, container_id: &str) {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| e.container_id != container_id);
    }
}

/// Drops finished execs older than [`EXEC_KEEP`], and the oldest finished ones
/// of `container_id` beyond [`MAX_EXECS_PER_CONTAINER`].
fn forget_old(execs: &mut std::collections::HashMap<String, ExecRecord>, container_id: &str) {
    let now = Utc::now();
    execs.retain(|_, e| e.finished.is_none_or(|f| now - f < EXEC_KEEP));
    let mut mine: Vec<(DateTime<Utc>, String)> = execs
        .values()
        .filter(|e| e.container_id == container_id)
        .map(|e| (e.created, e.id.clone()))
        .collect();
    if mine.len() >= MAX_EXECS_PER_CONTAINER {
        mine.sort();
        for (_, id) in mine.iter().take(mine.len() + 1 - MAX_EXECS_PER_CONTAINER) {
            execs.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_like_docker() {
        assert_eq!(parse_detach_keys("").unwrap(), [16, 17]);
        assert_eq!(parse_detach_keys("ctrl-a,x").unwrap(), [1, b'x']);
        assert_eq!(
            parse_detach_keys("ctrl-@,ctrl-[,ctrl-_").unwrap(),
            [0, 27, 31]
        );
        for bad in ["ctrl-", "ctrl-ab", "ab", "ctrl-1", "a,,b"] {
            assert!(parse_detach_keys(bad).is_err(), "{bad}");
        }
    }
}
