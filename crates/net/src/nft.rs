//! nftables: script generation (pure, unit-tested) and the `Nft` trait that applies a
//! whole script as one transaction (`nft -f -`), so a change costs one process, not one
//! per rule.

use crate::error::NetError;
use crate::ipv4net::Ipv4Net;
use async_trait::async_trait;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The regular chain that holds every published-port DNAT rule of the instance. It is
/// jumped to from prerouting (traffic from outside) and output (traffic from the host).
pub const PORTMAP_CHAIN: &str = "portmap";
pub const FAMILY: &str = "inet";

#[async_trait]
pub trait Nft: Send + Sync {
    /// Applies `script` atomically (all of it or nothing).
    async fn apply(&self, script: &str) -> Result<(), NetError>;
    /// `nft -j list table`: the table as JSON, or None if it does not exist.
    async fn list_table(&self, family: &str, table: &str) -> Result<Option<String>, NetError>;
    /// `nft -j -a list chain`: the chain as JSON with rule handles, or None if the table or
    /// chain does not exist.
    async fn list_chain(
        &self,
        family: &str,
        table: &str,
        chain: &str,
    ) -> Result<Option<String>, NetError>;
}

/// A published port, as Docker's `-p [host_ip:]host_port:container_port[/proto]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp".
    pub proto: String,
    pub container_port: u16,
    /// "" (or "0.0.0.0" / "::") means every host address.
    pub host_ip: String,
    pub host_port: u16,
}

/// One rule of a listed chain: what detach and reconciliation need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub handle: u64,
    pub comment: Option<String>,
}

/// The static part of the instance's table. Base chains are flushed and refilled so calling
/// it again (agent restart) neither duplicates rules nor touches the per-container
/// `portmap` rules of running containers.
pub fn setup_script(
    table: &str,
    bridge: &str,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    protected: &[Ipv4Net],
    reachable: &[Ipv4Net],
) -> String {
    let t = format!("{FAMILY} {table}");
    let mut s = String::new();
    let _ = writeln!(s, "add table {t}");
    for (chain, spec) in [
        (
            "prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
        ),
        (
            "output",
            "type nat hook output priority -100; policy accept;",
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
        let _ = writeln!(s, "add chain {t} {chain} {{ {spec} }}");
        let _ = writeln!(s, "flush chain {t} {chain}");
    }
    let _ = writeln!(s, "add chain {t} {PORTMAP_CHAIN}");
    // Published ports: for packets addressed to any local address, from
    // outside or from the server itself — but never to its loopback, where
    // its own services (and their local clients) must stay its own.
    let _ = writeln!(
        s,
        "add rule {t} prerouting fib daddr type local jump {PORTMAP_CHAIN}"
    );
    let _ = writeln!(
        s,
        "add rule {t} output fib daddr type local ip daddr != 127.0.0.0/8 jump {PORTMAP_CHAIN}"
    );
    // Egress NAT for containers.
    let _ = writeln!(
        s,
        "add rule {t} postrouting ip saddr {subnet} oifname != \"{bridge}\" masquerade"
    );
    // Hairpin: a container reaching a published port of its own bridge.
    let _ = writeln!(
        s,
        "add rule {t} postrouting oifname \"{bridge}\" ct status dnat ip saddr {subnet} masquerade"
    );
    // Containers (behind their routers on the bridge) reach none of the
    // server's own addresses — its agent, a head beside it, its VXLAN port,
    // whatever it listens on — only answers to what the server started.
    // Published ports are DNAT'd before routing, so they are forwarded, not
    // delivered here.
    let _ = writeln!(
        s,
        "add rule {t} input iifname \"{bridge}\" ct state established,related accept"
    );
    // A ping of the bridge's own address (the routers' gateway) answers.
    let _ = writeln!(
        s,
        "add rule {t} input iifname \"{bridge}\" ip daddr {gateway} icmp type echo-request accept"
    );
    let _ = writeln!(s, "add rule {t} input iifname \"{bridge}\" drop");
    // Nor the datacenter's other servers, heads and metadata addresses,
    // except what the operator opened.
    if !reachable.is_empty() && !protected.is_empty() {
        let list: Vec<String> = reachable.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            s,
            "add rule {t} forward iifname \"{bridge}\" ip daddr {{ {} }} accept",
            list.join(", ")
        );
    }
    if !protected.is_empty() {
        let list: Vec<String> = protected.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            s,
            "add rule {t} forward iifname \"{bridge}\" ip daddr {{ {} }} drop",
            list.join(", ")
        );
    }
    let _ = writeln!(s, "add rule {t} forward iifname \"{bridge}\" accept");
    let _ = writeln!(s, "add rule {t} forward oifname \"{bridge}\" accept");
    s
}

