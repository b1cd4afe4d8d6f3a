//! The node-local container network of one atoll instance: one bridge with the gateway
//! address, one veth per container into a pinned namespace, and one nft table for NAT and
//! published ports.

use crate::error::NetError;
use crate::ipv4net::Ipv4Net;
use crate::link::{LinkOps, RtLinks, VethSpec, VethState};
use crate::names;
use crate::netns::{NetnsOps, RealNetns};
use crate::nft::{self, FAMILY, Nft, NftCmd, PORTMAP_CHAIN, PortMapping};
use crate::sysctl::{ProcSysctl, Sysctl};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Host-wide lock serializing subnet choice between instances set up at the same time.
pub const DEFAULT_LOCK_PATH: &str = "/run/atoll/net.lock";

#[derive(Clone, Debug)]
pub struct NodeNetConfig {
    /// Short id (1-6 of [a-z0-9]) from which every host-wide name is derived.
    pub instance: String,
    /// Where the per-container namespace files live.
    pub netns_dir: PathBuf,
    /// None: pick a free /24 from 10.200.0.0/13.
    pub subnet: Option<Ipv4Net>,
    /// Destinations no container may reach through this server (the
    /// datacenter's servers and heads); link-local metadata addresses and
    /// the networks of `underlay` are added.
    pub protected: Vec<Ipv4Net>,
    /// The server's underlay address: its network holds the other servers.
    pub underlay: Option<Ipv4Addr>,
    /// Destinations inside `protected` that containers may reach anyway
    /// (opened by the operator: a resolver, a proxy on the admin network).
    pub reachable: Vec<Ipv4Net>,
}

/// The privileged operations NodeNet uses; swap in `crate::fake` ones for unit tests.
#[derive(Clone)]
pub struct Backend {
    pub links: Arc<dyn LinkOps>,
    pub netns: Arc<dyn NetnsOps>,
    pub nft: Arc<dyn Nft>,
    pub sysctl: Arc<dyn Sysctl>,
    /// None: no cross-process lock (fakes).
    pub lock_path: Option<PathBuf>,
}

impl Backend {
    /// rtnetlink in the calling thread's namespace, real netns files, the `nft` binary and
    /// /proc/sys. Needs a tokio runtime.
    pub fn real() -> Result<Self, NetError> {
        Ok(Backend {
            links: Arc::new(RtLinks::new()?),
            netns: Arc::new(RealNetns),
            nft: Arc::new(NftCmd::new()),
            sysctl: Arc::new(ProcSysctl),
            lock_path: Some(DEFAULT_LOCK_PATH.into()),
        })
    }
}

pub struct NodeNet {
    instance: String,
    bridge: String,
    table: String,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    netns_dir: PathBuf,
    b: Backend,
    /// Detaches since stale isolation elements were last deleted.
    detached: std::sync::atomic::AtomicU32,
    /// Held while a port is made and registered, and while stale elements
    /// are collected: a collection never sees a port half made.
    isolation: tokio::sync::Mutex<()>,
}

/// Stale isolation elements are deleted (one ≈ 20 ms `nft` run) every this
/// many detaches, not at each: a detach must not wait for it.
const ISOLATION_GC_EVERY: u32 = 64;

impl std::fmt::Debug for NodeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeNet")
            .field("instance", &self.instance)
            .field("bridge", &self.bridge)
            .field("subnet", &self.subnet)
            .finish()
    }
}

