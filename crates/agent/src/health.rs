//! Healthchecks, run by the agent next to the container (not by the head), so
//! that probing scales with servers. Each probe is an exec (same path as
//! `docker exec`: its own shim, native exec); its result is reported on the
//! agent's event stream inside the container's status, and the head keeps it.
//!
//! Docker's rules: probes every `interval` (every `start_interval` while still
//! `starting` inside the start period); exit 0 is healthy; a failure counts
//! unless it happens inside the start period; `retries` failures in a row make
//! the container unhealthy; a probe running past `timeout` is killed and fails;
//! the last five results are kept, each output cut to 4096 bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_client::{ContainerSpec, ExecSpec, HealthConfig, HealthResult, HealthState, RunState};
use chrono::{SecondsFormat, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::AgentError;
use crate::manager::{Agent, Ctr, connect_sock};

/// Results kept in `State.Health.Log`.
const KEEP_RESULTS: usize = 5;
/// Bytes of probe output kept per result.
const MAX_OUTPUT: usize = 4096;

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The state after one more result. `in_start_period`: failures do not count.
pub fn next_state(
    prev: &HealthState,
    result: HealthResult,
    retries: i64,
    in_start_period: bool,
) -> HealthState {
    let mut s = prev.clone();
    if result.exit_code == 0 {
        s.status = "healthy".into();
        s.failing_streak = 0;
    } else if !in_start_period {
        s.failing_streak += 1;
        if s.failing_streak >= retries {
            s.status = "unhealthy".into();
        }
    }
    s.log.push(result);
    if s.log.len() > KEEP_RESULTS {
        let extra = s.log.len() - KEEP_RESULTS;
        s.log.drain(..extra);
    }
    s
}

/// The state a container starts in.
pub fn starting() -> HealthState {
    HealthState {
        status: "starting".into(),
        failing_streak: 0,
        log: Vec::new(),
    }
}

/// A fresh exec id (64 hex chars, like the head's).
fn probe_id() -> String {
    let mut b = [0u8; 32];
    // SAFETY: getrandom into a local buffer of that length.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Docker frames (stdout and stderr) to text, at most [`MAX_OUTPUT`] bytes.
fn frames_text(raw: &[u8]) -> String {
    let mut out = Vec::new();
    let mut rest = raw;
    while rest.len() >= 8 && out.len() < MAX_OUTPUT {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let body = &rest[8..(8 + len).min(rest.len())];
        out.extend_from_slice(body);
        rest = &rest[(8 + len).min(rest.len())..];
    }
    out.truncate(MAX_OUTPUT);
    String::from_utf8_lossy(&out).into_owned()
}

impl Agent {
    /// Runs the container's healthcheck while this run of it lasts.
    pub(crate) fn spawn_health(self: &Arc<Self>, ctr: Arc<Ctr>, spec: &ContainerSpec) {
        let Some(cfg) = spec.health.clone() else {
            return;
        };
        let me = self.clone();
        let generation = spec.generation;
        let id = spec.id.clone();
        let mut exits = ctr.exits.subscribe();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut state = starting();
            let ns = |n: i64| Duration::from_nanos(n.max(0) as u64);
            loop {
                let in_start = started.elapsed() < ns(cfg.start_period_ns);
                let wait = if in_start && state.status == "starting" {
                    ns(cfg.start_interval_ns)
                } else {
                    ns(cfg.interval_ns)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = exits.changed() => return,
                }
                let current = ctr.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if current.state != RunState::Running || current.generation != generation {
                    return;
                }
                if ctr.paused.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let result = me.probe(&id, &cfg).await;
                let in_start = started.elapsed() < ns(cfg.start_period_ns);
                state = next_state(&state, result, cfg.retries, in_start);
                let mut st = ctr.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if st.state != RunState::Running || st.generation != generation {
                    return;
                }
                st.health = Some(state.clone());
                me.set_status(&ctr, st);
            }
        });
    }

    /// One probe: an exec of the test with a timeout. Never fails: a probe that
    /// cannot run is an unhealthy result with the reason as its output.
    async fn probe(&self, id: &str, cfg: &HealthConfig) -> HealthResult {
        let start = now();
        let (exit_code, output) = match self.probe_exec(id, cfg).await {
            Ok(r) => r,
            Err(e) => (1, e.to_string()),
        };
        HealthResult {
            start,
            end: now(),
            exit_code,
            output,
        }
    }

    async fn probe_exec(&self, id: &str, cfg: &HealthConfig) -> Result<(i64, String), AgentError> {
        let eid = probe_id();
        let spec = ExecSpec {
            args: cfg.args.clone(),
            ..Default::default()
        };
        self.exec_create(id, &eid, spec).await?;
        let result = self.probe_run(id, &eid, cfg).await;
        // Probes are not execs anyone inspects: drop their directory.
        let _ = std::fs::remove_dir_all(self.exec_dir(id, &eid));
        result
    }

    async fn probe_run(
        &self,
        id: &str,
        eid: &str,
        cfg: &HealthConfig,
    ) -> Result<(i64, String), AgentError> {
        self.exec_spawn(id, eid).await?;
        let paths = crate::bundle::ContainerPaths::from_root(&self.exec_dir(id, eid));
        let mut attach = connect_sock(&paths.attach_sock).await?;
        attach
            .write_all(b"{\"stdout\":true,\"stderr\":true}\n")
            .await?;
        let mut ack = [0u8; crate::shim::ATTACH_ACK.len()];
        attach.read_exact(&mut ack).await?;
        let started = self.exec_run(id, eid, None).await;
        let pid = match started {
            Ok(st) => st.pid,
            // Could not start (e.g. no such command): the shim recorded 126/127.
            Err(e) => {
                let st = self.exec_state(id, eid).await?;
                return Ok((st.exit_code.unwrap_or(1) as i64, e.to_string()));
            }
        };
        let mut raw = Vec::new();
        let timeout = Duration::from_nanos(cfg.timeout_ns.max(0) as u64);
        let read = async {
            let mut buf = [0u8; 8192];
            loop {
                match attach.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if raw.len() < 2 * MAX_OUTPUT + 64 => raw.extend_from_slice(&buf[..n]),
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(timeout, read).await.is_err() {
            if pid > 0 {
                // SAFETY: signalling the probe's own process.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            return Ok((-1, format!("Health check exceeded timeout ({:?})", timeout)));
        }
        // The stream ends once the exit is recorded.
        let st = self.exec_state(id, eid).await?;
        Ok((st.exit_code.unwrap_or(1) as i64, frames_text(&raw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i64) -> HealthResult {
        HealthResult {
            start: String::new(),
            end: String::new(),
            exit_code: code,
            output: String::new(),
        }
    }

    #[test]
    fn health_follows_dockers_rules() {
        let s = starting();
        // Failures inside the start period do not count.
        let s = next_state(&s, result(1), 2, true);
        assert_eq!((s.status.as_str(), s.failing_streak), ("starting", 0));
        let s = next_state(&s, result(0), 2, true);
        assert_eq!(s.status, "healthy");
        let s = next_state(&s, result(1), 2, false);
        assert_eq!((s.status.as_str(), s.failing_streak), ("healthy", 1));
        let s = next_state(&s, result(-1), 2, false);
        assert_eq!((s.status.as_str(), s.failing_streak), ("unhealthy", 2));
        let mut s = next_state(&s, result(0), 2, false);
        assert_eq!((s.status.as_str(), s.failing_streak), ("healthy", 0));
        for _ in 0..10 {
            s = next_state(&s, result(0), 2, false);
        }
        assert_eq!(s.log.len(), KEEP_RESULTS);
    }

    #[test]
    fn probe_output_is_unframed_and_cut() {
        let mut raw = vec![1, 0, 0, 0, 0, 0, 0, 3];
        raw.extend_from_slice(b"ok\n");
        raw.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 4]);
        raw.extend_from_slice(b"err\n");
        assert_eq!(frames_text(&raw), "ok\nerr\n");
        let mut big = vec![1, 0, 0, 0];
        big.extend_from_slice(&10_000u32.to_be_bytes());
        big.extend(std::iter::repeat_n(b'x', 10_000));
        assert_eq!(frames_text(&big).len(), MAX_OUTPUT);
        assert_eq!(probe_id().len(), 64);
    }
}