/// VXLAN from the underlay, appended to [`setup_script`]'s (which flushes
/// `input`): a frame is taken only from a server that hosts its network,
/// `vxlan_peers` holding (underlay address . VNI) of every other server with
/// a member of a segment here (the VNI is the 24 bits after the VXLAN
/// header's flags and reserved bytes). The set is made, never flushed here,
/// so a restarted agent keeps its overlay reachable until it rewrites it
/// with [`vxlan_peers_script`]. VXLAN is IPv4 here: IPv6 to the port is
/// dropped.
pub fn vxlan_guard_script(table: &str, port: u16) -> String {
    let t = format!("{FAMILY} {table}");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "add set {t} {VXLAN_PEERS} {{ typeof ip saddr . @th,96,24; }}"
    );
    let _ = writeln!(
        s,
        "add rule {t} input udp dport {port} ip saddr . @th,96,24 != @{VXLAN_PEERS} drop"
    );
    let _ = writeln!(
        s,
        "add rule {t} input meta nfproto ipv6 udp dport {port} drop"
    );
    s
}

/// The set of [`vxlan_guard_script`].
const VXLAN_PEERS: &str = "vxlan_peers";

/// Replaces the VXLAN peers (underlay address, VNI) in one transaction.
pub fn vxlan_peers_script(
    table: &str,
    peers: &std::collections::BTreeSet<(Ipv4Addr, u32)>,
) -> String {
    let t = format!("{FAMILY} {table}");
    let mut s = format!("flush set {t} {VXLAN_PEERS}\n");
    if !peers.is_empty() {
        let list: Vec<String> = peers
            .iter()
            .map(|(ip, vni)| format!("{ip} . {vni}"))
            .collect();
        let _ = writeln!(s, "add element {t} {VXLAN_PEERS} {{ {} }}", list.join(", "));
    }
    s
}

/// Removes the whole table (and the bridge-family one of the same name); the
/// `add` first makes it a no-op when it is already gone.
pub fn teardown_script(table: &str) -> String {
    let mut s = String::new();
    for family in [FAMILY, BRIDGE_FAMILY] {
        let _ = writeln!(
            s,
            "add table {family} {table}\ndelete table {family} {table}"
        );
    }
    s
}

/// The bridge-family table that keeps tenants apart on the server's bridge.
pub const BRIDGE_FAMILY: &str = "bridge";

/// The sets of the bridge-family table, each keyed first by port name.
pub const ISOLATION_SETS: [&str; 4] = ["ports", "port_group", "port_in_group", "port_id"];

/// Prerouting rules of a bridge-family table: a frame from a guarded port
/// is IPv4 or ARP, from the port's own MAC and address (set `port_id`).
const ANTI_SPOOFING: [&str; 4] = [
    "ether type != { ip, arp } drop",
    "ether type ip iifname . ether saddr . ip saddr != @port_id drop",
    "ether type arp iifname . arp saddr ether . arp saddr ip != @port_id drop",
    "ether type arp iifname . ether saddr . arp saddr ip != @port_id drop",
];

