//! Links, addresses and routes through rtnetlink (never the `ip` binary: ~2 ms per
//! container instead of ~47 ms).

use crate::error::NetError;
use crate::ipv4net::Ipv4Net;
use async_trait::async_trait;
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Name of the container side of the veth, inside its namespace.
pub const CONTAINER_IF: &str = "eth0";

/// Everything that defines one container's link; also what `veth_state` checks against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethSpec {
    /// Host-side veth name.
    pub host: String,
    /// Kept as the host link's alias (the container id): proves the link is this container's.
    pub alias: String,
    pub bridge: String,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mac: [u8; 6],
    pub gateway: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VethState {
    /// No link by that name.
    Absent,
    /// Exists and matches the spec in every checked detail.
    Complete,
    /// Ours, but half-made or different: recreate it.
    Partial,
    /// The name belongs to another container (hash collision).
    Foreign,
}

#[async_trait]
pub trait LinkOps: Send + Sync {
    /// Every IPv4 network in use on the host: interface addresses and main-table routes
    /// (default routes excluded).
    async fn host_ipv4_nets(&self) -> Result<Vec<Ipv4Net>, NetError>;
    /// The IPv4 addresses of link `name`, or None when there is no such link.
    async fn link_ipv4(&self, name: &str) -> Result<Option<Vec<(Ipv4Addr, u8)>>, NetError>;
    /// Creates the bridge if missing, adds `gateway/prefix` if missing, brings it up.
    async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError>;
    async fn veth_state(&self, spec: &VethSpec) -> Result<VethState, NetError>;
    /// Creates the veth pair with the peer directly in the namespace as eth0, attaches the
    /// host side to the bridge, and configures lo, eth0 and the default route inside.
    async fn create_veth(&self, spec: &VethSpec) -> Result<(), NetError>;
    /// Deletes link `name`; false if it did not exist.
    async fn delete_link(&self, name: &str) -> Result<bool, NetError>;
    async fn link_names(&self) -> Result<Vec<String>, NetError>;
}

/// Positive errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

pub(crate) fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |e| NetError::netlink(op, e)
}

/// Treats "already exists" as success (idempotent creation).
pub(crate) fn allow_exists(r: Result<(), rtnetlink::Error>, op: &str) -> Result<(), NetError> {
    match r {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        r => r.map_err(nl(op)),
    }
}

pub(crate) async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut s = h.link().get().match_name(name).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(NetError::netlink(format!("get link {name}"), e)),
    }
}

/// Every link of `h`'s namespace.
pub(crate) async fn all_links(h: &Handle) -> Result<Vec<LinkMessage>, NetError> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("list links"))
}

pub(crate) async fn require_link(h: &Handle, name: &str) -> Result<LinkMessage, NetError> {
    link_by_name(h, name)
        .await?
        .ok_or_else(|| NetError::netlink(format!("get link {name}"), "no such interface"))
}

pub(crate) fn addr_v4(m: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(IpAddr::V4(v)) => return Some((*v, m.header.prefix_len)),
            AddressAttribute::Address(IpAddr::V4(v)) => addr = Some(*v),
            _ => {}
        }
    }
    addr.map(|a| (a, m.header.prefix_len))
}

pub(crate) async fn ipv4_addrs(
    h: &Handle,
    index: Option<u32>,
) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
    let mut req = h.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let msgs: Vec<AddressMessage> = req
        .execute()
        .try_collect()
        .await
        .map_err(nl("list addresses"))?;
    Ok(msgs.iter().filter_map(addr_v4).collect())
}

async fn ipv4_routes(h: &Handle) -> Result<Vec<RouteMessage>, NetError> {
    h.route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn route_dst(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
        _ => None,
    })
}

fn route_gw(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
        _ => None,
    })
}

fn link_alias(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

pub(crate) fn link_controller(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

fn link_mac(m: &LinkMessage) -> Option<&[u8]> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(v) => Some(v.as_slice()),
        _ => None,
    })
}

pub(crate) fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(s) => Some(s.as_str()),
        _ => None,
    })
}

pub(crate) fn is_up(m: &LinkMessage) -> bool {
    m.header.flags.contains(LinkFlags::Up)
}

