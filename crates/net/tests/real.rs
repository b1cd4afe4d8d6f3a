//! Real network tests (root): bridge forwarding between two namespaces, a published port
//! reached from the host's loopback, coexistence with a dockerd-style FORWARD DROP policy,
//! and complete cleanup. Every test uses its own instance id; a Drop guard tears down even
//! on failure.

use futures::TryStreamExt;
use net::{NodeNet, NodeNetConfig, PortMapping};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn unique_instance() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos
    );
    format!("{:06x}", net::names::fnv1a(seed.as_bytes()) & 0xff_ffff)
}

/// Tears the instance down when the test ends, however it ends. Runs in a fresh thread
/// (inheriting the dropping thread's network namespace) with its own runtime.
struct Guard {
    instance: String,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let (inst, dir) = (self.instance.clone(), self.dir.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            if let Err(e) = rt.block_on(NodeNet::teardown(&inst, &dir)) {
                eprintln!("teardown of {inst} failed: {e}");
            }
        })
        .join();
    }
}

/// A fresh instance with its namespace files in `<tmp>/<sub>`, torn down by
/// the returned guard however the test ends.
async fn fresh_node(tmp: &Path, sub: &str) -> (NodeNet, Guard) {
    let dir = tmp.join(sub);
    let inst = unique_instance();
    let guard = Guard {
        instance: inst.clone(),
        dir: dir.clone(),
    };
    let n = NodeNet::setup(NodeNetConfig {
        instance: inst,
        netns_dir: dir,
        subnet: None,
        protected: Vec::new(),
        underlay: None,
        reachable: Vec::new(),
    })
    .await
    .expect("setup");
    (n, guard)
}

