//! NodeNet orchestration against the recording fakes (no root needed).

use crate::fake::{FakeLink, FakeLinks, FakeNetns, FakeNft, FakeSysctl};
use crate::netns::NetnsOps;
use crate::nft::Nft;
use crate::{Backend, NetError, NodeNet, NodeNetConfig, PortMapping};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Fakes {
    links: Arc<FakeLinks>,
    netns: Arc<FakeNetns>,
    nft: Arc<FakeNft>,
    sysctl: Arc<FakeSysctl>,
}

impl Fakes {
    fn new(nft: FakeNft) -> Self {
        Fakes {
            links: Arc::new(FakeLinks::default()),
            netns: Arc::new(FakeNetns::default()),
            nft: Arc::new(nft),
            sysctl: Arc::new(FakeSysctl::default()),
        }
    }

    fn backend(&self) -> Backend {
        Backend {
            links: self.links.clone(),
            netns: self.netns.clone(),
            nft: self.nft.clone(),
            sysctl: self.sysctl.clone(),
            lock_path: None,
        }
    }
}

fn cfg(subnet: Option<&str>) -> NodeNetConfig {
    NodeNetConfig {
        instance: "abc123".into(),
        netns_dir: PathBuf::from("/data/agent/netns"),
        subnet: subnet.map(|s| s.parse().unwrap()),
        protected: Vec::new(),
        underlay: None,
        reachable: Vec::new(),
    }
}

fn tcp(cport: u16, hport: u16) -> PortMapping {
    PortMapping {
        proto: "tcp".into(),
        container_port: cport,
        host_ip: String::new(),
        host_port: hport,
    }
}

fn portmap(f: &Fakes) -> Vec<String> {
    f.nft.rules("inet", "atoll_abc123", "portmap")
}

#[tokio::test]
async fn setup_picks_free_subnet_and_is_idempotent() {
    let f = Fakes::new(FakeNft::default());
    let first_choice = crate::names::pick_subnet("abc123", &[]).unwrap();
    f.links.host_nets.lock().unwrap().push(first_choice);

    let n = NodeNet::setup_with(cfg(None), f.backend()).await.unwrap();
    assert_ne!(n.subnet(), first_choice, "host's network must be skipped");
    assert_eq!(n.gateway(), n.subnet().host(1).unwrap());
    assert_eq!(n.bridge(), "atlabc123");
    assert!(f.nft.has_table("inet", "atoll_abc123"));
    let sys = f.sysctl.values.lock().unwrap().clone();
    assert_eq!(
        sys.get("net/ipv4/ip_forward").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        sys.get("net/ipv4/conf/atlabc123/route_localnet")
            .map(String::as_str),
        Some("0")
    );
    let post = f.nft.rules("inet", "atoll_abc123", "postrouting");
    assert_eq!(post.len(), 2);

    // A container publishes a port; a second setup (agent restart) adopts the bridge's
    // subnet and keeps that rule.
    n.attach(
        "c1",
        n.subnet().host(2).unwrap(),
        24,
        "02:00:00:00:00:02",
        &[tcp(80, 8080)],
    )
    .await
    .unwrap();
    let n2 = NodeNet::setup_with(cfg(None), f.backend()).await.unwrap();
    assert_eq!(n2.subnet(), n.subnet());
    assert_eq!(f.nft.rules("inet", "atoll_abc123", "postrouting"), post);
    assert_eq!(portmap(&f).len(), 1);
    // No docker: nothing in DOCKER-USER was touched.
    assert!(!f.nft.scripts().iter().any(|s| s.contains("DOCKER-USER")));
}

