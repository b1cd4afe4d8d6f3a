//! Terminals and the detach sequence, through the real docker CLI (given a pty by
//! `script`) and the raw API.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use testkit::{AtollInstance, docker_cli};

fn started() -> AtollInstance {
    let a = AtollInstance::start();
    a.load_busybox();
    a
}

/// A docker command line running under `script`, which gives it a terminal.
struct Term {
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Term {
    fn start(a: &AtollInstance, args: &str) -> Term {
        let mut child = Command::new("script")
            .args([
                "-qec",
                &format!("{} {args}", docker_cli().display()),
                "/dev/null",
            ])
            .env("DOCKER_HOST", a.docker_host())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut out = child.stdout.take().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = out.read(&mut b) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
        Term { child, output }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits for `needle` in the output: the program is up and the CLI's
    /// terminal is in raw mode (typed keys reach it unchanged).
    fn wait_for(&self, needle: &str) {
        testkit::wait_for(
            || self.text().contains(needle),
            Duration::from_secs(30),
            &format!("{needle:?} on the terminal"),
        );
    }

    fn send(&mut self, b: &[u8]) {
        self.child.stdin.as_mut().unwrap().write_all(b).unwrap();
    }

    /// The CLI's exit code, and what the terminal showed.
    fn exit_code(mut self) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (s.code(), self.text());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the CLI did not exit; terminal: {}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reads until `needle` shows up (or panics after the read timeout).
fn read_until(s: &mut impl Read, needle: &str) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = s.read(&mut b).unwrap_or(0);
        assert!(
            n > 0,
            "stream ended before {needle:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// True once the peer has closed the stream (EOF), within the read timeout.
fn ends(s: &mut impl Read) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn run_it_exit_code_and_ctrl_p_ctrl_q_detach() {
    let a = started();
    let mut t = Term::start(
        &a,
        "run -it --rm busybox sh -c 'echo ready; read l; echo got:$l; exit 5'",
    );
    t.wait_for("ready");
    t.send(b"typed\r");
    t.wait_for("got:typed");
    let (code, text) = t.exit_code();
    assert_eq!(code, Some(5), "{text}");

    // Ctrl-C goes through the terminal to the container's foreground processes.
    let mut t = Term::start(
        &a,
        "run -it --rm busybox sh -c 'trap \"echo caught; exit 9\" INT; echo ready; sleep 100; echo not-interrupted'",
    );
    t.wait_for("ready");
    t.send(b"\x03");
    let (code, text) = t.exit_code();
    assert_eq!(code, Some(9), "{text}");
    assert!(text.contains("caught"), "{text}");

    // Ctrl-P Ctrl-Q leaves the container running. The CLI exits 0 from `run`,
    // and 1 with "read escape sequence" from `attach`, as against Docker.
    let mut t = Term::start(&a, "run -it --name det busybox sh");
    t.wait_for("# ");
    t.send(b"echo hi-$((1+2))\r");
    t.wait_for("hi-3");
    t.send(b"\x10\x11");
    let (code, text) = t.exit_code();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Running}}", "det"]),
        "true"
    );
    // --detach-keys on attach.
    let mut t = Term::start(&a, "attach --detach-keys ctrl-a,x det");
    t.send(b"\r");
    t.wait_for("# ");
    t.send(b"\x01x");
    let (code, text) = t.exit_code();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("read escape sequence"), "{text}");
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Running}}", "det"]),
        "true"
    );
}