/// The static bridge-family table. Its chains never change with containers:
/// a container adds elements only (≈ 3 ms an `nft` run here, where making or
/// deleting a chain or an element costs ≈ 20 ms: the kernel waits for RCU).
/// - prerouting: a frame from a container port must be IPv4 or ARP, and carry
///   the port's own MAC and address (`port_id`);
/// - forward: a frame may go only to a port of its sender's group (the
///   sender's group as the packet mark, looked up with the receiver in
///   `port_in_group`), so a port missing from the maps reaches only group 0.
///
/// Frames between other bridges' ports pass untouched. Elements survive a
/// re-run (agent restart).
pub fn isolation_setup_script(table: &str) -> String {
    let t = format!("{BRIDGE_FAMILY} {table}");
    let mut s = String::new();
    let _ = writeln!(s, "add table {t}");
    let _ = writeln!(s, "add set {t} ports {{ type ifname; }}");
    let _ = writeln!(s, "add map {t} port_group {{ type ifname : mark; }}");
    let _ = writeln!(s, "add set {t} port_in_group {{ type ifname . mark; }}");
    let _ = writeln!(
        s,
        "add set {t} port_id {{ type ifname . ether_addr . ipv4_addr; }}"
    );
    for (chain, hook) in [("prerouting", "prerouting"), ("forward", "forward")] {
        let _ = writeln!(
            s,
            "add chain {t} {chain} {{ type filter hook {hook} priority filter; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {t} {chain}");
    }
    for rule in [
        // Bridge-family hooks see every bridge of the host (docker0, another
        // instance's): frames between ports not ours are not ours to judge.
        "prerouting iifname != @ports accept",
        "forward iifname != @ports oifname != @ports accept",
    ] {
        let _ = writeln!(s, "add rule {t} {rule}");
    }
    for rule in ANTI_SPOOFING {
        let _ = writeln!(s, "add rule {t} prerouting {rule}");
    }
    for rule in [
        "forward meta mark set iifname map @port_group",
        "forward oifname . meta mark != @port_in_group drop",
    ] {
        let _ = writeln!(s, "add rule {t} {rule}");
    }
    s
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The elements of one container port: its group, and its own MAC and IPv4
/// address, the only ones it may send from.
pub fn port_isolation_script(
    table: &str,
    port: &str,
    mac: &[u8; 6],
    ip: Ipv4Addr,
    group: u32,
) -> String {
    let t = format!("{BRIDGE_FAMILY} {table}");
    let mac = mac_text(mac);
    let mut s = String::new();
    for (set, elem) in [
        ("ports", format!("\"{port}\"")),
        ("port_group", format!("\"{port}\" : {group}")),
        ("port_in_group", format!("\"{port}\" . {group}")),
        ("port_id", format!("\"{port}\" . {mac} . {ip}")),
    ] {
        let _ = writeln!(s, "add element {t} {set} {{ {elem} }}");
    }
    s
}

/// The bridge-family table of a segment's router namespace (anti-spoofing
/// inside a network): a frame from a container's port (`p…`) must be IPv4 or
/// ARP and carry the port's own MAC and address (`port_id`: one element per
/// port, added before its container starts, so a port without one sends
/// nothing). Frames from `vx0` come from other servers' guarded ports;
/// frames the router itself sends pass no prerouting hook.
pub fn segment_guard_script(table: &str) -> String {
    let t = format!("{BRIDGE_FAMILY} {table}");
    let mut s = format!("add table {t}\n");
    let _ = writeln!(
        s,
        "add set {t} port_id {{ type ifname . ether_addr . ipv4_addr; }}"
    );
    let _ = writeln!(
        s,
        "add chain {t} prerouting {{ type filter hook prerouting priority filter; policy accept; }}"
    );
    let _ = writeln!(s, "flush chain {t} prerouting");
    let _ = writeln!(s, "add rule {t} prerouting iifname != \"p*\" accept");
    for rule in ANTI_SPOOFING {
        let _ = writeln!(s, "add rule {t} prerouting {rule}");
    }
    s
}

/// Lets `port` send from `mac` and `ip` (an element of `port_id`;
/// idempotent).
pub fn source_element_script(table: &str, port: &str, mac: &[u8; 6], ip: Ipv4Addr) -> String {
    format!(
        "add element {BRIDGE_FAMILY} {table} port_id {{ \"{port}\" . {} . {ip} }}\n",
        mac_text(mac)
    )
}

/// Deletes the given elements (`(set, element)`, as `nft -j` lists them and
/// [`isolation_elements`] returns them) in one run.
pub fn isolation_delete_script(table: &str, elems: &[(String, String)]) -> String {
    let t = format!("{BRIDGE_FAMILY} {table}");
    elems
        .iter()
        .map(|(set, e)| format!("delete element {t} {set} {{ {e} }}\n"))
        .collect()
}

/// The elements of the isolation sets as `(set, port, key text)`, from
/// `nft -j list table bridge <table>`.
pub fn isolation_elements(json: &str) -> Result<Vec<(String, String, String)>, NetError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| NetError::Nft(format!("bad nft JSON: {e}")))?;
    let text = |x: &serde_json::Value| -> String {
        match x {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let set = if item.get("set").is_some() {
            &item["set"]
        } else {
            &item["map"]
        };
        let Some(name) = set["name"].as_str() else {
            continue;
        };
        if !ISOLATION_SETS.contains(&name) {
            continue;
        }
        for e in set["elem"].as_array().into_iter().flatten() {
            // A map element is [key, value]; a concatenation {"concat": [..]}.
            let (key, value) = match e.as_array() {
                Some(kv) if kv.len() == 2 => (&kv[0], Some(&kv[1])),
                _ => (e, None),
            };
            let parts: Vec<String> = match key.get("concat").and_then(|c| c.as_array()) {
                Some(c) => c.iter().map(text).collect(),
                None => vec![text(key)],
            };
            let Some(port) = parts.first().cloned() else {
                continue;
            };
            // (A map element is deleted by its key.)
            let _ = value;
            let elem = std::iter::once(format!("\"{port}\""))
                .chain(parts[1..].iter().cloned())
                .collect::<Vec<_>>()
                .join(" . ");
            out.push((name.to_string(), port, elem));
        }
    }
    Ok(out)
}

