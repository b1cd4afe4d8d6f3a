//! Public addresses (Triton's model) on a simulated datacenter: a container
//! that publishes ports gets its own address on the public network (a bridge
//! of the instance's that every server joins; the host holds its gateway
//! address, so the test process stands for "the world"). Two accounts publish
//! the same port without colliding; unpublished ports are unreachable; egress
//! leaves through its server's NAT. Traffic goes only to addresses of the
//! namespaces the instance made.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use testkit::{AtollInstance, StartOptions, json, test_images, wait_for};

/// What a connection to `addr` reads, or the error (short timeouts: a
/// dropped SYN is the expected failure).
fn fetch(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out.trim().to_string())
}

/// `docker port NAME` → (address, port) of its only mapping.
fn port_of(docker: impl Fn(&[&str]) -> String, name: &str) -> SocketAddr {
    let out = docker(&["port", name]);
    let line = out.lines().next().expect("a mapping");
    let (_, to) = line.split_once(" -> ").expect("NAME/PROTO -> ADDR:PORT");
    to.parse().unwrap_or_else(|_| panic!("an address: {out}"))
}

/// Whether a server namespace still routes `ip` or answers ARP for it.
fn routed(a: &AtollInstance, ip: Ipv4Addr) -> bool {
    (1..=2).any(|i| {
        let ns = a.data_dir().join(format!("nodes/node-{i}.netns"));
        let ip_cmd = |args: &[&str]| {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .arg("ip")
                .args(args)
                .output()
                .expect("nsenter");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        !ip_cmd(&["route", "show", &format!("{ip}/32")])
            .trim()
            .is_empty()
            || ip_cmd(&["neigh", "show", "proxy"])
                .split_whitespace()
                .any(|w| w == ip.to_string())
    })
}

#[test]
fn published_ports_live_on_the_containers_public_addresses() {
    let mut a = AtollInstance::start_with(StartOptions {
        args: vec!["--nodes".into(), "2".into()],
        ..Default::default()
    });
    a.load_busybox();
    let mut alice = a.tenant("alice");
    alice.docker_ok(&["load", "-i", &test_images().busybox.path.to_string_lossy()]);

    // The simulated datacenter set its public network up.
    let public = json(&a.operator_ok(&["network", "public", "--json"]));
    let subnet = public["subnet"].as_str().unwrap().to_string();
    let gateway: Ipv4Addr = public["gateway"].as_str().unwrap().parse().unwrap();
    let (base, prefix) = subnet.split_once('/').unwrap();
    let base = u32::from(base.parse::<Ipv4Addr>().unwrap());
    let mask = u32::MAX << (32 - prefix.parse::<u32>().unwrap());
    let in_public = |ip: Ipv4Addr| u32::from(ip) & mask == base;

    // Both accounts publish port 8080, each on its own address.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "busybox",
        "sh",
        "-c",
        "nc -ll -p 80 -e echo op & nc -ll -p 81 -e echo secret",
    ]);
    alice.docker_ok(&[
        "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "nc", "-ll", "-p", "80", "-e",
        "echo", "alice",
    ]);
    let op_web = port_of(|x| a.docker_ok(x), "web");
    let alice_web = port_of(|x| alice.docker_ok(x), "web");
    for addr in [op_web, alice_web] {
        assert_eq!(addr.port(), 8080);
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4: {addr}")
        };
        assert!(in_public(*v4.ip()), "{addr} in {subnet}");
    }
    assert_ne!(op_web.ip(), alice_web.ip(), "one address per container");
    let ps = a.docker_ok(&["ps", "--format", "{{.Ports}}", "--filter", "name=web"]);
    assert_eq!(ps.trim(), format!("{op_web}->80/tcp"));
    let inspect = json(&alice.docker_ok(&["inspect", "web"]));
    assert_eq!(
        inspect[0]["NetworkSettings"]["Ports"]["80/tcp"][0]["HostIp"],
        alice_web.ip().to_string()
    );

    // From outside the overlay: each answers at its own address.
    wait_for(
        || fetch(op_web).as_deref() == Ok("op"),
        Duration::from_secs(10),
        &format!("op's web at {op_web}"),
    );
    assert_eq!(fetch(alice_web).as_deref(), Ok("alice"));
    // Unpublished ports of a public container are not reachable, nor is the
    // container port itself.
    for port in [81, 80] {
        let r = fetch(SocketAddr::new(op_web.ip(), port));
        assert!(r.is_err(), "port {port} of {op_web} answered {r:?}");
    }

    // -P publishes every exposed port at the same number.
    alice.docker_ok(&[
        "run", "-d", "--name", "exp", "--expose", "9000", "-P", "busybox", "nc", "-ll", "-p",
        "9000", "-e", "echo", "exposed",
    ]);
    let exp = port_of(|x| alice.docker_ok(x), "exp");
    assert_eq!(exp.port(), 9000);
    wait_for(
        || fetch(exp).as_deref() == Ok("exposed"),
        Duration::from_secs(10),
        &format!("{exp}"),
    );

    // Egress reaches the public network through the server's NAT: the peer
    // sees a server's address, never the container's.
    let listener = TcpListener::bind((gateway, 0)).expect("listening on the public gateway");
    let port = listener.local_addr().unwrap().port();
    // Detached: busybox's nc waits for the peer to close.
    alice.docker_ok(&[
        "run",
        "-d",
        "--name",
        "egress",
        "busybox",
        "sh",
        "-c",
        &format!("echo out | nc {gateway} {port}"),
    ]);
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut conn, peer) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no egress connection: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 4];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"out\n");
    let std::net::IpAddr::V4(peer) = peer.ip() else {
        panic!("{peer}")
    };
    assert!(
        !in_public(peer) && !peer.to_string().starts_with("172.17."),
        "egress from {peer}"
    );
    drop(conn);

    // A stopped container's address answers nothing; it is kept for the
    // next start.
    a.docker_ok(&["stop", "-t", "1", "web"]);
    assert!(fetch(op_web).is_err());
    a.docker_ok(&["start", "web"]);
    assert_eq!(port_of(|x| a.docker_ok(x), "web"), op_web);
    wait_for(
        || fetch(op_web).as_deref() == Ok("op"),
        Duration::from_secs(10),
        "after a restart",
    );
    // So is it across a restart of the datacenter (head and agents; the
    // containers keep running).
    a.restart();
    alice.set_address(&a.tls_address());
    assert_eq!(port_of(|x| a.docker_ok(x), "web"), op_web);
    assert_eq!(fetch(op_web).as_deref(), Ok("op"));
    assert_eq!(fetch(alice_web).as_deref(), Ok("alice"));

    // A host address cannot be chosen: the address is the container's.
    let err = alice.docker_err(&["run", "-d", "-p", "192.0.2.9:8081:80", "busybox", "true"]);
    assert!(err.contains("own public address"), "{err}");
    let err = a.operator_err(&[
        "network",
        "public",
        "--subnet",
        "10.99.0.1/24",
        "--gateway",
        "10.99.0.1",
    ]);
    assert!(err.contains("network address"), "{err}");
    // Not while containers hold addresses outside the new subnet.
    let err = a.operator_err(&[
        "network",
        "public",
        "--subnet",
        "10.99.0.0/24",
        "--gateway",
        "10.99.0.1",
    ]);
    assert!(err.contains("held by a container"), "{err}");

    // Removal gives the addresses back and takes their routes away.
    a.docker_ok(&["rm", "-f", "web"]);
    alice.docker_ok(&["rm", "-f", "web", "exp", "egress"]);
    for addr in [op_web, alice_web, exp] {
        let SocketAddr::V4(v4) = addr else {
            unreachable!()
        };
        assert!(!routed(&a, *v4.ip()), "{addr} is still routed");
    }
    let list = json(&a.operator_ok(&["container", "ls", "--json"]));
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    alice.docker_ok(&[
        "run", "-d", "--name", "again", "-p", "8080:80", "busybox", "nc", "-ll", "-p", "80", "-e",
        "echo", "again",
    ]);
    let again = port_of(|x| alice.docker_ok(x), "again");
    assert!(
        [op_web.ip(), alice_web.ip()].contains(&again.ip()),
        "the lowest free address comes back: {again}"
    );
}