#[test]
fn the_server_honours_detach_keys_on_attach_and_exec() {
    let a = started();
    a.docker_ok(&["run", "-dit", "--name", "term", "busybox", "sh"]);
    // Attach (docker-py and other clients rely on the server for this).
    let mut s = a.hijack(
        "/containers/term/attach?stream=1&stdin=1&stdout=1&stderr=1&detachKeys=ctrl-a,ctrl-b",
        "",
    );
    s.write_all(b"echo marker-$((40+2))\n").unwrap();
    read_until(&mut s, "marker-42");
    s.write_all(b"\x01\x02").unwrap();
    assert!(
        ends(&mut s),
        "the attach stream did not end on the detach keys"
    );
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Running}}", "term"]),
        "true"
    );

    // Exec with the default sequence (ctrl-p,ctrl-q): the exec keeps running.
    let r = a.api(
        "POST",
        "/containers/term/exec",
        Some(&serde_json::json!({
            "Cmd": ["sh"], "Tty": true, "AttachStdin": true, "AttachStdout": true,
        })),
    );
    let eid = r.json().unwrap()["Id"].as_str().unwrap().to_string();
    let mut s = a.hijack(&format!("/exec/{eid}/start"), r#"{"Tty":true}"#);
    s.write_all(b"echo exec-$((1+1))\n").unwrap();
    read_until(&mut s, "exec-2");
    s.write_all(b"\x10\x11").unwrap();
    assert!(
        ends(&mut s),
        "the exec stream did not end on the detach keys"
    );
    let ins = a
        .api("GET", &format!("/exec/{eid}/json"), None)
        .json()
        .unwrap();
    assert_eq!(ins["Running"], true, "{ins}");

    // Without a terminal the bytes are data, not a detach.
    let out = a.docker_stdin(&["exec", "-i", "term", "od", "-An", "-tx1"], b"\x10\x11");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10 11"),
        "{out:?}"
    );

    let r = a.api(
        "POST",
        "/containers/term/attach?stream=1&stdin=1&detachKeys=ctrl-12",
        None,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Invalid detach keys"), "{}", r.text());
    let r = a.api(
        "POST",
        "/containers/term/exec",
        Some(&serde_json::json!({"Cmd": ["sh"], "DetachKeys": "nope"})),
    );
    assert_eq!(r.status, 400);
    assert!(a.ping());
}

#[test]
fn attachers_share_output_and_the_cli_proxies_signals() {
    let a = started();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "talk",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done",
    ]);
    let attach = || {
        let mut c = Command::new(docker_cli())
            .args(["attach", "--no-stdin", "talk"])
            .env("DOCKER_HOST", a.docker_host())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = c.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut out = out;
            let mut b = [0u8; 4096];
            while let Ok(n) = out.read(&mut b) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&b[..n]));
            }
        });
        (c, seen)
    };
    let (mut c1, s1) = attach();
    let (mut c2, s2) = attach();
    testkit::wait_for(
        || s1.lock().unwrap().lines().count() > 3 && s2.lock().unwrap().lines().count() > 3,
        Duration::from_secs(20),
        "both attachers to see output",
    );
    // A late attacher sees what comes after it, not what came before.
    let (mut c3, s3) = attach();
    testkit::wait_for(
        || s3.lock().unwrap().lines().count() > 2,
        Duration::from_secs(20),
        "the late attacher to see output",
    );
    assert!(!s3.lock().unwrap().contains("line0\n"));
    for c in [&mut c1, &mut c2, &mut c3] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Running}}", "talk"]),
        "true"
    );

    // --sig-proxy (the default): a signal to the CLI reaches the container.
    let mut run = Command::new(docker_cli())
        .args([
            "run",
            "-i",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .env("DOCKER_HOST", a.docker_host())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = run.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("ready") {
        let n = out.read(&mut b).unwrap();
        assert!(n > 0, "the container did not start");
        got.extend_from_slice(&b[..n]);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("got-term"), "{rest}");
    assert_eq!(run.wait().unwrap().code(), Some(3));
}

#[test]
fn a_hundred_megabytes_through_attach_arrive_complete_and_in_order() {
    let a = started();
    let out = a.docker_with(
        &["run", "--rm", "busybox", "seq", "1", "12500000"],
        None,
        Duration::from_secs(300),
    );
    assert!(out.status.success());
    let mut want = String::with_capacity(100 << 20);
    for i in 1..=12_500_000u32 {
        want.push_str(&i.to_string());
        want.push('\n');
    }
    assert!(want.len() > 95_000_000);
    assert_eq!(out.stdout.len(), want.len());
    assert!(out.stdout == want.as_bytes(), "output out of order");
}
