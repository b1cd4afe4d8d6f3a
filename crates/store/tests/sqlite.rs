//! The store contract, run against SQLite (file-backed, as `atoll up` uses it).

use agent_client::{ContainerSpec, Endpoint};
use chrono::Utc;
use cluster::StoreError;
use cluster::model::{
    ContainerRecord, ContainerState, ImageLayer, ImageRecord, NetworkRecord, Reservation, TagRecord,
};
use cluster::store::Store;
use store::SqliteStore;

fn container(account: &str, id: &str, name: &str, ep: Option<(&str, &str)>) -> ContainerRecord {
    ContainerRecord {
        account: account.into(),
        id: id.into(),
        name: name.into(),
        image_ref: "busybox".into(),
        image_id: "sha256:aa".into(),
        created: Utc::now(),
        node: "n1".into(),
        config: serde_json::json!({}),
        spec: ContainerSpec {
            id: id.into(),
            networks: ep
                .map(|(net, ip)| Endpoint {
                    network: net.into(),
                    name: "net".into(),
                    vni: 1,
                    subnet: "10.0.0.0/24".into(),
                    gateway: "10.0.0.1".parse().unwrap(),
                    ip: ip.parse().unwrap(),
                    ip_requested: false,
                    mac: format!("02:42:{ip}"),
                    internal: false,
                    aliases: vec![],
                })
                .into_iter()
                .collect(),
            ..Default::default()
        },
        state: ContainerState::default(),
        labels: Default::default(),
        generation: 0,
        package: "p".into(),
        reservation: Reservation {
            memory: 512 << 20,
            disk: 1 << 30,
        },
    }
}

fn network(account: &str, id: &str, name: &str) -> NetworkRecord {
    NetworkRecord {
        account: account.into(),
        id: id.into(),
        name: name.into(),
        vni: 0,
        driver: "bridge".into(),
        subnet: "10.0.0.0/24".into(),
        gateway: "10.0.0.1".parse().unwrap(),
        ip_range: None,
        internal: false,
        attachable: false,
        labels: Default::default(),
        options: Default::default(),
        created: Utc::now(),
        default: false,
    }
}

#[tokio::test]
async fn containers_names_and_ips_are_unique_per_scope() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    s.insert_network(&network("alice", "na", "net"))
        .await
        .unwrap();
    s.insert_network(&network("bob", "nb", "net"))
        .await
        .unwrap();
    s.insert_container(&container("alice", "a1", "web", Some(("na", "10.0.0.2"))))
        .await
        .unwrap();
    // Same name and address in another account's network is fine; in the same
    // account (network) it is not.
    s.insert_container(&container("bob", "b1", "web", Some(("nb", "10.0.0.2"))))
        .await
        .unwrap();
    let e = s
        .insert_container(&container("alice", "a2", "web", Some(("na", "10.0.0.4"))))
        .await;
    assert!(matches!(e, Err(StoreError::Conflict(w)) if w == "name"));
    let e = s
        .insert_container(&container("alice", "a3", "db", Some(("na", "10.0.0.2"))))
        .await;
    assert!(matches!(e, Err(StoreError::Conflict(w)) if w == "ip"));
    // Nothing of the refused one stays.
    let (_, rows) = s.network_endpoints("na").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].container, "a1");
    // Tenants see only their own.
    assert_eq!(s.list_containers("alice").await.unwrap().len(), 1);
    assert!(s.get_container("bob", "a1").await.unwrap().is_none());
    // Rename onto a taken name conflicts; update of a gone record is NotFound.
    let mut b2 = container("bob", "b2", "db", None);
    s.insert_container(&b2).await.unwrap();
    b2.name = "web".into();
    assert!(matches!(
        s.update_container(&b2).await,
        Err(StoreError::Conflict(_))
    ));
    s.delete_container("bob", "b2").await.unwrap();
    assert!(matches!(
        s.update_container(&b2).await,
        Err(StoreError::NotFound)
    ));
    drop(s);
    // Reopening applies no migration twice and keeps the data.
    let s = SqliteStore::open(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    assert_eq!(
        s.get_container_by_id("a1").await.unwrap().unwrap().name,
        "web"
    );
}

