//! `docker exec` through the real docker CLI against a temporary `atoll up`.

use std::process::Command;
use std::time::Duration;

use testkit::{AtollInstance, docker_cli, sha256_hex, wait_for};

/// An instance with busybox loaded and one running container `box`.
fn with_container() -> AtollInstance {
    let a = AtollInstance::start();
    a.load_busybox();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "-e",
        "FROM_CTR=yes",
        "-w",
        "/srv",
        "busybox",
        "sleep",
        "1000",
    ]);
    a
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

#[test]
fn exec_runs_in_the_container_with_its_options_and_exit_code() {
    let a = with_container();
    assert_eq!(a.docker_ok(&["exec", "box", "echo", "hello"]), "hello");
    // The container's env and working dir are inherited; -e/-w/-u override.
    assert_eq!(
        a.docker_ok(&["exec", "box", "sh", "-c", "echo $FROM_CTR; pwd"]),
        "yes\n/srv"
    );
    let out = a.docker_ok(&[
        "exec",
        "-e",
        "X=1",
        "-e",
        "FROM_CTR=no",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "box",
        "sh",
        "-c",
        "echo $X $FROM_CTR $HOME; pwd; id -un",
    ]);
    // HOME comes from the user's passwd entry.
    assert_eq!(out, "1 no /nonexistent\n/tmp\nnobody");
    // Same pid namespace as the container: its init is there.
    assert!(a.docker_ok(&["exec", "box", "ps"]).contains("sleep 1000"));

    let out = a.docker(&["exec", "box", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "out");
    assert_eq!(text(&out.stderr), "err");

    let out = a.docker(&["exec", "box", "nosuchcmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stdout).contains("executable file not found"),
        "{out:?}"
    );
    let out = a.docker(&["exec", "-u", "nosuchuser", "box", "true"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nosuchuser"), "{out:?}");
}

#[test]
fn exec_detached_and_inspect() {
    let a = with_container();
    a.docker_ok(&[
        "exec",
        "-d",
        "box",
        "sh",
        "-c",
        "sleep 0.3; touch /tmp/done",
    ]);
    wait_for(
        || {
            a.docker(&["exec", "box", "test", "-f", "/tmp/done"])
                .status
                .success()
        },
        Duration::from_secs(10),
        "the detached exec to run",
    );

    let cid = a.docker_ok(&["inspect", "-f", "{{.Id}}", "box"]);
    let r = a.api(
        "POST",
        "/containers/box/exec",
        Some(&serde_json::json!({"Cmd": ["sh", "-c", "exit 4"], "AttachStdout": true})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let eid = r.json().unwrap()["Id"].as_str().unwrap().to_string();
    let ins = a
        .api("GET", &format!("/exec/{eid}/json"), None)
        .json()
        .unwrap();
    assert_eq!(ins["Running"], false);
    assert_eq!(ins["ExitCode"], serde_json::Value::Null);
    assert_eq!(ins["ContainerID"], cid.as_str());
    assert_eq!(ins["ProcessConfig"]["entrypoint"], "sh");
    assert_eq!(ins["ProcessConfig"]["arguments"][1], "exit 4");
    let ids = a.docker_ok(&["inspect", "-f", "{{json .ExecIDs}}", "box"]);
    assert!(ids.contains(&eid), "{ids}");

    let r = a.api(
        "POST",
        &format!("/exec/{eid}/start"),
        Some(&serde_json::json!({"Detach": true})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(
        || {
            a.api("GET", &format!("/exec/{eid}/json"), None)
                .json()
                .unwrap()["ExitCode"]
                == 4
        },
        Duration::from_secs(10),
        "the exec's exit code",
    );
    // An exec runs once.
    let r = a.api(
        "POST",
        &format!("/exec/{eid}/start"),
        Some(&serde_json::json!({"Detach": true})),
    );
    assert_eq!(r.status, 409, "{}", r.text());
}

#[test]
fn exec_errors_are_docker_like() {
    let a = with_container();
    let err = a.docker_err(&["exec", "nosuch", "true"]);
    assert!(err.contains("No such container: nosuch"), "{err}");

    let r = a.api(
        "POST",
        "/containers/box/exec",
        Some(&serde_json::json!({"Cmd": []})),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("No exec command specified"),
        "{}",
        r.text()
    );
    let r = a.api(
        "POST",
        "/containers/box/exec",
        Some(&serde_json::json!({"Cmd": "notalist"})),
    );
    assert_eq!(r.status, 400);
    let r = a.api("GET", &format!("/exec/{}/json", "0".repeat(64)), None);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("No such exec instance"), "{}", r.text());
    let r = a.api("POST", "/exec/nosuch/start", Some(&serde_json::json!({})));
    assert_eq!(r.status, 404);
    let err = a.docker_err(&["exec", "-w", "relative", "box", "true"]);
    assert!(err.contains("absolute path"), "{err}");

    a.docker_ok(&["pause", "box"]);
    let err = a.docker_err(&["exec", "box", "true"]);
    assert!(
        err.contains("is paused, unpause the container before exec"),
        "{err}"
    );
    a.docker_ok(&["unpause", "box"]);

    a.docker_ok(&["stop", "-t", "1", "box"]);
    let err = a.docker_err(&["exec", "box", "true"]);
    assert!(err.contains("is not running"), "{err}");
    let r = a.api(
        "POST",
        "/containers/box/exec",
        Some(&serde_json::json!({"Cmd": ["true"]})),
    );
    assert_eq!(r.status, 409);
}

#[test]
fn exec_streams_large_stdin_and_output_intact() {
    let a = with_container();
    assert_eq!(
        a.docker_stdin(&["exec", "-i", "box", "cat"], b"hi\n")
            .stdout,
        b"hi\n"
    );
    // 50 MB in through stdin (half-closed at the end), 100 MB back out.
    let mut data = vec![0u8; 50 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let out = a.docker_with(
        &[
            "exec",
            "-i",
            "box",
            "sh",
            "-c",
            "cat > /tmp/half; cat /tmp/half /tmp/half > /tmp/big; rm /tmp/half; sha256sum /tmp/big",
        ],
        Some(&data),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{out:?}");
    let mut twice = data.clone();
    twice.extend_from_slice(&data);
    let want = sha256_hex(&twice);
    assert!(
        text(&out.stdout).starts_with(&want),
        "{}",
        text(&out.stdout)
    );
    let out = a.docker_with(
        &["exec", "box", "cat", "/tmp/big"],
        None,
        Duration::from_secs(120),
    );
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), twice.len());
    assert!(
        out.stdout == twice,
        "100 MB of exec output arrived out of order"
    );
}

#[test]
fn exec_with_a_terminal() {
    let a = with_container();
    // Without a pty of its own the CLI still gets the container's terminal.
    let out = a.docker_ok(&["exec", "-t", "box", "sh", "-c", "tty; echo $TERM"]);
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("xterm"), "{out}");
    // `docker exec -it` from a real terminal (script gives the CLI a pty): the
    // typed line reaches the shell, and its exit code comes back.
    let cmd = format!(
        "{} exec -it box sh -c 'read line; echo got:$line; stty size; exit 5'",
        docker_cli().display()
    );
    let mut script = Command::new("script");
    script
        .args(["-qec", &cmd, "/dev/null"])
        .env("DOCKER_HOST", a.docker_host())
        .env("COLUMNS", "91")
        .env("LINES", "33");
    let out =
        testkit::instance::run_with_timeout(script, Some(b"typed\n"), Duration::from_secs(60))
            .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{s}");
    assert!(s.contains("got:typed"), "{s}");
}

#[test]
fn execs_end_with_their_container() {
    let a = with_container();
    let docker = docker_cli();
    let mut child = Command::new(&docker)
        .args(["exec", "box", "sleep", "300"])
        .env("DOCKER_HOST", a.docker_host())
        .spawn()
        .unwrap();
    wait_for(
        || a.docker_ok(&["exec", "box", "ps"]).contains("sleep 300"),
        Duration::from_secs(10),
        "the exec to run",
    );
    a.docker_ok(&["kill", "box"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the exec outlived its container"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(137));
}

#[test]
fn exec_joins_the_containers_namespaces_cgroups_and_privileges() {
    let a = with_container();
    let exec = |cmd: &str| a.docker_ok(&["exec", "box", "sh", "-c", cmd]);
    // Same namespaces and cgroups as the container's init.
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_eq!(
            exec(&format!("readlink /proc/self/ns/{ns}")),
            exec(&format!("readlink /proc/1/ns/{ns}")),
            "{ns} namespace"
        );
    }
    assert_eq!(exec("cat /proc/self/cgroup"), exec("cat /proc/1/cgroup"));
    // The container's capability sets and limits, not the host's.
    let caps = |pid: &str| exec(&format!("grep -E '^Cap(Bnd|Eff|Prm)' /proc/{pid}/status"));
    assert_eq!(caps("self"), caps("1"));
    assert!(
        !caps("self").contains("000001ffffffffff"),
        "full capabilities leaked"
    );
    assert_eq!(
        exec("grep 'open files' /proc/self/limits"),
        exec("grep 'open files' /proc/1/limits")
    );
    // Only stdio is open: nothing of the shim leaks in (the 4th is ls's own).
    let fds = exec("ls /proc/self/fd");
    assert!(fds.split_whitespace().count() <= 4, "{fds}");
    // The container's root, its own hostname, and a session of its own.
    assert!(exec("ls /").contains("bin"));
    assert_eq!(exec("hostname"), exec("cat /etc/hostname"));
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn shim_pids(a: &AtollInstance) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("atoll shim .*{}", a.data_dir().display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn dropped_attach_and_exec_sessions_leave_nothing_behind() {
    let mut a = with_container();
    let pid = a.pid().unwrap();
    let ctr_shim = *shim_pids(&a).first().expect("the container's shim");
    // Settle: one exec round trip, so lazily created things exist.
    a.docker_ok(&["exec", "box", "true"]);
    let (fds0, shim_fds0) = (fd_count(pid), fd_count(ctr_shim));
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let rss0 = rss(pid);
    let mut streams = Vec::new();
    for i in 0..100 {
        // Attach to a container that never writes: only the hang-up is seen.
        streams.push(a.hijack("/containers/box/attach?stream=1&stdout=1&stderr=1", ""));
        // An exec reading stdin: the drop is its EOF.
        let r = a.api(
            "POST",
            "/containers/box/exec",
            Some(&serde_json::json!({"Cmd": ["cat"], "AttachStdin": true, "AttachStdout": true})),
        );
        let eid = r.json().unwrap()["Id"].as_str().unwrap().to_string();
        streams.push(a.hijack(&format!("/exec/{eid}/start"), "{}"));
        if i == 99 {
            assert!(fd_count(pid) > fds0 + 100, "the sessions were not open");
        }
    }
    drop(streams);
    wait_for(
        || {
            let now = (fd_count(pid), fd_count(ctr_shim), shim_pids(&a).len());
            eprintln!(
                "fds {} (was {fds0}), container shim fds {} (was {shim_fds0}), shims {}",
                now.0, now.1, now.2
            );
            now.0 <= fds0 && now.1 <= shim_fds0 && now.2 == 1
        },
        Duration::from_secs(20),
        "head, agent and shims to release the dropped sessions",
    );
    let grown = rss(pid).saturating_sub(rss0);
    assert!(grown < 16 * 1024, "atoll up grew by {grown} kB");
    assert!(a.is_running());
}
