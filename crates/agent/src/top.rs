//! `docker top`: rows built from the container's own processes (the pids of
//! its cgroup) read from `/proc`, never from a listing of the whole server.
//! The caller's `ps` arguments choose only the columns: Docker's default
//! (`-ef`), BSD's `aux`, or `-o`/`o` with a list of fields; options that
//! select other processes (`-e`, `-A`, `a`, `x`, `-p`) change nothing, since
//! the rows are always the container's.

use std::collections::BTreeSet;
use std::io::Read;

use serde_json::{Value, json};

use crate::error::AgentError;

/// The most of a process's command line shown (as `ps` shows it).
const MAX_CMDLINE: u64 = 4096;
/// The most of any other `/proc` file read.
const MAX_PROC_FILE: u64 = 64 * 1024;

/// The pids in the container's cgroup (any v1 hierarchy it is in). The
/// init's cgroup must be the container's own (its path ends with the id): an
/// init that just exited shows the root cgroup, whose processes are the
/// whole server's, and a reused pid is someone else's.
pub fn container_pids(id: &str, init_pid: u32) -> Result<BTreeSet<u32>, AgentError> {
    let gone = || AgentError::Conflict(format!("Container {id} is not running"));
    let cg = read_bounded(&format!("/proc/{init_pid}/cgroup"), MAX_PROC_FILE).ok_or_else(gone)?;
    // A v1 hierarchy with pids or memory; else the unified (v2) one.
    let mut chosen: Option<(String, String)> = None;
    for l in cg.lines() {
        let mut parts = l.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let dir = if ctrls.split(',').any(|c| c == "pids" || c == "memory") {
            ctrls.to_string()
        } else if ctrls.is_empty() && chosen.is_none() {
            String::new()
        } else {
            continue;
        };
        let v1 = !dir.is_empty();
        chosen = Some((dir, path.trim().to_string()));
        if v1 {
            break;
        }
    }
    let (dir, path) = chosen.ok_or_else(gone)?;
    if id.is_empty() || !path.ends_with(&format!("/{id}")) {
        return Err(gone());
    }
    let file = std::path::Path::new("/sys/fs/cgroup")
        .join(dir)
        .join(path.trim_start_matches('/'))
        .join("cgroup.procs");
    let text = read_bounded(&file.to_string_lossy(), 1 << 20).ok_or_else(gone)?;
    Ok(text.lines().filter_map(|p| p.trim().parse().ok()).collect())
}

/// A `/proc` file, at most `cap` bytes; None if it cannot be read (the
/// process is gone).
fn read_bounded(path: &str, cap: u64) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(cap).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A column `ps` knows, by the name `-o` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Pid,
    Ppid,
    Pgid,
    Sid,
    Uid,
    User,
    Gid,
    Group,
    Comm,
    Args,
    Cpu,
    CpuPercent,
    MemPercent,
    Vsz,
    Rss,
    Tty,
    Stat,
    State,
    Start,
    Stime,
    Time,
    BsdTime,
    Etime,
    Nlwp,
    Nice,
}

impl Field {
    /// The field and its default title, by any of `ps`'s names for it.
    fn by_name(name: &str) -> Option<(Field, &'static str)> {
        Some(match name {
            "pid" | "tgid" => (Field::Pid, "PID"),
            "ppid" => (Field::Ppid, "PPID"),
            "pgid" | "pgrp" => (Field::Pgid, "PGID"),
            "sid" | "sess" | "session" => (Field::Sid, "SID"),
            "uid" | "euid" => (Field::Uid, "UID"),
            "user" | "euser" | "uname" => (Field::User, "USER"),
            "gid" | "egid" => (Field::Gid, "GID"),
            "group" | "egroup" => (Field::Group, "GROUP"),
            "comm" | "ucmd" | "ucomm" => (Field::Comm, "COMMAND"),
            "args" | "command" => (Field::Args, "COMMAND"),
            "cmd" => (Field::Args, "CMD"),
            "c" => (Field::Cpu, "C"),
            "pcpu" | "%cpu" => (Field::CpuPercent, "%CPU"),
            "pmem" | "%mem" => (Field::MemPercent, "%MEM"),
            "vsz" | "vsize" => (Field::Vsz, "VSZ"),
            "rss" | "rssize" | "rsz" => (Field::Rss, "RSS"),
            "tty" | "tt" | "tname" => (Field::Tty, "TT"),
            "stat" => (Field::Stat, "STAT"),
            "s" | "state" => (Field::State, "S"),
            "start" => (Field::Start, "STARTED"),
            "stime" | "start_time" => (Field::Stime, "STIME"),
            "time" | "cputime" => (Field::Time, "TIME"),
            "etime" => (Field::Etime, "ELAPSED"),
            "nlwp" | "thcount" => (Field::Nlwp, "NLWP"),
            "ni" | "nice" => (Field::Nice, "NI"),
            _ => return None,
        })
    }
}