/// An rtnetlink connection whose socket lives in another network namespace.
pub(crate) struct NsConn {
    pub(crate) handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NsConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NsConn {
    /// A netlink socket belongs to the namespace of the thread that created it: create it
    /// in a short-lived thread that joined `netns`, then drive it from the runtime.
    /// Must be called within a tokio runtime.
    pub(crate) fn open(netns: &Path) -> Result<NsConn, NetError> {
        let ns =
            std::fs::File::open(netns).map_err(|source| NetError::Netns { op: "open", source })?;
        let fd: OwnedFd = std::thread::spawn(move || -> std::io::Result<OwnedFd> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let s = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
            // SAFETY: into_raw_fd hands over sole ownership of a valid open socket.
            Ok(unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) })
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns thread panicked")))
        .map_err(|source| NetError::Netns {
            op: "enter",
            source,
        })?;
        // SAFETY: we own `fd`, a valid netlink socket; TokioSocket takes it over.
        let sock = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(sock);
        let task = tokio::spawn(conn);
        Ok(NsConn { handle, task })
    }
}

/// The real `LinkOps` over one rtnetlink connection in the caller's namespace.
pub struct RtLinks {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RtLinks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RtLinks {
    /// Opens a netlink connection in the calling thread's network namespace; needs a tokio
    /// runtime.
    pub fn new() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
            op: "open netlink socket",
            source,
        })?;
        let task = tokio::spawn(conn);
        Ok(RtLinks { handle, task })
    }

    async fn ns_complete(&self, spec: &VethSpec) -> Result<bool, NetError> {
        let Ok(ns) = NsConn::open(&spec.netns) else {
            return Ok(false);
        };
        let h = &ns.handle;
        let Some(eth) = link_by_name(h, CONTAINER_IF).await? else {
            return Ok(false);
        };
        if !is_up(&eth) || link_mac(&eth) != Some(&spec.mac[..]) {
            return Ok(false);
        }
        let lo_up = link_by_name(h, "lo").await?.is_some_and(|l| is_up(&l));
        let addrs = ipv4_addrs(h, Some(eth.header.index)).await?;
        if !lo_up || !addrs.contains(&(spec.ip, spec.prefix)) {
            return Ok(false);
        }
        let routes = ipv4_routes(h).await?;
        Ok(routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
                && route_gw(r) == Some(spec.gateway)
        }))
    }

    async fn configure_inside(&self, spec: &VethSpec) -> Result<(), NetError> {
        configure_container(spec).await
    }

    /// A bare port of `bridge` for the namespace at `netns`: veth `host` on
    /// the bridge, its peer `peer` (with `mac`, up, no address) inside. Kept
    /// when `host` exists. (A simulated server's interface on the public
    /// network.)
    pub async fn ensure_port(
        &self,
        host: &str,
        bridge: &str,
        netns: &Path,
        peer: &str,
        mac: [u8; 6],
    ) -> Result<(), NetError> {
        let h = &self.handle;
        if link_by_name(h, host).await?.is_some() {
            return Ok(());
        }
        let br = require_link(h, bridge).await?.header.index;
        add_veth(h, host, br, netns, peer, mac).await?;
        let ns = NsConn::open(netns)?;
        let idx = require_link(&ns.handle, peer).await?.header.index;
        ns.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {peer} up")))
    }
}

/// A veth through `h`: `name` on bridge `bridge` (up), its peer `eth0` with
/// `mac` in the namespace at `netns`.
pub(crate) async fn add_veth(
    h: &Handle,
    name: &str,
    bridge: u32,
    netns: &Path,
    peer_name: &str,
    mac: [u8; 6],
) -> Result<(), NetError> {
    let ns = std::fs::File::open(netns).map_err(|source| NetError::Netns { op: "open", source })?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer_name.to_string())
        .address(mac.to_vec())
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .controller(bridge)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link().add(msg).execute().await.map_err(nl("create veth"))
}

/// Bridge `name` (with `mac` when given) holding `gateway/prefix`, up: made or
/// completed through `h`.
pub(crate) async fn ensure_bridge_with(
    h: &Handle,
    name: &str,
    mac: Option<[u8; 6]>,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    if link_by_name(h, name).await?.is_none() {
        let mut b = LinkBridge::new(name);
        if let Some(mac) = mac {
            b = b.address(mac.to_vec());
        }
        allow_exists(h.link().add(b.build()).execute().await, "create bridge")?;
    }
    let idx = require_link(h, name).await?.header.index;
    if !ipv4_addrs(h, Some(idx)).await?.contains(&(gateway, prefix)) {
        allow_exists(
            h.address()
                .add(idx, IpAddr::V4(gateway), prefix)
                .execute()
                .await,
            "add bridge address",
        )?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl("set bridge up"))
}

