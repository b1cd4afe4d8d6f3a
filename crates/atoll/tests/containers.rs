//! The container lifecycle through the real docker CLI against a temporary `atoll up`.

use std::io::{Read, Write};
use std::time::Duration;

use testkit::{AtollInstance, wait_for, wait_for_some};

fn started() -> AtollInstance {
    let a = AtollInstance::start();
    a.load_busybox();
    a
}

fn status(a: &AtollInstance, name: &str) -> String {
    a.docker_ok(&["inspect", "-f", "{{.State.Status}}", name])
}

#[test]
fn run_streams_output_and_passes_exit_codes() {
    let a = started();
    assert_eq!(
        a.docker_ok(&["run", "--rm", "busybox", "echo", "hello"]),
        "hello"
    );
    let out = a.docker(&[
        "run",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "out");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let out = a.docker(&["run", "--rm", "busybox", "nosuchcmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"));
    // --rm removed both: only the exit-3 container remains.
    assert_eq!(a.docker_ok(&["ps", "-aq"]).lines().count(), 1);
}

#[test]
fn options_reach_the_process() {
    let a = started();
    let env_file = std::env::temp_dir().join(format!("atoll-envfile-{}", std::process::id()));
    std::fs::write(&env_file, "FROM_FILE=yes\n").unwrap();
    let out = a.docker_ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "--env-file",
        env_file.to_str().unwrap(),
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        "--hostname",
        "box1",
        "-l",
        "team=x",
        "busybox",
        "sh",
        "-c",
        "echo $A $FROM_FILE; pwd; id -u; id -g; hostname",
    ]);
    let _ = std::fs::remove_file(&env_file);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["1 yes", "/tmp", "1000", "1000", "box1"]
    );
    let out = a.docker_ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "echo",
        "busybox",
        "via",
        "entrypoint",
    ]);
    assert_eq!(out, "via entrypoint");
    let out = a.docker(&["run", "--rm", "--read-only", "busybox", "touch", "/x"]);
    assert_ne!(out.status.code(), Some(0));
    let out = a.docker_ok(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch",
        "busybox",
        "sh",
        "-c",
        "touch /scratch/x && echo ok",
    ]);
    assert_eq!(out, "ok");
    assert_eq!(
        a.docker_ok(&[
            "run",
            "--rm",
            "--init",
            "busybox",
            "sh",
            "-c",
            "cat /proc/1/comm"
        ]),
        "docker-init"
    );
    let mem = a.docker_ok(&[
        "run",
        "--rm",
        "-m",
        "64m",
        "--cpus",
        "0.5",
        "busybox",
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    assert_eq!(mem, (64u64 << 20).to_string());
    let lbl = a.docker_ok(&["run", "-d", "-l", "team=x", "busybox", "true"]);
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{index .Config.Labels \"team\"}}", &lbl]),
        "x"
    );

    // --group-add: names from the image's /etc/group and bare gids, for the
    // container's process and its execs (with another user too); a group
    // the image lacks fails the start with Docker's message.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "grouped",
        "--group-add",
        "user",
        "--group-add",
        "4242",
        "busybox",
        "sleep",
        "1000",
    ]);
    assert_eq!(
        a.docker_ok(&["exec", "grouped", "cat", "/proc/1/status"])
            .lines()
            .find(|l| l.starts_with("Groups:"))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")),
        Some("1000 4242".to_string())
    );
    assert_eq!(
        a.docker_ok(&["exec", "-u", "nobody", "grouped", "id", "-G"]),
        "65534 1000 4242"
    );
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{json .HostConfig.GroupAdd}}", "grouped"]),
        r#"["user","4242"]"#
    );
    let err = a.docker_err(&["run", "--rm", "--group-add", "ghosts", "busybox", "true"]);
    assert!(
        err.contains("unable to find group ghosts: no matching entries in group file"),
        "{err}"
    );
}