/// The columns the caller's `ps` arguments ask for.
fn columns(args: &str) -> Result<Vec<(Field, String)>, AgentError> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let named = |list: &[(Field, &str)]| list.iter().map(|(f, t)| (*f, t.to_string())).collect();
    let full = || {
        named(&[
            (Field::Uid, "UID"),
            (Field::Pid, "PID"),
            (Field::Ppid, "PPID"),
            (Field::Cpu, "C"),
            (Field::Stime, "STIME"),
            (Field::Tty, "TTY"),
            (Field::Time, "TIME"),
            (Field::Args, "CMD"),
        ])
    };
    let mut out: Vec<(Field, String)> = Vec::new();
    let mut bsd_user = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        i += 1;
        // `-o LIST`, `-oLIST`, `o LIST`, `-eo LIST`, `--format LIST`.
        let list = if let Some(rest) = w.strip_prefix("--format") {
            Some(rest.trim_start_matches('='))
        } else {
            let letters = w.trim_start_matches('-');
            letters
                .find('o')
                .filter(|&at| letters[..at].chars().all(|c| "eAaxf".contains(c)))
                .map(|at| &letters[at + 1..])
        };
        if let Some(list) = list {
            let list = if list.is_empty() {
                let next = words.get(i).ok_or_else(|| {
                    AgentError::BadRequest("ps: the format option needs a list of fields".into())
                })?;
                i += 1;
                *next
            } else {
                list
            };
            for item in list.split(',').filter(|s| !s.is_empty()) {
                let (name, title) = match item.split_once('=') {
                    Some((n, t)) => (n, Some(t)),
                    None => (item, None),
                };
                let (f, default) = Field::by_name(&name.to_ascii_lowercase()).ok_or_else(|| {
                    AgentError::BadRequest(format!("ps: unknown field in the format: {name}"))
                })?;
                out.push((f, title.unwrap_or(default).to_string()));
            }
            continue;
        }
        // Selection options: the rows are the container's whatever they say.
        if w == "-p" || w == "--pid" || w == "-u" || w == "-U" || w == "-g" || w == "-G" {
            i += 1;
            continue;
        }
        let letters = w.trim_start_matches('-');
        if letters.is_empty() || !letters.chars().all(|c| "eAaxfuwlHT".contains(c)) {
            return Err(AgentError::BadRequest(format!(
                "ps: unsupported option {w}: docker top here takes -ef, aux or -o FIELDS"
            )));
        }
        if !w.starts_with('-') {
            bsd_user |= letters.contains('u');
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    if bsd_user {
        return Ok(named(&[
            (Field::User, "USER"),
            (Field::Pid, "PID"),
            (Field::CpuPercent, "%CPU"),
            (Field::MemPercent, "%MEM"),
            (Field::Vsz, "VSZ"),
            (Field::Rss, "RSS"),
            (Field::Tty, "TTY"),
            (Field::Stat, "STAT"),
            (Field::Start, "START"),
            (Field::BsdTime, "TIME"),
            (Field::Args, "COMMAND"),
        ]));
    }
    // Docker's default is `-ef`; `ps` alone or `-e` get the same full listing
    // here (the short one would hide the command's arguments).
    Ok(full())
}

/// Facts of the server the columns need, read once per call.
struct Host {
    ticks: u64,
    boot_time: i64,
    now: i64,
    memory_kb: u64,
    page_kb: u64,
    users: Vec<(u32, String)>,
    groups: Vec<(u32, String)>,
}

impl Host {
    fn read() -> Host {
        // SAFETY: sysconf has no memory effects.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        // SAFETY: as above.
        let page_kb = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1024) as u64) / 1024;
        let stat = read_bounded("/proc/stat", 1 << 20).unwrap_or_default();
        let boot_time = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let meminfo = read_bounded("/proc/meminfo", MAX_PROC_FILE).unwrap_or_default();
        let memory_kb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(1);
        let ids = |path: &str| -> Vec<(u32, String)> {
            read_bounded(path, 1 << 20)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
                })
                .collect()
        };
        Host {
            ticks,
            boot_time,
            now: chrono::Utc::now().timestamp(),
            memory_kb,
            page_kb,
            // The server's own names: ids are the server's (`docker top`
            // shows host ids, as Docker does).
            users: ids("/etc/passwd"),
            groups: ids("/etc/group"),
        }
    }

    fn name(list: &[(u32, String)], id: u32) -> String {
        list.iter()
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| id.to_string())
    }
}