/// Inside the container's namespace: lo and eth0 up, eth0's address, the
/// default route through the gateway.
pub(crate) async fn configure_container(spec: &VethSpec) -> Result<(), NetError> {
    let ns = NsConn::open(&spec.netns)?;
    configure_iface(
        &ns.handle,
        CONTAINER_IF,
        spec.ip,
        spec.prefix,
        Some(spec.gateway),
    )
    .await
}

/// Through `h` (a container's namespace): lo and `ifname` up, its address,
/// and the default route through `gateway` when given.
pub(crate) async fn configure_iface(
    h: &Handle,
    ifname: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<(), NetError> {
    let lo = require_link(h, "lo").await?.header.index;
    let eth = require_link(h, ifname).await?.header.index;
    let (a, b, c) = futures::join!(
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute(),
        h.address().add(eth, IpAddr::V4(ip), prefix).execute(),
        h.link()
            .set(LinkUnspec::new_with_index(eth).up().build())
            .execute(),
    );
    a.map_err(nl("set lo up"))?;
    allow_exists(b, "add container address")?;
    c.map_err(nl(format!("set {ifname} up")))?;
    let Some(gateway) = gateway else {
        return Ok(());
    };
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(eth)
        .build();
    allow_exists(h.route().add(route).execute().await, "add default route")
}

#[async_trait]
impl LinkOps for RtLinks {
    async fn host_ipv4_nets(&self) -> Result<Vec<Ipv4Net>, NetError> {
        let mut out = Vec::new();
        for (a, p) in ipv4_addrs(&self.handle, None).await? {
            out.push(Ipv4Net::new(a, p)?);
        }
        for r in ipv4_routes(&self.handle).await? {
            let p = r.header.destination_prefix_length;
            if p == 0 || route_table(&r) != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            if let Some(d) = route_dst(&r) {
                out.push(Ipv4Net::new(d, p)?);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn link_ipv4(&self, name: &str) -> Result<Option<Vec<(Ipv4Addr, u8)>>, NetError> {
        match link_by_name(&self.handle, name).await? {
            None => Ok(None),
            Some(l) => Ok(Some(ipv4_addrs(&self.handle, Some(l.header.index)).await?)),
        }
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        ensure_bridge_with(&self.handle, name, Some(mac), gateway, prefix).await
    }

    async fn veth_state(&self, spec: &VethSpec) -> Result<VethState, NetError> {
        let h = &self.handle;
        let Some(link) = link_by_name(h, &spec.host).await? else {
            return Ok(VethState::Absent);
        };
        match link_alias(&link) {
            Some(a) if a != spec.alias => return Ok(VethState::Foreign),
            None => return Ok(VethState::Partial),
            Some(_) => {}
        }
        let bridge = link_by_name(h, &spec.bridge).await?;
        let attached = bridge.is_some_and(|b| link_controller(&link) == Some(b.header.index));
        if !attached || !is_up(&link) {
            return Ok(VethState::Partial);
        }
        Ok(if self.ns_complete(spec).await? {
            VethState::Complete
        } else {
            VethState::Partial
        })
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<(), NetError> {
        let h = &self.handle;
        let br = require_link(h, &spec.bridge).await?.header.index;
        add_veth(h, &spec.host, br, &spec.netns, CONTAINER_IF, spec.mac).await?;
        // The kernel ignores IFLA_IFALIAS on creation; set it in a second message.
        let idx = require_link(h, &spec.host).await?.header.index;
        h.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .alias(spec.alias.clone())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("set veth alias"))?;
        self.configure_inside(spec).await
    }

    async fn delete_link(&self, name: &str) -> Result<bool, NetError> {
        let h = &self.handle;
        let Some(link) = link_by_name(h, name).await? else {
            return Ok(false);
        };
        match h.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(NetError::netlink(format!("delete link {name}"), e)),
        }
    }

    async fn link_names(&self) -> Result<Vec<String>, NetError> {
        Ok(all_links(&self.handle)
            .await?
            .iter()
            .filter_map(|l| link_name(l).map(str::to_string))
            .collect())
    }
}
