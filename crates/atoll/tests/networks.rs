//! Fabric networks through the real docker CLI: `docker network`
//! create/ls/inspect/rm/prune/connect/disconnect on one server, and networks
//! spanning a simulated 3-server datacenter (VXLAN between the servers'
//! namespaces), with two accounts on the same subnet kept apart. All traffic
//! stays inside namespaces the instances made.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use testkit::{AtollInstance, StartOptions, json, test_images, wait_for};

/// Asks 127.0.0.11 for the A record of `argv[1]` over TCP; prints the last
/// answer's address.
const DNS_OVER_TCP: &str = r#"
import socket, struct, sys
name = b"".join(bytes([len(l)]) + l.encode() for l in sys.argv[1].split("."))
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x00\x01\x00\x01"
s = socket.create_connection(("127.0.0.11", 53), timeout=5)
s.sendall(struct.pack(">H", len(q)) + q)
def read(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("closed")
        b += c
    return b
r = read(struct.unpack(">H", read(2))[0])
print(".".join(str(x) for x in r[-4:]))
"#;

/// Prints "ready", then the first datagram on port argv[1] that says
/// udp-hello (or "timeout" after 20 s).
const UDP_RECEIVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(20)
print("ready")
try:
    while True:
        data, peer = s.recvfrom(2048)
        if b"udp-hello" in data:
            print(data.decode(errors="replace").strip(), "from", peer[0])
            break
except socket.timeout:
    print("timeout")
"#;

/// Where container `id`'s namespace is pinned on simulated server `server`.
fn nodes_netns(a: &AtollInstance, server: &str, id: &str) -> std::path::PathBuf {
    a.data_dir()
        .join("nodes")
        .join(server)
        .join("agent/netns")
        .join(id)
}

fn started() -> AtollInstance {
    let a = AtollInstance::start();
    a.load_busybox();
    a
}

/// The segments (router namespaces) pinned under an agent dir.
fn segments(agent_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(agent_dir.join("netns"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("seg-") && !n.contains('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// `sh -c script` in a throwaway container; (output, exit code).
fn run_sh(
    docker: impl Fn(&[&str]) -> std::process::Output,
    net: &str,
    script: &str,
) -> (String, i32) {
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        net,
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    testkit::combined(&out)
}

#[test]
fn network_commands_on_one_server() {
    let a = started();
    // Every account has its default network, `bridge`.
    let ls = a.docker_ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert_eq!(ls, "bridge bridge");

    let id = a.docker_ok(&[
        "network",
        "create",
        "--subnet",
        "10.0.0.0/24",
        "--gateway",
        "10.0.0.254",
        "--ip-range",
        "10.0.0.128/25",
        "--label",
        "tier=front",
        "--attachable",
        "front",
    ]);
    assert_eq!(id.len(), 64);
    let n = json(&a.docker_ok(&["network", "inspect", "front"]))[0].clone();
    assert_eq!(n["Id"], id.as_str());
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
    assert_eq!(n["IPAM"]["Config"][0]["Gateway"], "10.0.0.254");
    assert_eq!(n["IPAM"]["Config"][0]["IPRange"], "10.0.0.128/25");
    assert_eq!(n["Labels"]["tier"], "front");
    assert_eq!(n["Attachable"], true);
    // By id prefix too.
    a.docker_ok(&["network", "inspect", &id[..12]]);

    // Refusals, Docker's way.
    for (args, says) in [
        (vec!["network", "create", "front"], "already exists"),
        (vec!["network", "create", "bridge"], "pre-defined"),
        (
            vec!["network", "create", "--subnet", "10.0.0.1/24", "x1"],
            "network address",
        ),
        (
            vec!["network", "create", "--subnet", "10.0.0.0/25", "x2"],
            "overlaps",
        ),
        (
            vec!["network", "create", "-d", "macvlan", "x3"],
            "not supported",
        ),
        (vec!["network", "create", "--ipv6", "x4"], "IPv6"),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.9.0.0/24",
                "--gateway",
                "10.8.0.1",
                "x5",
            ],
            "gateway",
        ),
        (vec!["network", "rm", "bridge"], "pre-defined"),
        (vec!["network", "inspect", "nope"], "not found"),
    ] {
        let err = a.docker_err(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(
        a.docker_ok(&[
            "network",
            "ls",
            "-q",
            "--filter",
            "label=tier=front",
            "--no-trunc"
        ]),
        id
    );
    assert_eq!(
        a.docker_ok(&[
            "network",
            "ls",
            "--filter",
            "type=custom",
            "--format",
            "{{.Name}}"
        ]),
        "front"
    );

    // Addresses come from the range; --ip and aliases are kept.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "--network-alias",
        "www",
        "busybox",
        "nc",
        "-ll",
        "-p",
        "8000",
        "-e",
        "echo",
        "web",
    ]);
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "fixed",
        "--network",
        "front",
        "--ip",
        "10.0.0.200",
        "busybox",
        "sleep",
        "600",
    ]);
    let web =
        json(&a.docker_ok(&["inspect", "web"]))[0]["NetworkSettings"]["Networks"]["front"].clone();
    assert_eq!(web["IPAddress"], "10.0.0.128");
    assert_eq!(web["Gateway"], "10.0.0.254");
    assert_eq!(web["Aliases"][0], "www");
    assert_eq!(web["IPAMConfig"], serde_json::Value::Null, "{web}");
    assert_eq!(
        a.docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.front.IPAddress}} {{json .NetworkSettings.Networks.front.IPAMConfig}}",
            "fixed"
        ]),
        r#"10.0.0.200 {"IPv4Address":"10.0.0.200"}"#
    );
    let err = a.docker_err(&[
        "run",
        "--rm",
        "--network",
        "front",
        "--ip",
        "10.0.0.200",
        "busybox",
        "true",
    ]);
    assert!(err.contains("Address already in use"), "{err}");
    let err = a.docker_err(&[
        "run",
        "--rm",
        "--network",
        "front",
        "--ip",
        "10.9.9.9",
        "busybox",
        "true",
    ]);
    assert!(err.contains("no configured subnet"), "{err}");
    let err = a.docker_err(&["run", "--rm", "--network", "nope", "busybox", "true"]);
    assert!(err.contains("not found"), "{err}");
    // The failed creates left nothing behind.
    assert_eq!(a.docker_ok(&["ps", "-aq"]).lines().count(), 2);
    let members = json(&a.docker_ok(&["network", "inspect", "front"]))[0]["Containers"].clone();
    assert_eq!(members.as_object().unwrap().len(), 2, "{members}");

    // Reachable on its network, through the gateway the routes say.
    let (out, _) = run_sh(
        |x| a.docker(x),
        "front",
        "ip route; nc -w 2 10.0.0.128 8000 </dev/null",
    );
    assert!(out.contains("default via 10.0.0.254"), "{out}");
    assert!(out.contains("web"), "{out}");
    // Names: container names, aliases (round robin over every holder),
    // `<name>.<network>`; only on networks the asker is on.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web2",
        "--network",
        "front",
        "--network-alias",
        "www",
        "busybox",
        "sleep",
        "600",
    ]);
    let (out, _) = run_sh(
        |x| a.docker(x),
        "front",
        "cat /etc/resolv.conf; nslookup web; nslookup www; nslookup fixed.front; nc -w 2 web 8000 </dev/null",
    );
    assert!(out.contains("nameserver 127.0.0.11"), "{out}");
    assert!(out.contains("Address: 10.0.0.128"), "{out}");
    assert!(
        out.contains("Address: 10.0.0.129"),
        "www is web and web2: {out}"
    );
    assert!(out.contains("Address: 10.0.0.200"), "{out}");
    assert!(out.trim_end().ends_with("web"), "reached by name: {out}");
    let (out, _) = run_sh(|x| a.docker(x), "bridge", "nslookup web");
    assert!(
        out.contains("NXDOMAIN") && !out.contains("10.0.0.128"),
        "{out}"
    );
    a.docker_ok(&["rename", "web2", "web3"]);
    let lookup = |name: &str| run_sh(|x| a.docker(x), "front", &format!("nslookup {name}")).0;
    wait_for(
        || lookup("web3").contains("10.0.0.129"),
        Duration::from_secs(10),
        "the new name to resolve",
    );
    // Reverse names, as Docker gives them.
    let out = lookup("10.0.0.129");
    assert!(out.contains("web3.front"), "{out}");
    // Over TCP too (asked from web3's own namespace).
    let id = a.docker_ok(&["inspect", "-f", "{{.Id}}", "web3"]);
    let netns = a.data_dir().join("agent/netns").join(id.trim());
    let tcp = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["python3", "-c", DNS_OVER_TCP, "web"])
        .output()
        .expect("nsenter python3");
    assert_eq!(
        String::from_utf8_lossy(&tcp.stdout).trim(),
        "10.0.0.128",
        "{}",
        String::from_utf8_lossy(&tcp.stderr)
    );
    // A stopped container's name does not resolve (Docker's), and comes
    // back with its start.
    a.docker_ok(&["stop", "-t", "0", "web3"]);
    wait_for(
        || lookup("web3").contains("NXDOMAIN"),
        Duration::from_secs(10),
        "a stopped container's name to go",
    );
    a.docker_ok(&["start", "web3"]);
    wait_for(
        || lookup("web3").contains("10.0.0.129"),
        Duration::from_secs(10),
        "the name of the started container",
    );
    a.docker_ok(&["rm", "-f", "web3"]);

    // Not from the default network...
    let (out, _) = run_sh(
        |x| a.docker(x),
        "bridge",
        "nc -w 2 10.0.0.128 8000 </dev/null",
    );
    assert!(!out.contains("web"), "{out}");
    let err = a.docker_err(&["network", "rm", "front"]);
    assert!(err.contains("active endpoints"), "{err}");

    // ...until connected, live; and cut off again once disconnected.
    a.docker_ok(&["run", "-d", "--name", "client", "busybox", "sleep", "600"]);
    a.docker_ok(&["network", "connect", "--alias", "cl", "front", "client"]);
    let nets = a.docker_ok(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        "client",
    ]);
    assert_eq!(nets, "bridge front");
    wait_for(
        || {
            a.docker(&[
                "exec",
                "client",
                "sh",
                "-c",
                "nc -w 2 10.0.0.128 8000 </dev/null",
            ])
            .stdout
            .starts_with(b"web")
        },
        Duration::from_secs(10),
        "the connected container to reach web",
    );
    let err = a.docker_err(&["network", "connect", "front", "client"]);
    assert!(err.contains("already exists"), "{err}");
    a.docker_ok(&["network", "disconnect", "front", "client"]);
    let out = a.docker(&[
        "exec",
        "client",
        "sh",
        "-c",
        "ip -4 addr; nc -w 2 10.0.0.128 8000 </dev/null",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("10.0.0.") && !text.contains("web"), "{text}");
    let err = a.docker_err(&["network", "disconnect", "front", "client"]);
    assert!(err.contains("not connected"), "{err}");
    // The default route moves to the next network when the network that
    // had it goes, and comes with the first network of a container with none.
    a.docker_ok(&["network", "connect", "front", "client"]);
    a.docker_ok(&["network", "disconnect", "bridge", "client"]);
    let routes = a.docker_ok(&["exec", "client", "ip", "route"]);
    assert!(routes.contains("default via 10.0.0.254"), "{routes}");
    a.docker_ok(&["network", "disconnect", "front", "client"]);
    let routes = a.docker_ok(&["exec", "client", "ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    a.docker_ok(&["network", "connect", "bridge", "client"]);
    let routes = a.docker_ok(&["exec", "client", "ip", "route"]);
    assert!(routes.contains("default via 172.17.0.1"), "{routes}");

    // Legacy links: the linked container under its alias in /etc/hosts,
    // and Docker's variables.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "-e",
        "SECRET=s3",
        "--expose",
        "5432",
        "busybox",
        "sleep",
        "600",
    ]);
    let db_ip = a.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "db"]);
    let out = a.docker_ok(&[
        "run",
        "--rm",
        "--name",
        "app1",
        "--link",
        "db:data-base",
        "busybox",
        "sh",
        "-c",
        "env; cat /etc/hosts; ping -c 1 -W 2 data-base >/dev/null && echo linked",
    ]);
    for want in [
        "DATA_BASE_NAME=/app1/data-base".to_string(),
        "DATA_BASE_ENV_SECRET=s3".to_string(),
        format!("DATA_BASE_PORT=tcp://{db_ip}:5432"),
        format!("DATA_BASE_PORT_5432_TCP_ADDR={db_ip}"),
        format!("{db_ip}\tdata-base"),
        "linked".to_string(),
    ] {
        assert!(out.contains(&want), "{want} in {out}");
    }
    // Whatever else a create names and is missing, it is said so (not a
    // 404, which the CLI would take for a missing image and try to pull).
    let err = a.docker_err(&["run", "--rm", "--link", "nope:x", "busybox", "true"]);
    assert!(err.contains("could not get container"), "{err}");
    assert!(!err.contains("Unable to find image"), "{err}");
    let err = a.docker_err(&["run", "--rm", "--volumes-from", "nope", "busybox", "true"]);
    assert!(err.contains("No such container: nope"), "{err}");
    assert!(!err.contains("Unable to find image"), "{err}");
    let err = a.docker_err(&[
        "run",
        "--rm",
        "--network",
        "front",
        "--link",
        "db:x",
        "busybox",
        "true",
    ]);
    assert!(err.contains("none of this container's networks"), "{err}");
    a.docker_ok(&["rm", "-f", "db"]);

    // An internal network has no way out: no default route.
    a.docker_ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.7.0.0/24",
        "quiet",
    ]);
    let (out, _) = run_sh(
        |x| a.docker(x),
        "quiet",
        "ip route; ping -c 1 -W 1 10.7.0.1 >/dev/null && echo gw-ok",
    );
    assert!(!out.contains("default"), "{out}");
    assert!(out.contains("gw-ok"), "{out}");
    // ...nor a way in: it cannot publish ports.
    let err = a.docker_err(&[
        "run",
        "--rm",
        "--network",
        "quiet",
        "-p",
        "80",
        "busybox",
        "true",
    ]);
    assert!(err.contains("first network quiet is internal"), "{err}");

    // A container without networks cannot join one; bad filters are 400.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "loner",
        "--network",
        "none",
        "busybox",
        "sleep",
        "600",
    ]);
    let err = a.docker_err(&["network", "connect", "front", "loner"]);
    assert!(err.contains("private (none) mode"), "{err}");
    a.docker_ok(&["rm", "-f", "loner"]);

    // The operator's `--network host`: the server's own namespace (here the
    // test's, as `atoll up` runs its agent in it), published ports dropped
    // as Docker drops them, no networks to connect.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "hostnet",
        "--network",
        "host",
        "-p",
        "80:80",
        "busybox",
        "sleep",
        "600",
    ]);
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = a.docker_ok(&["exec", "hostnet", "readlink", "/proc/self/ns/net"]);
    assert_eq!(theirs.trim(), ours.to_string_lossy());
    let nets = a.docker_ok(&[
        "inspect",
        "-f",
        "{{.HostConfig.NetworkMode}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}} {{len .NetworkSettings.Ports}}",
        "hostnet",
    ]);
    assert_eq!(nets, "host host 0");
    let err = a.docker_err(&["network", "connect", "front", "hostnet"]);
    assert!(err.contains("host network"), "{err}");
    a.docker_ok(&["rm", "-f", "hostnet"]);
    for filter in ["type=foo", "dangling=maybe", "colour=red"] {
        let err = a.docker_err(&["network", "ls", "--filter", filter]);
        assert!(err.contains("invalid filter"), "{filter}: {err}");
    }

    // Prune takes unused networks only, never the default one.
    a.docker_ok(&["network", "create", "spare"]);
    assert_eq!(
        a.docker_ok(&[
            "network",
            "ls",
            "--filter",
            "dangling=true",
            "--format",
            "{{.Name}}"
        ]),
        "quiet\nspare"
    );
    let pruned = a.docker_ok(&["network", "prune", "-f"]);
    assert!(
        pruned.contains("spare") && pruned.contains("quiet"),
        "{pruned}"
    );
    assert!(
        !pruned.contains("front") && !pruned.contains("bridge"),
        "{pruned}"
    );

    // Addresses and networks are kept across stop/start and restarts.
    a.docker_ok(&["stop", "-t", "0", "fixed"]);
    a.docker_ok(&["start", "fixed"]);
    assert_eq!(
        a.docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.front.IPAddress}}",
            "fixed"
        ]),
        "10.0.0.200"
    );

    // The last container of a network takes its segment with it (after a
    // short linger, so a network whose one container comes and goes does not
    // rebuild it every time): the unused `quiet` one goes first.
    let agent_dir = a.data_dir().join("agent");
    wait_for(
        || segments(&agent_dir).len() == 2,
        Duration::from_secs(10),
        "the segments of bridge and front only",
    );
    a.docker_ok(&["rm", "-f", "web", "fixed"]);
    wait_for(
        || segments(&agent_dir).len() == 1,
        Duration::from_secs(10),
        "front's segment to go",
    );
    a.docker_ok(&["network", "rm", "front"]);
    a.docker_ok(&["rm", "-f", "client"]);
    wait_for(
        || segments(&agent_dir).is_empty(),
        Duration::from_secs(10),
        "every segment to go",
    );

    // The agent's own network routes refuse what does not fit.
    let sock = agent_dir.join("agent.sock");
    let agent = |method: &str, path: &str, body: &str| -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .args(["-H", "Content-Type: application/json", "--data", body])
            .arg("--unix-socket")
            .arg(&sock)
            .arg(format!("http://agent{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let map = r#"{"vni":7,"version":1,"members":[]}"#;
    assert_eq!(
        agent("PUT", "/v1/networks/8", map),
        "400",
        "VNI of path and body differ"
    );
    assert_eq!(agent("PUT", "/v1/networks/7", "nonsense"), "400");
    let bad_mac =
        r#"{"vni":7,"version":1,"members":[{"mac":"zz","ip":"10.0.0.2","vtep":"10.1.1.1"}]}"#;
    assert_eq!(agent("PUT", "/v1/networks/7", bad_mac), "400");
    assert_eq!(agent("PUT", "/v1/networks/7", map), "204");
    let ep = r#"{"network":"n","name":"n","vni":7,"subnet":"10.0.0.0/24","gateway":"10.0.0.1","ip":"10.0.0.2","mac":"02:42:0a:00:00:02"}"#;
    assert_eq!(
        agent(
            "POST",
            &format!("/v1/containers/{}/networks", "0".repeat(64)),
            ep
        ),
        "404"
    );
}

#[test]
fn networks_span_servers_and_accounts_stay_apart() {
    let a = AtollInstance::start_with(StartOptions {
        args: vec!["--nodes".into(), "3".into()],
        ..Default::default()
    });
    a.load_busybox();
    let alice = a.tenant("alice");
    alice.docker_ok(&["load", "-i", &test_images().busybox.path.to_string_lossy()]);
    // Both accounts: a network of the same name and subnet, and three
    // servers answering on the same addresses, one per server.
    type Ok<'a> = Box<dyn Fn(&[&str]) -> String + 'a>;
    let oks: [(&str, Ok); 2] = [
        ("op", Box::new(|x| a.docker_ok(x))),
        ("alice", Box::new(|x| alice.docker_ok(x))),
    ];
    for (who, docker) in &oks {
        docker(&["network", "create", "--subnet", "10.0.0.0/24", "app"]);
        for i in 1..=3 {
            let reply = format!("{who}{i}");
            docker(&[
                "run",
                "-d",
                "--name",
                &format!("s{i}"),
                "--network",
                "app",
                "busybox",
                "sh",
                "-c",
                &format!("nc -ll -p 8000 -e echo {reply}"),
            ]);
        }
    }
    let list = json(&a.operator_ok(&["container", "ls", "--json"]));
    let servers: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "s1" || c["name"] == "s2" || c["name"] == "s3")
        .map(|c| c["server"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(servers.len(), 3, "spread over the servers: {list}");

    // Each account reaches its own three by IP and by name, TCP and ping,
    // from wherever its probe lands, never the other's at the same addresses
    // or of the same names.
    type Run<'a> = Box<dyn Fn(&[&str]) -> std::process::Output + 'a>;
    let runs: [(&str, Run); 2] = [
        ("op", Box::new(|x| a.docker(x))),
        ("alice", Box::new(|x| alice.docker(x))),
    ];
    for (who, docker) in &runs {
        let who = *who;
        for i in 2..=4 {
            let script = format!(
                "nc -w 2 10.0.0.{i} 8000 </dev/null; ping -c 1 -W 2 s{} >/dev/null && echo pong; nc -w 2 s{} 8000 </dev/null",
                i - 1,
                i - 1
            );
            let want = format!("{who}{}", i - 1);
            wait_for(
                || {
                    let (out, _) = run_sh(docker, "app", &script);
                    out.matches(&want).count() == 2 && out.contains("pong")
                },
                Duration::from_secs(20),
                &format!("{who}'s probe to reach {want} by address and name"),
            );
            let (out, _) = run_sh(docker, "app", &script);
            let other = if who == "op" { "alice" } else { "op" };
            assert!(!out.contains(other), "{who} reached {other}: {out}");
        }
    }

    // A restarted container keeps its address and is reached again.
    a.docker_ok(&["stop", "-t", "0", "s2"]);
    a.docker_ok(&["start", "s2"]);
    assert_eq!(
        a.docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.app.IPAddress}}",
            "s2"
        ]),
        "10.0.0.3"
    );
    wait_for(
        || {
            run_sh(|x| a.docker(x), "app", "nc -w 2 10.0.0.3 8000 </dev/null")
                .0
                .contains("op2")
        },
        Duration::from_secs(20),
        "s2 to answer after its restart",
    );

    // UDP across servers, by name: s2's syslogd forwards to s1:5140, where a
    // receiver listens in s1's namespace (the host's python, entered there).
    let s1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "s1" && c["account"] != "alice")
        .expect("op's s1")
        .clone();
    let netns = nodes_netns(
        &a,
        s1["server"].as_str().unwrap(),
        s1["id"].as_str().unwrap(),
    );
    let mut receiver = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["python3", "-u", "-c", UDP_RECEIVER, "5140"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nsenter python3");
    let mut lines = std::io::BufReader::new(receiver.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut lines, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    a.docker_ok(&[
        "exec",
        "s2",
        "sh",
        "-c",
        "syslogd -n -R s1:5140 -O /dev/null & sleep 0.5; \
         for i in 1 2 3 4 5; do logger udp-hello; sleep 0.3; done; kill $!",
    ]);
    line.clear();
    std::io::BufRead::read_line(&mut lines, &mut line).unwrap();
    let _ = receiver.wait();
    assert!(line.contains("udp-hello"), "s1 received: {line:?}");

    // Every segment goes with the last container of its network.
    a.docker_ok(&["rm", "-f", "s1", "s2", "s3"]);
    alice.docker_ok(&["rm", "-f", "s1", "s2", "s3"]);
    let nodes = a.data_dir().join("nodes");
    wait_for(
        || (1..=3).all(|i| segments(&nodes.join(format!("node-{i}")).join("agent")).is_empty()),
        Duration::from_secs(20),
        "every server's segments to go",
    );
}

/// With NET_ADMIN (hence also NET_RAW), a container forges its source
/// address and its MAC, towards a container of its own network: every forged
/// frame is dropped at its port, and its own address and MAC still work.
#[test]
fn forged_addresses_and_macs_are_dropped() {
    let a = started();
    a.docker_ok(&["network", "create", "--subnet", "10.0.0.0/24", "app"]);
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "peer",
        "--network",
        "app",
        "--ip",
        "10.0.0.3",
        "busybox",
        "nc",
        "-ll",
        "-p",
        "8000",
        "-e",
        "echo",
        "hi",
    ]);
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "forger",
        "--network",
        "app",
        "--ip",
        "10.0.0.4",
        "--cap-add",
        "NET_ADMIN",
        "busybox",
        "sleep",
        "300",
    ]);
    let sh = |script: &str| testkit::combined(&a.docker(&["exec", "forger", "sh", "-c", script]));
    wait_for(
        || sh("nc 10.0.0.3 8000").0.contains("hi"),
        Duration::from_secs(10),
        "the peer's answer",
    );
    // Another source address (added to its interface, so the kernel sends
    // from it): ICMP and ARP from it are dropped; from its own they pass.
    assert_eq!(sh("ip addr add 10.0.0.9/24 dev eth0").1, 0);
    for (forged, own) in [
        (
            "ping -c1 -W2 -I 10.0.0.9 10.0.0.3",
            "ping -c1 -W2 -I 10.0.0.4 10.0.0.3",
        ),
        (
            "arping -c1 -w2 -I eth0 -s 10.0.0.9 10.0.0.3",
            "arping -c1 -w2 -I eth0 -s 10.0.0.4 10.0.0.3",
        ),
    ] {
        let (out, code) = sh(forged);
        assert_ne!(code, 0, "{forged} got through: {out}");
        let (out, code) = sh(own);
        assert_eq!(code, 0, "{own}: {out}");
    }
    // Another MAC: nothing passes; its own again, and TCP works.
    let (out, _) = sh(
        "ip link set eth0 address 02:42:0a:00:00:63 && nc -w 2 10.0.0.3 8000; \
         ip link set eth0 address 02:42:0a:00:00:04",
    );
    assert!(!out.contains("hi"), "a forged MAC got an answer: {out}");
    wait_for(
        || sh("nc -w 2 10.0.0.3 8000").0.contains("hi"),
        Duration::from_secs(10),
        "the peer's answer with the own MAC again",
    );

    // The guard elements of gone containers' ports are deleted after a
    // while (every 32 departures), those of the running ones kept.
    let agent = a.data_dir().join("agent");
    let seg = segments(&agent).into_iter().next().expect("the segment");
    let guarded_ports = || {
        let out = std::process::Command::new("nsenter")
            .arg(format!(
                "--net={}",
                agent.join("netns").join(&seg).display()
            ))
            .args(["nft", "list", "set", "bridge", "atoll", "port_id"])
            .output()
            .expect("nsenter nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let running: Vec<String> = ["peer", "forger"]
        .iter()
        .map(|n| {
            format!(
                "\"p{}\"",
                &a.docker_ok(&["inspect", "-f", "{{.Id}}", n])[..12]
            )
        })
        .collect();
    let count = |set: &str| set.matches("\"p").count();
    assert_eq!(count(&guarded_ports()), 2);
    for _ in 0..33 {
        a.docker_ok(&["run", "--rm", "--network", "app", "busybox", "true"]);
    }
    // The 32 first departures are collected; the last may still be there.
    wait_for(
        || count(&guarded_ports()) <= 3,
        Duration::from_secs(10),
        "the stale guard elements to go",
    );
    let set = guarded_ports();
    for port in &running {
        assert!(set.contains(port.as_str()), "{port} kept: {set}");
    }
}
