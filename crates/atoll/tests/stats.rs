//! `docker stats` through the real docker CLI against a temporary `atoll up`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{AtollInstance, docker_cli};

#[test]
fn stats_show_real_cpu_memory_network_and_pids() {
    let a = AtollInstance::start();
    a.load_busybox();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "-m",
        "64m",
        "busybox",
        "sh",
        "-c",
        "while true; do :; done",
    ]);
    a.docker_ok(&["run", "-d", "--name", "idle", "busybox", "sleep", "1000"]);
    let out = a.docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.NetIO}} {{.PIDs}}",
        "busy",
        "idle",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let busy: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(busy[0], "busy");
    let busy_cpu: f64 = busy[1].trim_end_matches('%').parse().unwrap();
    // Loose bounds: the machine may be busy with other tests.
    assert!(busy_cpu > 10.0, "a busy loop shows {busy_cpu}% CPU");
    assert!(lines[0].contains("/ 64MiB"), "{}", lines[0]);
    assert_eq!(busy.last(), Some(&"1"), "pids of busy: {}", lines[0]);
    let idle: Vec<&str> = lines[1].split_whitespace().collect();
    let cpu: f64 = idle[1].trim_end_matches('%').parse().unwrap();
    assert!(
        cpu < busy_cpu,
        "sleep shows {cpu}% CPU, the busy loop {busy_cpu}%"
    );

    // The raw API: Docker's fields, the container's own network counters.
    let v = a
        .api("GET", "/containers/idle/stats?stream=false", None)
        .json()
        .unwrap();
    assert_eq!(v["name"], "/idle");
    assert!(v["cpu_stats"]["system_cpu_usage"].as_u64().unwrap() > 0);
    assert!(
        v["precpu_stats"]["cpu_usage"]["total_usage"]
            .as_u64()
            .is_some()
    );
    assert!(v["memory_stats"]["usage"].as_u64().unwrap() > 0);
    assert!(v["networks"]["eth0"]["rx_bytes"].as_u64().is_some(), "{v}");
    assert!(v["networks"].get("lo").is_none());

    // Streaming: samples keep coming, with CPU figures.
    let mut child = Command::new(docker_cli())
        .args(["stats", "--format", "{{.CPUPerc}}", "busy"])
        .env("DOCKER_HOST", a.docker_host())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&all);
            // The CLI redraws with terminal escapes: take the number before each %.
            let high = text
                .split('%')
                .filter_map(|chunk| {
                    let n: String = chunk
                        .chars()
                        .rev()
                        .take_while(|c| c.is_ascii_digit() || *c == '.')
                        .collect();
                    n.chars().rev().collect::<String>().parse::<f64>().ok()
                })
                .filter(|p| *p > 10.0)
                .count();
            if high >= 2 {
                return true;
            }
        }
        false
    });
    let ok = reader.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "streaming stats did not show the busy loop twice");

    // A stopped container: zeros; an unknown one: 404.
    a.docker_ok(&["kill", "idle"]);
    let out = a.docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.CPUPerc}} {{.MemUsage}}",
        "idle",
    ]);
    assert_eq!(out, "0.00% 0B / 0B");
    let err = a.docker_err(&["stats", "--no-stream", "nosuch"]);
    assert!(err.contains("No such container"), "{err}");
}

#[test]
fn top_lists_the_containers_processes() {
    let a = AtollInstance::start();
    a.load_busybox();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "tp",
        "busybox",
        "sh",
        "-c",
        "sleep 1001 & sleep 1002",
    ]);
    let out = a.docker_ok(&["top", "tp"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("PID") && lines[0].contains("CMD"),
        "{out}"
    );
    assert!(
        out.contains("sleep 1001") && out.contains("sleep 1002"),
        "{out}"
    );
    // Only the container's two (sh exec'd the last sleep): nothing of the host.
    assert_eq!(lines.len(), 3, "{out}");
    assert!(!out.contains("atoll up"));
    let out = a.docker_ok(&["top", "tp", "-o", "pid,comm"]);
    assert!(out.lines().next().unwrap().contains("COMMAND"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let err = a.docker_err(&["top", "tp", "-o", "comm"]);
    assert!(err.contains("Couldn't find PID field"), "{err}");
    a.docker_ok(&["kill", "tp"]);
    let err = a.docker_err(&["top", "tp"]);
    assert!(err.contains("is not running"), "{err}");
}
