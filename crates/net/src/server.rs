//! A server's container networking: the fabric segments its containers are
//! on, and the server bridge that links them to the world.
//!
//! - Each network with a container here has a segment ([`Fabric`]): a router
//!   namespace with the network's bridge (the gateway) and, where the server
//!   has an underlay address, its VXLAN device. It is made with the first
//!   such container and removed after the last.
//! - A router namespace of a network that is not internal has an *uplink*:
//!   its `eth0` is a port of the server bridge ([`NodeNet`]) with an address
//!   of the server's subnet. The router masquerades what leaves through it
//!   (the server masquerades again towards the world), and lets in only
//!   replies and published ports, so one account's router never forwards
//!   another's traffic into its network.
//! - A published port is two DNATs: on the server, host port → the router's
//!   uplink (same port); in the router, → the container's address and port.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::error::NetError;
use crate::fabric::{Fabric, Member, Segment};
use crate::ipv4net::Ipv4Net;
use crate::netns::UserNs;
use crate::nft::{self, FAMILY, Nft, NftCmd, PORTMAP_CHAIN, PortMapping};
use crate::node::{NodeNet, NodeNetConfig};
use crate::public::{PublicIp, PublicSide};

/// The nft table inside every router namespace (each namespace has its own).
const ROUTER_TABLE: &str = "atoll";
/// The router's uplink, as [`NodeNet`] names a namespace's end.
const UPLINK: &str = crate::link::CONTAINER_IF;

/// One network of a container on this server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// No uplink: the network reaches nothing outside itself.
    pub internal: bool,
}

struct Seg {
    /// None for a router namespace found at start and not yet claimed.
    seg: Option<Segment>,
    users: BTreeSet<String>,
    uplink: Option<Ipv4Addr>,
    /// Since when nobody uses it (it lingers a little: see [`LINGER`]).
    idle_since: Option<std::time::Instant>,
    /// Containers gone since its guard's stale elements were last deleted.
    released: u32,
}

/// After this many containers leave a segment, the guard elements of their
/// ports are deleted (one listing and one `nft` run; until then a gone
/// port's element is harmless: no port sends with its name).
const GUARD_COLLECT: u32 = 32;

/// How long a segment nobody uses is kept before it is removed. Making one
/// costs ≈ 12–15 ms (namespace, uplink, nft table), so a network whose only
/// container comes and goes (`docker run --rm` in a loop) would pay it at
/// every run; removal is deferred to [`ServerNet::collect_idle`].
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Default)]
struct State {
    segments: HashMap<u32, Seg>,
    /// The newest overlay map per VNI: version and members.
    maps: HashMap<u32, (u64, Vec<Member>)>,
    /// The VXLAN peers last written (None: not yet, since the agent started).
    peers: Option<BTreeSet<(Ipv4Addr, u32)>>,
}

impl State {
    /// Every other server hosting a network that has a segment here, with
    /// the network's VNI.
    fn vxlan_peers(&self, me: Ipv4Addr) -> BTreeSet<(Ipv4Addr, u32)> {
        self.maps
            .iter()
            .filter(|(vni, _)| self.segments.get(vni).is_some_and(|s| s.seg.is_some()))
            .flat_map(|(vni, (_, members))| {
                members
                    .iter()
                    .filter(|m| m.vtep != me)
                    .map(move |m| (m.vtep, *vni))
            })
            .collect()
    }
}

type Guarding = tokio::task::JoinHandle<Result<(), NetError>>;

pub struct ServerNet {
    node: NodeNet,
    fabric: Fabric,
    vtep: Option<Ipv4Addr>,
    /// The server's interface on the datacenter's public network, if any.
    public: Option<PublicSide>,
    /// Per container being started: its ports' guard elements being added
    /// (see [`ServerNet::guarded`]).
    guards: std::sync::Mutex<HashMap<String, Vec<Guarding>>>,
    /// Segment bookkeeping; held while a segment is made or removed, so a
    /// container never joins one being taken down.
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for ServerNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerNet")
            .field("node", &self.node)
            .field("vtep", &self.vtep)
            .finish()
    }
}

/// [`NodeNet`]'s id for segment `vni`'s router namespace (its uplink).
fn router_id(vni: u32) -> String {
    format!("seg-{vni}")
}

