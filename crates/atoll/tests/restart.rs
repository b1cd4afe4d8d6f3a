//! Stopping `atoll up` leaves containers running; starting it again re-adopts them.
//! `atoll reset` removes everything.

use std::time::Duration;

use testkit::{AtollInstance, wait_for};

#[test]
fn containers_survive_a_restart_of_atoll_and_reset_cleans_up() {
    let mut a = AtollInstance::start();
    a.load_busybox();
    let id = a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "long",
        "busybox",
        "sh",
        "-c",
        "echo before; while true; do sleep 0.1; done",
    ]);
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "short",
        "busybox",
        "sh",
        "-c",
        "sleep 1; echo done",
    ]);
    // Exits (with failure) while atoll is down: its restart policy applies on return.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:1",
        "busybox",
        "sh",
        "-c",
        "sleep 1; exit 2",
    ]);
    wait_for(
        || a.docker_ok(&["logs", "long"]).contains("before"),
        Duration::from_secs(10),
        "log line",
    );
    let pid: u32 = a
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "long"])
        .parse()
        .unwrap();
    assert!(pid > 0);
    // Shims are forked by the zygote, a child of `atoll up`, yet show as
    // `atoll shim …` and are nobody's children but init's.
    let up = a.pid().expect("atoll up runs");
    let zygotes: Vec<u32> = children_of(up)
        .into_iter()
        .filter(|p| proc_field(*p, "comm").trim() == "atoll-zygote")
        .collect();
    assert_eq!(zygotes.len(), 1, "one zygote under atoll up");
    let shims = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("atoll shim id={id} .*state-dir={}", a.data_dir().display()),
        ])
        .output()
        .unwrap();
    let shims: Vec<u32> = String::from_utf8_lossy(&shims.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(shims.len(), 1, "one shim for the container");
    assert_eq!(proc_field(shims[0], "comm").trim(), "atoll");

    a.stop();
    wait_for(
        || !std::path::Path::new(&format!("/proc/{}", zygotes[0])).exists(),
        Duration::from_secs(10),
        "the zygote to die with atoll up",
    );
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container died with atoll"
    );
    for s in &shims {
        assert!(
            std::path::Path::new(&format!("/proc/{s}")).exists(),
            "shim {s} died with atoll"
        );
    }
    // "short" exits while atoll is down.
    std::thread::sleep(Duration::from_millis(1500));
    a.restart();

    assert!(a.docker_ok(&["ps", "-q"]).contains(&id[..12]));
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Status}}", "short"]),
        "exited"
    );
    assert!(a.docker_ok(&["logs", "long"]).contains("before"));
    assert!(a.docker_ok(&["logs", "short"]).contains("done"));
    wait_for(
        || {
            a.docker_ok(&[
                "inspect",
                "-f",
                "{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}",
                "flaky",
            ]) == "1 exited 2"
        },
        Duration::from_secs(20),
        "the restart policy to run once after atoll came back",
    );
    assert_eq!(a.docker_ok(&["ps", "-q"]), &id[..12]);
    // The survivor kept its network (its segment was not taken with those
    // of the containers that ended meanwhile), and its name resolves.
    let out = a.docker_ok(&[
        "exec", "long", "sh", "-c",
        "ping -c 1 -W 2 172.17.0.1 >/dev/null && echo gateway; nslookup long >/dev/null && echo named",
    ]);
    assert_eq!(out, "gateway\nnamed");
    a.docker_ok(&["stop", "-t", "1", "long"]);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    a.docker_ok(&["rm", "long", "short", "flaky"]);

    // reset: a running container, its mounts, its network devices: all gone.
    a.docker_ok(&["run", "-d", "--name", "again", "busybox", "sleep", "1000"]);
    let pid: u32 = a
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "again"])
        .parse()
        .unwrap();
    let data = a.data_dir().to_path_buf();
    a.stop();
    let st = std::process::Command::new(testkit::atoll_bin())
        .args(["reset", "--data-dir", data.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_for(
        || !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        Duration::from_secs(10),
        "container killed by reset",
    );
    assert!(!data.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(data.to_str().unwrap()));
}

/// A server reboot: atoll stops, and every shim and container process dies
/// without a word (runc's state directory survives, as it is on disk).
#[test]
fn always_containers_run_again_after_a_server_restart() {
    let mut a = AtollInstance::start();
    a.load_busybox();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "always",
        "--restart",
        "always",
        "busybox",
        "sleep",
        "1000",
    ]);
    a.docker_ok(&["run", "-d", "--name", "plain", "busybox", "sleep", "1000"]);
    let ids: Vec<String> = ["always", "plain"]
        .iter()
        .map(|n| a.docker_ok(&["inspect", "-f", "{{.Id}}", n]))
        .collect();
    a.stop();
    let data = a.data_dir().to_path_buf();
    let shims = std::process::Command::new("pgrep")
        .args(["-f", &format!("atoll shim .*{}", data.display())])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&shims.stdout).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
    for id in &ids {
        let _ = std::process::Command::new("runc")
            .arg("--root")
            .arg(data.join("agent/runc"))
            .args(["kill", id, "KILL"])
            .status();
    }
    a.restart();
    testkit::wait_for(
        || a.docker_ok(&["inspect", "-f", "{{.State.Running}}", "always"]) == "true",
        std::time::Duration::from_secs(30),
        "the always container to run again",
    );
    assert_eq!(a.docker_ok(&["exec", "always", "echo", "alive"]), "alive");
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Running}}", "plain"]),
        "false"
    );
    // It can be started by hand again too.
    a.docker_ok(&["start", "plain"]);
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Running}}", "plain"]),
        "true"
    );
}

fn proc_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).unwrap_or_default()
}

/// Direct children of `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = proc_field(p, "stat");
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}
