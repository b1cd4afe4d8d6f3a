//! Recording fakes of the privileged operations, with just enough state to unit-test the
//! orchestration in `NodeNet` (idempotency, what teardown finds) without root.

use crate::error::NetError;
use crate::ipv4net::Ipv4Net;
use crate::link::{LinkOps, VethSpec, VethState};
use crate::netns::NetnsOps;
use crate::nft::Nft;
use crate::sysctl::Sysctl;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeLink {
    Bridge { addrs: Vec<(Ipv4Addr, u8)> },
    Veth { spec: VethSpec, complete: bool },
    Other,
}

#[derive(Default)]
pub struct FakeLinks {
    pub links: Mutex<BTreeMap<String, FakeLink>>,
    /// Networks the "host" already uses besides our links.
    pub host_nets: Mutex<Vec<Ipv4Net>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeLinks {
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn record(&self, c: String) {
        lock(&self.calls).push(c);
    }

    /// Marks a veth as half-made, as after a crash mid-attach.
    pub fn break_veth(&self, name: &str) {
        if let Some(FakeLink::Veth { complete, .. }) = lock(&self.links).get_mut(name) {
            *complete = false;
        }
    }
}

#[async_trait]
impl LinkOps for FakeLinks {
    async fn host_ipv4_nets(&self) -> Result<Vec<Ipv4Net>, NetError> {
        let mut out = lock(&self.host_nets).clone();
        for l in lock(&self.links).values() {
            if let FakeLink::Bridge { addrs } = l {
                for (a, p) in addrs {
                    out.push(Ipv4Net::new(*a, *p)?);
                }
            }
        }
        Ok(out)
    }

    async fn link_ipv4(&self, name: &str) -> Result<Option<Vec<(Ipv4Addr, u8)>>, NetError> {
        Ok(lock(&self.links).get(name).map(|l| match l {
            FakeLink::Bridge { addrs } => addrs.clone(),
            _ => Vec::new(),
        }))
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        _mac: [u8; 6],
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        self.record(format!("ensure_bridge {name} {gateway}/{prefix}"));
        let mut links = lock(&self.links);
        let l = links
            .entry(name.to_string())
            .or_insert(FakeLink::Bridge { addrs: Vec::new() });
        if let FakeLink::Bridge { addrs } = l
            && !addrs.contains(&(gateway, prefix))
        {
            addrs.push((gateway, prefix));
        }
        Ok(())
    }

    async fn veth_state(&self, spec: &VethSpec) -> Result<VethState, NetError> {
        Ok(match lock(&self.links).get(&spec.host) {
            None => VethState::Absent,
            Some(FakeLink::Veth { spec: s, .. }) if s.alias != spec.alias => VethState::Foreign,
            Some(FakeLink::Veth { spec: s, complete }) if *complete && s == spec => {
                VethState::Complete
            }
            Some(_) => VethState::Partial,
        })
    }

