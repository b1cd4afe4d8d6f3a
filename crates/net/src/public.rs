//! A server's side of the datacenter's public network.
//!
//! A container that publishes ports has its own public address. The server
//! holds no address there: it routes the container's address (a /32 in the
//! main table) to the uplink of the container's router, and answers ARP for
//! it on the public interface (a proxy entry per address: the interface-wide
//! `proxy_arp` would answer for every address the server routes, its
//! default route included, so every server would claim every address), so
//! the address lives wherever its container runs. The router DNATs the published ports to the container and
//! drops the rest. Replies leave through the public interface by a policy
//! rule (from the public subnet, arriving from the server bridge → a table
//! whose routes are the public subnet and the public gateway), whatever the
//! server's own default route is.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use async_trait::async_trait;
use futures::TryStreamExt;
use netlink_packet_route::neighbour::NeighbourFlags;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::error::NetError;
use crate::ipv4net::Ipv4Net;
use crate::link::{allow_exists, link_by_name, nl, require_link};
use crate::sysctl::Sysctl;

/// The routing table of replies to the public network ("atoll" on a phone pad
/// is 28655; far from the tables distributions use).
pub const PUBLIC_TABLE: u32 = 28655;
/// The priority of the rule that sends replies to [`PUBLIC_TABLE`].
const RULE_PRIORITY: u32 = 28655;

/// A container's public address, as the agent got it from the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicIp {
    pub ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// The kernel operations of the public side (a recording fake in
/// [`crate::fake`]).
#[async_trait]
pub trait PublicRouting: Send + Sync {
    /// Readies `iface` (up, forwarding, no reverse-path check) and the
    /// reply path: the rule (from `subnet`, in from `bridge`) and its table.
    async fn prepare(
        &self,
        iface: &str,
        bridge: &str,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError>;
    /// Routes `ip`/32 to `via` (a router's uplink on the server bridge) and
    /// answers ARP for it on `iface`.
    async fn route(&self, iface: &str, ip: Ipv4Addr, via: Ipv4Addr) -> Result<(), NetError>;
    /// Undoes [`PublicRouting::route`]. Idempotent.
    async fn unroute(&self, iface: &str, ip: Ipv4Addr) -> Result<(), NetError>;
}

/// [`PublicRouting`] through rtnetlink in the agent's own namespace.
pub struct RtPublic {
    handle: Handle,
    sysctl: Box<dyn Sysctl>,
    _task: tokio::task::JoinHandle<()>,
}

impl RtPublic {
    pub fn new(sysctl: Box<dyn Sysctl>) -> Result<RtPublic, NetError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::netlink("open", e))?;
        Ok(RtPublic {
            handle,
            sysctl,
            _task: tokio::spawn(conn),
        })
    }
}

fn host_route(ip: Ipv4Addr) -> RouteMessageBuilder<Ipv4Addr> {
    RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(ip, 32)
}

#[async_trait]
impl PublicRouting for RtPublic {
    async fn prepare(
        &self,
        iface: &str,
        bridge: &str,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        let h = &self.handle;
        let idx = require_link(h, iface).await?.header.index;
        // No reverse-path check: the interface may hold no address, and then
        // even the loose check refuses every source (the kernel's "last
        // resort"); what it lets in is decided by the routers' tables. (The
        // effective value is the larger of this and `all`'s.)
        for (key, value) in [
            ("conf/{iface}/rp_filter", "0"),
            ("conf/{iface}/forwarding", "1"),
            // Answer ARP for the addresses at once (proxy entries), not
            // after up to 0.8 s.
            ("neigh/{iface}/proxy_delay", "0"),
        ] {
            let key = key.replace("{iface}", iface);
            self.sysctl.set(&format!("net/ipv4/{key}"), value)?;
        }
        h.link()
            .set(rtnetlink::LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {iface} up")))?;
        for route in [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(subnet.network(), subnet.prefix())
                .output_interface(idx)
                .scope(netlink_packet_route::route::RouteScope::Link)
                .table_id(PUBLIC_TABLE)
                .build(),
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(idx)
                .table_id(PUBLIC_TABLE)
                .build(),
        ] {
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl("add public route"))?;
        }
        // One rule; an earlier one (another subnet) is replaced.
        delete_rules(h).await?;
        allow_exists(
            h.rule()
                .add()
                .v4()
                .source_prefix(subnet.network(), subnet.prefix())
                .input_interface(bridge.to_string())
                .table_id(PUBLIC_TABLE)
                .action(netlink_packet_route::rule::RuleAction::ToTable)
                .priority(RULE_PRIORITY)
                .execute()
                .await,
            "add public rule",
        )
    }