#[tokio::test]
async fn explicit_subnet_checks() {
    let f = Fakes::new(FakeNft::default());
    f.links
        .host_nets
        .lock()
        .unwrap()
        .push("192.168.0.0/16".parse().unwrap());
    let err = NodeNet::setup_with(cfg(Some("192.168.7.0/24")), f.backend())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::SubnetInUse(_)), "{err}");

    let n = NodeNet::setup_with(cfg(Some("172.30.5.0/24")), f.backend())
        .await
        .unwrap();
    assert_eq!(n.gateway(), Ipv4Addr::new(172, 30, 5, 1));
    let err = NodeNet::setup_with(cfg(Some("172.30.6.0/24")), f.backend())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::SubnetMismatch { .. }), "{err}");
    assert!(matches!(
        NodeNet::setup_with(cfg(Some("172.30.6.0/31")), f.backend()).await,
        Err(NetError::InvalidSubnet(_))
    ));
}

#[tokio::test]
async fn docker_user_rules_added_once_and_removed_on_teardown() {
    let f = Fakes::new(
        FakeNft::default()
            .with_chain("ip", "filter", "DOCKER-USER")
            .with_chain("ip", "filter", "FORWARD"),
    );
    // dockerd's own rule stays untouched.
    f.nft
        .apply("add rule ip filter DOCKER-USER counter return\n")
        .await
        .unwrap();
    NodeNet::setup_with(cfg(None), f.backend()).await.unwrap();
    NodeNet::setup_with(cfg(None), f.backend()).await.unwrap();
    let rules = f.nft.rules("ip", "filter", "DOCKER-USER");
    assert_eq!(
        rules,
        vec![
            "oifname \"atlabc123\" counter accept comment \"atoll_abc123\"",
            "iifname \"atlabc123\" counter accept comment \"atoll_abc123\"",
            "counter return",
        ]
    );
    NodeNet::teardown_with("abc123", Path::new("/data/agent/netns"), &f.backend())
        .await
        .unwrap();
    assert_eq!(
        f.nft.rules("ip", "filter", "DOCKER-USER"),
        vec!["counter return"]
    );
}