    async fn create_veth(&self, spec: &VethSpec) -> Result<(), NetError> {
        self.record(format!("create_veth {} {}", spec.host, spec.ip));
        let mut links = lock(&self.links);
        if links.contains_key(&spec.host) {
            return Err(NetError::netlink("create veth", "File exists"));
        }
        links.insert(
            spec.host.clone(),
            FakeLink::Veth {
                spec: spec.clone(),
                complete: true,
            },
        );
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<bool, NetError> {
        self.record(format!("delete_link {name}"));
        Ok(lock(&self.links).remove(name).is_some())
    }

    async fn link_names(&self) -> Result<Vec<String>, NetError> {
        Ok(lock(&self.links).keys().cloned().collect())
    }
}

#[derive(Default)]
pub struct FakeNetns {
    pub files: Mutex<BTreeSet<PathBuf>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeNetns {
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

impl NetnsOps for FakeNetns {
    fn create(&self, path: &Path, owner: Option<crate::netns::UserNs>) -> Result<(), NetError> {
        lock(&self.calls).push(match owner {
            None => format!("create {}", path.display()),
            Some(o) => format!(
                "create {} owned by {}+{}",
                path.display(),
                o.host_base,
                o.size
            ),
        });
        lock(&self.files).insert(path.to_path_buf());
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        lock(&self.files).contains(path)
    }

    fn remove(&self, path: &Path) -> Result<(), NetError> {
        lock(&self.calls).push(format!("remove {}", path.display()));
        lock(&self.files).remove(path);
        Ok(())
    }

    fn list(&self, dir: &Path) -> Result<Vec<PathBuf>, NetError> {
        Ok(lock(&self.files)
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }
}

#[derive(Default)]
pub struct FakeSysctl {
    pub values: Mutex<BTreeMap<String, String>>,
}

impl Sysctl for FakeSysctl {
    fn set(&self, key: &str, value: &str) -> Result<(), NetError> {
        lock(&self.values).insert(key.to_string(), value.to_string());
        Ok(())
    }
}

type ChainKey = (String, String, String);

#[derive(Clone, Default, Debug)]
struct NftState {
    tables: BTreeSet<(String, String)>,
    /// Rules per chain: (handle, text after the chain name, comment).
    chains: BTreeMap<ChainKey, Vec<(u64, String, Option<String>)>>,
    /// Sets and maps: element key → value ("" for a set).
    sets: BTreeMap<ChainKey, BTreeMap<String, String>>,
    next_handle: u64,
}

/// A small nft interpreter for the statements this crate emits: applies scripts
/// atomically, hands out handles, lists chains as nft's JSON.
#[derive(Default)]
pub struct FakeNft {
    state: Mutex<NftState>,
    pub scripts: Mutex<Vec<String>>,
}

fn comment_of(rest: &str) -> Option<String> {
    let i = rest.find(" comment \"")?;
    let tail = &rest[i + 10..];
    Some(tail[..tail.find('"')?].to_string())
}

impl FakeNft {
    /// Pre-creates a chain (e.g. dockerd's `ip filter DOCKER-USER`).
    pub fn with_chain(self, family: &str, table: &str, chain: &str) -> Self {
        {
            let mut st = lock(&self.state);
            st.tables.insert((family.into(), table.into()));
            st.chains
                .insert((family.into(), table.into(), chain.into()), Vec::new());
        }
        self
    }

    pub fn scripts(&self) -> Vec<String> {
        lock(&self.scripts).clone()
    }

    pub fn has_table(&self, family: &str, table: &str) -> bool {
        lock(&self.state)
            .tables
            .contains(&(family.to_string(), table.to_string()))
    }

    /// The elements of a set or map (`key` or `key : value`), sorted.
    pub fn elements(&self, family: &str, table: &str, set: &str) -> Vec<String> {
        lock(&self.state)
            .sets
            .get(&(family.into(), table.into(), set.into()))
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        if v.is_empty() {
                            k.clone()
                        } else {
                            format!("{k} : {v}")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rule texts of a chain, in order.
    pub fn rules(&self, family: &str, table: &str, chain: &str) -> Vec<String> {
        lock(&self.state)
            .chains
            .get(&(family.into(), table.into(), chain.into()))
            .map(|v| v.iter().map(|r| r.1.clone()).collect())
            .unwrap_or_default()
    }

    fn exec(st: &mut NftState, line: &str) -> Result<(), String> {
        let w: Vec<&str> = line.splitn(6, ' ').collect();
        let get = |i: usize| w.get(i).copied().ok_or_else(|| format!("short: {line}"));
        let (verb, obj) = (get(0)?, get(1)?);
        let tkey = (get(2)?.to_string(), get(3)?.to_string());
        match (verb, obj) {
            ("add", "table") => {
                st.tables.insert(tkey);
            }
            ("delete", "table") => {
                if !st.tables.remove(&tkey) {
                    return Err(format!("no such table: {line}"));
                }
                st.chains.retain(|k, _| (k.0.clone(), k.1.clone()) != tkey);
                st.sets.retain(|k, _| (k.0.clone(), k.1.clone()) != tkey);
            }
            (_, "set") | (_, "map") | (_, "element") => {
                if !st.tables.contains(&tkey) {
                    return Err(format!("no such table: {line}"));
                }
                let skey = (tkey.0, tkey.1, get(4)?.to_string());
                let body = w
                    .get(5)
                    .copied()
                    .unwrap_or("")
                    .trim()
                    .trim_start_matches('{')
                    .trim_end_matches('}')
                    .trim();
                let (key, value) = match body.split_once(" : ") {
                    Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                    None => (body.to_string(), String::new()),
                };
                match (verb, obj) {
                    ("add", "set") | ("add", "map") => {
                        st.sets.entry(skey).or_default();
                    }
                    ("add", "element") => {
                        let set = st
                            .sets
                            .get_mut(&skey)
                            .ok_or_else(|| format!("no such set: {line}"))?;
                        if set.get(&key).is_some_and(|v| *v != value) {
                            return Err(format!("element exists with another value: {line}"));
                        }
                        set.insert(key, value);
                    }
                    ("delete", "element") => {
                        st.sets
                            .get_mut(&skey)
                            .ok_or_else(|| format!("no such set: {line}"))?
                            .remove(&key)
                            .ok_or_else(|| format!("no such element: {line}"))?;
                    }
                    _ => return Err(format!("unsupported: {line}")),
                }
            }
            (_, "chain") | (_, "rule") => {
                if !st.tables.contains(&tkey) {
                    return Err(format!("no such table: {line}"));
                }
                let ckey = (tkey.0, tkey.1, get(4)?.to_string());
                let rest = w.get(5).copied().unwrap_or("");
                match (verb, obj) {
                    ("add", "chain") => {
                        st.chains.entry(ckey).or_default();
                    }
                    ("flush", "chain") => {
                        st.chains
                            .get_mut(&ckey)
                            .ok_or_else(|| format!("no such chain: {line}"))?
                            .clear();
                    }
                    ("add", "rule") | ("insert", "rule") => {
                        st.next_handle += 1;
                        let h = st.next_handle;
                        let c = st
                            .chains
                            .get_mut(&ckey)
                            .ok_or_else(|| format!("no such chain: {line}"))?;
                        let r = (h, rest.to_string(), comment_of(rest));
                        if verb == "add" {
                            c.push(r);
                        } else {
                            c.insert(0, r);
                        }
                    }
                    ("delete", "rule") => {
                        let h: u64 = rest
                            .strip_prefix("handle ")
                            .and_then(|x| x.trim().parse().ok())
                            .ok_or_else(|| format!("bad handle: {line}"))?;
                        let c = st
                            .chains
                            .get_mut(&ckey)
                            .ok_or_else(|| format!("no such chain: {line}"))?;
                        let before = c.len();
                        c.retain(|r| r.0 != h);
                        if c.len() == before {
                            return Err(format!("no such rule: {line}"));
                        }
                    }
                    _ => return Err(format!("unsupported: {line}")),
                }
            }
            _ => return Err(format!("unsupported: {line}")),
        }
        Ok(())
    }
}

#[async_trait]
impl Nft for FakeNft {
    async fn apply(&self, script: &str) -> Result<(), NetError> {
        lock(&self.scripts).push(script.to_string());
        let mut st = lock(&self.state);
        let mut next = st.clone();
        for line in script.lines().filter(|l| !l.trim().is_empty()) {
            Self::exec(&mut next, line).map_err(NetError::Nft)?;
        }
        *st = next;
        Ok(())
    }

    /// Only the table's sets and maps (what this crate reads from a table).
    async fn list_table(&self, family: &str, table: &str) -> Result<Option<String>, NetError> {
        let st = lock(&self.state);
        if !st.tables.contains(&(family.to_string(), table.to_string())) {
            return Ok(None);
        }
        let mut items = vec![serde_json::json!({"metainfo": {"version": "fake"}})];
        for ((f, t, name), elems) in &st.sets {
            if f != family || t != table {
                continue;
            }
            // Keys as nft prints them: a string, or a concatenation.
            let elem: Vec<serde_json::Value> = elems
                .keys()
                .map(|k| {
                    let parts: Vec<serde_json::Value> = k
                        .split(" . ")
                        .map(|p| serde_json::Value::String(p.trim_matches('"').to_string()))
                        .collect();
                    if parts.len() == 1 {
                        parts[0].clone()
                    } else {
                        serde_json::json!({ "concat": parts })
                    }
                })
                .collect();
            items.push(
                serde_json::json!({"set": {"family": f, "table": t, "name": name, "elem": elem}}),
            );
        }
        Ok(Some(serde_json::json!({ "nftables": items }).to_string()))
    }

    async fn list_chain(
        &self,
        family: &str,
        table: &str,
        chain: &str,
    ) -> Result<Option<String>, NetError> {
        let st = lock(&self.state);
        let Some(rules) = st.chains.get(&(family.into(), table.into(), chain.into())) else {
            return Ok(None);
        };
        let mut items = vec![serde_json::json!({"metainfo": {"version": "fake"}})];
        for (h, _, c) in rules {
            let mut r = serde_json::json!({"family": family, "table": table, "chain": chain, "handle": h, "expr": []});
            if let Some(c) = c {
                r["comment"] = serde_json::Value::String(c.clone());
            }
            items.push(serde_json::json!({ "rule": r }));
        }
        Ok(Some(serde_json::json!({ "nftables": items }).to_string()))
    }
}

/// Records the public side's kernel operations.
#[derive(Clone, Default)]
pub struct FakePublic {
    calls: std::sync::Arc<Mutex<Vec<String>>>,
}

impl FakePublic {
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

#[async_trait]
impl crate::public::PublicRouting for FakePublic {
    async fn prepare(
        &self,
        iface: &str,
        bridge: &str,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        lock(&self.calls).push(format!("prepare {iface} {bridge} {subnet} {gateway}"));
        Ok(())
    }

    async fn route(&self, iface: &str, ip: Ipv4Addr, via: Ipv4Addr) -> Result<(), NetError> {
        lock(&self.calls).push(format!("route {iface} {ip} {via}"));
        Ok(())
    }

    async fn unroute(&self, iface: &str, ip: Ipv4Addr) -> Result<(), NetError> {
        lock(&self.calls).push(format!("unroute {iface} {ip}"));
        Ok(())
    }
}