#[test]
fn lifecycle_ps_logs_stop_kill_restart_rename_rm() {
    let a = started();
    let id = a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "busybox",
        "sh",
        "-c",
        "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(id.len(), 64);
    wait_for(
        || a.docker_ok(&["logs", "web"]).contains("started"),
        Duration::from_secs(10),
        "first log line",
    );
    assert_eq!(status(&a, "web"), "running");
    assert_eq!(
        a.docker_ok(&["ps", "-q", "--filter", "name=web"]),
        &id[..12]
    );
    assert_eq!(
        a.docker_ok(&["ps", "--filter", "status=running", "--format", "{{.Names}}"]),
        "web"
    );
    let ts = a.docker_ok(&["logs", "-t", "--tail", "1", "web"]);
    assert!(ts.contains("Z started"), "{ts}");

    // Running containers refuse plain rm.
    let err = a.docker_err(&["rm", "web"]);
    assert!(err.contains("container is running"), "{err}");

    a.docker_ok(&["stop", "-t", "5", "web"]);
    assert_eq!(status(&a, "web"), "exited");
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "web"]),
        "0"
    );
    assert!(a.docker_ok(&["logs", "web"]).contains("bye"));
    assert_eq!(
        a.docker_ok(&["ps", "-aq", "--filter", "exited=0"]),
        &id[..12]
    );

    a.docker_ok(&["start", "web"]);
    assert_eq!(status(&a, "web"), "running");
    a.docker_ok(&["restart", "-t", "1", "web"]);
    assert_eq!(status(&a, "web"), "running");
    a.docker_ok(&["kill", "-s", "KILL", "web"]);
    wait_for(
        || status(&a, "web") == "exited",
        Duration::from_secs(10),
        "killed container to exit",
    );
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "web"]),
        "137"
    );
    let err = a.docker_err(&["kill", "web"]);
    assert!(err.contains("is not running"), "{err}");

    a.docker_ok(&["rename", "web", "web2"]);
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.Name}}", &id[..8]]),
        "/web2"
    );
    a.docker_ok(&["create", "--name", "other", "busybox", "true"]);
    let err = a.docker_err(&["rename", "other", "web2"]);
    assert!(err.contains("already in use"), "{err}");
    let err = a.docker_err(&["create", "--name", "other", "busybox", "true"]);
    assert!(err.contains("is already in use"), "{err}");
    let err = a.docker_err(&["create", "--name", "bad name!", "busybox", "true"]);
    assert!(err.contains("Invalid container name"), "{err}");

    // stop sends SIGKILL after the timeout to a process that ignores SIGTERM.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "busybox",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 0.1; done",
    ]);
    let t = std::time::Instant::now();
    a.docker_ok(&["stop", "-t", "1", "stubborn"]);
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "stubborn"]),
        "137"
    );

    assert_eq!(a.docker_ok(&["wait", "stubborn"]), "137");
    let pruned = a.docker_ok(&["container", "prune", "-f"]);
    assert!(pruned.contains(&id), "{pruned}");
    assert_eq!(a.docker_ok(&["ps", "-aq"]), "");
    let err = a.docker_err(&["inspect", "web2"]);
    assert!(err.contains("No such"), "{err}");
}

#[test]
fn logs_follow_and_since() {
    let a = started();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.3; done",
    ]);
    let out = a.docker_with(&["logs", "-f", "ticker"], None, Duration::from_secs(20));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["line1", "line2", "line3"]
    );
    let since = a.docker_ok(&[
        "logs",
        "--since",
        "2000-01-01T00:00:00Z",
        "--tail",
        "2",
        "ticker",
    ]);
    assert_eq!(since.lines().collect::<Vec<_>>(), ["line2", "line3"]);
    let future = a.docker_ok(&["logs", "--since", "2100-01-01T00:00:00Z", "ticker"]);
    assert_eq!(future, "");
}

#[test]
fn restart_policy_brings_a_container_back() {
    let a = started();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "busybox",
        "sh",
        "-c",
        "exit 1",
    ]);
    wait_for(
        || {
            a.docker_ok(&[
                "inspect",
                "-f",
                "{{.RestartCount}} {{.State.Status}}",
                "flaky",
            ]) == "2 exited"
        },
        Duration::from_secs(20),
        "two restarts then stop",
    );
    // The CLI refuses --rm with --restart itself; the API must refuse it too.
    let r = a.api(
        "POST",
        "/containers/create",
        Some(&serde_json::json!({"Image": "busybox", "HostConfig": {"AutoRemove": true, "RestartPolicy": {"Name": "always"}}})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("AutoRemove"), "{}", r.text());
}