#[tokio::test]
async fn attach_is_idempotent_and_repairs() {
    let f = Fakes::new(FakeNft::default());
    let n = NodeNet::setup_with(cfg(Some("10.201.1.0/24")), f.backend())
        .await
        .unwrap();
    let ip = Ipv4Addr::new(10, 201, 1, 2);
    let before = f.nft.scripts().len();
    let p = n
        .attach("c1", ip, 24, "02:00:00:00:00:02", &[])
        .await
        .unwrap();
    assert_eq!(p, Path::new("/data/agent/netns/c1"));
    assert!(f.netns.files.lock().unwrap().contains(&p));
    assert_eq!(
        f.nft.scripts().len(),
        before + 1,
        "no ports, fresh link: one nft run (the port's isolation)"
    );
    let veth = n.host_veth("c1");
    let table = n.nft_table().to_string();
    let el = |set: &str| f.nft.elements("bridge", &table, set);
    assert_eq!(el("ports"), [format!("\"{veth}\"")]);
    assert_eq!(el("port_group"), [format!("\"{veth}\" : 0")]);
    assert_eq!(el("port_in_group"), [format!("\"{veth}\" . 0")]);
    assert_eq!(
        el("port_id"),
        [format!("\"{veth}\" . 02:00:00:00:00:02 . 10.201.1.2")]
    );
    assert!(
        f.links
            .calls()
            .contains(&format!("create_veth {veth} {ip}"))
    );

    // Again, now with ports: the link is kept, rules are set.
    n.attach(
        "c1",
        ip,
        24,
        "02:00:00:00:00:02",
        &[tcp(80, 8080), tcp(443, 8443)],
    )
    .await
    .unwrap();
    n.attach(
        "c1",
        ip,
        24,
        "02:00:00:00:00:02",
        &[tcp(80, 8080), tcp(443, 8443)],
    )
    .await
    .unwrap();
    let creates = |f: &Fakes| {
        f.links
            .calls()
            .iter()
            .filter(|c| c.starts_with("create_veth"))
            .count()
    };
    assert_eq!(creates(&f), 1);
    assert_eq!(portmap(&f).len(), 2, "rules replaced, not duplicated");

    // Changed ports replace the old set.
    n.attach("c1", ip, 24, "02:00:00:00:00:02", &[tcp(80, 9090)])
        .await
        .unwrap();
    assert_eq!(portmap(&f).len(), 1);
    assert!(portmap(&f)[0].contains("dport 9090"));

    // A half-made link (crash mid-attach) is rebuilt.
    f.links.break_veth(&veth);
    n.attach("c1", ip, 24, "02:00:00:00:00:02", &[tcp(80, 9090)])
        .await
        .unwrap();
    assert_eq!(creates(&f), 2);
    assert!(f.links.calls().contains(&format!("delete_link {veth}")));
    // A different address also counts as "not complete".
    n.attach(
        "c1",
        Ipv4Addr::new(10, 201, 1, 3),
        24,
        "02:00:00:00:00:02",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(creates(&f), 3);
    assert!(
        portmap(&f).is_empty(),
        "ports dropped when no longer requested"
    );
}

#[tokio::test]
async fn attach_rejects_bad_input_before_touching_anything() {
    let f = Fakes::new(FakeNft::default());
    let n = NodeNet::setup_with(cfg(Some("10.201.1.0/24")), f.backend())
        .await
        .unwrap();
    let mac = "02:00:00:00:00:02";
    let ok_ip = Ipv4Addr::new(10, 201, 1, 2);
    let cases: Vec<(&str, Ipv4Addr, u8, &str, Vec<PortMapping>)> = vec![
        ("c1", Ipv4Addr::new(10, 9, 9, 9), 24, mac, vec![]),
        ("c1", Ipv4Addr::new(10, 201, 1, 1), 24, mac, vec![]),
        ("c1", Ipv4Addr::new(10, 201, 1, 255), 24, mac, vec![]),
        ("c1", Ipv4Addr::new(10, 201, 1, 9), 30, mac, vec![]),
        ("c1", ok_ip, 24, "nope", vec![]),
        ("../x", ok_ip, 24, mac, vec![]),
        ("c1", ok_ip, 24, mac, vec![tcp(80, 0)]),
    ];
    for (id, ip, prefix, mac, ports) in cases {
        assert!(
            n.attach(id, ip, prefix, mac, &ports).await.is_err(),
            "{id} {ip}/{prefix} {mac} {ports:?}"
        );
    }
    assert!(f.netns.files.lock().unwrap().is_empty());
    assert!(!f.links.calls().iter().any(|c| c.starts_with("create_veth")));
}

#[tokio::test]
async fn detach_removes_exactly_one_container() {
    let f = Fakes::new(FakeNft::default());
    let n = NodeNet::setup_with(cfg(Some("10.201.1.0/24")), f.backend())
        .await
        .unwrap();
    let mac = "02:00:00:00:00:02";
    n.attach(
        "c1",
        Ipv4Addr::new(10, 201, 1, 2),
        24,
        mac,
        &[tcp(80, 8080)],
    )
    .await
    .unwrap();
    n.attach(
        "c2",
        Ipv4Addr::new(10, 201, 1, 3),
        24,
        mac,
        &[tcp(80, 8081)],
    )
    .await
    .unwrap();
    n.detach("c1").await.unwrap();
    let rules = portmap(&f);
    assert_eq!(rules.len(), 1);
    assert!(rules[0].contains("comment \"c2\""));
    let links = f.links.links.lock().unwrap().clone();
    assert!(!links.contains_key(&n.host_veth("c1")));
    assert!(links.contains_key(&n.host_veth("c2")));
    assert!(!f.netns.exists(Path::new("/data/agent/netns/c1")));
    assert!(f.netns.exists(Path::new("/data/agent/netns/c2")));
    // Its isolation elements go with the next collection; c2's stay.
    let table = n.nft_table().to_string();
    let ports = || f.nft.elements("bridge", &table, "ports");
    assert_eq!(ports().len(), 2);
    assert_eq!(n.collect_isolation_garbage().await.unwrap(), 4);
    assert_eq!(ports(), [format!("\"{}\"", n.host_veth("c2"))]);
    assert_eq!(f.nft.elements("bridge", &table, "port_id").len(), 1);
    n.detach("c1").await.unwrap();
}

#[tokio::test]
async fn hash_collision_is_detected_and_never_deleted() {
    let f = Fakes::new(FakeNft::default());
    let n = NodeNet::setup_with(cfg(Some("10.201.1.0/24")), f.backend())
        .await
        .unwrap();
    n.attach(
        "c1",
        Ipv4Addr::new(10, 201, 1, 2),
        24,
        "02:00:00:00:00:02",
        &[],
    )
    .await
    .unwrap();
    // Pretend "c2" hashes to c1's name.
    let name = n.host_veth("c2");
    {
        let mut links = f.links.links.lock().unwrap();
        let other = links.remove(&n.host_veth("c1")).unwrap();
        links.insert(name.clone(), other);
    }
    let err = n
        .attach(
            "c2",
            Ipv4Addr::new(10, 201, 1, 3),
            24,
            "02:00:00:00:00:03",
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::NameCollision(_)), "{err}");
    n.detach("c2").await.unwrap();
    assert!(f.links.links.lock().unwrap().contains_key(&name));
}

