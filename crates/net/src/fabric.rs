//! Fabric networks on one server (issue 5's data path; not wired to the agent
//! yet): one VXLAN segment per network, spanning every server that hosts one
//! of its containers.
//!
//! Each segment gets a *router namespace* on the server, pinned at
//! `<dir>/seg-<id>`, holding a bridge `br0` with the network's gateway address
//! and a VXLAN device `vx0` (its VNI, learning off, ARP proxy on). `vx0` is
//! created from the server's own namespace, so its UDP socket stays on the
//! underlay while the device lives in the router namespace: networks of
//! different accounts may use the same subnet on one server, each in its own
//! namespace. Containers' veths have their server end in the router
//! namespace, on `br0`.
//!
//! The head owns the overlay map ([`Member`]s: MAC, address, server) and the
//! agent programs it with [`Fabric::set_members`]: an FDB entry (MAC → server)
//! and a neighbour entry (address → MAC, which the ARP proxy answers from) per
//! container on another server. There are no flood entries, so nothing is
//! broadcast across servers, and the map converges to exactly what is given.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::InfoVxlan;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

use crate::error::NetError;
use crate::ipv4net::Ipv4Net;
use crate::link::{
    NsConn, add_veth, all_links, allow_exists, configure_iface, ensure_bridge_with, ipv4_addrs,
    link_by_name, nl, require_link,
};
use crate::netns::{NetnsOps, RealNetns};

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;
const BRIDGE: &str = "br0";
const VXLAN: &str = "vx0";

/// One network's segment as this server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Short id (1-12 of [a-z0-9]) naming the router namespace and links.
    pub id: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// This server's underlay address (its VXLAN endpoint); None: a server
    /// alone, whose segments have no VXLAN device.
    pub vtep: Option<Ipv4Addr>,
}

/// A container of the network, wherever it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// The underlay address of its server.
    pub vtep: Ipv4Addr,
}

fn check_id(id: &str) -> Result<(), NetError> {
    let ok = !id.is_empty()
        && id.len() <= 12
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidId(id.to_string()))
    }
}

/// The segments of one server, driven from its own network namespace (the
/// caller's, or `host` when given: tests simulate servers as namespaces).
pub struct Fabric {
    dir: PathBuf,
    host: NsConn,
    host_ns: Option<PathBuf>,
}

impl Fabric {
    /// Needs a tokio runtime.
    pub fn new(dir: &Path, host: Option<&Path>) -> Result<Fabric, NetError> {
        let host_conn = match host {
            Some(ns) => NsConn::open(ns)?,
            None => NsConn::open(Path::new("/proc/self/ns/net"))?,
        };
        Ok(Fabric {
            dir: dir.to_path_buf(),
            host: host_conn,
            host_ns: host.map(Path::to_path_buf),
        })
    }

    /// Where segment `id`'s router namespace is pinned.
    pub fn router_ns(&self, id: &str) -> PathBuf {
        self.dir.join(format!("seg-{id}"))
    }