/// Networks: VNIs never reused, names unique per account, removal refused
/// while a container is on it, map versions bumped by endpoint changes only,
/// and concurrent creates never share an address.
#[tokio::test]
async fn networks_vnis_endpoints_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(
        SqliteStore::open(&dir.path().join("db.sqlite"))
            .await
            .unwrap(),
    );
    let v1 = s
        .insert_network(&network("alice", "n1", "front"))
        .await
        .unwrap();
    let v2 = s
        .insert_network(&network("bob", "n2", "front"))
        .await
        .unwrap();
    assert!(v2 > v1);
    assert!(matches!(
        s.insert_network(&network("alice", "n3", "front")).await,
        Err(StoreError::Conflict(w)) if w == "network"
    ));
    assert_eq!(s.get_network("alice", "n1").await.unwrap().unwrap().vni, v1);
    assert!(s.get_network("bob", "n1").await.unwrap().is_none());
    assert_eq!(s.list_networks("bob").await.unwrap().len(), 1);

    let (v0, _) = s.network_endpoints("n1").await.unwrap();
    let mut c = container("alice", "c1", "web", Some(("n1", "10.0.0.2")));
    s.insert_container(&c).await.unwrap();
    let (va, rows) = s.network_endpoints("n1").await.unwrap();
    assert!(va > v0);
    assert_eq!(rows[0].ip.to_string(), "10.0.0.2");
    // A state change leaves the map (and its version) alone.
    c.state.pid = 42;
    s.update_container(&c).await.unwrap();
    assert_eq!(s.network_endpoints("n1").await.unwrap().0, va);
    assert_eq!(s.network_version("n1").await.unwrap(), va);
    assert!(matches!(
        s.network_version("gone").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_network("alice", "n1").await,
        Err(StoreError::Conflict(_))
    ));
    // Another account cannot remove it either.
    assert!(matches!(
        s.delete_network("bob", "n1").await,
        Err(StoreError::NotFound)
    ));
    s.delete_container("alice", "c1").await.unwrap();
    let (vb, rows) = s.network_endpoints("n1").await.unwrap();
    assert!(vb > va && rows.is_empty());
    s.delete_network("alice", "n1").await.unwrap();
    // A container cannot land on a removed network.
    assert!(matches!(
        s.insert_container(&container("alice", "c2", "db", Some(("n1", "10.0.0.3"))))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.get_container("alice", "c2").await.unwrap().is_none());
    // VNIs are never handed out twice, even after a removal of the newest.
    let v3 = s
        .insert_network(&network("alice", "n4", "back"))
        .await
        .unwrap();
    s.delete_network("alice", "n4").await.unwrap();
    let v4 = s
        .insert_network(&network("alice", "n5", "back"))
        .await
        .unwrap();
    assert!(v3 > v2 && v4 > v3);

    // 16 concurrent creates, each taking the lowest free address and
    // retrying on a clash: 16 different addresses.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let (_, rows) = s.network_endpoints("n5").await.unwrap();
                let used: Vec<String> = rows.iter().map(|r| r.ip.to_string()).collect();
                let ip = (2..254)
                    .map(|h| format!("10.0.0.{h}"))
                    .find(|a| !used.contains(a))
                    .unwrap();
                let c = container(
                    "alice",
                    &format!("k{i}"),
                    &format!("k{i}"),
                    Some(("n5", &ip)),
                );
                match s.insert_container(&c).await {
                    Ok(()) => return ip,
                    Err(StoreError::Conflict(w)) if w == "ip" => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let mut ips = Vec::new();
    for t in tasks {
        ips.push(t.await.unwrap());
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 16);
    assert_eq!(s.network_endpoints("n5").await.unwrap().1.len(), 16);
}

#[tokio::test]
async fn images_tags_and_blob_use() {
    let s = SqliteStore::in_memory().await.unwrap();
    let img = ImageRecord {
        account: "alice".into(),
        id: "sha256:cfg".into(),
        layers: vec![ImageLayer {
            blob: "sha256:l1".into(),
            diff_id: "sha256:d1".into(),
            size: 10,
            media_type: "x".into(),
        }],
        size: 10,
        created: Utc::now(),
        added: Utc::now(),
        repo_digests: vec![],
    };
    s.put_image(&img).await.unwrap();
    s.put_image(&img).await.unwrap();
    assert!(s.blob_in_use("sha256:l1").await.unwrap());
    let tag = TagRecord {
        account: "alice".into(),
        reference: "docker.io/library/busybox:latest".into(),
        image_id: img.id.clone(),
    };
    assert_eq!(s.set_tag(&tag).await.unwrap(), None);
    assert_eq!(s.set_tag(&tag).await.unwrap(), Some(img.id.clone()));
    assert!(s.get_tag("bob", &tag.reference).await.unwrap().is_none());
    assert_eq!(s.list_tags("alice").await.unwrap().len(), 1);
    s.delete_image("alice", &img.id).await.unwrap();
    assert!(!s.blob_in_use("sha256:l1").await.unwrap());
    assert!(s.list_tags("alice").await.unwrap().is_empty());
}

#[tokio::test]
async fn volumes_are_per_account_and_names_unique() {
    let s = SqliteStore::in_memory().await.unwrap();
    let vol = |account: &str, name: &str| cluster::model::VolumeRecord {
        account: account.into(),
        name: name.into(),
        id: format!("{account}-{name}"),
        node: "n1".into(),
        driver: "local".into(),
        labels: Default::default(),
        options: Default::default(),
        created: chrono::Utc::now(),
        anonymous: false,
        size_bytes: 0,
    };
    s.insert_volume(&vol("alice", "data")).await.unwrap();
    s.insert_volume(&vol("bob", "data")).await.unwrap();
    assert!(matches!(
        s.insert_volume(&vol("alice", "data")).await,
        Err(cluster::StoreError::Conflict(_))
    ));
    assert_eq!(s.list_volumes("alice").await.unwrap().len(), 1);
    assert_eq!(
        s.get_volume("bob", "data").await.unwrap().unwrap().id,
        "bob-data"
    );
    assert!(s.get_volume("carol", "data").await.unwrap().is_none());
    s.delete_volume("alice", "data").await.unwrap();
    assert!(s.get_volume("alice", "data").await.unwrap().is_none());
    assert!(s.get_volume("bob", "data").await.unwrap().is_some());
}

#[tokio::test]
async fn allocations_add_up_per_server_and_packages_keep_one_default() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    let mut c = container("alice", "a1", "web", None);
    s.insert_container(&c).await.unwrap();
    c = container("bob", "b1", "web", None);
    c.reservation.memory = 1 << 30;
    s.insert_container(&c).await.unwrap();
    c = container("bob", "b2", "db", None);
    c.node = "n2".into();
    s.insert_container(&c).await.unwrap();
    let a = s.node_allocations().await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0].node.as_str(), a[0].memory, a[0].disk, a[0].containers),
        ("n1", (512 << 20) + (1 << 30), 2 << 30, 2)
    );
    assert_eq!((a[1].node.as_str(), a[1].containers), ("n2", 1));
    // An update moves the reservation with it; a removal frees it.
    c.reservation.memory = 64 << 20;
    s.update_container(&c).await.unwrap();
    assert_eq!(s.node_allocations().await.unwrap()[1].memory, 64 << 20);
    s.delete_container("bob", "b2").await.unwrap();
    assert_eq!(s.node_allocations().await.unwrap().len(), 1);

    let mut p = cluster::servers::sample_packages();
    for x in &p {
        s.put_package(x).await.unwrap();
    }
    p[0].default = true;
    s.put_package(&p[0]).await.unwrap();
    let all = s.list_packages().await.unwrap();
    assert_eq!(all.len(), p.len());
    let defaults: Vec<&str> = all
        .iter()
        .filter(|x| x.default)
        .map(|x| x.name.as_str())
        .collect();
    assert_eq!(defaults, [p[0].name.as_str()]);
    assert_eq!(s.get_setting("placement.strategy").await.unwrap(), None);
    s.put_setting("placement.strategy", "pack").await.unwrap();
    s.put_setting("placement.strategy", "spread").await.unwrap();
    assert_eq!(
        s.get_setting("placement.strategy")
            .await
            .unwrap()
            .as_deref(),
        Some("spread")
    );
    s.delete_package(&p[0].name).await.unwrap();
    assert!(matches!(
        s.delete_package(&p[0].name).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn a_join_token_is_taken_once_and_not_after_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    s.put_join_token("h1", 1000).await.unwrap();
    s.put_join_token("h2", 1000).await.unwrap();
    assert!(!s.take_join_token("nope", 10).await.unwrap());
    assert!(s.take_join_token("h1", 10).await.unwrap());
    assert!(!s.take_join_token("h1", 10).await.unwrap(), "one time only");
    assert!(!s.take_join_token("h2", 1000).await.unwrap(), "expired");
    assert!(
        !s.take_join_token("h2", 10).await.unwrap(),
        "expired ones are gone"
    );
    // Racing takers: exactly one wins.
    s.put_join_token("h3", 1000).await.unwrap();
    let (a, b) = tokio::join!(s.take_join_token("h3", 10), s.take_join_token("h3", 10));
    assert!(a.unwrap() ^ b.unwrap());
}

#[tokio::test]
async fn id_ranges_are_one_per_account_and_never_handed_out_twice() {
    use cluster::model::AccountRecord;
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    const FIRST: u32 = 1_000_000_000;
    const SIZE: u32 = 65536;
    // Concurrent first uses by one account agree; another gets the next range.
    let (a1, a2) = tokio::join!(
        s.account_id_range("alice", FIRST, SIZE),
        s.account_id_range("alice", FIRST, SIZE)
    );
    assert_eq!(a1.unwrap(), FIRST);
    assert_eq!(a2.unwrap(), FIRST);
    assert_eq!(
        s.account_id_range("bob", FIRST, SIZE).await.unwrap(),
        FIRST + SIZE
    );
    assert_eq!(
        s.account_id_range("alice", FIRST, SIZE).await.unwrap(),
        FIRST
    );
    // Deleting an account retires its range: a new account of the same name
    // (another tenant) gets a fresh one, and nobody gets the old one again.
    let alice = AccountRecord {
        name: "alice".into(),
        created: Utc::now(),
        disabled: false,
        limits: Default::default(),
    };
    s.insert_account(&alice).await.unwrap();
    s.delete_account("alice").await.unwrap();
    assert_eq!(
        s.account_id_range("alice", FIRST, SIZE).await.unwrap(),
        FIRST + 2 * SIZE
    );
    assert_eq!(
        s.account_id_range("carol", FIRST, SIZE).await.unwrap(),
        FIRST + 3 * SIZE
    );
    // The id space ends: refused, not wrapped around.
    let last = u32::MAX - SIZE + 1;
    assert_eq!(
        s.account_id_range("dave", FIRST, SIZE).await.unwrap(),
        FIRST + 4 * SIZE
    );
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = SqliteStore::open(&dir2.path().join("db.sqlite"))
        .await
        .unwrap();
    assert_eq!(
        s2.account_id_range("x", last - SIZE, SIZE).await.unwrap(),
        last - SIZE
    );
    // (the next range would end on id 2^32 - 1, which is no id)
    assert!(matches!(
        s2.account_id_range("y", last - SIZE, SIZE).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s2.account_id_range("y", last - SIZE, SIZE).await,
        Err(StoreError::Conflict(_))
    ));
}