#[tokio::test]
async fn teardown_finds_everything_of_the_instance_only() {
    let f = Fakes::new(FakeNft::default());
    let n = NodeNet::setup_with(cfg(Some("10.201.1.0/24")), f.backend())
        .await
        .unwrap();
    for (i, id) in ["c1", "c2"].iter().enumerate() {
        n.attach(
            id,
            Ipv4Addr::new(10, 201, 1, 2 + i as u8),
            24,
            "02:00:00:00:00:02",
            &[tcp(80, 8080 + i as u16)],
        )
        .await
        .unwrap();
    }
    // Another instance whose id is a prefix of ours, and an unrelated interface.
    let other_veth = crate::names::host_veth_name("abc", "zz");
    {
        let mut l = f.links.links.lock().unwrap();
        l.insert("atlabc".into(), FakeLink::Other);
        l.insert(other_veth.clone(), FakeLink::Other);
        l.insert("eth0".into(), FakeLink::Other);
    }
    f.netns
        .create(Path::new("/data/other/netns/x"), None)
        .unwrap();

    NodeNet::teardown_with("abc123", Path::new("/data/agent/netns"), &f.backend())
        .await
        .unwrap();
    assert!(!f.nft.has_table("inet", "atoll_abc123"));
    let left: Vec<String> = f.links.links.lock().unwrap().keys().cloned().collect();
    let mut want = vec!["atlabc".to_string(), other_veth, "eth0".to_string()];
    want.sort();
    assert_eq!(left, want);
    let files: Vec<PathBuf> = f.netns.files.lock().unwrap().iter().cloned().collect();
    assert_eq!(files, vec![PathBuf::from("/data/other/netns/x")]);
    // Idempotent.
    NodeNet::teardown_with("abc123", Path::new("/data/agent/netns"), &f.backend())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_port_name_left_with_another_group_is_taken_over() {
    let f = Fakes::new(FakeNft::default());
    let n = NodeNet::setup_with(cfg(Some("10.201.1.0/24")), f.backend())
        .await
        .unwrap();
    let veth = n.host_veth("c1");
    let table = n.nft_table().to_string();
    // What a gone container of the same port name left behind.
    f.nft
        .apply(&crate::nft::port_isolation_script(
            &table,
            &veth,
            &[2, 0, 0, 0, 0, 9],
            Ipv4Addr::new(10, 201, 1, 9),
            5,
        ))
        .await
        .unwrap();
    n.attach_owned(
        "c1",
        Ipv4Addr::new(10, 201, 1, 2),
        24,
        "02:00:00:00:00:02",
        &[],
        None,
        7,
    )
    .await
    .unwrap();
    let el = |set: &str| f.nft.elements("bridge", &table, set);
    assert_eq!(el("port_group"), [format!("\"{veth}\" : 7")]);
    assert_eq!(el("port_in_group"), [format!("\"{veth}\" . 7")]);
    assert_eq!(
        el("port_id"),
        [format!("\"{veth}\" . 02:00:00:00:00:02 . 10.201.1.2")]
    );
}
