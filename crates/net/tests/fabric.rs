//! Fabric segments across two simulated servers (root): VXLAN between them,
//! reachability by the overlay map only, two accounts' segments with the same
//! subnet on the same servers kept apart. Everything lives in a network
//! namespace of the test's own (servers and containers are namespaces inside
//! it), so nothing on the host is touched, and it all goes with the thread.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use net::Ipv4Net;
use net::fabric::{Fabric, Member, Segment};
use net::netns::{NetnsOps, RealNetns};

fn enter(ns: &Path) {
    let f = std::fs::File::open(ns).expect("open netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a thread inside the namespace at `ns`.
fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("netns thread")
}

/// `ip` as test setup (the code under test speaks netlink itself).
fn ip(ns: Option<&Path>, args: &str) {
    let args: Vec<String> = args.split(' ').map(String::from).collect();
    let run = move || {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    match ns {
        Some(ns) => in_ns(ns, run),
        None => run(),
    }
}

/// A TCP server in `ns` answering every connection with `name`.
fn serve(ns: &Path, name: &'static str) {
    let ns = ns.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind("0.0.0.0:7000").expect("bind");
        tx.send(()).expect("ready");
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(name.as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

/// Who answers at `to` seen from `from`, or None.
fn who(from: &Path, to: Ipv4Addr) -> Option<String> {
    in_ns(from, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((to, 7000)), Duration::from_secs(2))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

/// A veth `name` here whose peer is `eth0` in `ns`.
async fn veth_into(name: &str, ns: &Path) {
    use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
    use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
    let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
    let task = tokio::spawn(conn);
    let f = std::fs::File::open(ns).expect("open");
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name("eth0")
        .setns_by_fd(f.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle.link().add(msg).execute().await.expect("veth");
    task.abort();
}

fn pin(path: &Path) {
    RealNetns.create(path, None).expect("create netns");
}

#[test]
fn segments_span_servers_and_keep_accounts_apart() {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(datacenter());
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// Unpins every namespace file under the test's directory, however the test
/// ends (the pins are mounts in the host's mount namespace).
struct Unpin(tempfile::TempDir);

impl Drop for Unpin {
    fn drop(&mut self) {
        fn walk(dir: &Path) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&p);
                } else {
                    let _ = RealNetns.remove(&p);
                }
            }
        }
        walk(self.0.path());
    }
}

async fn datacenter() {
    let tmp = Unpin(tempfile::tempdir().expect("tempdir"));
    let d = tmp.0.path();
    // The underlay: a bridge and two servers on it.
    ip(None, "link set lo up");
    ip(None, "link add ul0 type bridge");
    ip(None, "link set ul0 up");
    let servers: Vec<(PathBuf, Ipv4Addr)> = (1..=2u8)
        .map(|i| {
            (
                d.join(format!("server{i}")),
                Ipv4Addr::new(10, 99, 0, 10 + i),
            )
        })
        .collect();
    for (i, (ns, addr)) in servers.iter().enumerate() {
        pin(ns);
        veth_into(&format!("ul{i}x"), ns).await;
        ip(None, &format!("link set ul{i}x master ul0 up"));
        ip(Some(ns), "link set lo up");
        ip(Some(ns), &format!("addr add {addr}/24 dev eth0"));
        ip(Some(ns), "link set eth0 up");
    }
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 24).unwrap();
    let seg = |id: &str, vni: u32, server: usize| Segment {
        id: id.into(),
        vni,
        subnet,
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        vtep: Some(servers[server].1),
    };
    let fabrics: Vec<Fabric> = servers
        .iter()
        .enumerate()
        .map(|(i, (ns, _))| Fabric::new(&d.join(format!("fab{i}")), Some(ns)).expect("fabric"))
        .collect();
    // Two accounts' networks, same subnet, on both servers.
    for (i, f) in fabrics.iter().enumerate() {
        f.ensure(&seg("alice", 100, i)).await.expect("ensure");
        f.ensure(&seg("alice", 100, i)).await.expect("ensure again");
        f.ensure(&seg("bob", 200, i)).await.expect("ensure");
    }
    // Containers: (name, server, segment, address).
    let ctrs: Vec<(&'static str, usize, &str, Ipv4Addr, [u8; 6])> = vec![
        (
            "a1",
            0,
            "alice",
            Ipv4Addr::new(10, 0, 0, 2),
            [2, 0, 0, 0, 0, 0xa1],
        ),
        (
            "a2",
            1,
            "alice",
            Ipv4Addr::new(10, 0, 0, 3),
            [2, 0, 0, 0, 0, 0xa2],
        ),
        (
            "b1",
            1,
            "bob",
            Ipv4Addr::new(10, 0, 0, 2),
            [2, 0, 0, 0, 0, 0xb1],
        ),
        (
            "b2",
            0,
            "bob",
            Ipv4Addr::new(10, 0, 0, 3),
            [2, 0, 0, 0, 0, 0xb2],
        ),
    ];
    let t = Instant::now();
    for (name, server, net, addr, mac) in &ctrs {
        let ns = d.join(name);
        pin(&ns);
        fabrics[*server]
            .attach(
                &seg(net, 0, *server),
                &format!("p{name}"),
                &ns,
                "eth0",
                *addr,
                *mac,
                true,
            )
            .await
            .expect("attach");
        serve(&ns, name);
    }
    println!("4 containers attached in {:?}", t.elapsed());
    let members = |net: &str| -> Vec<Member> {
        ctrs.iter()
            .filter(|c| c.2 == net)
            .map(|c| Member {
                mac: c.4,
                ip: c.3,
                vtep: servers[c.1].1,
            })
            .collect()
    };
    for (i, f) in fabrics.iter().enumerate() {
        for net in ["alice", "bob"] {
            f.set_members(&seg(net, 0, i), &members(net))
                .await
                .expect("members");
            f.set_members(&seg(net, 0, i), &members(net))
                .await
                .expect("members again");
        }
    }
    let ns = |n: &str| d.join(n);
    // Across servers, each within its own network, though the addresses are
    // the same in both.
    assert_eq!(
        who(&ns("a1"), Ipv4Addr::new(10, 0, 0, 3)).as_deref(),
        Some("a2")
    );
    assert_eq!(
        who(&ns("a2"), Ipv4Addr::new(10, 0, 0, 2)).as_deref(),
        Some("a1")
    );
    assert_eq!(
        who(&ns("b1"), Ipv4Addr::new(10, 0, 0, 3)).as_deref(),
        Some("b2")
    );
    assert_eq!(
        who(&ns("b2"), Ipv4Addr::new(10, 0, 0, 2)).as_deref(),
        Some("b1")
    );
    // The gateway answers on every server.
    for c in ["a1", "a2", "b1"] {
        let ok = in_ns(&ns(c), || {
            std::process::Command::new("busybox")
                .args(["ping", "-c", "1", "-W", "1", "10.0.0.1"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(ok, "{c} cannot reach its gateway");
    }
    // The map decides: without a2's entries, a1 no longer reaches it.
    let without: Vec<Member> = members("alice")
        .into_iter()
        .filter(|m| m.mac != [2, 0, 0, 0, 0, 0xa2])
        .collect();
    fabrics[0]
        .set_members(&seg("alice", 0, 0), &without)
        .await
        .expect("members");
    in_ns(&ns("a1"), || {
        let _ = std::process::Command::new("ip")
            .args(["neigh", "flush", "all"])
            .output();
    });
    assert_eq!(who(&ns("a1"), Ipv4Addr::new(10, 0, 0, 3)), None);
    fabrics[0]
        .set_members(&seg("alice", 0, 0), &members("alice"))
        .await
        .expect("members");
    assert_eq!(
        who(&ns("a1"), Ipv4Addr::new(10, 0, 0, 3)).as_deref(),
        Some("a2")
    );

    // Removing a segment takes its namespace, bridge, VXLAN device and veths.
    for (i, f) in fabrics.iter().enumerate() {
        f.remove("alice").await.expect("remove");
        f.remove("alice").await.expect("remove again");
        assert!(!f.router_ns("alice").exists());
        assert!(f.router_ns("bob").exists(), "server {i}");
    }
    assert_eq!(who(&ns("a1"), Ipv4Addr::new(10, 0, 0, 3)), None);
    assert_eq!(
        who(&ns("b1"), Ipv4Addr::new(10, 0, 0, 3)).as_deref(),
        Some("b2")
    );
    for f in &fabrics {
        f.remove("bob").await.expect("remove");
    }
}
