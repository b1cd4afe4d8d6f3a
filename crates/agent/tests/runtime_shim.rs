//! Real containers through the real shim and runc (as root): output in the
//! json log and over attach, exit codes, kill, create errors, stdin, tty,
//! users, `--init`, `--network none`, and a shim outliving its agent.
//! The shim runs as the test-only binary `atoll-test-shim` (src/bin), which
//! calls `shim_main` exactly like `atoll shim` does.

mod runtime_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent::runc::Runtime;
use agent::shim::spawn_shim;
use runtime_common::*;

#[test]
fn output_reaches_log_and_attach_and_exit_code_passes_through() {
    let c = Ctr::new();
    let spec = c.spec(&["sh", "-c", "echo hello; echo oops >&2; echo bye; exit 3"]);
    c.write_bundle(&spec);
    let h = spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("spawn shim");
    assert!(h.pid > 0 && h.shim_pid > 0);
    assert_eq!(control(&c.paths.control_sock, "pid")["pid"], h.pid);
    let a = attach(&c.paths.attach_sock, false, true, true);
    let state = c.runc.state(&c.id).expect("state").expect("known");
    assert_eq!(state.status, "created");
    c.runc.start(&c.id).expect("start");
    let (out, err) = read_frames(a);
    assert_eq!(out, "hello\nbye\n");
    assert_eq!(err, "oops\n");
    let exit = c.wait();
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(exit["oom_killed"], false);
    assert!(
        exit["finished_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&c.paths.exit_file).expect("exit file"))
            .expect("exit json");
    assert_eq!(file["exit_code"], 3);
    assert_eq!(c.log_text("stdout"), "hello\nbye\n");
    assert_eq!(c.log_text("stderr"), "oops\n");
    // runc's container was deleted, so the same id can run again.
    wait_for(|| c.runc.state(&c.id).ok() == Some(None));
    let again = spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("second run");
    assert!(again.pid > 0);
    // A process this quick can be reaped, and its runc state deleted by the
    // shim, before `runc start` returns: then runc fails although it ran (the
    // agent handles this the same way).
    if let Err(e) = c.runc.start(&c.id) {
        wait_for(|| c.paths.exit_file.exists());
        eprintln!("runc start raced the exit: {e}");
    }
    assert_eq!(c.wait()["exit_code"], 3);
    assert_eq!(c.log_text("stdout"), "hello\nbye\nhello\nbye\n");
}

#[test]
fn sigkill_gives_137_and_wait_after_exit_answers() {
    let c = Ctr::new();
    let spec = c.spec(&["sleep", "100"]);
    c.write_bundle(&spec);
    spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("spawn shim");
    c.runc.start(&c.id).expect("start");
    assert_eq!(
        c.runc.state(&c.id).expect("state").map(|s| s.status),
        Some("running".into())
    );
    assert!(c.runc.list().expect("list").iter().any(|e| e.id == c.id));
    // A waiter that connects before the kill.
    let sock = c.paths.control_sock.clone();
    let waiter = std::thread::spawn(move || control(&sock, "wait"));
    std::thread::sleep(Duration::from_millis(100));
    c.runc.kill(&c.id, "SIGKILL", true).expect("kill");
    assert_eq!(waiter.join().expect("waiter")["exit_code"], 137);
    // The shim is gone afterwards, and left its answer in exit.json.
    wait_for(|| !c.paths.control_sock.exists());
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&c.paths.exit_file).expect("exit file"))
            .expect("exit json");
    assert_eq!(file["exit_code"], 137);
}