/// The server's own address: the first global IPv4 address of its lowest
/// interface (its NIC, not a bridge a test made).
fn server_address() -> std::net::Ipv4Addr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no global address: {text}"));
    cidr.split('/').next().unwrap().parse().expect("an address")
}

#[test]
fn network_bridge_nat_and_published_ports() {
    let a = started();
    let ip_of = |n: &str| a.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", n]);
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "8080",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-srv > /www/index.html && httpd -f -p 8080 -h /www",
    ]);
    let ip = ip_of("srv");
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
    // Another container reaches it by IP over the bridge.
    // (busybox-static's wget crashes on name-service lookups; nc speaks HTTP fine.)
    let script = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 8080");
    let body = wait_for_some(
        || {
            let o = a.docker(&["run", "--rm", "busybox", "sh", "-c", &script]);
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.contains("hello-from-srv").then_some(out)
        },
        Duration::from_secs(20),
        "container to container over the bridge",
    );
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    // The published port is reachable at the server's address, from the
    // server too; never on its loopback, which stays the server's own.
    let port = a.docker_ok(&["port", "srv", "8080"]);
    let port: u16 = port.rsplit(':').next().unwrap().trim().parse().unwrap();
    let server = server_address();
    let got = wait_for_some(
        || {
            let mut s = std::net::TcpStream::connect((server, port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).ok()?;
            buf.contains("hello-from-srv").then_some(buf)
        },
        Duration::from_secs(20),
        "published port from the host",
    );
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let err =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("loopback is the server's");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let err = a.docker_err(&["run", "-d", "-p", "127.0.0.1:2222:22", "busybox", "true"]);
    assert!(
        err.contains("cannot publish port 22 on 127.0.0.1: a server's loopback is its own"),
        "{err}"
    );
    // A port the server listens on is never taken over (positive control:
    // the server really listens there).
    let own = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("listen");
    let own_port = own.local_addr().expect("addr").port().to_string();
    a.docker_ok(&[
        "create",
        "--name",
        "thief",
        "-p",
        &format!("{own_port}:80"),
        "busybox",
        "sleep",
        "60",
    ]);
    let err = a.docker_err(&["start", "thief"]);
    assert!(
        err.contains(&format!(
            "cannot publish port 80/tcp: the server listens on port {own_port} itself"
        )),
        "{err}"
    );
    drop(own);
    // Ports the operator reserves, and atoll's own, are refused at create;
    // the port next to a range is not (positive control), nor a range's
    // once the reservation is lifted.
    let e = a.operator_err(&["placement", "--reserved-ports", "9-8"]);
    assert!(e.contains("invalid port range \"9-8\""), "{e}");
    a.operator_ok(&["placement", "--reserved-ports", "2222,18000-18010"]);
    let shown = a.operator_ok(&["placement"]);
    assert!(
        shown.contains("reserved ports: 2222,18000-18010"),
        "{shown}"
    );
    for port in ["18005", "2222", "2376"] {
        let err = a.docker_err(&["create", "-p", &format!("{port}:80"), "busybox", "true"]);
        assert!(
            err.contains(&format!(
                "cannot publish port 80/tcp on host port {port}: the datacenter reserves it"
            )),
            "{err}"
        );
    }
    a.docker_ok(&[
        "create", "--name", "next", "-p", "18011:80", "busybox", "true",
    ]);
    a.operator_ok(&["placement", "--reserved-ports", "none"]);
    a.docker_ok(&[
        "create", "--name", "freed", "-p", "18005:80", "busybox", "true",
    ]);
    a.docker_ok(&["rm", "next", "freed"]);
    // --network none has only loopback.
    let ifs = a.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(ifs, "lo");
}