/// Whether `host_ip` means "every address".
fn is_any(host_ip: &str) -> bool {
    matches!(host_ip, "" | "0.0.0.0" | "::" | "[::]")
}

/// The DNAT rules for one container, each tagged with the container id as comment so
/// detach can find and delete exactly these.
pub fn port_rules(
    table: &str,
    id: &str,
    ip: Ipv4Addr,
    ports: &[PortMapping],
) -> Result<String, NetError> {
    let mut s = String::new();
    for p in ports {
        let proto = p.proto.to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(NetError::InvalidPort(format!(
                "unsupported protocol {:?}",
                p.proto
            )));
        }
        if p.host_port == 0 || p.container_port == 0 {
            return Err(NetError::InvalidPort(format!(
                "port 0 in {}:{}/{}",
                p.host_port, p.container_port, proto
            )));
        }
        let matcher = if is_any(&p.host_ip) {
            "meta nfproto ipv4".to_string()
        } else {
            let hip: Ipv4Addr = p.host_ip.parse().map_err(|_| {
                NetError::InvalidPort(format!("host address {:?} is not IPv4", p.host_ip))
            })?;
            format!("ip daddr {hip}")
        };
        let _ = writeln!(
            s,
            "add rule {FAMILY} {table} {PORTMAP_CHAIN} {matcher} {proto} dport {} dnat ip to {ip}:{} comment \"{id}\"",
            p.host_port, p.container_port
        );
    }
    Ok(s)
}