    /// Creates (or completes) the segment on this server: its router namespace
    /// with `br0` (the gateway address, up) and `vx0` on it. Idempotent.
    pub async fn ensure(&self, seg: &Segment) -> Result<PathBuf, NetError> {
        check_id(&seg.id)?;
        if !seg.subnet.contains(seg.gateway) {
            return Err(NetError::AddressOutsideSubnet {
                ip: seg.gateway,
                subnet: seg.subnet,
            });
        }
        let path = self.router_ns(&seg.id);
        self.create_ns(&path)?;
        set_forwarding(&path)?;
        let ns = NsConn::open(&path)?;
        let h = &ns.handle;
        let lo = require_link(h, "lo").await?.header.index;
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("set lo up"))?;
        ensure_bridge_with(h, BRIDGE, None, seg.gateway, seg.subnet.prefix()).await?;
        let br = require_link(h, BRIDGE).await?.header.index;
        let Some(vtep) = seg.vtep else {
            return Ok(path);
        };
        if link_by_name(h, VXLAN).await?.is_none() {
            // Made from the server's namespace (the underlay), born in the router's.
            let target = std::fs::File::open(&path)
                .map_err(|source| NetError::Netns { op: "open", source })?;
            let msg = LinkVxlan::new(VXLAN, seg.vni)
                .local(vtep)
                .port(VXLAN_PORT)
                .learning(false)
                .append_info_data(InfoVxlan::Proxy(true))
                .setns_by_fd(target.as_raw_fd())
                .build();
            allow_exists(
                self.host.handle.link().add(msg).execute().await,
                "create vxlan",
            )?;
        }
        let vx = require_link(h, VXLAN).await?.header.index;
        h.link()
            .set(LinkUnspec::new_with_index(vx).controller(br).up().build())
            .execute()
            .await
            .map_err(nl("attach vxlan"))?;
        Ok(path)
    }

    fn create_ns(&self, path: &Path) -> Result<(), NetError> {
        // A namespace made by a thread in the server's namespace is that
        // server's child (matters only where servers are namespaces).
        match &self.host_ns {
            None => RealNetns.create(path, None),
            Some(host) => {
                let (host, path) = (host.clone(), path.to_path_buf());
                std::thread::spawn(move || {
                    let f = std::fs::File::open(&host)
                        .map_err(|source| NetError::Netns { op: "open", source })?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                        NetError::Netns {
                            op: "enter",
                            source: e.into(),
                        }
                    })?;
                    RealNetns.create(&path, None)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(NetError::Netns {
                        op: "create",
                        source: std::io::Error::other("namespace thread panicked"),
                    })
                })
            }
        }
    }

    /// Wires a container into the segment: a veth whose `ifname` end (address
    /// `ip`, MAC `mac`, the default route through the gateway when
    /// `default_route`) is in `netns` and whose other end, `port`, is on the
    /// segment's bridge.
    #[allow(clippy::too_many_arguments)]
    pub async fn attach(
        &self,
        seg: &Segment,
        port: &str,
        netns: &Path,
        ifname: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
        default_route: bool,
    ) -> Result<(), NetError> {
        if !seg.subnet.contains(ip) || ip == seg.gateway {
            return Err(NetError::AddressOutsideSubnet {
                ip,
                subnet: seg.subnet,
            });
        }
        let router = NsConn::open(&self.router_ns(&seg.id))?;
        let h = &router.handle;
        let br = require_link(h, BRIDGE).await?.header.index;
        if link_by_name(h, port).await?.is_none() {
            add_veth(h, port, br, netns, ifname, mac).await?;
        }
        let inside = NsConn::open(netns)?;
        configure_iface(
            &inside.handle,
            ifname,
            ip,
            seg.subnet.prefix(),
            default_route.then_some(seg.gateway),
        )
        .await
    }

    /// Takes a container's port off the segment (its peer in the container
    /// goes with it). Idempotent.
    pub async fn detach(&self, seg_id: &str, port: &str) -> Result<(), NetError> {
        check_id(seg_id)?;
        let path = self.router_ns(seg_id);
        if !RealNetns.exists(&path) {
            return Ok(());
        }
        let router = NsConn::open(&path)?;
        let h = &router.handle;
        if let Some(l) = link_by_name(h, port).await? {
            match h.link().del(l.header.index).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => {}
                r => r.map_err(nl("delete port"))?,
            }
        }
        Ok(())
    }

    /// The names of the links in segment `id`'s router namespace.
    pub async fn link_names(&self, id: &str) -> Result<Vec<String>, NetError> {
        check_id(id)?;
        let ns = NsConn::open(&self.router_ns(id))?;
        Ok(all_links(&ns.handle)
            .await?
            .iter()
            .filter_map(|l| crate::link::link_name(l).map(str::to_string))
            .collect())
    }

    /// Sends the default route of the namespace at `netns` through
    /// `gateway`, on the interface holding `ip` (the network that had it was
    /// disconnected, or the container had none).
    pub async fn route_default(
        netns: &Path,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        let ns = NsConn::open(netns)?;
        let h = &ns.handle;
        let addrs: Vec<_> = h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list addresses"))?;
        let idx = addrs
            .iter()
            .find(|m| crate::link::addr_v4(m).map(|(a, _)| a) == Some(ip))
            .map(|m| m.header.index)
            .ok_or_else(|| {
                NetError::netlink("find the interface", format!("no interface has {ip}"))
            })?;
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(idx)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl("replace the default route"))
    }

    /// The first free `ethN` name in the namespace at `netns`.
    pub async fn free_ifname(netns: &Path) -> Result<String, NetError> {
        let ns = NsConn::open(netns)?;
        for i in 0..1024 {
            let name = format!("eth{i}");
            if link_by_name(&ns.handle, &name).await?.is_none() {
                return Ok(name);
            }
        }
        Err(NetError::Nft("no free interface name".into()))
    }

    /// The IPv4 address of `ifname` in segment `id`'s router namespace.
    pub async fn router_address(
        &self,
        id: &str,
        ifname: &str,
    ) -> Result<Option<Ipv4Addr>, NetError> {
        check_id(id)?;
        let path = self.router_ns(id);
        if !RealNetns.exists(&path) {
            return Ok(None);
        }
        let ns = NsConn::open(&path)?;
        let Some(l) = link_by_name(&ns.handle, ifname).await? else {
            return Ok(None);
        };
        Ok(ipv4_addrs(&ns.handle, Some(l.header.index))
            .await?
            .first()
            .map(|a| a.0))
    }

    /// The ids of the segments pinned on this server.
    pub fn pinned(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let id = n.strip_prefix("seg-")?.to_string();
                (check_id(&id).is_ok() && RealNetns.exists(&e.path())).then_some(id)
            })
            .collect()
    }

    /// Programs the overlay map of the segment: exactly `members` on other
    /// servers are reachable (their FDB and neighbour entries on `vx0`);
    /// entries of containers gone are removed.
    pub async fn set_members(&self, seg: &Segment, members: &[Member]) -> Result<(), NetError> {
        let Some(vtep) = seg.vtep else {
            // A server alone: nothing is elsewhere.
            return Ok(());
        };
        let router = NsConn::open(&self.router_ns(&seg.id))?;
        let h = &router.handle;
        let vx = require_link(h, VXLAN).await?.header.index;
        let want: BTreeSet<Member> = members.iter().filter(|m| m.vtep != vtep).copied().collect();
        let (fdb, neigh) = current_entries(h, vx).await?;
        for (mac, msg) in &fdb {
            if !want
                .iter()
                .any(|m| m.mac == *mac && fdb_dst(msg) == Some(m.vtep))
            {
                h.neighbours()
                    .del(msg.clone())
                    .execute()
                    .await
                    .map_err(nl("delete fdb entry"))?;
            }
        }
        for (ip, msg) in &neigh {
            if !want
                .iter()
                .any(|m| m.ip == *ip && neigh_mac(msg) == Some(m.mac))
            {
                h.neighbours()
                    .del(msg.clone())
                    .execute()
                    .await
                    .map_err(nl("delete neighbour entry"))?;
            }
        }
        for m in &want {
            let has_fdb = fdb
                .iter()
                .any(|(mac, msg)| *mac == m.mac && fdb_dst(msg) == Some(m.vtep));
            if !has_fdb {
                h.neighbours()
                    .add_bridge(vx, &m.mac)
                    .destination(IpAddr::V4(m.vtep))
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl("add fdb entry"))?;
            }
            let has_neigh = neigh
                .iter()
                .any(|(ip, msg)| *ip == m.ip && neigh_mac(msg) == Some(m.mac));
            if !has_neigh {
                h.neighbours()
                    .add(vx, IpAddr::V4(m.ip))
                    .link_layer_address(&m.mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl("add neighbour entry"))?;
            }
        }
        Ok(())
    }

    /// Removes the segment from this server: its links (the VXLAN device, the
    /// bridge and every container's veth, whose peers go with them) at once,
    /// then its router namespace, which may outlive its pin for as long as a
    /// netlink socket in it is still being closed. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<(), NetError> {
        check_id(id)?;
        let path = self.router_ns(id);
        if RealNetns.exists(&path) {
            let ns = NsConn::open(&path)?;
            let h = &ns.handle;
            for l in all_links(h).await?.iter().filter(|l| l.header.index != 1) {
                match h.link().del(l.header.index).execute().await {
                    // A veth's peer goes with it.
                    Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => {}
                    r => r.map_err(nl("delete link"))?,
                }
            }
        }
        RealNetns.remove(&path)
    }
}

