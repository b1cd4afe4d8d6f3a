//! `docker stats` figures of a running container, read on its server: CPU,
//! memory, pids and block I/O from its cgroups (v1 hierarchies, found through
//! `/proc/<init>/cgroup`), network counters from `/proc/<init>/net/dev` (the
//! container's namespace), system CPU time from `/proc/stat`. Shaped as
//! Docker's stats object; the caller adds `name`.
//!
//! The parsers are pure functions of the files' text (unit-tested); `Sampler`
//! only reads the files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

/// Nanoseconds per USER_HZ tick (Linux reports 100 Hz to user space).
const NS_PER_TICK: u64 = 10_000_000;
/// cgroup v1's "no limit".
const UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// `key value` lines (memory.stat, cpu.stat, cpuacct.stat).
pub fn parse_kv(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// The total of the first line of /proc/stat, in nanoseconds.
pub fn system_cpu_ns(proc_stat: &str) -> u64 {
    proc_stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>()
                * NS_PER_TICK
        })
        .unwrap_or(0)
}

/// Interfaces other than `lo` from /proc/<pid>/net/dev, in Docker's shape.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, Value> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 16 {
                return None;
            }
            Some((
                name.to_string(),
                json!({
                    "rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                    "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11],
                }),
            ))
        })
        .collect()
}

/// blkio `io_service_bytes_recursive` lines (`8:0 Read 4096`), Total excluded.
pub fn parse_blkio(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (dev, op, value) = (w.next()?, w.next()?, w.next()?);
            let (major, minor) = dev.split_once(':')?;
            Some(json!({
                "major": major.parse::<u64>().ok()?,
                "minor": minor.parse::<u64>().ok()?,
                "op": op.to_ascii_lowercase(),
                "value": value.parse::<u64>().ok()?,
            }))
        })
        .collect()
}

/// Reads the files of one container.
pub struct Sampler {
    /// controller dir name → the container's cgroup directory.
    cgroups: BTreeMap<String, PathBuf>,
    proc: PathBuf,
    host_memory: u64,
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn read_u64(p: &Path) -> u64 {
    read(p).trim().parse().unwrap_or(0)
}

impl Sampler {
    /// For the container whose init is `pid` and whose cgroups are named
    /// `cgroup_name`; None if it is gone. A process that just exited shows the
    /// root cgroups (and a recycled pid someone else's): sampling those would
    /// report the whole host's usage as the container's.
    pub fn new(pid: u32, cgroup_name: &str) -> Option<Sampler> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let text = std::fs::read_to_string(proc.join("cgroup")).ok()?;
        let own = text.lines().any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory"))
                && l.ends_with(&format!("/{cgroup_name}"))
        });
        if !own {
            return None;
        }
        let mut cgroups = BTreeMap::new();
        for l in text.lines() {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            for c in ctrls.split(',').filter(|c| !c.is_empty()) {
                let dir = Path::new("/sys/fs/cgroup")
                    .join(ctrls)
                    .join(path.trim_start_matches('/'));
                cgroups.insert(c.to_string(), dir);
            }
        }
        let host_memory = parse_kv(&read(Path::new("/proc/meminfo")).replace(':', ""))
            .get("MemTotal")
            .map(|kb| kb * 1024)
            .unwrap_or(0);
        Some(Sampler {
            cgroups,
            proc,
            host_memory,
        })
    }

    fn file(&self, ctrl: &str, name: &str) -> PathBuf {
        self.cgroups
            .get(ctrl)
            .map(|d| d.join(name))
            .unwrap_or_default()
    }

    /// `cpu_stats` now.
    pub fn cpu(&self) -> Value {
        let percpu: Vec<u64> = read(&self.file("cpuacct", "cpuacct.usage_percpu"))
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let ticks = parse_kv(&read(&self.file("cpuacct", "cpuacct.stat")));
        let throttle = parse_kv(&read(&self.file("cpu", "cpu.stat")));
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        json!({
            "cpu_usage": {
                "total_usage": read_u64(&self.file("cpuacct", "cpuacct.usage")),
                "percpu_usage": percpu,
                "usage_in_kernelmode": ticks.get("system").copied().unwrap_or(0) * NS_PER_TICK,
                "usage_in_usermode": ticks.get("user").copied().unwrap_or(0) * NS_PER_TICK,
            },
            "system_cpu_usage": system_cpu_ns(&read(Path::new("/proc/stat"))),
            "online_cpus": online,
            "throttling_data": {
                "periods": throttle.get("nr_periods").copied().unwrap_or(0),
                "throttled_periods": throttle.get("nr_throttled").copied().unwrap_or(0),
                "throttled_time": throttle.get("throttled_time").copied().unwrap_or(0),
            },
        })
    }

    /// The whole stats object, with `precpu` from an earlier [`Sampler::cpu`].
    pub fn sample(&self, id: &str, precpu: Option<(Value, String)>) -> Value {
        let limit = match read_u64(&self.file("memory", "memory.limit_in_bytes")) {
            0 => self.host_memory,
            l if l >= UNLIMITED => self.host_memory,
            l => l.min(self.host_memory.max(1)),
        };
        let pids_max = read(&self.file("pids", "pids.max"));
        let mut pids = json!({"current": read_u64(&self.file("pids", "pids.current"))});
        if let Ok(n) = pids_max.trim().parse::<u64>() {
            pids["limit"] = json!(n);
        }
        let (precpu, preread) = precpu.unwrap_or((
            json!({"cpu_usage": {"total_usage": 0}, "throttling_data": {}}),
            "0001-01-01T00:00:00Z".into(),
        ));
        json!({
            "id": id,
            "read": Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
            "preread": preread,
            "pids_stats": pids,
            "blkio_stats": {
                "io_service_bytes_recursive":
                    parse_blkio(&read(&self.file("blkio", "blkio.throttle.io_service_bytes_recursive"))),
                "io_serviced_recursive":
                    parse_blkio(&read(&self.file("blkio", "blkio.throttle.io_serviced_recursive"))),
            },
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": self.cpu(),
            "precpu_stats": precpu,
            "memory_stats": {
                "usage": read_u64(&self.file("memory", "memory.usage_in_bytes")),
                "max_usage": read_u64(&self.file("memory", "memory.max_usage_in_bytes")),
                "stats": parse_kv(&read(&self.file("memory", "memory.stat"))),
                "limit": limit,
            },
            "networks": parse_net_dev(&read(&self.proc.join("net/dev"))),
        })
    }
}