#[test]
fn bad_requests_get_docker_errors() {
    let a = started();
    let r = a.api("POST", "/v1.50/containers/create", None);
    assert_eq!(r.status, 400);
    let raw = testkit::http::Request {
        method: "POST",
        path: "/containers/create",
        headers: &[],
        body: Some(testkit::http::Body {
            content_type: "application/json",
            bytes: b"{\"Image\": ",
        }),
    };
    let r = testkit::http::send_unix(a.socket(), &raw, Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    let r = a.api(
        "POST",
        "/containers/create",
        Some(&serde_json::json!({"Image": "busybox", "Env": 5})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = a.api(
        "POST",
        "/containers/create",
        Some(&serde_json::json!({"Image": "nosuch:image"})),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json().unwrap()["message"], "No such image: nosuch:image");
    let r = a.api("GET", "/containers/doesnotexist/json", None);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json().unwrap()["message"],
        "No such container: doesnotexist"
    );
    let r = a.api("GET", "/containers/json?filters=%7Bbad", None);
    assert_eq!(r.status, 400);
    let r = a.api("GET", "/nonsense", None);
    assert_eq!(r.status, 404);
    let r = a.api(
        "POST",
        "/containers/create",
        Some(&serde_json::json!({"Image": "busybox", "HostConfig": {"Memory": 10}})),
    );
    assert_eq!(r.status, 400);
    // Nothing was created by any of the failures.
    assert_eq!(a.docker_ok(&["ps", "-aq"]), "");
}

#[test]
fn info_and_system_df_count_real_objects() {
    let a = started();
    a.docker_ok(&["run", "-d", "--name", "r1", "busybox", "sleep", "100"]);
    a.docker_ok(&["create", "--name", "c1", "busybox", "true"]);
    let info = a.docker_ok(&[
        "info",
        "--format",
        "{{.Containers}} {{.ContainersRunning}} {{.ContainersStopped}} {{.Images}} {{.NCPU}}",
    ]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(info, format!("2 1 1 1 {cpus}"));
    let mem: u64 = a
        .docker_ok(&["info", "--format", "{{.MemTotal}}"])
        .parse()
        .unwrap();
    assert!(mem > 1 << 30, "{mem}");
    let df = a.docker_ok(&[
        "system",
        "df",
        "--format",
        "{{.Type}} {{.TotalCount}} {{.Active}}",
    ]);
    assert!(df.contains("Images 1 1"), "{df}");
    assert!(df.contains("Containers 2 1"), "{df}");
    a.docker_ok(&["rm", "-f", "r1", "c1"]);
}

#[test]
fn stdin_and_tty_pass_through_attach() {
    let a = started();
    let out = a.docker_stdin(&["run", "-i", "--rm", "busybox", "cat"], b"hi\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    // 5 MB of stdin arrives intact (half-close ends `sha256sum`'s input).
    let data: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = a.docker_stdin(&["run", "-i", "--rm", "busybox", "sha256sum"], &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = testkit::sha256_hex(&data);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&want));
    let out = a.docker_ok(&["run", "-t", "--rm", "busybox", "sh", "-c", "tty"]);
    assert_eq!(out.trim(), "/dev/pts/0");
}

/// An "outside" host: a network namespace joined to the host by a veth pair, made
/// and removed by the test. Egress from a container must reach it NATed to the
/// host's address.
struct OutsideHost {
    ns: String,
    host_if: String,
}

impl OutsideHost {
    fn new() -> OutsideHost {
        let id = std::process::id() % 100000;
        let o = OutsideHost {
            ns: format!("atltest-out-{id}"),
            host_if: format!("atlto{id}"),
        };
        let peer = format!("atltp{id}");
        let sh = |cmd: String| {
            let st = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
                .unwrap();
            assert!(st.success(), "{cmd}");
        };
        sh(format!("ip netns add {}", o.ns));
        sh(format!(
            "ip link add {} type veth peer name {peer}",
            o.host_if
        ));
        sh(format!("ip link set {peer} netns {}", o.ns));
        sh(format!(
            "ip addr add 198.18.77.1/30 dev {} && ip link set {} up",
            o.host_if, o.host_if
        ));
        sh(format!(
            "ip netns exec {ns} ip addr add 198.18.77.2/30 dev {peer} && ip netns exec {ns} ip link set {peer} up && ip netns exec {ns} ip link set lo up",
            ns = o.ns
        ));
        o
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

#[test]
fn egress_is_masqueraded_to_the_host_address() {
    let a = started();
    let out = OutsideHost::new();
    // A one-shot TCP server in the outside namespace that prints its peer's address.
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", &out.ns, "python3", "-c",
            "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('198.18.77.2',9000));s.listen(1);s.settimeout(20);c,a=s.accept();print(a[0], c.recv(100).decode().strip(), flush=True)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        || {
            a.docker(&[
                "run",
                "--rm",
                "busybox",
                "sh",
                "-c",
                "echo egress | nc -w 2 198.18.77.2 9000",
            ])
            .status
            .success()
        },
        Duration::from_secs(20),
        "a container to reach the outside host",
    );
    let got = server.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&got.stdout).trim().to_string();
    assert_eq!(
        line, "198.18.77.1 egress",
        "source must be the host's address (NAT)"
    );
}

#[test]
fn resize_sets_the_terminal_size_of_tty_containers() {
    let a = started();
    a.docker_ok(&[
        "run",
        "-d",
        "-t",
        "--name",
        "tt",
        "busybox",
        "sh",
        "-c",
        "while [ \"$(stty size)\" != '40 100' ]; do sleep 0.1; done; echo resized; sleep 100",
    ]);
    let r = a.api("POST", "/containers/tt/resize?h=40&w=100", None);
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(
        || a.docker_ok(&["logs", "tt"]).contains("resized"),
        Duration::from_secs(10),
        "the container to see its new window size",
    );
    let r = a.api("POST", "/containers/tt/resize?h=-1&w=100", None);
    assert_eq!(r.status, 400, "{}", r.text());
    a.docker_ok(&["run", "-d", "--name", "notty", "busybox", "sleep", "100"]);
    let r = a.api("POST", "/containers/notty/resize?h=40&w=100", None);
    assert_eq!(r.status, 409, "{}", r.text());
    a.docker_ok(&["rm", "-f", "tt", "notty"]);
    let r = a.api("POST", "/containers/tt/resize?h=40&w=100", None);
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn pause_freezes_and_unpause_thaws() {
    let a = started();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "counter",
        "busybox",
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.05; done",
    ]);
    let lines = || a.docker_ok(&["logs", "counter"]).lines().count();
    wait_for(|| lines() > 2, Duration::from_secs(10), "first ticks");
    a.docker_ok(&["pause", "counter"]);
    assert_eq!(status(&a, "counter"), "paused");
    let ps = a.docker_ok(&["ps", "--format", "{{.Status}}"]);
    assert!(ps.ends_with("(Paused)"), "{ps}");
    // Frozen: no output while paused.
    let frozen = lines();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(lines(), frozen, "a paused container kept running");
    let err = a.docker_err(&["pause", "counter"]);
    assert!(err.contains("already paused"), "{err}");
    let err = a.docker_err(&["kill", "-s", "HUP", "counter"]);
    assert!(err.contains("is paused"), "{err}");
    a.docker_ok(&["unpause", "counter"]);
    assert_eq!(status(&a, "counter"), "running");
    wait_for(
        || lines() > frozen,
        Duration::from_secs(10),
        "ticks after unpause",
    );
    let err = a.docker_err(&["unpause", "counter"]);
    assert!(err.contains("not paused"), "{err}");
    // stop works on a paused container (it is thawed to receive the signal).
    a.docker_ok(&["pause", "counter"]);
    a.docker_ok(&["stop", "-t", "1", "counter"]);
    assert_eq!(status(&a, "counter"), "exited");
    let err = a.docker_err(&["pause", "counter"]);
    assert!(err.contains("is not running"), "{err}");
}

#[test]
fn update_changes_limits_of_running_and_stopped_containers() {
    let a = started();
    a.docker_ok(&[
        "run", "-d", "--name", "upd", "-m", "64m", "busybox", "sleep", "1000",
    ]);
    let mem = |name: &str| {
        a.docker_ok(&[
            "exec",
            name,
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ])
    };
    assert_eq!(mem("upd"), (64u64 << 20).to_string());
    a.docker_ok(&[
        "update",
        "-m",
        "128m",
        "--memory-swap",
        "256m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "50",
        "upd",
    ]);
    assert_eq!(mem("upd"), (128u64 << 20).to_string());
    assert_eq!(
        a.docker_ok(&["exec", "upd", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"]),
        "50000"
    );
    assert_eq!(
        a.docker_ok(&["exec", "upd", "cat", "/sys/fs/cgroup/pids/pids.max"]),
        "50"
    );
    assert_eq!(
        a.docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
            "upd"
        ]),
        format!("{} 500000000", 128u64 << 20)
    );
    a.docker_ok(&["update", "--restart", "on-failure:3", "upd"]);
    assert_eq!(
        a.docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}",
            "upd"
        ]),
        "on-failure:3"
    );
    // A stopped container gets the new limits on its next start.
    a.docker_ok(&["stop", "-t", "1", "upd"]);
    a.docker_ok(&["update", "-m", "96m", "--memory-swap", "192m", "upd"]);
    a.docker_ok(&["start", "upd"]);
    assert_eq!(mem("upd"), (96u64 << 20).to_string());

    let err = a.docker_err(&["update", "-m", "1m", "upd"]);
    assert!(err.contains("Minimum memory limit allowed is 6MB"), "{err}");
    let err = a.docker_err(&["update", "-m", "512m", "upd"]);
    assert!(
        err.contains("update the memoryswap at the same time"),
        "{err}"
    );
    let err = a.docker_err(&["update", "-m", "64m", "nosuch"]);
    assert!(err.contains("No such container"), "{err}");
    let err = a.docker_err(&["update", "--restart", "bogus", "upd"]);
    assert!(!err.is_empty());
}