#[test]
fn missing_executable_is_a_readable_error() {
    let c = Ctr::new();
    let spec = c.spec(&["nosuchcmd"]);
    c.write_bundle(&spec);
    let e = spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect_err("must fail");
    let msg = e.to_string();
    eprintln!("runc create error: {msg}");
    assert!(
        msg.contains("exec: \"nosuchcmd\": executable file not found in $PATH"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    // Nothing left behind: runc does not know the id, the sockets are gone.
    assert_eq!(c.runc.state(&c.id).expect("state"), None);
    assert!(!c.paths.control_sock.exists());
}

#[test]
fn unknown_user_fails_like_docker() {
    let c = Ctr::new();
    let mut spec = c.spec(&["true"]);
    spec.process.user = "xyz".into();
    let e = agent::bundle::write_bundle(&spec, &c.paths, None, &c.cgroup_parent)
        .expect_err("unknown user");
    assert_eq!(
        e.to_string(),
        "unable to find user xyz: no matching entries in passwd file"
    );
}

#[test]
fn shim_outlives_its_agent_and_stays_small() {
    let c = Ctr::new();
    let spec = c.spec(&["sh", "-c", "echo alive; sleep 1; echo still here"]);
    c.write_bundle(&spec);
    // A stand-in agent process spawns the shim, then is killed.
    let mut agent = KillOnDrop(
        Command::new(SHIM_EXE)
            .arg("spawn")
            .arg(SHIM_EXE)
            .args(c.shim_args(&spec).to_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fake agent"),
    );
    let mut line = String::new();
    BufReader::new(agent.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("readiness");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"ok"), "{line}");
    let shim_pid: u32 = words[2].parse().expect("shim pid");
    agent.0.kill().expect("kill agent");
    agent.0.wait().expect("reap agent");
    assert!(Path::new(&format!("/proc/{shim_pid}")).exists());
    c.runc.start(&c.id).expect("start");
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kib(shim_pid).expect("shim rss");
    eprintln!("shim VmRSS: {rss} KiB (pid {shim_pid})");
    assert_eq!(c.wait()["exit_code"], 0);
    assert_eq!(c.log_text("stdout"), "alive\nstill here\n");
    wait_for(|| !Path::new(&format!("/proc/{shim_pid}")).exists());
}

#[test]
fn stdin_is_forwarded_and_eof_closes_it() {
    let c = Ctr::new();
    let mut spec = c.spec(&["cat"]);
    spec.process.open_stdin = true;
    c.write_bundle(&spec);
    spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("spawn shim");
    let mut a = attach(&c.paths.attach_sock, true, true, true);
    c.runc.start(&c.id).expect("start");
    a.write_all(b"ping\npong\n").expect("stdin");
    a.shutdown(std::net::Shutdown::Write).expect("eof");
    let (out, err) = read_frames(a);
    assert_eq!(out, "ping\npong\n");
    assert_eq!(err, "");
    assert_eq!(c.wait()["exit_code"], 0);
}

#[test]
fn slow_attach_client_gets_everything_without_unbounded_buffering() {
    let c = Ctr::new();
    // About 2 MiB of output, far more than the per-client buffer.
    let spec = c.spec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 2048 ]; do head -c 1023 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done",
    ]);
    // busybox `tr` is needed for the script.
    std::os::unix::fs::symlink("busybox", c.paths.rootfs.join("bin/tr")).expect("tr");
    c.write_bundle(&spec);
    let h = spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("spawn shim");
    let _ = h;
    let mut a = attach(&c.paths.attach_sock, false, true, false);
    c.runc.start(&c.id).expect("start");
    // Do not read for a while: the shim must block, not buffer 2 MiB.
    std::thread::sleep(Duration::from_millis(1500));
    let shim_pid: u32 = std::fs::read_to_string(&c.paths.shim_pid_file)
        .expect("shim pid")
        .trim()
        .parse()
        .expect("pid");
    let rss = rss_kib(shim_pid).expect("rss");
    eprintln!("shim VmRSS with a stalled attach client: {rss} KiB");
    assert!(rss < 8 * 1024, "shim grew to {rss} KiB");
    let mut all = Vec::new();
    a.read_to_end(&mut all).expect("read all");
    let (out, _) = read_frames(&all[..]);
    assert_eq!(out.len(), 2048 * 1024);
    assert_eq!(c.wait()["exit_code"], 0);
    assert_eq!(c.log_entries().len(), 2048);
}

#[test]
fn tty_output_is_raw() {
    let c = Ctr::new();
    let mut spec = c.spec(&["sh", "-c", "tty; echo hi"]);
    spec.process.tty = true;
    c.write_bundle(&spec);
    spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("spawn shim");
    assert_eq!(control(&c.paths.control_sock, "resize 40 100")["ok"], true);
    let mut a = attach(&c.paths.attach_sock, false, true, true);
    c.runc.start(&c.id).expect("start");
    let mut raw = String::new();
    a.read_to_string(&mut raw).expect("read");
    assert!(raw.contains("/dev/pts/0"), "{raw:?}");
    assert!(raw.contains("hi\r\n"), "{raw:?}");
    assert_eq!(c.wait()["exit_code"], 0);
    assert!(c.log_text("stdout").contains("hi"));
}

#[test]
fn user_init_hostname_and_network_none() {
    let c = Ctr::new();
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "id -u; id -g; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /sys/class/net/lo/flags; cat /etc/hosts; cat /etc/resolv.conf",
    ]);
    std::os::unix::fs::symlink("busybox", c.paths.rootfs.join("bin/tr")).expect("tr");
    spec.process.user = "nobody".into();
    spec.init = true;
    c.write_bundle(&spec);
    spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("spawn shim");
    c.runc.start(&c.id).expect("start");
    assert_eq!(c.wait()["exit_code"], 0);
    let out = c.log_text("stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534", "{out}");
    assert_eq!(lines[1], "65534", "{out}");
    assert_eq!(lines[2], "testhost", "{out}");
    assert!(lines[3].starts_with("/sbin/docker-init -- sh -c"), "{out}");
    // IFF_UP | IFF_LOOPBACK | IFF_RUNNING...: lo is up in a `none` network.
    let flags = u32::from_str_radix(lines[4].trim_start_matches("0x"), 16).expect("flags");
    assert_eq!(flags & 1, 1, "lo is down: {out}");
    assert!(out.contains("127.0.0.1\tlocalhost"), "{out}");
    assert!(out.contains("nameserver "), "{out}");
}

/// Kills a helper process even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn container_starts_with_default_signal_mask() {
    // The shim blocks SIGCHLD for its signalfd; the container must not inherit that.
    let c = Ctr::new();
    let spec = c.spec(&["sh", "-c", "cat /proc/self/status"]);
    c.write_bundle(&spec);
    spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("spawn shim");
    c.runc.start(&c.id).expect("start");
    assert_eq!(c.wait()["exit_code"], 0);
    let status = c.log_text("stdout");
    let blocked = status
        .lines()
        .find(|l| l.starts_with("SigBlk:"))
        .expect("SigBlk line");
    assert_eq!(blocked.split_whitespace().nth(1), Some("0000000000000000"));
}

#[test]
fn memory_limit_kills_and_reports_oom() {
    let c = Ctr::new();
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    std::os::unix::fs::symlink("busybox", c.paths.rootfs.join("bin/tr")).expect("tr");
    spec.resources.memory = 16 << 20;
    c.write_bundle(&spec);
    spawn_shim(Path::new(SHIM_EXE), &c.shim_args(&spec)).expect("spawn shim");
    c.runc.start(&c.id).expect("start");
    let exit = c.wait();
    assert_eq!(exit["exit_code"], 137, "{exit}");
    assert_eq!(exit["oom_killed"], true, "{exit}");
    assert!(!c.log_text("stdout").contains("survived"));
}