/// Replaces the rules commented `comment` in `table`'s portmap chain with
/// `add`, in one transaction (two `nft` runs: the listing, then the change).
pub async fn replace_commented_rules(
    nft: &dyn Nft,
    table: &str,
    comment: &str,
    add: &str,
) -> Result<(), NetError> {
    let Some(json) = nft.list_chain(FAMILY, table, PORTMAP_CHAIN).await? else {
        return Err(NetError::Nft(
            "the container network's rule table is missing; restart the agent".into(),
        ));
    };
    let old = handles_with_comment(&parse_rules(&json)?, comment);
    let mut script = delete_rules(FAMILY, table, PORTMAP_CHAIN, &old);
    script.push_str(add);
    if script.is_empty() {
        return Ok(());
    }
    nft.apply(&script).await
}

pub fn delete_rules(family: &str, table: &str, chain: &str, handles: &[u64]) -> String {
    let mut s = String::new();
    for h in handles {
        let _ = writeln!(s, "delete rule {family} {table} {chain} handle {h}");
    }
    s
}

/// Accept rules for our bridge in dockerd's `ip filter DOCKER-USER` chain: Docker's FORWARD
/// policy is DROP and a drop in any base chain is final in nftables, so our own forward
/// chain alone cannot let bridged/forwarded packets through. The rules use only
/// iptables-nft-compatible expressions so dockerd can still read the chain.
pub fn docker_user_rules(bridge: &str, comment: &str) -> String {
    let mut s = String::new();
    for dir in ["iifname", "oifname"] {
        let _ = writeln!(
            s,
            "insert rule ip filter DOCKER-USER {dir} \"{bridge}\" counter accept comment \"{comment}\""
        );
    }
    s
}

/// Parses `nft -j -a list chain` output into rule handles and comments.
pub fn parse_rules(json: &str) -> Result<Vec<RuleRef>, NetError> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| NetError::Nft(format!("cannot parse nft JSON output: {e}")))?;
    let items = v
        .get("nftables")
        .and_then(|x| x.as_array())
        .ok_or_else(|| NetError::Nft("nft JSON output lacks \"nftables\"".into()))?;
    Ok(items
        .iter()
        .filter_map(|it| it.get("rule"))
        .filter_map(|r| {
            Some(RuleRef {
                handle: r.get("handle")?.as_u64()?,
                comment: r
                    .get("comment")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
            })
        })
        .collect())
}

/// Handles of the rules in `rules` whose comment is exactly `comment`.
pub fn handles_with_comment(rules: &[RuleRef], comment: &str) -> Vec<u64> {
    rules
        .iter()
        .filter(|r| r.comment.as_deref() == Some(comment))
        .map(|r| r.handle)
        .collect()
}

/// The real thing: runs the `nft` binary (in another network namespace when
/// given one: a router namespace's own tables).
pub struct NftCmd {
    bin: std::path::PathBuf,
    netns: Option<std::path::PathBuf>,
}

impl NftCmd {
    pub fn new() -> Self {
        NftCmd {
            bin: "nft".into(),
            netns: None,
        }
    }

    pub fn with_binary(bin: impl Into<std::path::PathBuf>) -> Self {
        NftCmd {
            bin: bin.into(),
            netns: None,
        }
    }

    /// `nft` run inside the network namespace pinned at `netns`.
    pub fn in_netns(netns: &std::path::Path) -> Self {
        NftCmd {
            bin: "nft".into(),
            netns: Some(netns.to_path_buf()),
        }
    }

    fn command(&self) -> Result<tokio::process::Command, NetError> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.kill_on_drop(true);
        if let Some(ns) = &self.netns {
            let f = std::fs::File::open(ns)
                .map_err(|e| NetError::Nft(format!("opening {}: {e}", ns.display())))?;
            // SAFETY: setns(2) is async-signal-safe; the child owns its copy of `f`.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        Ok(cmd)
    }
}