/// Turns on IPv4 forwarding in the namespace at `ns` (the router routes
/// between its bridge and its uplink). /proc/sys/net is the opening thread's
/// namespace's, so a thread joins it to write.
fn set_forwarding(ns: &Path) -> Result<(), NetError> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || -> std::io::Result<()> {
        let f = std::fs::File::open(&ns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("sysctl thread panicked")))
    .map_err(|source| NetError::Io {
        op: "enable forwarding in a router namespace",
        source,
    })
}

type Entries = (
    Vec<([u8; 6], NeighbourMessage)>,
    Vec<(Ipv4Addr, NeighbourMessage)>,
);

/// The static FDB entries (by MAC) and neighbour entries (by address) on `vx`.
async fn current_entries(h: &Handle, vx: u32) -> Result<Entries, NetError> {
    let fdb: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list fdb"))?;
    let neigh: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list neighbours"))?;
    let mut f = Vec::new();
    for m in fdb {
        if m.header.ifindex != vx || m.header.state != NeighbourState::Permanent {
            continue;
        }
        if let Some(mac) = neigh_mac(&m) {
            // The device's own (all-zero or local) entries carry no remote.
            if fdb_dst(&m).is_some() {
                f.push((mac, m));
            }
        }
    }
    let mut n = Vec::new();
    for m in neigh {
        if m.header.ifindex != vx {
            continue;
        }
        if let Some(ip) = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        }) {
            n.push((ip, m));
        }
    }
    Ok((f, n))
}

fn neigh_mac(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => l.as_slice().try_into().ok(),
        _ => None,
    })
}

fn fdb_dst(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}