/// What `/proc/<pid>` says of one process.
struct Proc {
    pid: u32,
    comm: String,
    state: char,
    ppid: u32,
    pgid: u32,
    sid: u32,
    tty: u64,
    tpgid: i64,
    cpu_ticks: u64,
    nice: i64,
    threads: u64,
    start_ticks: u64,
    vsz_bytes: u64,
    rss_pages: u64,
    uid: u32,
    gid: u32,
    args: String,
}

impl Proc {
    fn read(pid: u32) -> Option<Proc> {
        let stat = read_bounded(&format!("/proc/{pid}/stat"), MAX_PROC_FILE)?;
        // The command name is in parentheses and may hold anything: the
        // fields follow the last ')'.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat.get(open + 1..close)?.to_string();
        let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let status = read_bounded(&format!("/proc/{pid}/status"), MAX_PROC_FILE)?;
        let id_of = |key: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        let cmdline =
            read_bounded(&format!("/proc/{pid}/cmdline"), MAX_CMDLINE).unwrap_or_default();
        let args = cmdline
            .trim_end_matches('\0')
            .split('\0')
            .collect::<Vec<_>>()
            .join(" ");
        Some(Proc {
            pid,
            state: f.first()?.chars().next()?,
            ppid: num(1) as u32,
            pgid: num(2) as u32,
            sid: num(3) as u32,
            tty: num(4) as u64,
            tpgid: num(5),
            cpu_ticks: (num(11) + num(12)) as u64,
            nice: num(16),
            threads: num(17) as u64,
            start_ticks: num(19) as u64,
            vsz_bytes: num(20) as u64,
            rss_pages: num(21) as u64,
            uid: id_of("Uid:"),
            gid: id_of("Gid:"),
            args: if args.is_empty() {
                format!("[{comm}]")
            } else {
                args
            },
            comm,
        })
    }

    fn started(&self, h: &Host) -> i64 {
        h.boot_time + (self.start_ticks / h.ticks) as i64
    }

    /// Percent of one CPU over the process's life.
    fn cpu_percent(&self, h: &Host) -> f64 {
        let elapsed = (h.now - self.started(h)).max(1) as f64;
        (self.cpu_ticks as f64 / h.ticks as f64) * 100.0 / elapsed
    }

    fn tty_name(&self) -> String {
        let (major, minor) = (
            libc::major(self.tty as libc::dev_t),
            libc::minor(self.tty as libc::dev_t),
        );
        match major {
            0 => "?".into(),
            136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
            4 if minor < 64 => format!("tty{minor}"),
            _ => "?".into(),
        }
    }

    fn stat_flags(&self) -> String {
        let mut s = self.state.to_string();
        if self.nice < 0 {
            s.push('<');
        } else if self.nice > 0 {
            s.push('N');
        }
        if self.sid == self.pid {
            s.push('s');
        }
        if self.threads > 1 {
            s.push('l');
        }
        if self.tty != 0 && self.tpgid == self.pgid as i64 {
            s.push('+');
        }
        s
    }