/// Runs `f` on a thread that joined the network namespace pinned at `ns`.
fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(ns).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A TCP server on port 80 inside a namespace that answers each connection with the
/// peer address it sees.
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start(ns: &Path) -> EchoServer {
        let file = std::fs::File::open(ns).expect("open netns");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind("0.0.0.0:80").expect("bind :80 in netns");
            l.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("ready");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server ready");
        EchoServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects and returns the peer address the echo server saw, or the error.
fn ask(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether link `name` exists in the calling thread's namespace (via netlink: /sys/class/net
/// shows the namespace sysfs was mounted in, not ours).
async fn link_exists(name: &str) -> bool {
    let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
    let task = tokio::spawn(conn);
    let r = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await;
    task.abort();
    matches!(r, Ok(Some(_)))
}

async fn nft_ok(args: &[&str]) -> bool {
    tokio::process::Command::new("nft")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

async fn nft_out(args: &[&str]) -> String {
    let o = tokio::process::Command::new("nft")
        .args(args)
        .output()
        .await
        .expect("run nft");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tcp(container_port: u16, host_port: u16) -> PortMapping {
    PortMapping {
        proto: "tcp".into(),
        container_port,
        host_ip: String::new(),
        host_port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_forwarding_published_port_and_cleanup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("netns");
    let inst = unique_instance();
    let _guard = Guard {
        instance: inst.clone(),
        dir: dir.clone(),
    };
    let n = NodeNet::setup(NodeNetConfig {
        instance: inst.clone(),
        netns_dir: dir.clone(),
        subnet: None,
        protected: Vec::new(),
        underlay: None,
        reachable: Vec::new(),
    })
    .await
    .expect("setup");
    let subnet = n.subnet();
    let (ip_a, ip_b) = (subnet.host(2).unwrap(), subnet.host(3).unwrap());
    let port = free_port();

    let t = Instant::now();
    let ns_a = n
        .attach("ctr-a", ip_a, subnet.prefix(), "02:42:0a:00:00:02", &[])
        .await
        .expect("attach a");
    let t_a = t.elapsed();
    let t = Instant::now();
    let ns_b = n
        .attach(
            "ctr-b",
            ip_b,
            subnet.prefix(),
            "02:42:0a:00:00:03",
            &[tcp(80, port)],
        )
        .await
        .expect("attach b");
    let t_b = t.elapsed();
    println!("attach without ports: {t_a:?}; attach with one published port: {t_b:?}");
    assert_eq!(ns_a, dir.join("ctr-a"));

    let server = EchoServer::start(&ns_b);
    // A -> B across the bridge; B sees A's own address (no NAT inside the bridge).
    let seen = in_netns(&ns_a, move || {
        ask(SocketAddr::from((ip_b, 80)), Duration::from_secs(5))
    })
    .expect("A reaches B");
    assert_eq!(seen, ip_a.to_string());
    // The host, at one of its addresses -> published port -> B.
    let seen = ask(
        SocketAddr::from((n.gateway(), port)),
        Duration::from_secs(5),
    )
    .expect("host reaches published port");
    assert_eq!(seen, n.gateway().to_string());
    // Never at its loopback, which stays the host's own.
    let refused = ask(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    )
    .expect_err("loopback is the host's");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    // Agent restart: setup again adopts everything; attach again is a no-op that keeps
    // exactly one rule.
    let n2 = NodeNet::setup(NodeNetConfig {
        instance: inst.clone(),
        netns_dir: dir.clone(),
        subnet: None,
        protected: Vec::new(),
        underlay: None,
        reachable: Vec::new(),
    })
    .await
    .expect("setup again");
    assert_eq!(n2.subnet(), subnet);
    let t = Instant::now();
    n2.attach(
        "ctr-b",
        ip_b,
        subnet.prefix(),
        "02:42:0a:00:00:03",
        &[tcp(80, port)],
    )
    .await
    .expect("re-attach b");
    println!("re-attach (already complete): {:?}", t.elapsed());
    let table = n.nft_table().to_string();
    let rules = nft_out(&["-a", "list", "chain", "inet", &table, "portmap"]).await;
    assert_eq!(rules.matches("comment \"ctr-b\"").count(), 1, "{rules}");
    let seen = ask(
        SocketAddr::from((n2.gateway(), port)),
        Duration::from_secs(5),
    )
    .expect("still published after restart");
    assert_eq!(seen, n.gateway().to_string());
    drop(server);

    // Detach removes the container's rules, link and namespace file.
    let (veth_a, veth_b) = (n.host_veth("ctr-a"), n.host_veth("ctr-b"));
    assert!(link_exists(&veth_a).await && link_exists(&veth_b).await);
    n.detach("ctr-b").await.expect("detach b");
    n.detach("ctr-b").await.expect("detach b twice");
    assert!(!link_exists(&veth_b).await);
    assert!(!ns_b.exists());
    let rules = nft_out(&["-a", "list", "chain", "inet", &table, "portmap"]).await;
    assert!(!rules.contains("ctr-b"), "{rules}");
    assert!(link_exists(&veth_a).await, "detach of b must leave a alone");

    // Teardown removes the rest, including a's link and namespace.
    NodeNet::teardown(&inst, &dir).await.expect("teardown");
    assert!(!link_exists(&veth_a).await);
    assert!(!link_exists(n.bridge()).await);
    assert!(!ns_a.exists());
    assert!(!nft_ok(&["list", "table", "inet", &table]).await);
}

/// Runs the future made by `f` on a thread of its own in a new network
/// namespace (gone with the thread), on a runtime of its own.
fn in_own_netns<F: std::future::Future<Output = ()> + 'static>(f: fn() -> F) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f());
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// A namespace of our own that looks like a host where dockerd runs: `ip filter` FORWARD
/// policy drop with a DOCKER-USER chain, and bridge-nf-call-iptables on.
#[test]
fn works_beside_dockerd_forward_drop() {
    in_own_netns(docker_coexistence);
}

async fn docker_coexistence() {
    // A fresh namespace has lo down.
    {
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
        let task = tokio::spawn(conn);
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(1).up().build())
            .execute()
            .await
            .expect("lo up");
        task.abort();
    }
    let dockerish = "add table ip filter\n\
        add chain ip filter FORWARD { type filter hook forward priority filter; policy drop; }\n\
        add chain ip filter DOCKER-USER\n\
        add rule ip filter FORWARD counter jump DOCKER-USER\n\
        add rule ip filter DOCKER-USER counter return\n";
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(dockerish.as_bytes()).await.expect("write");
    }
    assert!(child.wait().await.expect("nft").success());
    // Per-namespace since Linux 5.3; makes bridged traffic traverse FORWARD.
    std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")
        .expect("bridge-nf-call-iptables");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("netns");
    let inst = unique_instance();
    let _guard = Guard {
        instance: inst.clone(),
        dir: dir.clone(),
    };
    let cfg = NodeNetConfig {
        instance: inst.clone(),
        netns_dir: dir.clone(),
        subnet: Some("10.207.250.0/24".parse().expect("subnet")),
        protected: Vec::new(),
        underlay: None,
        reachable: Vec::new(),
    };
    let n = NodeNet::setup(cfg.clone()).await.expect("setup");
    let (ip_a, ip_b) = (
        Ipv4Addr::new(10, 207, 250, 2),
        Ipv4Addr::new(10, 207, 250, 3),
    );
    let ns_a = n
        .attach("a", ip_a, 24, "02:42:0a:00:00:02", &[])
        .await
        .expect("attach a");
    let ns_b = n
        .attach("b", ip_b, 24, "02:42:0a:00:00:03", &[])
        .await
        .expect("attach b");
    let _server = EchoServer::start(&ns_b);
    let a_to_b = |timeout| in_netns(&ns_a, move || ask(SocketAddr::from((ip_b, 80)), timeout));
    assert_eq!(
        a_to_b(Duration::from_secs(5)).expect("A reaches B"),
        ip_a.to_string()
    );

    // Control: without our DOCKER-USER accepts, Docker's DROP policy cuts the bridge.
    let comment = format!("atoll_{inst}");
    let listing = nft_out(&["-a", "list", "chain", "ip", "filter", "DOCKER-USER"]).await;
    assert_eq!(listing.matches(&comment).count(), 2, "{listing}");
    let handles: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(&comment))
        .filter_map(|l| l.rsplit("# handle ").next())
        .collect();
    for h in handles {
        assert!(
            nft_ok(&[
                "delete",
                "rule",
                "ip",
                "filter",
                "DOCKER-USER",
                "handle",
                h.trim()
            ])
            .await
        );
    }
    assert!(
        a_to_b(Duration::from_millis(700)).is_err(),
        "DROP policy should block"
    );

    // Setup again (agent restart) restores them, exactly once.
    NodeNet::setup(cfg).await.expect("setup again");
    assert_eq!(
        a_to_b(Duration::from_secs(5)).expect("A reaches B again"),
        ip_a.to_string()
    );
    let listing = nft_out(&["list", "chain", "ip", "filter", "DOCKER-USER"]).await;
    assert_eq!(listing.matches(&comment).count(), 2, "{listing}");

    NodeNet::teardown(&inst, &dir).await.expect("teardown");
    let listing = nft_out(&["list", "chain", "ip", "filter", "DOCKER-USER"]).await;
    assert!(!listing.contains(&comment), "{listing}");
    assert!(
        listing.contains("return"),
        "dockerd's own rule stays: {listing}"
    );
}

/// Runs `cmd` in the namespace pinned at `ns`; whether it succeeded.
fn run_in(ns: &Path, cmd: &[&str]) -> bool {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    in_netns(ns, move || {
        std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Ports of different isolation groups (accounts) exchange nothing on the
/// bridge; a port sending from another address or MAC than its own is dropped.
/// In a network namespace of the test's own.
#[test]
fn isolation_groups_and_anti_spoofing() {
    in_own_netns(isolation);
}

async fn isolation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (n, _guard) = fresh_node(tmp.path(), "netns").await;
    let s = n.subnet();
    let ip = |i| s.host(i).unwrap();
    let attach = |id: &'static str, i: u32, group: u32| {
        let n = &n;
        async move {
            n.attach_owned(
                id,
                ip(i),
                s.prefix(),
                &format!("02:42:0a:00:00:{i:02x}"),
                &[],
                None,
                group,
            )
            .await
            .expect("attach")
        }
    };
    let a = attach("ctr-a", 2, 7).await;
    let b = attach("ctr-b", 3, 7).await;
    let c = attach("ctr-c", 4, 8).await;
    let ping = |from: &Path, to: Ipv4Addr, src: Option<Ipv4Addr>| {
        let to = to.to_string();
        let mut cmd = vec!["busybox", "ping", "-c", "1", "-W", "1"];
        let src = src.map(|s| s.to_string());
        if let Some(s) = &src {
            cmd.extend(["-I", s.as_str()]);
        }
        cmd.push(&to);
        run_in(from, &cmd)
    };
    assert!(ping(&a, ip(3), None), "same group: a reaches b");
    assert!(ping(&b, ip(2), None), "same group: b reaches a");
    // Another instance's bridge (or docker0) beside ours: each table judges
    // only its own ports' frames.
    let (n2, _guard2) = fresh_node(tmp.path(), "netns2").await;
    let s2 = n2.subnet();
    let (x, y) = (s2.host(2).unwrap(), s2.host(3).unwrap());
    let other_x = n2
        .attach("ctr-x", x, s2.prefix(), "02:42:0b:00:00:02", &[])
        .await
        .expect("attach x");
    n2.attach("ctr-y", y, s2.prefix(), "02:42:0b:00:00:03", &[])
        .await
        .expect("attach y");
    assert!(
        ping(&other_x, y, None),
        "the other bridge's frames were judged"
    );
    assert!(ping(&a, ip(3), None), "ours, beside another bridge");
    assert!(!ping(&c, ip(3), None), "another group reached b");
    assert!(!ping(&a, ip(4), None), "b's group reached c");
    assert!(
        ping(&c, n.gateway(), None),
        "every group reaches the gateway"
    );

    // c takes a second address (as root in its namespace could) and sends
    // from it, to its own gateway: dropped at its port.
    assert!(run_in(
        &c,
        &[
            "ip",
            "addr",
            "add",
            &format!("{}/{}", ip(9), s.prefix()),
            "dev",
            "eth0"
        ]
    ));
    assert!(
        !ping(&c, n.gateway(), Some(ip(9))),
        "a forged source got through"
    );
    assert!(
        ping(&c, n.gateway(), Some(ip(4))),
        "its own address still works"
    );
    // ... or another MAC.
    assert!(run_in(
        &c,
        &["ip", "link", "set", "eth0", "address", "02:42:0a:00:00:99"]
    ));
    assert!(run_in(&c, &["ip", "neigh", "flush", "all"]));
    assert!(!ping(&c, n.gateway(), None), "a forged MAC got through");

    // Detach releases the port's rules; attaching again restores them.
    n.detach("ctr-b").await.expect("detach");
    n.detach("ctr-b").await.expect("detach twice");
    let table = n.nft_table().to_string();
    let veth_b = n.host_veth("ctr-b");
    // Its elements are garbage now, deleted with the next collection.
    assert_eq!(n.collect_isolation_garbage().await.expect("collect"), 4);
    let rules = nft_out(&["list", "table", "bridge", &table]).await;
    assert!(!rules.contains(&veth_b), "{rules}");
    assert!(rules.contains(&n.host_veth("ctr-a")), "{rules}");
    let b = attach("ctr-b", 3, 7).await;
    assert!(ping(&a, ip(3), None) && ping(&b, ip(2), None));
}
