//! Fabric networks (issue 5): each account's networks, their addresses
//! (IPAM), and the overlay maps the head pushes to servers.
//!
//! A network is a VXLAN segment spanning every server that holds one of its
//! containers. Every account has a default network named `bridge` (made on
//! first use, never removed); two accounts may use the same subnets and names.
//! Addresses are unique per network: the store refuses a taken one in the
//! same transaction that records the container, so concurrent creates retry
//! and a crash never leaves an address held by nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use agent_client::{Endpoint, NetworkMap, NetworkMember};
use bollard_stubs::models::NetworkCreateRequest;
use chrono::Utc;

use crate::cluster::Cluster;
use crate::error::{Error, Result, StoreError};
use crate::model::{ContainerRecord, NetworkRecord};
use crate::names;

/// The name of every account's default network, as Docker's.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The default network's subnet (Docker's `docker0`).
const DEFAULT_SUBNET: &str = "172.17.0.0/16";
/// Names Docker reserves for its predefined networks.
const PREDEFINED: [&str; 3] = ["bridge", "host", "none"];

/// An IPv4 CIDR as a base address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses "a.b.c.d/n"; the address must be the network's first.
    pub fn parse(s: &str) -> Result<Cidr> {
        let bad = || Error::InvalidArgument(format!("invalid subnet {s}: expected a.b.c.d/n"));
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let c = Cidr { base, prefix };
        if c.network() != u32::from(base) {
            return Err(Error::InvalidArgument(format!(
                "invalid subnet {s}: it does not start at its network address {}/{prefix}",
                Ipv4Addr::from(c.network())
            )));
        }
        Ok(c)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    fn network(&self) -> u32 {
        u32::from(self.base) & self.mask()
    }

    fn broadcast(&self) -> u32 {
        self.network() | !self.mask()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network()
    }

    pub fn overlaps(&self, o: &Cidr) -> bool {
        self.network() <= o.broadcast() && o.network() <= self.broadcast()
    }

    /// Whether `ip` is the network's or the broadcast address.
    pub fn is_edge(&self, ip: Ipv4Addr) -> bool {
        let u = u32::from(ip);
        u == self.network() || u == self.broadcast()
    }

    /// Every address of the block, in order.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        (self.network()..=self.broadcast()).map(Ipv4Addr::from)
    }

    /// The first usable address (the default gateway).
    fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network() + 1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// MAC derived from the address, as Docker does on its bridges.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// A container's request for one network (`--network`, `--ip`,
/// `--network-alias`, or `docker network connect`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointRequest {
    /// Name, id or id prefix of the network.
    pub network: String,
    pub ip: Option<Ipv4Addr>,
    pub aliases: Vec<String>,
}

/// The lowest free address of `range` inside `subnet`, other than the
/// network, broadcast and gateway addresses and those in `used`.
fn free_ip(
    subnet: &Cidr,
    range: &Cidr,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let lo = range.network().max(subnet.network() + 1);
    let hi = range.broadcast().min(subnet.broadcast().saturating_sub(1));
    (lo..=hi)
        .map(Ipv4Addr::from)
        .find(|ip| *ip != gateway && !used.contains(ip))
}

/// Checks an address asked for with `--ip` against the network.
fn check_requested_ip(n: &NetworkRecord, ip: Ipv4Addr) -> Result<()> {
    let subnet = Cidr::parse(&n.subnet)?;
    let u = u32::from(ip);
    if !subnet.contains(ip) {
        return Err(Error::InvalidArgument(format!(
            "no configured subnet contains IP address {ip}"
        )));
    }
    if ip == n.gateway || u == subnet.network() || u == subnet.broadcast() {
        return Err(Error::InvalidArgument(format!(
            "address {ip} is reserved on network {}",
            n.name
        )));
    }
    Ok(())
}

fn validate_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid network name \"{name}\": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

/// Docker's address pools for networks made without `--subnet`: /16s of
/// 172.18–31, then /20s of 192.168.
fn pool_candidates() -> impl Iterator<Item = Cidr> {
    let a = (18..=31u8).map(|b| Cidr {
        base: Ipv4Addr::new(172, b, 0, 0),
        prefix: 16,
    });
    let b = (0..16u8).map(|i| Cidr {
        base: Ipv4Addr::new(192, 168, i * 16, 0),
        prefix: 20,
    });
    a.chain(b)
}