/// A container's port on a segment's bridge (names are per router namespace).
fn port_name(container: &str) -> String {
    format!("p{}", &container[..container.len().min(12)])
}

/// The MAC of a router's uplink, from its address.
fn uplink_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:a8:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn router_nft(path: &std::path::Path) -> NftCmd {
    NftCmd::in_netns(path)
}

/// The router namespace's table: masquerade out of the uplink; from the
/// uplink only replies and published ports come in. The `portmap` chain (its
/// DNAT rules, one comment per container) survives a re-run.
fn router_setup_script() -> String {
    let t = format!("{FAMILY} {ROUTER_TABLE}");
    let mut s = format!("add table {t}\n");
    for (chain, spec) in [
        (
            "prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
        ),
        (
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
        ),
        (
            "forward",
            "type filter hook forward priority filter; policy accept;",
        ),
        (
            "input",
            "type filter hook input priority filter; policy accept;",
        ),
    ] {
        s.push_str(&format!(
            "add chain {t} {chain} {{ {spec} }}\nflush chain {t} {chain}\n"
        ));
    }
    s.push_str(&format!("add chain {t} {PORTMAP_CHAIN}\n"));
    for rule in [
        format!("prerouting iifname \"{UPLINK}\" jump {PORTMAP_CHAIN}"),
        format!("postrouting oifname \"{UPLINK}\" masquerade"),
        format!("forward iifname \"{UPLINK}\" ct state established,related accept"),
        format!("forward iifname \"{UPLINK}\" ct status dnat accept"),
        format!("forward iifname \"{UPLINK}\" drop"),
        format!("input iifname \"{UPLINK}\" ct state established,related accept"),
        format!("input iifname \"{UPLINK}\" drop"),
    ] {
        s.push_str(&format!("add rule {t} {rule}\n"));
    }
    s
}

/// A router namespace's tables: the guard, and with an uplink the NAT and
/// filter table.
fn router_script(uplink: bool) -> String {
    let mut script = nft::segment_guard_script(ROUTER_TABLE);
    if uplink {
        script.push_str(&router_setup_script());
    }
    script
}

/// Ports as the server publishes them: host port → the same port on the
/// router's uplink.
fn server_side(ports: &[PortMapping]) -> Vec<PortMapping> {
    ports
        .iter()
        .map(|p| PortMapping {
            container_port: p.host_port,
            ..p.clone()
        })
        .collect()
}

/// Ports as the router forwards them: whatever arrives on the uplink for
/// them, or (with a public address) for them at that address.
fn router_side(ports: &[PortMapping], public: Option<Ipv4Addr>) -> Vec<PortMapping> {
    ports
        .iter()
        .map(|p| PortMapping {
            host_ip: public.map(|ip| ip.to_string()).unwrap_or_default(),
            ..p.clone()
        })
        .collect()
}

impl ServerNet {
    /// The server bridge (see [`NodeNet::setup`]) and the segments found on
    /// the server (claimed by [`ServerNet::adopt`], the rest removed by
    /// [`ServerNet::collect_unused`]). Needs a tokio runtime.
    pub async fn setup(
        cfg: NodeNetConfig,
        vtep: Option<Ipv4Addr>,
        public: Option<PublicSide>,
    ) -> Result<ServerNet, NetError> {
        let dir = cfg.netns_dir.clone();
        let node = NodeNet::setup(cfg).await?;
        let fabric = Fabric::new(&dir, None)?;
        let mut state = State::default();
        for id in fabric.pinned() {
            let Ok(vni) = id.parse::<u32>() else { continue };
            let uplink = fabric.router_address(&id, UPLINK).await.unwrap_or(None);
            // Its tables as this version makes them (a re-run keeps the
            // elements and the published ports).
            if let Err(e) = router_nft(&fabric.router_ns(&id))
                .apply(&router_script(uplink.is_some()))
                .await
            {
                tracing::warn!("renewing the tables of segment {id}: {e}");
            }
            state.segments.insert(
                vni,
                Seg {
                    seg: None,
                    users: BTreeSet::new(),
                    uplink,
                    idle_since: None,
                    released: 0,
                },
            );
        }
        Ok(ServerNet {
            node,
            fabric,
            vtep,
            public,
            guards: Default::default(),
            state: tokio::sync::Mutex::new(state),
        })
    }