/// `ps -s`, `inspect -s` and `system df` measure a container's own layer on
/// its server; a container that wrote nothing measures (almost) nothing.
#[test]
fn container_sizes_are_measured() {
    let a = AtollInstance::start();
    a.load_busybox();
    a.docker_ok(&[
        "run",
        "--name",
        "sized",
        "busybox",
        "sh",
        "-c",
        "head -c 3000000 /dev/zero > /big",
    ]);
    a.docker_ok(&["create", "--name", "untouched", "busybox"]);
    let rw = |name: &str| -> u64 {
        a.docker_ok(&["inspect", "-s", "-f", "{{.SizeRw}}", name])
            .parse()
            .unwrap()
    };
    let sized = rw("sized");
    assert!((3_000_000..3_100_000).contains(&sized), "{sized}");
    assert!(rw("untouched") < 10_000);
    let root: u64 = a
        .docker_ok(&["inspect", "-s", "-f", "{{.SizeRootFs}}", "sized"])
        .parse()
        .unwrap();
    assert!(
        root > sized + 1_000_000,
        "the image's layers count too: {root}"
    );
    let ps = a.docker_ok(&[
        "ps",
        "-a",
        "-s",
        "--filter",
        "name=sized",
        "--format",
        "{{.Size}}",
    ]);
    assert!(ps.starts_with("3MB (virtual "), "{ps}");
    let df = a.docker_ok(&["system", "df", "--format", "{{.Type}} {{.Size}}"]);
    assert!(df.contains("Containers 3MB"), "{df}");

    // Volumes are measured on their servers too: `system df -v` and what a
    // prune gives back.
    a.docker_ok(&[
        "run",
        "--name",
        "filler",
        "-v",
        "vbig:/v",
        "-v",
        "vsmall:/s",
        "busybox",
        "sh",
        "-c",
        "head -c 2000000 /dev/zero > /v/f; echo hi > /s/f",
    ]);
    let listed = a.docker_ok(&[
        "system",
        "df",
        "-v",
        "--format",
        "{{range .Volumes}}{{.Name}}={{.Size}}/{{.Links}} {{end}}",
    ]);
    assert!(
        listed.contains("vbig=2MB/1") && listed.contains("vsmall=3B/1"),
        "{listed}"
    );
    // The container pruned: its 3 MB layer and the filler's small one.
    let pruned = testkit::json(&String::from_utf8_lossy(
        &a.api("POST", "/v1.41/containers/prune", None).body,
    ));
    let reclaimed = pruned["SpaceReclaimed"].as_u64().unwrap();
    assert!((3_000_000..3_100_000).contains(&reclaimed), "{pruned}");
    // Volumes named and unused: `all` at 1.42+, every unused one before.
    let pruned = testkit::json(&String::from_utf8_lossy(
        &a.api("POST", "/v1.41/volumes/prune", None).body,
    ));
    assert_eq!(pruned["SpaceReclaimed"], 2_000_003, "{pruned}");
    assert_eq!(
        pruned["VolumesDeleted"].as_array().unwrap().len(),
        2,
        "{pruned}"
    );
}

