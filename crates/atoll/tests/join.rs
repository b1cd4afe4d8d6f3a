//! Servers on other machines: `atoll head` alone, and `atoll agent --head …
//! --token …` joining it over the network (here loopback). Tokens are one-time
//! and pinned to the cluster's CA; the agent serves only the head, over mutual
//! TLS; operators reach the head's cluster port with an operator certificate;
//! agent and head restarts keep the membership.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use testkit::{AtollInstance, StartOptions, json, wait_for};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// An `atoll agent` process with its own data dir; killed and reset on drop.
struct Agent {
    data_dir: PathBuf,
    listen: String,
    head: String,
    child: Option<Child>,
}

impl Agent {
    fn new(head: &str) -> Agent {
        let data_dir = tempfile::Builder::new()
            .prefix("atj")
            .rand_bytes(4)
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        Agent {
            data_dir,
            listen: format!("tcp://127.0.0.1:{}", free_port()),
            head: head.to_string(),
            child: None,
        }
    }

    fn command(&self, name: &str, token: Option<&str>) -> Command {
        let mut cmd = Command::new(testkit::atoll_bin());
        cmd.arg("agent")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen",
                &self.listen,
                "--head",
                &self.head,
                "--name",
                name,
            ])
            .env("NO_COLOR", "1")
            .env_remove("ATOLL_JOIN_TOKEN");
        if let Some(t) = token {
            cmd.env("ATOLL_JOIN_TOKEN", t);
        }
        cmd
    }

    /// Runs the agent until it exits on its own (a refused join).
    fn run_refused(&self, name: &str, token: Option<&str>) -> String {
        let out: Output = testkit::instance::run_with_timeout(
            self.command(name, token),
            None,
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(
            !out.status.success(),
            "the agent should have refused to start"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn start(&mut self, name: &str, token: Option<&str>) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = self
            .command(name, token)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> &str {
        self.listen.trim_start_matches("tcp://")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "agent log:\n{}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
        }
        let _ = Command::new(testkit::atoll_bin())
            .arg("reset")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .status();
        let _ = std::fs::remove_file(self.log_path());
    }
}

/// Sends one plain HTTP request to `addr` and returns whatever comes back.
fn plain_http(addr: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return Vec::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /v1/info HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

fn head_on(port: u16) -> AtollInstance {
    AtollInstance::start_with(StartOptions {
        command: Some("head".into()),
        args: vec!["--cluster-listen".into(), format!("127.0.0.1:{port}")],
        ..Default::default()
    })
}

#[test]
fn a_server_joins_with_a_one_time_token_and_serves_only_its_head() {
    let port = free_port();
    let mut head = head_on(port);
    let head_addr = format!("127.0.0.1:{port}");
    assert_eq!(
        json(&head.operator_ok(&["server", "ls", "--json"])),
        serde_json::json!([])
    );
    let token = head.operator_ok(&["server", "token", "--ttl", "10m"]);
    assert!(token.starts_with("ATL1."), "{token}");

    // Refused joins leave nothing behind on the head.
    let mut a = Agent::new(&head_addr);
    let err = a.run_refused("srv-a", None);
    assert!(err.contains("has not joined yet: pass --token"), "{err}");
    let err = a.run_refused("srv-a", Some("nonsense"));
    assert!(err.contains("malformed join token"), "{err}");
    let secret = token.rsplit('.').next().unwrap();
    let foreign = format!("ATL1.{}.{secret}", "0".repeat(64));
    let err = a.run_refused("srv-a", Some(&foreign));
    assert!(err.contains("is not the one this token is for"), "{err}");
    let err = a.run_refused("Bad_Name", Some(&token));
    assert!(err.contains("invalid server name"), "{err}");
    assert_eq!(head.server_state("srv-a"), "absent");

    // The real join.
    a.start("srv-a", Some(&token));
    wait_for(
        || head.server_state("srv-a") == "up",
        Duration::from_secs(30),
        "srv-a up",
    );
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(a.data_dir.join("agent/pki").join(f).exists(), "{f}");
    }
    // The token is spent.
    let b = Agent::new(&head_addr);
    let err = b.run_refused("srv-b", Some(&token));
    assert!(
        err.contains("invalid join token: unknown, already used or expired"),
        "{err}"
    );
    // A second token works once, but not for a name that is taken.
    let token2 = head.operator_ok(&["server", "token"]);
    let err = b.run_refused("srv-a", Some(&token2));
    assert!(
        err.contains("a server named srv-a is already a member"),
        "{err}"
    );

    // The agent talks TLS only, and only to the head.
    let plain = plain_http(a.addr());
    assert!(
        !String::from_utf8_lossy(&plain).contains("hostname"),
        "plain HTTP got an answer"
    );

    // Containers run on it.
    head.load_busybox();
    head.docker_ok(&[
        "run",
        "-d",
        "--name",
        "far",
        "busybox",
        "sh",
        "-c",
        "echo far-away; sleep 1000",
    ]);
    assert_eq!(
        head.docker_ok(&["exec", "far", "echo", "exec-ok"]),
        "exec-ok"
    );
    wait_for(
        || head.docker_ok(&["logs", "far"]).contains("far-away"),
        Duration::from_secs(10),
        "logs",
    );
    let out = head.docker_stdin(&["run", "-i", "--rm", "busybox", "cat"], b"through-tls");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through-tls");

    // Operators on another machine: a certificate, then the cluster port.
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().join("ops");
    head.operator_ok(&["cert", "--name", "ops", "--out", dir.to_str().unwrap()]);
    let remote = |cert_dir: &Path, args: &[&str]| {
        let mut cmd = Command::new(testkit::atoll_bin());
        cmd.args(args)
            .args(["--head", &head_addr, "--cert-dir"])
            .arg(cert_dir);
        testkit::instance::run_with_timeout(cmd, None, Duration::from_secs(30)).unwrap()
    };
    let out = remote(&dir, &["server", "ls", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))[0]["id"],
        "srv-a"
    );
    // An agent's certificate is not an operator's.
    let out = remote(&a.data_dir.join("agent/pki"), &["server", "ls"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an operator certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The agent serves only the head: an operator's certificate, good enough
    // for the head's cluster port, gets nothing from it.
    let curl = |host: &str, addr: &str, path: &str| {
        let port = addr.rsplit(':').next().unwrap();
        let out = Command::new("curl")
            .args(["-sS", "-m", "10", "--cacert"])
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"))
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .arg(format!("https://{host}:{port}{path}"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, body) = curl("head.atoll.internal", &head_addr, "/v1/servers");
    assert!(ok && body.contains("srv-a"), "curl to the head: {body}");
    let (ok, body) = curl("srv-a.agents.atoll.internal", a.addr(), "/v1/info");
    assert!(
        !ok && body.is_empty(),
        "the agent answered an operator: {body}"
    );

    // The agent restarts without a token (it is a member), re-adopting its container.
    a.stop();
    wait_for(
        || head.server_state("srv-a") == "down",
        Duration::from_secs(15),
        "srv-a down",
    );
    a.start("srv-a", None);
    wait_for(
        || head.server_state("srv-a") == "up",
        Duration::from_secs(30),
        "srv-a back",
    );
    assert_eq!(head.docker_ok(&["exec", "far", "echo", "again"]), "again");

    // The head restarts and follows its servers again from the store.
    head.restart();
    wait_for(
        || head.server_state("srv-a") == "up",
        Duration::from_secs(30),
        "srv-a up after the head restarted",
    );
    assert_eq!(
        head.docker_ok(&["inspect", "-f", "{{.State.Status}}", "far"]),
        "running"
    );
    head.docker_ok(&["rm", "-f", "far"]);

    // A dead server is forgotten; a new machine may then join under its name.
    a.stop();
    wait_for(
        || head.server_state("srv-a") == "down",
        Duration::from_secs(15),
        "srv-a down",
    );
    head.operator_ok(&["server", "forget", "srv-a"]);
    assert_eq!(head.server_state("srv-a"), "absent");
    let token3 = head.operator_ok(&["server", "token"]);
    let mut c = Agent::new(&head_addr);
    c.start("srv-a", Some(&token3));
    wait_for(
        || head.server_state("srv-a") == "up",
        Duration::from_secs(30),
        "the new srv-a up",
    );
    head.docker_ok(&["run", "--rm", "busybox", "true"]);
}