impl Default for NftCmd {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Nft for NftCmd {
    async fn apply(&self, script: &str) -> Result<(), NetError> {
        use tokio::io::AsyncWriteExt;
        if let Some(r) = crate::libnft::run(self.netns.clone(), script.to_string(), 0).await {
            return r.map(|_| ()).map_err(|e| {
                tracing::debug!(script, "nft failed");
                NetError::Nft(e)
            });
        }
        let mut child = self
            .command()?
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| NetError::Nft(format!("cannot run nft: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| NetError::Nft(format!("writing to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| NetError::Nft(format!("waiting for nft: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            tracing::debug!(script, "nft failed");
            Err(NetError::Nft(err.trim().to_string()))
        }
    }

    async fn list_table(&self, family: &str, table: &str) -> Result<Option<String>, NetError> {
        self.list(&["-j", "list", "table", family, table]).await
    }

    async fn list_chain(
        &self,
        family: &str,
        table: &str,
        chain: &str,
    ) -> Result<Option<String>, NetError> {
        self.list(&["-j", "-a", "list", "chain", family, table, chain])
            .await
    }
}

impl NftCmd {
    /// Runs an `nft` listing: its JSON, or None when the object is missing.
    async fn list(&self, args: &[&str]) -> Result<Option<String>, NetError> {
        let mut flags = 0;
        let mut words = Vec::new();
        for a in args {
            match *a {
                "-j" => flags |= crate::libnft::OUTPUT_JSON,
                "-a" => flags |= crate::libnft::OUTPUT_HANDLE,
                w => words.push(w),
            }
        }
        if let Some(r) = crate::libnft::run(self.netns.clone(), words.join(" "), flags).await {
            return match r {
                Ok(out) => Ok(Some(out)),
                Err(e) if e.contains("No such file or directory") => Ok(None),
                Err(e) => Err(NetError::Nft(e)),
            };
        }
        let out = self
            .command()?
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| NetError::Nft(format!("cannot run nft: {e}")))?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(NetError::Nft(err.trim().to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(proto: &str, cport: u16, hip: &str, hport: u16) -> PortMapping {
        PortMapping {
            proto: proto.into(),
            container_port: cport,
            host_ip: hip.into(),
            host_port: hport,
        }
    }

    #[test]
    fn vxlan_is_taken_only_from_peers_of_its_network() {
        let g = vxlan_guard_script("atoll_abc123", 4789);
        assert!(
            g.contains("add set inet atoll_abc123 vxlan_peers { typeof ip saddr . @th,96,24; }")
        );
        assert!(g.contains(
            "add rule inet atoll_abc123 input udp dport 4789 ip saddr . @th,96,24 != @vxlan_peers drop"
        ));
        // Kept across a re-run: only the peers script flushes it.
        assert!(!g.contains("flush set"));
        let peers = [
            (Ipv4Addr::new(192, 0, 2, 3), 7),
            (Ipv4Addr::new(192, 0, 2, 4), 7),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            vxlan_peers_script("atoll_abc123", &peers),
            "flush set inet atoll_abc123 vxlan_peers\n\
             add element inet atoll_abc123 vxlan_peers { 192.0.2.3 . 7, 192.0.2.4 . 7 }\n"
        );
        assert_eq!(
            vxlan_peers_script("atoll_abc123", &Default::default()),
            "flush set inet atoll_abc123 vxlan_peers\n"
        );
    }

    #[test]
    fn setup_script_shape() {
        let s = setup_script(
            "atoll_abc123",
            "atlabc123",
            "10.200.3.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 200, 3, 1),
            &[
                "169.254.0.0/16".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap(),
            ],
            &["192.0.2.53/32".parse().unwrap()],
        );
        assert!(s.starts_with("add table inet atoll_abc123\n"));
        for chain in ["prerouting", "output", "postrouting", "forward", "input"] {
            assert!(s.contains(&format!("flush chain inet atoll_abc123 {chain}\n")));
        }
        // The portmap chain is created but never flushed: it holds running containers' ports.
        assert!(s.contains("add chain inet atoll_abc123 portmap\n"));
        assert!(!s.contains("flush chain inet atoll_abc123 portmap"));
        assert!(
            s.contains("postrouting ip saddr 10.200.3.0/24 oifname != \"atlabc123\" masquerade")
        );
        assert!(!s.contains("127.0.0.0/8 masquerade"));
        assert!(s.contains("output fib daddr type local ip daddr != 127.0.0.0/8 jump portmap"));
        assert!(s.contains("prerouting fib daddr type local jump portmap"));
        assert!(s.contains("forward iifname \"atlabc123\" accept"));
        // Containers reach neither the server nor the protected networks,
        // and the drop comes before the accept.
        let drop = "forward iifname \"atlabc123\" ip daddr { 169.254.0.0/16, 192.0.2.0/24 } drop";
        let at = |r: &str| s.find(r).unwrap_or_else(|| panic!("{r} missing:\n{s}"));
        assert!(at(drop) < at("forward iifname \"atlabc123\" accept"));
        // What the operator opened comes first.
        assert!(at("forward iifname \"atlabc123\" ip daddr { 192.0.2.53/32 } accept") < at(drop));
        assert!(
            at("input iifname \"atlabc123\" ct state established,related accept")
                < at("input iifname \"atlabc123\" drop")
        );
        assert!(
            at("input iifname \"atlabc123\" ip daddr 10.200.3.1 icmp type echo-request accept")
                < at("input iifname \"atlabc123\" drop")
        );
    }

    #[test]
    fn port_rules_any_and_specific() {
        let s = port_rules(
            "atoll_x",
            "c1",
            Ipv4Addr::new(10, 200, 3, 2),
            &[pm("tcp", 80, "", 8080), pm("UDP", 53, "127.0.0.1", 5353)],
        )
        .unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            vec![
                "add rule inet atoll_x portmap meta nfproto ipv4 tcp dport 8080 dnat ip to 10.200.3.2:80 comment \"c1\"",
                "add rule inet atoll_x portmap ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.200.3.2:53 comment \"c1\"",
            ]
        );
        assert_eq!(port_rules("t", "c", Ipv4Addr::LOCALHOST, &[]).unwrap(), "");
    }

    #[test]
    fn port_rules_reject_bad_input() {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        assert!(port_rules("t", "c", ip, &[pm("icmp", 1, "", 1)]).is_err());
        assert!(port_rules("t", "c", ip, &[pm("tcp", 80, "", 0)]).is_err());
        assert!(port_rules("t", "c", ip, &[pm("tcp", 80, "::1", 80)]).is_err());
        assert!(port_rules("t", "c", ip, &[pm("tcp", 80, "1.2.3.4; drop", 80)]).is_err());
    }

    #[test]
    fn parse_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"chain": {"family": "inet", "table": "atoll_x", "name": "portmap", "handle": 5}}, {"rule": {"family": "inet", "table": "atoll_x", "chain": "portmap", "handle": 13, "comment": "abc", "expr": []}}, {"rule": {"family": "inet", "table": "atoll_x", "chain": "portmap", "handle": 15, "expr": []}}, {"rule": {"handle": 16, "comment": "abcd", "expr": []}}]}"#;
        let rules = parse_rules(json).unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(handles_with_comment(&rules, "abc"), vec![13]);
        assert_eq!(handles_with_comment(&rules, "abcd"), vec![16]);
        assert!(parse_rules("not json").is_err());
        assert_eq!(
            delete_rules("inet", "atoll_x", "portmap", &[13, 16]),
            "delete rule inet atoll_x portmap handle 13\ndelete rule inet atoll_x portmap handle 16\n"
        );
    }

    #[test]
    fn docker_user_and_teardown() {
        let s = docker_user_rules("atlx", "atoll_x");
        assert_eq!(s.lines().count(), 2);
        assert!(s.contains(
            "insert rule ip filter DOCKER-USER iifname \"atlx\" counter accept comment \"atoll_x\""
        ));
        assert_eq!(
            teardown_script("atoll_x"),
            "add table inet atoll_x\ndelete table inet atoll_x\nadd table bridge atoll_x\ndelete table bridge atoll_x\n"
        );
    }
}