/// The operator administers the datacenter: privileged containers, the
/// server's namespaces and devices are its (tenants get 403, unit-tested in
/// `cluster::security`).
#[test]
fn the_operator_runs_privileged_and_host_namespace_containers() {
    let a = started();
    let ns = |n: &str| {
        std::fs::read_link(format!("/proc/self/ns/{n}"))
            .unwrap()
            .display()
            .to_string()
    };
    let server_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let shared = a.docker_ok(&[
        "run",
        "--rm",
        "--pid",
        "host",
        "--ipc",
        "host",
        "--uts",
        "host",
        "busybox",
        "sh",
        "-c",
        "for n in pid ipc uts; do readlink /proc/self/ns/$n; done; hostname",
    ]);
    assert_eq!(
        shared.lines().collect::<Vec<_>>(),
        [
            ns("pid"),
            ns("ipc"),
            ns("uts"),
            server_name.trim().to_string()
        ]
    );
    // Control: without them, namespaces of its own.
    let own = a.docker_ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "for n in pid ipc uts; do readlink /proc/self/ns/$n; done",
    ]);
    for (line, n) in own.lines().zip(["pid", "ipc", "uts"]) {
        assert_ne!(line, ns(n));
    }

    // Privileged: every capability, no seccomp filter, mounts allowed, the
    // server's devices present.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    let script = "grep -E '^(CapEff|Seccomp):' /proc/self/status; \
                  mount -t tmpfs t /tmp 2>/dev/null && echo mounted; \
                  test -c /dev/loop-control && echo devices; true";
    let privileged = a.docker_ok(&["run", "--rm", "--privileged", "busybox", "sh", "-c", script]);
    assert_eq!(
        privileged.lines().collect::<Vec<_>>(),
        [cap_eff, "Seccomp:\t0", "mounted", "devices"],
        "{privileged}"
    );
    let plain = a.docker_ok(&["run", "--rm", "busybox", "sh", "-c", script]);
    assert!(
        plain.contains("Seccomp:\t2") && !plain.contains("mounted") && !plain.contains("devices"),
        "{plain}"
    );

    // A device of the server under another name, and a missing one.
    let dev = a.docker_ok(&[
        "run",
        "--rm",
        "--device",
        "/dev/null:/dev/mynull:rw",
        "busybox",
        "sh",
        "-c",
        "echo x > /dev/mynull && echo wrote; stat -c %t:%T /dev/mynull",
    ]);
    assert_eq!(dev, "wrote\n1:3");
    let err = a.docker_err(&[
        "run",
        "--rm",
        "--device",
        "/dev/no-such-atoll-dev",
        "busybox",
        "true",
    ]);
    assert!(
        err.contains(
            "error gathering device information while adding custom device \"/dev/no-such-atoll-dev\""
        ),
        "{err}"
    );
    // A device cgroup rule opens a node the defaults refuse (fuse, 10:229).
    let open_fuse =
        "mknod /dev/f c 10 229 && (exec 3<>/dev/f) 2>/dev/null && echo opened || echo refused";
    assert_eq!(
        a.docker_ok(&["run", "--rm", "busybox", "sh", "-c", open_fuse]),
        "refused"
    );
    assert_eq!(
        a.docker_ok(&[
            "run",
            "--rm",
            "--device-cgroup-rule",
            "c 10:229 rwm",
            "busybox",
            "sh",
            "-c",
            open_fuse,
        ]),
        "opened"
    );
    let err = a.docker_err(&["run", "--rm", "--runtime", "kata", "busybox", "true"]);
    assert!(
        err.contains("unknown or invalid runtime name: kata"),
        "{err}"
    );
    assert_eq!(
        a.docker_ok(&["run", "--rm", "--runtime", "runc", "busybox", "echo", "ok"]),
        "ok"
    );
}