    fn value(&self, f: Field, h: &Host) -> String {
        let cpu_secs = self.cpu_ticks / h.ticks;
        match f {
            Field::Pid => self.pid.to_string(),
            Field::Ppid => self.ppid.to_string(),
            Field::Pgid => self.pgid.to_string(),
            Field::Sid => self.sid.to_string(),
            Field::Uid => Host::name(&h.users, self.uid),
            Field::User => Host::name(&h.users, self.uid),
            Field::Gid => self.gid.to_string(),
            Field::Group => Host::name(&h.groups, self.gid),
            Field::Comm => self.comm.clone(),
            Field::Args => self.args.clone(),
            Field::Cpu => format!("{}", self.cpu_percent(h) as u64),
            Field::CpuPercent => format!("{:.1}", self.cpu_percent(h)),
            Field::MemPercent => format!(
                "{:.1}",
                (self.rss_pages * h.page_kb) as f64 * 100.0 / h.memory_kb as f64
            ),
            Field::Vsz => (self.vsz_bytes / 1024).to_string(),
            Field::Rss => (self.rss_pages * h.page_kb).to_string(),
            Field::Tty => self.tty_name(),
            Field::Stat => self.stat_flags(),
            Field::State => self.state.to_string(),
            Field::Start | Field::Stime => clock(self.started(h), h.now),
            Field::Time => format!(
                "{:02}:{:02}:{:02}",
                cpu_secs / 3600,
                cpu_secs / 60 % 60,
                cpu_secs % 60
            ),
            Field::BsdTime => format!("{}:{:02}", cpu_secs / 60, cpu_secs % 60),
            Field::Etime => {
                let e = (h.now - self.started(h)).max(0);
                let (d, hh, mm, ss) = (e / 86400, e / 3600 % 24, e / 60 % 60, e % 60);
                match (d, hh) {
                    (0, 0) => format!("{mm:02}:{ss:02}"),
                    (0, _) => format!("{hh:02}:{mm:02}:{ss:02}"),
                    _ => format!("{d}-{hh:02}:{mm:02}:{ss:02}"),
                }
            }
            Field::Nlwp => self.threads.to_string(),
            Field::Nice => self.nice.to_string(),
        }
    }
}

/// `ps`'s start column: the time of day within a day, else the date.
fn clock(at: i64, now: i64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp(at, 0) else {
        return "?".into();
    };
    if now - at < 86400 {
        t.format("%H:%M").to_string()
    } else {
        t.format("%b%d").to_string()
    }
}

/// Docker's `{Titles, Processes}` for the container's processes, with the
/// columns the caller's `ps` arguments ask for.
pub fn top(pids: &BTreeSet<u32>, args: &str) -> Result<Value, AgentError> {
    let cols = columns(args)?;
    if !cols.iter().any(|(f, _)| *f == Field::Pid) {
        return Err(AgentError::BadRequest(
            "Couldn't find PID field in ps output".into(),
        ));
    }
    let host = Host::read();
    let rows: Vec<Vec<String>> = pids
        .iter()
        .filter_map(|&pid| Proc::read(pid))
        .map(|p| cols.iter().map(|(f, _)| p.value(*f, &host)).collect())
        .collect();
    let titles: Vec<&str> = cols.iter().map(|(_, t)| t.as_str()).collect();
    Ok(json!({"Titles": titles, "Processes": rows}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn titles(args: &str) -> Vec<String> {
        columns(args)
            .expect("columns")
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    #[test]
    fn arguments_choose_columns_only() {
        let ef = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"];
        assert_eq!(titles(""), ef);
        assert_eq!(titles("-ef"), ef);
        assert_eq!(titles("-e -f"), ef);
        assert_eq!(titles("aux")[..4], ["USER", "PID", "%CPU", "%MEM"]);
        assert_eq!(titles("-eo pid,comm"), ["PID", "COMMAND"]);
        assert_eq!(titles("-o pid=P,args"), ["P", "COMMAND"]);
        assert_eq!(titles("o pid,ppid"), ["PID", "PPID"]);
        // Selecting other processes changes nothing: rows are the container's.
        assert_eq!(titles("-p 1 -o pid"), ["PID"]);
        for bad in ["--sort=pid", "-Z", "-o nosuchfield", "-o"] {
            assert!(columns(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_containers_own_cgroup_is_listed() {
        // This test process is in no cgroup named after a container.
        let me = std::process::id();
        let err = container_pids("0123abcd", me).expect_err("not a container");
        assert_eq!(err.to_string(), "Container 0123abcd is not running");
        assert!(container_pids("", me).is_err());
    }

    #[test]
    fn rows_are_the_given_pids_only() {
        let me = std::process::id();
        let v = top(&BTreeSet::from([me]), "-o pid,ppid,comm,args").expect("top");
        assert_eq!(v["Processes"].as_array().expect("rows").len(), 1);
        assert_eq!(v["Processes"][0][0], me.to_string());
        // Positive control: another process of the server exists (pid 1),
        // and shows only when asked for.
        let both = top(&BTreeSet::from([1, me]), "").expect("top");
        assert_eq!(both["Processes"].as_array().expect("rows").len(), 2);
        assert_eq!(both["Processes"][0][1], "1");
        // No PID column: Docker's error.
        assert!(top(&BTreeSet::from([me]), "-o comm").is_err());
        // A gone pid is no row.
        assert_eq!(
            top(&BTreeSet::from([u32::MAX - 1]), "").expect("top")["Processes"]
                .as_array()
                .expect("rows")
                .len(),
            0
        );
    }
}