    pub fn vtep(&self) -> Option<Ipv4Addr> {
        self.vtep
    }

    /// Where container `id`'s network namespace is pinned.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.node.netns_path(id)
    }

    fn segment(&self, a: &Attachment) -> Segment {
        Segment {
            id: a.vni.to_string(),
            vni: a.vni,
            subnet: a.subnet,
            gateway: a.gateway,
            vtep: self.vtep,
        }
    }

    /// The lowest address of the server's subnet no router holds.
    fn free_uplink(&self, st: &State) -> Result<Ipv4Addr, NetError> {
        let subnet = self.node.subnet();
        let taken: BTreeSet<Ipv4Addr> = st.segments.values().filter_map(|s| s.uplink).collect();
        let size = 1u32 << (32 - u32::from(subnet.prefix()));
        (2..size.saturating_sub(1))
            .filter_map(|i| subnet.host(i))
            .find(|ip| *ip != self.node.gateway() && !taken.contains(ip))
            .ok_or(NetError::NoFreeSubnet)
    }

    /// Takes a use of `a`'s segment for container `user`, making the segment
    /// on first use. Returns its uplink address (None when internal).
    async fn acquire(&self, user: &str, a: &Attachment) -> Result<Option<Ipv4Addr>, NetError> {
        let mut st = self.state.lock().await;
        if let Some(s) = st.segments.get_mut(&a.vni)
            && s.seg.is_some()
        {
            s.users.insert(user.to_string());
            s.idle_since = None;
            return Ok(s.uplink);
        }
        let seg = self.segment(a);
        let known = st.segments.get(&a.vni).and_then(|s| s.uplink);
        let uplink = if a.internal {
            None
        } else {
            Some(match known {
                Some(ip) => ip,
                None => self.free_uplink(&st)?,
            })
        };
        // Booked before the kernel work, so a failure still frees it below.
        st.segments.insert(
            a.vni,
            Seg {
                seg: None,
                users: BTreeSet::new(),
                uplink,
                idle_since: None,
                released: 0,
            },
        );
        let made = self.make_segment(&seg, uplink).await;
        if let Err(e) = made {
            let _ = self.remove_segment(a.vni).await;
            st.segments.remove(&a.vni);
            return Err(e);
        }
        if let Some((_, members)) = st.maps.get(&a.vni)
            && let Err(e) = self.fabric.set_members(&seg, members).await
        {
            tracing::warn!("programming the overlay map of VNI {}: {e}", a.vni);
        }
        let s = st.segments.get_mut(&a.vni).expect("booked above");
        s.seg = Some(seg);
        s.users.insert(user.to_string());
        self.sync_vxlan_peers(&mut st).await;
        Ok(uplink)
    }

    async fn make_segment(&self, seg: &Segment, uplink: Option<Ipv4Addr>) -> Result<(), NetError> {
        if let Some(ip) = uplink {
            self.node
                .attach_trusted(
                    &router_id(seg.vni),
                    ip,
                    self.node.subnet().prefix(),
                    &uplink_mac(ip),
                )
                .await?;
        }
        let path = self.fabric.ensure(seg).await?;
        router_nft(&path)
            .apply(&router_script(uplink.is_some()))
            .await
    }

    async fn remove_segment(&self, vni: u32) -> Result<(), NetError> {
        let r = self.fabric.remove(&vni.to_string()).await;
        self.node.detach(&router_id(vni)).await?;
        r
    }

    /// Gives back container `user`'s use of segment `vni`; after the last
    /// one the segment lingers for [`LINGER`], then
    /// [`ServerNet::collect_idle`] removes it.
    async fn release(&self, user: &str, vni: u32) -> Result<(), NetError> {
        let mut st = self.state.lock().await;
        let Some(s) = st.segments.get_mut(&vni) else {
            return Ok(());
        };
        if s.users.remove(user) {
            s.released += 1;
        }
        // A segment found at start and not claimed yet may still be claimed
        // by a container being re-adopted: `collect_unused` decides.
        if s.users.is_empty() && s.seg.is_some() && s.idle_since.is_none() {
            s.idle_since = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Removes the segments nobody has used for `linger`. The agent calls it
    /// every second.
    pub async fn collect_idle(&self, linger: std::time::Duration) {
        let mut st = self.state.lock().await;
        self.remove_segments(&mut st, "idle", |s| {
            s.users.is_empty() && s.idle_since.is_some_and(|t| t.elapsed() >= linger)
        })
        .await;
        for (vni, s) in st.segments.iter_mut() {
            if s.released >= GUARD_COLLECT && s.seg.is_some() {
                s.released = 0;
                // A user's port may be being made: its element stays.
                let users: BTreeSet<String> = s.users.iter().map(|u| port_name(u)).collect();
                if let Err(e) = self.collect_guard(*vni, &users).await {
                    tracing::warn!("deleting stale guard elements of segment {vni}: {e}");
                }
            }
        }
    }

    /// Deletes the guard elements of segment `vni`'s ports that are gone,
    /// other than those of `users`' ports (the caller holds the state lock,
    /// so no other container can start using the segment meanwhile).
    async fn collect_guard(&self, vni: u32, users: &BTreeSet<String>) -> Result<usize, NetError> {
        let id = vni.to_string();
        let router = router_nft(&self.fabric.router_ns(&id));
        let Some(json) = router.list_table(nft::BRIDGE_FAMILY, ROUTER_TABLE).await? else {
            return Ok(0);
        };
        let links: BTreeSet<String> = self.fabric.link_names(&id).await?.into_iter().collect();
        let stale: Vec<(String, String)> = nft::isolation_elements(&json)?
            .into_iter()
            .filter(|(_, port, _)| !links.contains(port) && !users.contains(port))
            .map(|(set, _, elem)| (set, elem))
            .collect();
        if !stale.is_empty() {
            router
                .apply(&nft::isolation_delete_script(ROUTER_TABLE, &stale))
                .await?;
        }
        Ok(stale.len())
    }

    /// Waits until the ports [`ServerNet::attach`] made for container `id`
    /// may send (their guard elements are in): before its process starts.
    /// The elements are added in the background meanwhile, so the `nft` runs
    /// cost a start nothing while the runtime prepares the container.
    pub async fn guarded(&self, id: &str) -> Result<(), NetError> {
        let pending = self
            .guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .unwrap_or_default();
        for g in pending {
            g.await
                .map_err(|e| NetError::Nft(format!("adding a port's guard: {e}")))??;
        }
        Ok(())
    }

    /// Starts adding the guard element of `id`'s port on segment `a`.
    fn guard(&self, id: &str, a: &Attachment) -> Guarding {
        let router = router_nft(&self.fabric.router_ns(&a.vni.to_string()));
        let script = nft::source_element_script(ROUTER_TABLE, &port_name(id), &a.mac, a.ip);
        tokio::spawn(async move { router.apply(&script).await })
    }

    /// Wires container `id`: its namespace (owned by a new user namespace
    /// mapped as `owner` when given), one interface per network (`eth0`
    /// first; the default route through the first network that is not
    /// internal), and `ports` published through the first network. Returns
    /// the namespace path. The caller undoes a failure with [`Self::detach`].
    pub async fn attach(
        &self,
        id: &str,
        owner: Option<UserNs>,
        nets: &[Attachment],
        ports: &[PortMapping],
        public: Option<&PublicIp>,
    ) -> Result<PathBuf, NetError> {
        crate::names::validate_id(id)?;
        // Validate the ports before touching anything.
        let _ = nft::port_rules(ROUTER_TABLE, id, Ipv4Addr::UNSPECIFIED, ports)?;
        let path = self.netns_path(id);
        self.node.backend().netns.create(&path, owner)?;
        let mut routed = false;
        let mut guards = Vec::new();
        for (i, a) in nets.iter().enumerate() {
            let uplink = self.acquire(id, a).await?;
            let default_route = !a.internal && !routed;
            routed |= default_route;
            self.fabric
                .attach(
                    &self.segment(a),
                    &port_name(id),
                    &path,
                    &format!("eth{i}"),
                    a.ip,
                    a.mac,
                    default_route,
                )
                .await?;
            guards.push(self.guard(id, a));
            if i == 0
                && !ports.is_empty()
                && let Some(up) = uplink
            {
                self.publish(id, a, up, ports, public).await?;
            }
        }
        self.guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), guards);
        Ok(path)
    }

    /// Publishes `ports` of container `id` through its first network `a`,
    /// whose router's uplink is `up`: at the container's public address
    /// (routed to the router, which forwards those ports only), else at
    /// the server's addresses (DNAT to the router, which DNATs again).
    async fn publish(
        &self,
        id: &str,
        a: &Attachment,
        up: Ipv4Addr,
        ports: &[PortMapping],
        public: Option<&PublicIp>,
    ) -> Result<(), NetError> {
        let router = router_nft(&self.fabric.router_ns(&a.vni.to_string()));
        let Some(p) = public else {
            let rules = nft::port_rules(ROUTER_TABLE, id, a.ip, &router_side(ports, None))?;
            nft::replace_commented_rules(&router, ROUTER_TABLE, id, &rules).await?;
            return self.node.publish(id, up, &server_side(ports)).await;
        };
        let side = self.public.as_ref().ok_or(NetError::NoPublicInterface)?;
        let rules = nft::port_rules(ROUTER_TABLE, id, a.ip, &router_side(ports, Some(p.ip)))?;
        let (r, s) = futures::join!(
            nft::replace_commented_rules(&router, ROUTER_TABLE, id, &rules),
            side.publish(self.node.bridge(), p, up),
        );
        r.and(s)
    }

    /// Adds network `a` to running container `id` (the next free `ethN`).
    pub async fn connect(&self, id: &str, a: &Attachment) -> Result<(), NetError> {
        crate::names::validate_id(id)?;
        let path = self.netns_path(id);
        self.acquire(id, a).await?;
        let ifname = Fabric::free_ifname(&path).await?;
        let r = self
            .fabric
            .attach(
                &self.segment(a),
                &port_name(id),
                &path,
                &ifname,
                a.ip,
                a.mac,
                false,
            )
            .await;
        let r = match r {
            Ok(()) => self
                .guard(id, a)
                .await
                .map_err(|e| NetError::Nft(format!("adding a port's guard: {e}")))
                .and_then(|r| r),
            e => e,
        };
        if r.is_err() {
            let _ = self.disconnect(id, a).await;
        }
        r
    }

    /// Makes network `a` carry container `id`'s default route.
    pub async fn route_default(&self, id: &str, a: &Attachment) -> Result<(), NetError> {
        crate::names::validate_id(id)?;
        Fabric::route_default(&self.netns_path(id), a.ip, a.gateway).await
    }

    /// Takes network `a` from container `id`. Idempotent.
    pub async fn disconnect(&self, id: &str, a: &Attachment) -> Result<(), NetError> {
        crate::names::validate_id(id)?;
        self.fabric
            .detach(&a.vni.to_string(), &port_name(id))
            .await?;
        self.release(id, a.vni).await
    }

    /// Undoes [`Self::attach`] (also a partial one): published ports, the
    /// container's ports on its segments (and segments nobody uses any
    /// more), its namespace. Idempotent; tries every step.
    pub async fn detach(
        &self,
        id: &str,
        nets: &[Attachment],
        published: bool,
        public: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        crate::names::validate_id(id)?;
        self.guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let mut first = None;
        let mut note = |r: Result<(), NetError>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        if published {
            // At a public address: its route and proxy entry; else the
            // server's DNAT rules.
            match (public, &self.public) {
                (Some(ip), Some(side)) => note(side.unpublish(ip).await),
                (Some(_), None) => {}
                (None, _) => note(self.node.unpublish(id).await),
            }
            if let Some(a) = nets.first() {
                let path = self.fabric.router_ns(&a.vni.to_string());
                if path.exists() {
                    let router = router_nft(&path);
                    note(nft::replace_commented_rules(&router, ROUTER_TABLE, id, "").await);
                }
            }
        }
        for a in nets {
            note(self.disconnect(id, a).await);
        }
        note(self.node.backend().netns.remove(&self.netns_path(id)));
        first.map_or(Ok(()), Err)
    }

    /// Claims, after an agent restart, the segments of a container that kept
    /// running (no kernel work: they are there).
    pub async fn adopt(&self, id: &str, nets: &[Attachment]) {
        let mut st = self.state.lock().await;
        for a in nets {
            let seg = self.segment(a);
            let s = st.segments.entry(a.vni).or_insert_with(|| Seg {
                seg: None,
                users: BTreeSet::new(),
                uplink: None,
                idle_since: None,
                released: 0,
            });
            s.seg = Some(seg);
            s.users.insert(id.to_string());
        }
    }

    /// Removes the segments no container uses (left by containers that
    /// ended while the agent was down). Run after adoption.
    pub async fn collect_unused(&self) {
        let mut st = self.state.lock().await;
        self.remove_segments(&mut st, "unused", |s| s.users.is_empty())
            .await;
    }

    /// Removes the segments `pick` chooses (`why` names them in warnings).
    async fn remove_segments(&self, st: &mut State, why: &str, pick: impl Fn(&Seg) -> bool) {
        let gone: Vec<u32> = st
            .segments
            .iter()
            .filter(|(_, s)| pick(s))
            .map(|(v, _)| *v)
            .collect();
        for vni in gone {
            if let Err(e) = self.remove_segment(vni).await {
                tracing::warn!("removing {why} segment {vni}: {e}");
            }
            st.segments.remove(&vni);
        }
        // Before the first write since the agent started, the kernel's set
        // (a superset) stays until the head's maps arrive.
        if st.peers.is_some() {
            self.sync_vxlan_peers(st).await;
        }
    }

    /// Writes the VXLAN peers if they changed (see [`NodeNet::set_vxlan_peers`]).
    async fn sync_vxlan_peers(&self, st: &mut State) {
        let Some(me) = self.vtep else { return };
        let peers = st.vxlan_peers(me);
        if st.peers.as_ref() == Some(&peers) {
            return;
        }
        match self.node.set_vxlan_peers(&peers).await {
            Ok(()) => st.peers = Some(peers),
            Err(e) => tracing::warn!("writing the VXLAN peers: {e}"),
        }
    }

    /// Network `vni`'s overlay map, version `version`: kept if newer than
    /// the one held, and programmed where the segment exists.
    pub async fn set_map(
        &self,
        vni: u32,
        version: u64,
        members: Vec<Member>,
    ) -> Result<(), NetError> {
        let mut st = self.state.lock().await;
        if st.maps.get(&vni).is_some_and(|(v, _)| *v > version) {
            return Ok(());
        }
        // Only names changed (a start, a stop): the kernel has the members.
        let same = st.maps.get(&vni).is_some_and(|(_, old)| *old == members);
        if !same && let Some(Seg { seg: Some(seg), .. }) = st.segments.get(&vni) {
            self.fabric.set_members(seg, &members).await?;
        }
        st.maps.insert(vni, (version, members));
        if !same {
            self.sync_vxlan_peers(&mut st).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_script_guards_the_uplink() {
        let s = router_setup_script();
        assert!(s.contains("add rule inet atoll postrouting oifname \"eth0\" masquerade"));
        assert!(s.contains("add rule inet atoll forward iifname \"eth0\" drop"));
        assert!(s.contains("add rule inet atoll input iifname \"eth0\" drop"));
        // The DNAT chain is made, never flushed: running containers keep theirs.
        assert!(!s.contains("flush chain inet atoll portmap"));
    }

    #[test]
    fn published_ports_are_two_hops() {
        let p = PortMapping {
            proto: "tcp".into(),
            container_port: 80,
            host_ip: "127.0.0.1".into(),
            host_port: 8080,
        };
        let s = &server_side(std::slice::from_ref(&p))[0];
        assert_eq!((s.host_port, s.container_port), (8080, 8080));
        assert_eq!(s.host_ip, "127.0.0.1");
        let r = &router_side(std::slice::from_ref(&p), None)[0];
        assert_eq!((r.host_port, r.container_port), (8080, 80));
        assert_eq!(r.host_ip, "");
        // At a public address, the router matches that address.
        let r = &router_side(std::slice::from_ref(&p), Some([198, 51, 100, 7].into()))[0];
        assert_eq!((r.host_ip.as_str(), r.host_port), ("198.51.100.7", 8080));
        assert_eq!(port_name(&"ab".repeat(32)), "pabababababab");
        assert_eq!(router_id(7), "seg-7");
    }
}