/// One server without a public interface (`atoll up`): with a public network
/// set, a container that publishes ports has nowhere to run, and says so;
/// without one, ports are published on the server as before.
#[test]
fn publishing_needs_a_server_on_the_public_network() {
    let a = AtollInstance::start();
    a.load_busybox();
    let out = a.operator_ok(&["network", "public"]);
    assert!(out.contains("no public network"), "{out}");
    a.operator_ok(&[
        "network",
        "public",
        "--subnet",
        "198.51.100.0/24",
        "--gateway",
        "198.51.100.1",
        "--range",
        "198.51.100.64/26",
    ]);
    let set = json(&a.operator_ok(&["network", "public", "--json"]));
    assert_eq!(set["range"], "198.51.100.64/26");
    let err = a.docker_err(&["run", "-d", "-p", "8080:80", "busybox", "sleep", "60"]);
    assert!(err.contains("no server is on the public network"), "{err}");
    // Containers without ports are not concerned.
    a.docker_ok(&["run", "--rm", "busybox", "true"]);
    a.operator_ok(&["network", "public", "--remove"]);
    a.docker_ok(&[
        "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sleep", "60",
    ]);
    assert_eq!(
        a.docker_ok(&["port", "web"]).trim(),
        "80/tcp -> 0.0.0.0:8080"
    );
}