impl Cluster {
    /// `docker network create`.
    pub async fn create_network(
        &self,
        account: &str,
        req: &NetworkCreateRequest,
    ) -> Result<NetworkRecord> {
        validate_network_name(&req.name)?;
        if PREDEFINED.contains(&req.name.as_str()) {
            return Err(Error::Forbidden(format!(
                "{} is a pre-defined network and cannot be created",
                req.name
            )));
        }
        let driver = match req.driver.as_deref().unwrap_or("") {
            "" | "bridge" => "bridge",
            "overlay" => "overlay",
            other => {
                return Err(Error::InvalidArgument(format!(
                    "network driver \"{other}\" is not supported: networks here are fabric (VXLAN) networks spanning the datacenter; use bridge or overlay"
                )));
            }
        };
        if req.enable_ipv6 == Some(true) {
            return Err(Error::InvalidArgument(
                "IPv6 networks are not supported".into(),
            ));
        }
        if req.enable_ipv4 == Some(false) {
            return Err(Error::InvalidArgument(
                "networks without IPv4 are not supported".into(),
            ));
        }
        if req.ingress == Some(true) || req.config_only == Some(true) {
            return Err(Error::InvalidArgument(
                "ingress and config-only networks are not supported".into(),
            ));
        }
        let ipam = req.ipam.clone().unwrap_or_default();
        if let Some(d) = ipam.driver.as_deref()
            && !d.is_empty()
            && d != "default"
        {
            return Err(Error::InvalidArgument(format!(
                "IPAM driver \"{d}\" is not supported (only default)"
            )));
        }
        let configs = ipam.config.unwrap_or_default();
        if configs.len() > 1 {
            return Err(Error::InvalidArgument(
                "only one IPAM configuration (one IPv4 subnet) per network is supported".into(),
            ));
        }
        let cfg = configs.into_iter().next().unwrap_or_default();
        if cfg
            .auxiliary_addresses
            .as_ref()
            .is_some_and(|a| !a.is_empty())
        {
            return Err(Error::InvalidArgument(
                "auxiliary addresses are not supported".into(),
            ));
        }
        let existing = self.list_networks(account).await?;
        if existing.iter().any(|n| n.name == req.name) {
            return Err(Error::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        let taken: Vec<Cidr> = existing
            .iter()
            .filter_map(|n| Cidr::parse(&n.subnet).ok())
            .collect();
        let subnet = match cfg.subnet.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => {
                if s.contains(':') {
                    return Err(Error::InvalidArgument(
                        "IPv6 subnets are not supported".into(),
                    ));
                }
                let c = Cidr::parse(s)?;
                if !(8..=30).contains(&c.prefix) {
                    return Err(Error::InvalidArgument(format!(
                        "invalid subnet {s}: the prefix length must be between 8 and 30"
                    )));
                }
                if taken.iter().any(|t| t.overlaps(&c)) {
                    return Err(Error::Forbidden(
                        "invalid pool request: Pool overlaps with other one on this address space"
                            .into(),
                    ));
                }
                c
            }
            None => {
                if cfg.ip_range.is_some() || cfg.gateway.is_some() {
                    return Err(Error::InvalidArgument(
                        "ip-range and gateway need a subnet".into(),
                    ));
                }
                pool_candidates()
                    .find(|c| !taken.iter().any(|t| t.overlaps(c)))
                    .ok_or_else(|| {
                        Error::Forbidden(
                            "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network".into(),
                        )
                    })?
            }
        };
        let gateway = match cfg.gateway.as_deref().filter(|s| !s.is_empty()) {
            Some(g) => {
                let ip: Ipv4Addr = g
                    .parse()
                    .map_err(|_| Error::InvalidArgument(format!("invalid gateway address {g}")))?;
                let u = u32::from(ip);
                if !subnet.contains(ip) || u == subnet.network() || u == subnet.broadcast() {
                    return Err(Error::InvalidArgument(format!(
                        "gateway {g} is not a usable address of subnet {subnet}"
                    )));
                }
                ip
            }
            None => subnet.first_host(),
        };
        let ip_range = match cfg.ip_range.as_deref().filter(|s| !s.is_empty()) {
            Some(r) => {
                let c = Cidr::parse(r)?;
                if !subnet.contains(c.base) || c.prefix < subnet.prefix {
                    return Err(Error::InvalidArgument(format!(
                        "ip-range {r} is not inside subnet {subnet}"
                    )));
                }
                Some(c.to_string())
            }
            None => None,
        };
        let rec = NetworkRecord {
            account: account.to_string(),
            id: names::new_id(),
            name: req.name.clone(),
            vni: 0,
            driver: driver.to_string(),
            subnet: subnet.to_string(),
            gateway,
            ip_range,
            internal: req.internal.unwrap_or(false),
            attachable: req.attachable.unwrap_or(false),
            labels: req.labels.clone().unwrap_or_default().into_iter().collect(),
            options: req
                .options
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            created: Utc::now(),
            default: false,
        };
        self.insert_network(rec).await
    }

    async fn insert_network(&self, mut rec: NetworkRecord) -> Result<NetworkRecord> {
        match self.store.insert_network(&rec).await {
            Ok(vni) => {
                rec.vni = vni;
                self.emit_network(&rec, "create", None);
                Ok(rec)
            }
            Err(StoreError::Conflict(w)) if w == "network" => Err(Error::Conflict(format!(
                "network with name {} already exists",
                rec.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The account's networks, its default one included (made on first use).
    pub async fn list_networks(&self, account: &str) -> Result<Vec<NetworkRecord>> {
        let all = self.store.list_networks(account).await?;
        if all.iter().any(|n| n.default) {
            return Ok(all);
        }
        self.default_network(account).await?;
        Ok(self.store.list_networks(account).await?)
    }

    /// The account's `bridge` network, made on first use. Concurrent first
    /// uses agree: the loser of the insert reads the winner's.
    pub async fn default_network(&self, account: &str) -> Result<NetworkRecord> {
        let all = self.store.list_networks(account).await?;
        if let Some(n) = all.into_iter().find(|n| n.default) {
            return Ok(n);
        }
        let subnet = Cidr::parse(DEFAULT_SUBNET)?;
        let rec = NetworkRecord {
            account: account.to_string(),
            id: names::new_id(),
            name: DEFAULT_NETWORK.into(),
            vni: 0,
            driver: "bridge".into(),
            subnet: subnet.to_string(),
            gateway: subnet.first_host(),
            ip_range: None,
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            created: Utc::now(),
            default: true,
        };
        match self.store.insert_network(&rec).await {
            Ok(vni) => Ok(NetworkRecord { vni, ..rec }),
            Err(StoreError::Conflict(_)) => self
                .store
                .list_networks(account)
                .await?
                .into_iter()
                .find(|n| n.default)
                .ok_or_else(|| Error::internal("default network", "vanished after a conflict")),
            Err(e) => Err(e.into()),
        }
    }

    /// Docker's lookup order: full id, exact name, then unique id prefix.
    pub async fn find_network(&self, account: &str, key: &str) -> Result<NetworkRecord> {
        let all = self.list_networks(account).await?;
        if let Some(n) = all.iter().find(|n| n.id == key || n.name == key) {
            return Ok(n.clone());
        }
        if !key.is_empty() && names::is_hex(key) {
            let m: Vec<&NetworkRecord> = all.iter().filter(|n| n.id.starts_with(key)).collect();
            match m.len() {
                1 => return Ok(m[0].clone()),
                0 => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "network {key} is ambiguous ({} matches found based on ID prefix)",
                        m.len()
                    )));
                }
            }
        }
        Err(Error::NotFound(format!("network {key} not found")))
    }

    /// The account's containers on network `n`, with their endpoint there.
    pub async fn network_containers(
        &self,
        account: &str,
        n: &NetworkRecord,
    ) -> Result<Vec<(ContainerRecord, Endpoint)>> {
        Ok(self
            .store
            .list_containers(account)
            .await?
            .into_iter()
            .filter_map(|c| {
                let e = c.spec.networks.iter().find(|e| e.network == n.id)?.clone();
                Some((c, e))
            })
            .collect())
    }

    /// The ids of the account's networks some container is on.
    pub async fn networks_in_use(&self, account: &str) -> Result<BTreeSet<String>> {
        Ok(self
            .store
            .list_containers(account)
            .await?
            .into_iter()
            .flat_map(|c| c.spec.networks.into_iter().map(|e| e.network))
            .collect())
    }

    /// `docker network rm`: refused (409) while containers are on it; the
    /// default network cannot be removed (403).
    pub async fn remove_network(&self, account: &str, key: &str) -> Result<()> {
        if PREDEFINED.contains(&key) {
            return Err(Error::Forbidden(format!(
                "{key} is a pre-defined network and cannot be removed"
            )));
        }
        let n = self.find_network(account, key).await?;
        if n.default {
            return Err(Error::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                n.name
            )));
        }
        match self.store.delete_network(account, &n.id).await {
            Ok(()) => {
                self.emit_network(&n, "destroy", None);
                Ok(())
            }
            Err(StoreError::Conflict(_)) => {
                let users = self.network_containers(account, &n).await?;
                Err(Error::Conflict(format!(
                    "error while removing network: network {} has active endpoints (name:{})",
                    n.name,
                    users
                        .iter()
                        .map(|(c, _)| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Err(StoreError::NotFound) => Err(Error::NotFound(format!("network {key} not found"))),
            Err(e) => Err(e.into()),
        }
    }

    /// `docker network prune`: removes the unused networks `keep` does not
    /// protect (never the default one); their names.
    pub async fn prune_networks(
        &self,
        account: &str,
        keep: impl Fn(&NetworkRecord) -> bool,
    ) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for n in self.list_networks(account).await? {
            if n.default || keep(&n) {
                continue;
            }
            match self.store.delete_network(account, &n.id).await {
                Ok(()) => {
                    self.emit_network(&n, "destroy", None);
                    removed.push(n.name);
                }
                Err(StoreError::Conflict(_) | StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    pub(crate) fn emit_network(&self, n: &NetworkRecord, action: &str, container: Option<&str>) {
        let mut attrs = BTreeMap::from([
            ("name".to_string(), n.name.clone()),
            ("type".to_string(), n.driver.clone()),
        ]);
        if let Some(c) = container {
            attrs.insert("container".into(), c.to_string());
        }
        self.emit(&n.account, "network", action, &n.id, attrs);
    }

    /// Resolves a container's network requests (in order) to networks; the
    /// same network twice is refused.
    pub(crate) async fn resolve_networks(
        &self,
        account: &str,
        reqs: &[EndpointRequest],
    ) -> Result<Vec<(NetworkRecord, EndpointRequest)>> {
        let mut out: Vec<(NetworkRecord, EndpointRequest)> = Vec::new();
        for r in reqs {
            let n = self.find_network(account, &r.network).await?;
            if out.iter().any(|(o, _)| o.id == n.id) {
                return Err(Error::InvalidArgument(format!(
                    "container cannot be connected to network {} twice",
                    n.name
                )));
            }
            if let Some(ip) = r.ip {
                check_requested_ip(&n, ip)?;
            }
            out.push((n, r.clone()));
        }
        Ok(out)
    }

    /// An address on `n` for a container: the one asked for, or the lowest
    /// free one. The store has the last word (a concurrent create may take
    /// it first: the caller retries on `Conflict("ip")`).
    pub(crate) async fn allocate_endpoint(
        &self,
        n: &NetworkRecord,
        req: &EndpointRequest,
    ) -> Result<Endpoint> {
        let ip = match req.ip {
            Some(ip) => ip,
            None => {
                let (_, rows) = self.store.network_endpoints(&n.id).await?;
                let used: BTreeSet<Ipv4Addr> = rows.iter().map(|r| r.ip).collect();
                let subnet = Cidr::parse(&n.subnet)?;
                let range = match &n.ip_range {
                    Some(r) => Cidr::parse(r)?,
                    None => subnet,
                };
                free_ip(&subnet, &range, n.gateway, &used).ok_or_else(|| {
                    Error::Conflict(format!("no available IPv4 addresses on network {}", n.name))
                })?
            }
        };
        Ok(Endpoint {
            network: n.id.clone(),
            name: n.name.clone(),
            vni: n.vni,
            subnet: n.subnet.clone(),
            gateway: n.gateway,
            ip,
            ip_requested: req.ip.is_some(),
            mac: mac_for(ip),
            internal: n.internal,
            aliases: req.aliases.clone(),
        })
    }

    /// Container `key` under its lock, as stored once the lock is held.
    async fn locked_container(
        &self,
        account: &str,
        key: &str,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, ContainerRecord)> {
        let c = self.find_container(account, key).await?;
        let g = self.lock(&c.id).await;
        let c = self
            .store
            .get_container(account, &c.id)
            .await?
            .ok_or_else(|| Error::no_such_container(key))?;
        Ok((g, c))
    }

    /// `docker network connect`: adds the network to the container (live
    /// when it runs).
    pub async fn connect_network(
        &self,
        account: &str,
        network: &str,
        container: &str,
        req: EndpointRequest,
    ) -> Result<()> {
        let n = self.find_network(account, network).await?;
        let (_g, mut c) = self.locked_container(account, container).await?;
        if c.spec.networks.is_empty()
            && c.config["HostConfig"]["NetworkMode"].as_str() == Some("none")
        {
            return Err(Error::Forbidden(
                "container cannot be connected to multiple networks with one of the networks in private (none) mode".into(),
            ));
        }
        if c.spec.host_network {
            return Err(Error::Forbidden(
                "container cannot be disconnected from host network or connected to host network"
                    .into(),
            ));
        }
        if c.spec.networks.iter().any(|e| e.network == n.id) {
            return Err(Error::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                c.name, n.name
            )));
        }
        if let Some(ip) = req.ip {
            check_requested_ip(&n, ip)?;
        }
        let mut last = None;
        for _ in 0..16 {
            let ep = self.allocate_endpoint(&n, &req).await?;
            let mut next = c.clone();
            next.spec.networks.push(ep.clone());
            match self.store.update_container(&next).await {
                Ok(()) => {
                    c = next;
                    last = Some(ep);
                    break;
                }
                Err(StoreError::Conflict(w)) if w == "ip" && req.ip.is_none() => continue,
                Err(StoreError::Conflict(w)) if w == "ip" => {
                    return Err(Error::Forbidden("Address already in use".into()));
                }
                Err(StoreError::Conflict(_)) => {
                    return Err(Error::NotFound(format!("network {network} not found")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some(ep) = last else {
            return Err(Error::Conflict(
                "could not allocate an address, try again".into(),
            ));
        };
        self.emit_network(&n, "connect", Some(&c.id));
        self.push_network_maps(&[(n.id.clone(), n.vni)]).await;
        if c.state.status.is_running() {
            let agent = self.agent(&c.node)?;
            agent
                .connect_network(&c.id, &ep)
                .await
                .map_err(crate::containers::upstream)?;
        }
        Ok(())
    }

    /// `docker network disconnect`.
    pub async fn disconnect_network(
        &self,
        account: &str,
        network: &str,
        container: &str,
    ) -> Result<()> {
        let n = self.find_network(account, network).await?;
        let (_g, mut c) = self.locked_container(account, container).await?;
        let Some(pos) = c.spec.networks.iter().position(|e| e.network == n.id) else {
            return Err(Error::Forbidden(format!(
                "container {} is not connected to network {}",
                c.name, n.name
            )));
        };
        let ep = c.spec.networks.remove(pos);
        self.store.update_container(&c).await?;
        if c.state.status.is_running()
            && let Ok(agent) = self.agent(&c.node)
            && let Err(e) = agent.disconnect_network(&c.id, &ep).await
        {
            tracing::warn!("disconnecting {} from {}: {e}", c.id, n.name);
        }
        self.emit_network(&n, "disconnect", Some(&c.id));
        self.push_network_maps(&[(n.id.clone(), n.vni)]).await;
        Ok(())
    }

    /// The overlay map of network `id`: every container on it with its
    /// server's underlay address.
    async fn network_map(&self, id: &str, vni: u32) -> Result<(NetworkMap, BTreeSet<String>)> {
        let (version, rows) = self.store.network_endpoints(id).await?;
        let vteps: HashMap<String, Option<Ipv4Addr>> = self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| (n.id, n.info.vtep))
            .collect();
        let mut members = Vec::new();
        let mut nodes = BTreeSet::new();
        for r in rows {
            nodes.insert(r.node.clone());
            members.push(NetworkMember {
                mac: r.mac,
                ip: r.ip,
                vtep: vteps.get(&r.node).copied().flatten(),
                names: r.names,
            });
        }
        members.sort();
        Ok((
            NetworkMap {
                vni,
                version,
                members,
            },
            nodes,
        ))
    }

    /// Sends the current overlay maps of `networks` to every server holding
    /// one of their containers. Failures are logged: a server that missed an
    /// update gets every map again when its agent reconnects.
    pub(crate) async fn push_network_maps(&self, networks: &[(String, u32)]) {
        for (id, vni) in networks {
            let (map, nodes) = match self.network_map(id, *vni).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("overlay map of network {id}: {e}");
                    continue;
                }
            };
            for node in nodes {
                self.send_map(&node, id, &map).await;
            }
        }
    }

    /// Sends the maps of `networks` to server `node` only.
    pub(crate) async fn push_maps_to_node(&self, node: &str, networks: &[(String, u32)]) {
        for (id, vni) in networks {
            // Before every start: the version alone (one row) usually says
            // the server has the map already.
            if let Ok(v) = self.store.network_version(id).await
                && self.pushed_version(node, id) == Some(v)
            {
                continue;
            }
            match self.network_map(id, *vni).await {
                Ok((map, _)) => self.send_map(node, id, &map).await,
                Err(e) => tracing::warn!("overlay map of network {id}: {e}"),
            }
        }
    }

    /// The map version last sent to server `node` for `network`.
    fn pushed_version(&self, node: &str, network: &str) -> Option<u64> {
        self.pushed_maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(node.to_string(), network.to_string()))
            .copied()
    }

    async fn send_map(&self, node: &str, network: &str, map: &NetworkMap) {
        let key = (node.to_string(), network.to_string());
        if self.pushed_version(node, network) == Some(map.version) {
            return;
        }
        let Ok(agent) = self.agent(node) else { return };
        match agent.put_network_map(map).await {
            Ok(()) => {
                let mut m = self.pushed_maps.lock().unwrap_or_else(|p| p.into_inner());
                if m.get(&key).is_none_or(|v| *v < map.version) {
                    m.insert(key, map.version);
                }
            }
            Err(e) => {
                tracing::warn!("sending the overlay map of VNI {} to {node}: {e}", map.vni)
            }
        }
    }

    /// Forgets what server `node` was sent (its agent restarted).
    pub(crate) fn forget_pushed_maps(&self, node: &str) {
        self.pushed_maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _), _| n != node);
    }

    /// After an agent (re)connects: the maps of every network with a
    /// container on its server.
    pub(crate) async fn resend_maps(&self, node: &str) -> Result<()> {
        let mut ids: Vec<(String, u32)> = self
            .store
            .containers_on_node(node)
            .await?
            .into_iter()
            .flat_map(|c| c.spec.networks.into_iter().map(|e| (e.network, e.vni)))
            .collect();
        ids.sort();
        ids.dedup();
        self.push_maps_to_node(node, &ids).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_rules() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert!(c.contains("10.0.0.9".parse().unwrap()));
        assert!(!c.contains("10.0.1.9".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.1/24").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
        assert!(c.overlaps(&Cidr::parse("10.0.0.0/16").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.0.1.0/24").unwrap()));
        assert_eq!(c.first_host().to_string(), "10.0.0.1");
    }

    #[test]
    fn free_ip_skips_reserved_and_used() {
        let s = Cidr::parse("10.1.2.0/29").unwrap();
        let gw: Ipv4Addr = "10.1.2.1".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(free_ip(&s, &s, gw, &used).unwrap().to_string(), "10.1.2.2");
        used.insert("10.1.2.2".parse().unwrap());
        assert_eq!(free_ip(&s, &s, gw, &used).unwrap().to_string(), "10.1.2.3");
        for i in 3..7 {
            used.insert(Ipv4Addr::new(10, 1, 2, i));
        }
        // .7 is the broadcast address.
        assert_eq!(free_ip(&s, &s, gw, &used), None);
        let r = Cidr::parse("10.1.2.4/30").unwrap();
        used.clear();
        assert_eq!(free_ip(&s, &r, gw, &used).unwrap().to_string(), "10.1.2.4");
        assert_eq!(mac_for("10.1.2.3".parse().unwrap()), "02:42:0a:01:02:03");
    }

    #[test]
    fn pools_and_names() {
        let first = pool_candidates().next().unwrap();
        assert_eq!(first.to_string(), "172.18.0.0/16");
        assert_eq!(pool_candidates().count(), 30);
        assert!(validate_network_name("front-end_1.a").is_ok());
        assert!(validate_network_name("-x").is_err());
        assert!(validate_network_name("a b").is_err());
    }
}
