//! `docker top`: `ps` on the server with the caller's arguments, keeping the
//! rows of the container's processes (its cgroup's `cgroup.procs`), as Docker
//! does. Titles and rows are split like Docker: the last column takes the rest
//! of the line (commands contain spaces).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};

use crate::error::AgentError;

/// The pids in the container's cgroup (any v1 hierarchy it is in).
pub fn container_pids(init_pid: u32) -> Result<BTreeSet<u32>, AgentError> {
    let cg = std::fs::read_to_string(format!("/proc/{init_pid}/cgroup"))
        .map_err(|_| AgentError::Conflict("the container is not running".into()))?;
    for l in cg.lines() {
        let mut parts = l.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.split(',').any(|c| c == "pids" || c == "memory") {
            let file = std::path::Path::new("/sys/fs/cgroup")
                .join(ctrls)
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs");
            if let Ok(text) = std::fs::read_to_string(file) {
                return Ok(text.lines().filter_map(|p| p.trim().parse().ok()).collect());
            }
        }
    }
    Ok(BTreeSet::from([init_pid]))
}

/// Docker's `{Titles, Processes}` from `ps` output, keeping `pids`' rows.
pub fn filter_ps(output: &str, pids: &BTreeSet<u32>) -> Result<Value, AgentError> {
    let mut lines = output.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or("");
    let titles: Vec<&str> = header.split_whitespace().collect();
    let pid_col = titles
        .iter()
        .position(|t| *t == "PID")
        .ok_or_else(|| AgentError::BadRequest("Couldn't find PID field in ps output".into()))?;
    let mut rows = Vec::new();
    for l in lines {
        let fields: Vec<String> = split_columns(l, titles.len());
        let Some(pid) = fields.get(pid_col).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pids.contains(&pid) {
            rows.push(fields);
        }
    }
    Ok(json!({"Titles": titles, "Processes": rows}))
}

/// `n` whitespace-separated fields, the last one with the rest of the line.
fn split_columns(line: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut rest = line.trim_start();
    while out.len() + 1 < n {
        let Some(end) = rest.find(char::is_whitespace) else {
            break;
        };
        out.push(rest[..end].to_string());
        rest = rest[end..].trim_start();
    }
    out.push(rest.to_string());
    out
}

/// Runs `ps` with Docker's default `-ef` or the caller's arguments.
pub fn run_ps(args: &str) -> Result<String, AgentError> {
    let args: Vec<&str> = if args.trim().is_empty() {
        vec!["-ef"]
    } else {
        args.split_whitespace().collect()
    };
    let out = Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| AgentError::Internal(format!("running ps: {e}")))?;
    if !out.status.success() {
        return Err(AgentError::BadRequest(format!(
            "ps: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_the_container_with_commands_kept_whole() {
        let ps = "UID          PID    PPID  C STIME TTY          TIME CMD\n\
                  root           1       0  0 10:00 ?        00:00:01 /sbin/init\n\
                  root         500       1  0 10:01 ?        00:00:00 sleep 1000 now\n\
                  root         501     500  0 10:01 ?        00:00:00 sh -c x\n";
        let v = filter_ps(ps, &BTreeSet::from([500, 501])).unwrap();
        assert_eq!(v["Titles"][1], "PID");
        assert_eq!(v["Processes"].as_array().unwrap().len(), 2);
        assert_eq!(v["Processes"][0][7], "sleep 1000 now");
        assert!(filter_ps("USER COMMAND\nroot x\n", &BTreeSet::new()).is_err());
    }
}