async fn host_lock(
    path: Option<PathBuf>,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, NetError> {
    let Some(path) = path else { return Ok(None) };
    let io = |source| NetError::Io {
        op: "lock network setup",
        source,
    };
    tokio::task::spawn_blocking(move || {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
    })
    .await
    .map_err(|e| io(std::io::Error::other(e)))?
    .map(Some)
    .map_err(io)
}

/// Makes our accept rules in dockerd's DOCKER-USER chain match `bridge` (None: remove
/// them). Nothing to do when dockerd (iptables-nft) is not there.
async fn sync_docker_user(b: &Backend, inst: &str, bridge: Option<&str>) -> Result<(), NetError> {
    let Some(json) = b.nft.list_chain("ip", "filter", "DOCKER-USER").await? else {
        return Ok(());
    };
    let comment = names::foreign_comment(inst);
    let old = nft::handles_with_comment(&nft::parse_rules(&json)?, &comment);
    let mut script = nft::delete_rules("ip", "filter", "DOCKER-USER", &old);
    if let Some(br) = bridge {
        script.push_str(&nft::docker_user_rules(br, &comment));
    }
    if script.is_empty() {
        return Ok(());
    }
    b.nft.apply(&script).await
}

impl NodeNet {
    /// Creates (or adopts) the bridge, enables forwarding and writes the instance's nft
    /// table. Idempotent: run on every agent start; running containers keep their ports.
    pub async fn setup(cfg: NodeNetConfig) -> Result<NodeNet, NetError> {
        Self::setup_with(cfg, Backend::real()?).await
    }

    pub async fn setup_with(cfg: NodeNetConfig, b: Backend) -> Result<NodeNet, NetError> {
        let inst = cfg.instance.as_str();
        names::validate_instance(inst)?;
        if let Some(s) = cfg.subnet
            && s.prefix() > 30
        {
            return Err(NetError::InvalidSubnet(s.to_string()));
        }
        let bridge = names::bridge_name(inst);
        let table = names::table_name(inst);
        let _lock = host_lock(b.lock_path.clone()).await?;

        let existing = b.links.link_ipv4(&bridge).await?;
        let (subnet, gateway) = match existing.as_deref().and_then(|a| a.first()) {
            Some(&(addr, prefix)) => {
                let s = Ipv4Net::new(addr, prefix)?;
                if let Some(w) = cfg.subnet
                    && w != s
                {
                    return Err(NetError::SubnetMismatch {
                        existing: s,
                        wanted: w,
                    });
                }
                (s, addr)
            }
            None => {
                let in_use = b.links.host_ipv4_nets().await?;
                let s = match cfg.subnet {
                    Some(s) if in_use.iter().any(|n| n.overlaps(&s)) => {
                        return Err(NetError::SubnetInUse(s));
                    }
                    Some(s) => s,
                    None => names::pick_subnet(inst, &in_use)?,
                };
                let gw = s.host(1).ok_or(NetError::InvalidSubnet(s.to_string()))?;
                (s, gw)
            }
        };
        b.links
            .ensure_bridge(&bridge, names::bridge_mac(inst), gateway, subnet.prefix())
            .await?;
        b.sysctl.set("net/ipv4/ip_forward", "1")?;
        // Loopback addresses never cross the bridge (an older version let
        // them, for published ports on 127.0.0.1): off, explicitly.
        b.sysctl
            .set(&format!("net/ipv4/conf/{bridge}/route_localnet"), "0")?;
        let mut protected = cfg.protected.clone();
        protected.push(Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16)?);
        if let Some(u) = cfg.underlay {
            // The underlay's own network (not a wide route that holds it).
            protected.extend(
                b.links
                    .host_ipv4_nets()
                    .await?
                    .into_iter()
                    .filter(|n| n.contains(u) && (16..32).contains(&n.prefix())),
            );
        }
        protected.sort();
        protected.dedup();
        let mut script = format!(
            "{}{}",
            nft::setup_script(&table, &bridge, subnet, gateway, &protected, &cfg.reachable),
            nft::isolation_setup_script(&table)
        );
        if cfg.underlay.is_some() {
            script.push_str(&nft::vxlan_guard_script(&table, crate::fabric::VXLAN_PORT));
        }
        b.nft.apply(&script).await?;
        sync_docker_user(&b, inst, Some(&bridge)).await?;
        tracing::debug!(%subnet, %bridge, "node network ready");
        let n = NodeNet {
            instance: cfg.instance,
            bridge,
            table,
            subnet,
            gateway,
            netns_dir: cfg.netns_dir,
            b,
            detached: Default::default(),
            isolation: Default::default(),
        };
        n.collect_isolation_garbage().await?;
        Ok(n)
    }

    /// Deletes the isolation elements of ports that no longer exist. They are
    /// harmless (a gone port sends and receives nothing), but they add up.
    pub async fn collect_isolation_garbage(&self) -> Result<usize, NetError> {
        let _made = self.isolation.lock().await;
        self.collect_stale_elements().await
    }

    async fn collect_stale_elements(&self) -> Result<usize, NetError> {
        // Elements first, links second: a port registered after the listing
        // is not in it, so it cannot be taken for a gone one.
        let Some(json) = self
            .b
            .nft
            .list_table(nft::BRIDGE_FAMILY, &self.table)
            .await?
        else {
            return Ok(0);
        };
        let links: std::collections::BTreeSet<String> =
            self.b.links.link_names().await?.into_iter().collect();
        let n = self
            .delete_listed(&json, |port| !links.contains(port))
            .await?;
        self.detached.store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    /// Deletes the isolation elements of the ports `which` picks.
    async fn delete_elements(&self, which: impl Fn(&str) -> bool) -> Result<usize, NetError> {
        match self
            .b
            .nft
            .list_table(nft::BRIDGE_FAMILY, &self.table)
            .await?
        {
            Some(json) => self.delete_listed(&json, which).await,
            None => Ok(0),
        }
    }

    async fn delete_listed(
        &self,
        json: &str,
        which: impl Fn(&str) -> bool,
    ) -> Result<usize, NetError> {
        let stale: Vec<(String, String)> = nft::isolation_elements(json)?
            .into_iter()
            .filter(|(_, port, _)| which(port))
            .map(|(set, _, elem)| (set, elem))
            .collect();
        if !stale.is_empty() {
            self.b
                .nft
                .apply(&nft::isolation_delete_script(&self.table, &stale))
                .await?;
        }
        Ok(stale.len())
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The nft table (family `inet`) holding this instance's rules.
    pub fn nft_table(&self) -> &str {
        &self.table
    }

    /// Where the namespace file of container `id` lives (for the OCI spec).
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir.join(id)
    }

    /// Host-side veth name of container `id`.
    pub fn host_veth(&self, id: &str) -> String {
        names::host_veth_name(&self.instance, id)
    }

    /// Wires container `id`: namespace file, veth (eth0 inside with `ip/prefix` and `mac`,
    /// default route via the gateway), bridge port, and its published ports. Idempotent:
    /// a complete existing setup is kept, a half-made one is rebuilt. Returns the
    /// namespace path.
    pub async fn attach(
        &self,
        id: &str,
        ip: Ipv4Addr,
        prefix: u8,
        mac: &str,
        ports: &[PortMapping],
    ) -> Result<PathBuf, NetError> {
        self.attach_owned(id, ip, prefix, mac, ports, None, 0).await
    }

    /// [`NodeNet::attach`] for a namespace of atoll's own (a fabric router's
    /// uplink): no isolation elements, so it may send for the addresses it
    /// routes (public addresses of its containers), and no ports.
    pub async fn attach_trusted(
        &self,
        id: &str,
        ip: Ipv4Addr,
        prefix: u8,
        mac: &str,
    ) -> Result<PathBuf, NetError> {
        self.wire(id, ip, prefix, mac, &[], None, None).await
    }

    /// [`NodeNet::attach`], the namespace owned by a new user namespace mapped
    /// as `owner` (pinned at [`crate::netns::userns_pin`]) when given, and the
    /// port in isolation group `group` (an account's): it reaches only ports of
    /// its group, and sends only from its own MAC and address.
    #[allow(clippy::too_many_arguments)]
    pub async fn attach_owned(
        &self,
        id: &str,
        ip: Ipv4Addr,
        prefix: u8,
        mac: &str,
        ports: &[PortMapping],
        owner: Option<crate::netns::UserNs>,
        group: u32,
    ) -> Result<PathBuf, NetError> {
        self.wire(id, ip, prefix, mac, ports, owner, Some(group))
            .await
    }

    /// The namespace, veth and port rules of [`NodeNet::attach_owned`]; the
    /// isolation elements only with a `group`.
    #[allow(clippy::too_many_arguments)]
    async fn wire(
        &self,
        id: &str,
        ip: Ipv4Addr,
        prefix: u8,
        mac: &str,
        ports: &[PortMapping],
        owner: Option<crate::netns::UserNs>,
        group: Option<u32>,
    ) -> Result<PathBuf, NetError> {
        names::validate_id(id)?;
        let mac = names::parse_mac(mac)?;
        let own = Ipv4Net::new(ip, prefix)
            .map_err(|_| NetError::InvalidSubnet(format!("{ip}/{prefix}")))?;
        if !self.subnet.contains(ip) || !own.contains(self.gateway) {
            return Err(NetError::AddressOutsideSubnet {
                ip,
                subnet: self.subnet,
            });
        }
        if ip == self.gateway || ip == self.subnet.network() || ip == self.subnet.broadcast() {
            return Err(NetError::ReservedAddress(ip));
        }
        // Validate the ports before touching anything.
        let port_rules = nft::port_rules(&self.table, id, ip, ports)?;

        let path = self.netns_path(id);
        self.b.netns.create(&path, owner)?;
        let spec = VethSpec {
            host: self.host_veth(id),
            alias: id.to_string(),
            bridge: self.bridge.clone(),
            netns: path.clone(),
            ip,
            prefix,
            mac,
            gateway: self.gateway,
        };
        let made = self.isolation.lock().await;
        let state = self.b.links.veth_state(&spec).await?;
        match state {
            VethState::Complete => {}
            VethState::Foreign => return Err(NetError::NameCollision(spec.host)),
            VethState::Partial => {
                self.b.links.delete_link(&spec.host).await?;
                self.b.links.create_veth(&spec).await?;
            }
            VethState::Absent => self.b.links.create_veth(&spec).await?,
        }
        let Some(group) = group else {
            drop(made);
            // No elements; rules only where there may be some to replace.
            if !ports.is_empty() || state != VethState::Absent {
                self.replace_port_rules(id, &port_rules).await?;
            }
            return Ok(path);
        };
        let isolation = nft::port_isolation_script(&self.table, &spec.host, &mac, ip, group);
        // A fresh link with no ports has no rules to reconcile: one nft run.
        let res = if !ports.is_empty() || state != VethState::Absent {
            self.replace_port_rules(id, &format!("{isolation}{port_rules}"))
                .await
        } else {
            self.b.nft.apply(&isolation).await
        };
        if res.is_err() {
            // Elements left by a gone port of the same name, with other
            // values: drop this name's elements and try once more.
            self.delete_elements(|port| port == spec.host).await?;
            self.replace_port_rules(id, &format!("{isolation}{port_rules}"))
                .await?;
        }
        drop(made);
        Ok(path)
    }

    /// Publishes `ports` of `id` on the server: DNAT to `ip` (a router
    /// namespace's uplink), replacing `id`'s earlier rules.
    pub async fn publish(
        &self,
        id: &str,
        ip: Ipv4Addr,
        ports: &[PortMapping],
    ) -> Result<(), NetError> {
        names::validate_id(id)?;
        let rules = nft::port_rules(&self.table, id, ip, ports)?;
        self.replace_port_rules(id, &rules).await
    }

    /// Removes `id`'s published ports. Idempotent.
    pub async fn unpublish(&self, id: &str) -> Result<(), NetError> {
        self.replace_port_rules(id, "").await
    }

    /// The privileged operations this network uses (for namespaces made
    /// beside it).
    /// The servers VXLAN frames are taken from: (underlay address, VNI) of
    /// every other server hosting a network that has a segment here (see
    /// [`nft::vxlan_guard_script`]; only where the server has an underlay).
    pub async fn set_vxlan_peers(&self, peers: &BTreeSet<(Ipv4Addr, u32)>) -> Result<(), NetError> {
        self.b
            .nft
            .apply(&nft::vxlan_peers_script(&self.table, peers))
            .await
    }

    pub fn backend(&self) -> &Backend {
        &self.b
    }

    /// Replaces container `id`'s DNAT rules with `add` in one transaction.
    async fn replace_port_rules(&self, id: &str, add: &str) -> Result<(), NetError> {
        nft::replace_commented_rules(&*self.b.nft, &self.table, id, add).await
    }

    async fn port_rule_handles(&self, id: &str) -> Result<Vec<u64>, NetError> {
        match self
            .b
            .nft
            .list_chain(FAMILY, &self.table, PORTMAP_CHAIN)
            .await?
        {
            Some(json) => Ok(nft::handles_with_comment(&nft::parse_rules(&json)?, id)),
            None => Err(NetError::Nft(
                "the container network's rule table is missing; restart the agent".into(),
            )),
        }
    }

    /// Removes container `id`'s port rules, veth and namespace file (its
    /// isolation elements go with the next garbage collection). Idempotent.
    pub async fn detach(&self, id: &str) -> Result<(), NetError> {
        names::validate_id(id)?;
        let old = self.port_rule_handles(id).await?;
        if !old.is_empty() {
            self.b
                .nft
                .apply(&nft::delete_rules(FAMILY, &self.table, PORTMAP_CHAIN, &old))
                .await?;
        }
        let spec_probe = VethSpec {
            host: self.host_veth(id),
            alias: id.to_string(),
            bridge: self.bridge.clone(),
            netns: self.netns_path(id),
            ip: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            mac: [0; 6],
            gateway: self.gateway,
        };
        // Never delete another container's link that merely shares the hashed name.
        if self.b.links.veth_state(&spec_probe).await? != VethState::Foreign {
            self.b.links.delete_link(&spec_probe.host).await?;
        }
        self.b.netns.remove(&spec_probe.netns)?;
        let n = self
            .detached
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n + 1 >= ISOLATION_GC_EVERY {
            self.collect_isolation_garbage().await?;
        }
        Ok(())
    }

    /// Removes everything instance `instance` created: its nft table and DOCKER-USER rules,
    /// its veths (found by name prefix), its bridge, and every namespace file in
    /// `netns_dir`. Best effort: tries every step, returns the first error.
    pub async fn teardown(instance: &str, netns_dir: &Path) -> Result<(), NetError> {
        Self::teardown_with(instance, netns_dir, &Backend::real()?).await
    }

    pub async fn teardown_with(
        instance: &str,
        netns_dir: &Path,
        b: &Backend,
    ) -> Result<(), NetError> {
        names::validate_instance(instance)?;
        let mut first: Option<NetError> = None;
        let mut note = |r: Result<(), NetError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "network teardown step failed");
                first.get_or_insert(e);
            }
        };
        note(
            b.nft
                .apply(&nft::teardown_script(&names::table_name(instance)))
                .await,
        );
        note(sync_docker_user(b, instance, None).await);
        match b.links.link_names().await {
            Ok(all) => {
                for name in all.iter().filter(|n| names::is_instance_veth(instance, n)) {
                    note(b.links.delete_link(name).await.map(|_| ()));
                }
            }
            Err(e) => note(Err(e)),
        }
        note(
            b.links
                .delete_link(&names::bridge_name(instance))
                .await
                .map(|_| ()),
        );
        match b.netns.list(netns_dir) {
            Ok(files) => {
                for f in files {
                    note(b.netns.remove(&f));
                }
            }
            Err(e) => note(Err(e)),
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