    async fn route(&self, iface: &str, ip: Ipv4Addr, via: Ipv4Addr) -> Result<(), NetError> {
        let h = &self.handle;
        let route = host_route(ip).gateway(via).build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl("add public address route"))?;
        let idx = require_link(h, iface).await?.header.index;
        allow_exists(
            h.neighbours()
                .add(idx, IpAddr::V4(ip))
                .flags(NeighbourFlags::Proxy)
                .execute()
                .await,
            "add public address proxy entry",
        )
    }

    async fn unroute(&self, iface: &str, ip: Ipv4Addr) -> Result<(), NetError> {
        let h = &self.handle;
        let gone = |r: Result<(), rtnetlink::Error>, what: &str| match r {
            Err(rtnetlink::Error::NetlinkError(m))
                if matches!(-m.raw_code(), libc::ESRCH | libc::ENOENT) =>
            {
                Ok(())
            }
            r => r.map_err(nl(what)),
        };
        if let Some(link) = link_by_name(h, iface).await? {
            let mut req = h
                .neighbours()
                .add(link.header.index, IpAddr::V4(ip))
                .flags(NeighbourFlags::Proxy);
            let msg = req.message_mut().clone();
            gone(
                h.neighbours().del(msg).execute().await,
                "delete public address proxy entry",
            )?;
        }
        gone(
            h.route().del(host_route(ip).build()).execute().await,
            "delete public address route",
        )
    }
}

/// Removes what [`RtPublic`] made on `iface`: the proxy entries of the
/// public subnet (read back from [`PUBLIC_TABLE`]), the table and the rule.
/// The /32 routes went with the server bridge. For `atoll reset`.
pub async fn teardown(iface: &str) -> Result<(), NetError> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(|e| NetError::netlink("open", e))?;
    let task = tokio::spawn(conn);
    let routes: Vec<_> = h
        .route()
        .get(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(PUBLIC_TABLE)
                .build(),
        )
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))?;
    let ours: Vec<_> = routes
        .into_iter()
        .filter(|r| {
            r.attributes.iter().any(|a| {
                matches!(a, netlink_packet_route::route::RouteAttribute::Table(t) if *t == PUBLIC_TABLE)
            })
        })
        .collect();
    let subnets: Vec<Ipv4Net> = ours
        .iter()
        .filter_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                netlink_packet_route::route::RouteAttribute::Destination(
                    netlink_packet_route::route::RouteAddress::Inet(ip),
                ) => Ipv4Net::new(*ip, r.header.destination_prefix_length).ok(),
                _ => None,
            })
        })
        .collect();
    if let Some(link) = link_by_name(&h, iface).await? {
        let idx = link.header.index;
        let neighbours: Vec<_> = h
            .neighbours()
            .get()
            .proxies()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list proxy entries"))?;
        for n in neighbours {
            let ip = n.attributes.iter().find_map(|a| match a {
                netlink_packet_route::neighbour::NeighbourAttribute::Destination(
                    netlink_packet_route::neighbour::NeighbourAddress::Inet(ip),
                ) => Some(*ip),
                _ => None,
            });
            if n.header.ifindex == idx
                && ip.is_some_and(|ip| subnets.iter().any(|s| s.contains(ip)))
            {
                let _ = h.neighbours().del(n).execute().await;
            }
        }
    }
    for r in ours {
        let _ = h.route().del(r).execute().await;
    }
    let r = delete_rules(&h).await;
    task.abort();
    r
}