/// Docker's answer for a container that is not running: all zero.
pub fn stopped_sample(id: &str) -> Value {
    json!({
        "id": id,
        "read": "0001-01-01T00:00:00Z",
        "preread": "0001-01-01T00:00:00Z",
        "pids_stats": {},
        "blkio_stats": {"io_service_bytes_recursive": null},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}, "throttling_data": {}},
        "precpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}, "throttling_data": {}},
        "memory_stats": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_read_the_kernels_formats() {
        let kv = parse_kv("cache 4096\nrss 8192\ntotal_inactive_file 0\n");
        assert_eq!(kv["rss"], 8192);
        assert_eq!(
            system_cpu_ns("cpu  10 0 5 100 0 0 0 0 0 0\ncpu0 1 2 3\n"),
            115 * NS_PER_TICK
        );
        let net = parse_net_dev(
            "Inter-|   Receive\n face |bytes\n    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n  eth0: 90 1 0 0 0 0 0 0 180 2 0 0 0 0 0 0\n",
        );
        assert_eq!(net.len(), 1);
        assert_eq!(net["eth0"]["rx_bytes"], 90);
        assert_eq!(net["eth0"]["tx_packets"], 2);
        let b = parse_blkio("8:0 Read 4096\n8:0 Write 512\nTotal 4608\n");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0]["op"], "read");
        assert_eq!(b[1]["value"], 512);
    }

    #[test]
    fn a_live_process_can_be_sampled() {
        // Our own process: its cgroups and /proc exist on any Linux host.
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let memory = cgroups
            .lines()
            .find(|l| l.split(':').nth(1) == Some("memory"))
            .expect("a v1 memory cgroup");
        let name = memory.rsplit('/').next().unwrap();
        if name.is_empty() {
            // In the root cgroup: nothing names it, so nothing to sample.
            assert!(Sampler::new(std::process::id(), "x").is_none());
            return;
        }
        let s = Sampler::new(std::process::id(), name).expect("sampler");
        assert!(Sampler::new(std::process::id(), "not-ours").is_none());
        let v = s.sample("self", None);
        assert!(v["cpu_stats"]["system_cpu_usage"].as_u64().unwrap() > 0);
        assert!(v["memory_stats"]["limit"].as_u64().unwrap() > 0);
        assert_eq!(v["preread"], "0001-01-01T00:00:00Z");
    }
}