/// Deletes the reply rule (whatever its subnet).
async fn delete_rules(h: &Handle) -> Result<(), NetError> {
    let rules: Vec<_> = h
        .rule()
        .get(rtnetlink::IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list rules"))?;
    for r in rules {
        let ours = r.attributes.iter().any(|a| {
            matches!(a, netlink_packet_route::rule::RuleAttribute::Priority(p) if *p == RULE_PRIORITY)
        });
        if ours {
            h.rule()
                .del(r)
                .execute()
                .await
                .map_err(nl("delete public rule"))?;
        }
    }
    Ok(())
}

/// The public interface of a server and what was readied on it.
pub struct PublicSide {
    iface: String,
    ops: Box<dyn PublicRouting>,
    /// The (subnet, gateway) the reply path was readied for.
    ready: Mutex<Option<(Ipv4Net, Ipv4Addr)>>,
}

impl PublicSide {
    pub fn new(iface: String, ops: Box<dyn PublicRouting>) -> PublicSide {
        PublicSide {
            iface,
            ops,
            ready: Mutex::new(None),
        }
    }

    /// Routes `p` to the router whose uplink is `via`.
    pub async fn publish(&self, bridge: &str, p: &PublicIp, via: Ipv4Addr) -> Result<(), NetError> {
        let want = (p.subnet, p.gateway);
        let ready = *self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready != Some(want) {
            self.ops
                .prepare(&self.iface, bridge, p.subnet, p.gateway)
                .await?;
            *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(want);
        }
        self.ops.route(&self.iface, p.ip, via).await
    }

    pub async fn unpublish(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        self.ops.unroute(&self.iface, ip).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakePublic;

    /// In a namespace of its own (a thread that unshared one; `ip` runs
    /// there to make the links and to look): publish, unpublish, teardown.
    #[test]
    fn routes_entries_and_the_rule_for_real() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let ip = |args: &str| {
                let out = std::process::Command::new("ip")
                    .args(args.split_whitespace())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ip {args}: {out:?}");
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            for cmd in [
                "link add pubt0 type veth peer name pubt1",
                "link add brt type bridge",
                "addr add 10.1.0.1/24 dev brt",
                "link set brt up",
            ] {
                ip(cmd);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let side = PublicSide::new(
                    "pubt0".into(),
                    Box::new(RtPublic::new(Box::new(crate::ProcSysctl)).unwrap()),
                );
                let p = |a: &str| PublicIp {
                    ip: a.parse().unwrap(),
                    subnet: "198.51.100.0/24".parse().unwrap(),
                    gateway: "198.51.100.1".parse().unwrap(),
                };
                let via: Ipv4Addr = "10.1.0.2".parse().unwrap();
                side.publish("brt", &p("198.51.100.7"), via).await.unwrap();
                side.publish("brt", &p("198.51.100.8"), via).await.unwrap();
                assert!(ip("rule").contains("from 198.51.100.0/24 iif brt lookup 28655"));
                let table = ip("route show table 28655");
                assert!(
                    table.contains("default via 198.51.100.1 dev pubt0"),
                    "{table}"
                );
                assert!(ip("route show 198.51.100.7/32").contains("via 10.1.0.2 dev brt"));
                let proxies = ip("neigh show proxy");
                assert!(proxies.contains("198.51.100.7") && proxies.contains("198.51.100.8"));
                side.unpublish("198.51.100.8".parse().unwrap())
                    .await
                    .unwrap();
                side.unpublish("198.51.100.8".parse().unwrap())
                    .await
                    .unwrap();
                assert!(ip("route show 198.51.100.8/32").trim().is_empty());
                assert!(!ip("neigh show proxy").contains("198.51.100.8"));
                teardown("pubt0").await.unwrap();
                assert!(!ip("rule").contains("28655"));
                assert!(ip("route show table 28655").trim().is_empty());
                assert!(ip("neigh show proxy").trim().is_empty());
            });
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn the_reply_path_is_readied_once_per_setting() {
        let fake = FakePublic::default();
        let side = PublicSide::new("pub0".into(), Box::new(fake.clone()));
        let p = |ip: &str, subnet: &str| PublicIp {
            ip: ip.parse().unwrap(),
            subnet: subnet.parse().unwrap(),
            gateway: "198.51.100.1".parse().unwrap(),
        };
        let via: Ipv4Addr = "10.200.0.2".parse().unwrap();
        side.publish("br", &p("198.51.100.5", "198.51.100.0/24"), via)
            .await
            .unwrap();
        side.publish("br", &p("198.51.100.6", "198.51.100.0/24"), via)
            .await
            .unwrap();
        side.unpublish("198.51.100.5".parse().unwrap())
            .await
            .unwrap();
        side.publish("br", &p("198.51.0.7", "198.51.0.0/16"), via)
            .await
            .unwrap();
        assert_eq!(
            fake.calls(),
            [
                "prepare pub0 br 198.51.100.0/24 198.51.100.1",
                "route pub0 198.51.100.5 10.200.0.2",
                "route pub0 198.51.100.6 10.200.0.2",
                "unroute pub0 198.51.100.5",
                "prepare pub0 br 198.51.0.0/16 198.51.100.1",
                "route pub0 198.51.0.7 10.200.0.2",
            ]
        );
    }
}
