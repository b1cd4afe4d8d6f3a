//! Servers and packages: placing a container (the `placement` crate decides,
//! this gathers its inputs from the store), and the operator's commands on
//! servers and packages.

use std::collections::BTreeMap;

use placement::affinity::Rule;
use placement::packages::PACKAGE_LABEL;
use placement::{
    Candidate, Package, PackageError, Placed, PlacementError, Request, Resources, Server,
    ServerState, Strategy,
};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::create::{MountSource, Planned};
use crate::error::{Error, Result, StoreError};
use crate::model::{ContainerRecord, NodeRecord, Reservation};

const MB: u64 = 1024 * 1024;
const STRATEGY_KEY: &str = "placement.strategy";
const GB: u64 = 1024 * MB;

/// Packages of a new datacenter (Triton ships "sample" packages too): every
/// package gets at least one whole CPU, more with more memory. The operator
/// replaces them with `atoll package …`.
pub fn sample_packages() -> Vec<Package> {
    [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
        .iter()
        .map(|&mb| Package {
            name: if mb >= 1024 {
                format!("sample-{}G", mb / 1024)
            } else {
                format!("sample-{mb}M")
            },
            memory_bytes: mb * MB,
            // One share per MB: 1 GB weighs what Docker's default (1024) does.
            cpu_shares: mb.max(2),
            cpu_cap: 100 * (mb / 1024).max(1) as u32,
            disk_bytes: (mb * 10 * MB).max(GB),
            pids: 4096,
            accounts: Vec::new(),
            default: mb == 512,
        })
        .collect()
}

/// A server as the operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub id: String,
    pub state: ServerState,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub memory_reserved: u64,
    pub disk_bytes: u64,
    pub disk_reserved: u64,
    pub containers: u64,
    pub address: String,
    pub last_seen: chrono::DateTime<chrono::Utc>,
}

/// Where one container runs (operator view).
#[derive(Debug, Clone, Serialize)]
pub struct PlacementView {
    pub id: String,
    pub account: String,
    pub name: String,
    pub server: String,
    pub package: String,
    pub status: String,
}

struct Mine<'a>(&'a ContainerRecord);

impl Candidate for Mine<'_> {
    fn id(&self) -> &str {
        &self.0.id
    }
    fn name(&self) -> &str {
        &self.0.name
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.0.labels.get(key).map(String::as_str)
    }
}

fn placement_error(e: PlacementError) -> Error {
    match e {
        PlacementError::NoServer => Error::Upstream(e.to_string()),
        PlacementError::NoMatch(_) => Error::InvalidArgument(e.to_string()),
        _ => Error::Conflict(e.to_string()),
    }
}

fn package_error(e: PackageError) -> Error {
    Error::InvalidArgument(e.to_string())
}

impl Cluster {
    /// Writes the sample packages into a store that has none.
    pub async fn seed_packages(&self) -> Result<()> {
        if self.store.list_packages().await?.is_empty() {
            for p in sample_packages() {
                self.store.put_package(&p).await?;
            }
        }
        Ok(())
    }

    fn server_state(&self, n: &NodeRecord) -> ServerState {
        if !self.agent_connected(&n.id) {
            ServerState::Down
        } else if n.draining {
            ServerState::Draining
        } else {
            ServerState::Up
        }
    }

    /// Every server with its reservations, in id order.
    async fn servers(&self) -> Result<Vec<(NodeRecord, Server)>> {
        Ok(self
            .servers_counted()
            .await?
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect())
    }

    /// Every server with its reservations and its number of containers.
    async fn servers_counted(&self) -> Result<Vec<(NodeRecord, Server, u64)>> {
        let nodes = self.store.list_nodes().await?;
        let alloc = self.store.node_allocations().await?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let a = alloc.iter().find(|a| a.node == n.id);
                let s = Server {
                    id: n.id.clone(),
                    state: self.server_state(&n),
                    capacity: Resources {
                        memory: n.info.memory_bytes,
                        // Unknown disk (an older agent): not a constraint.
                        disk: if n.info.disk_bytes == 0 {
                            u64::MAX
                        } else {
                            n.info.disk_bytes
                        },
                    },
                    allocated: Resources {
                        memory: a.map(|a| a.memory).unwrap_or(0),
                        disk: a.map(|a| a.disk).unwrap_or(0),
                    },
                };
                (n, s, a.map(|a| a.containers).unwrap_or(0))
            })
            .collect())
    }

    /// The server that `--volumes-from` and existing named volumes tie a new
    /// container to, if any.
    async fn pinned_node(&self, account: &str, planned: &Planned) -> Result<Option<String>> {
        let mut pins: Vec<(String, String)> = Vec::new();
        if let Some(s) = &planned.server {
            pins.push((s.clone(), "the build's server".into()));
        }
        for (from, _) in &planned.volumes_from {
            let c = self.find_container(account, from).await?;
            pins.push((c.node, format!("--volumes-from {from}")));
        }
        for m in &planned.mounts {
            if let MountSource::Named(name) = &m.source
                && let Some(v) = self.store.get_volume(account, name).await?
            {
                pins.push((v.node, format!("volume {name}")));
            }
        }
        if let Some((node, what)) = pins.first()
            && let Some((_, other)) = pins.iter().find(|(n, _)| n != node)
        {
            return Err(Error::Conflict(format!(
                "{what} and {other} are on different servers: one container cannot use both"
            )));
        }
        Ok(pins.into_iter().next().map(|(n, _)| n))
    }

    /// Sizes the container with its package (limits the user did not set come
    /// from it) and picks its server (one on the public network when `public`:
    /// the container gets a public address).
    pub(crate) async fn place_container(
        &self,
        account: &str,
        rules: &[Rule],
        planned: &mut Planned,
        public: bool,
    ) -> Result<(NodeRecord, String, Reservation)> {
        let packages = self.store.list_packages().await?;
        let memory =
            (planned.spec.resources.memory > 0).then_some(planned.spec.resources.memory as u64);
        let by_name = planned.labels.get(PACKAGE_LABEL).map(String::as_str);
        let pkg = placement::choose_package(&packages, account, by_name, memory)
            .map_err(package_error)?
            .clone();
        let r = &mut planned.spec.resources;
        if r.memory == 0 {
            r.memory = pkg.memory_bytes as i64;
        }
        if r.cpu_shares == 0 && pkg.cpu_shares > 0 {
            r.cpu_shares = pkg.cpu_shares as i64;
        }
        if r.nano_cpus == 0 && r.cpu_quota == 0 && pkg.cpu_cap > 0 {
            r.cpu_period = 100_000;
            r.cpu_quota = pkg.cpu_cap as i64 * 1000;
        }
        if r.pids_limit <= 0 && pkg.pids > 0 {
            r.pids_limit = pkg.pids as i64;
        }
        r.disk = pkg.disk_bytes;
        if account != crate::model::OPERATOR {
            crate::ceiling::check_resources(r, &pkg)?;
            crate::ceiling::check_ulimits(&planned.spec.ulimits, r, &pkg)?;
            crate::ceiling::bound_logs(&mut planned.spec, &pkg)?;
        }
        let reservation = Reservation {
            memory: pkg.memory_bytes,
            disk: pkg.disk_bytes,
        };

        let pinned = self.pinned_node(account, planned).await?;
        let mut servers = self.servers().await?;
        // A container with a public address runs where the public network is.
        if public {
            servers.retain(|(n, _)| n.info.public);
            if let Some(p) = &pinned
                && !servers.iter().any(|(n, _)| n.id == *p)
            {
                return Err(Error::Conflict(
                    "the server holding this container's volumes is not on the public network, so it cannot publish ports".into(),
                ));
            }
            if servers.is_empty() {
                return Err(Error::Conflict(
                    "no server is on the public network: ports cannot be published (the operator gives agents --public-interface)".into(),
                ));
            }
        }
        let mine_records = self.store.list_containers(account).await?;
        let wrapped: Vec<Mine<'_>> = mine_records.iter().map(Mine).collect();
        let index: BTreeMap<&str, usize> = servers
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.id.as_str(), i))
            .collect();
        let mine: Vec<Placed<'_, Mine<'_>>> = wrapped
            .iter()
            .filter_map(|m| {
                index.get(m.0.node.as_str()).map(|&i| Placed {
                    container: m,
                    server: i,
                })
            })
            .collect();
        let pinned = match pinned {
            Some(p) => Some(*index.get(p.as_str()).ok_or_else(|| {
                Error::Conflict("the server holding this container's volumes is gone".into())
            })?),
            None => None,
        };
        let plain: Vec<Server> = servers.iter().map(|(_, s)| s.clone()).collect();
        let req = Request {
            needs: Resources {
                memory: reservation.memory,
                disk: reservation.disk,
            },
            rules,
            pinned,
            strategy: self.placement_strategy().await?,
        };
        let i = placement::place(&plain, &mine, &req).map_err(placement_error)?;
        let node = servers.into_iter().nth(i).map(|(n, _)| n);
        let node = node.ok_or_else(|| Error::internal("placement", "index out of range"))?;
        Ok((node, pkg.name, reservation))
    }

    /// Moves `c` to the smallest package holding `memory` (`docker update -m`
    /// past its package), if its server can hold the larger reservation.
    pub(crate) async fn grow_package(&self, c: &mut ContainerRecord, memory: u64) -> Result<()> {
        let packages = self.store.list_packages().await?;
        let pkg = placement::choose_package(&packages, &c.account, None, Some(memory))
            .map_err(package_error)?;
        let servers = self.servers().await?;
        let Some((_, s)) = servers.iter().find(|(n, _)| n.id == c.node) else {
            return Err(Error::Conflict("the container's server is gone".into()));
        };
        let extra_mem = pkg.memory_bytes.saturating_sub(c.reservation.memory);
        let extra_disk = pkg.disk_bytes.saturating_sub(c.reservation.disk);
        if s.allocated.memory + extra_mem > s.capacity.memory
            || s.allocated.disk.saturating_add(extra_disk) > s.capacity.disk
        {
            return Err(Error::Conflict(format!(
                "the container's server has no capacity for package {} ({} memory)",
                pkg.name,
                placement::human(pkg.memory_bytes)
            )));
        }
        c.package = pkg.name.clone();
        c.reservation = Reservation {
            memory: pkg.memory_bytes,
            disk: pkg.disk_bytes.max(c.reservation.disk),
        };
        Ok(())
    }

    /// The server for a new volume nobody uses yet: spread by the account's volumes.
    pub(crate) async fn place_volume(&self, account: &str) -> Result<NodeRecord> {
        let servers = self.servers().await?;
        let vols = self.store.list_volumes(account).await?;
        let plain: Vec<Server> = servers.iter().map(|(_, s)| s.clone()).collect();
        // Volumes take no memory; count the account's volumes for spreading.
        let best = plain
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == ServerState::Up)
            .min_by_key(|(i, s)| {
                let n = vols.iter().filter(|v| v.node == s.id).count();
                (n, *i)
            })
            .map(|(i, _)| i)
            .ok_or_else(|| placement_error(PlacementError::NoServer))?;
        servers
            .into_iter()
            .nth(best)
            .map(|(n, _)| n)
            .ok_or_else(|| Error::internal("placement", "index out of range"))
    }

    // Operator commands.

    /// How new containers are placed: `spread` (the default) or `pack`.
    pub async fn placement_strategy(&self) -> Result<Strategy> {
        Ok(
            match self.store.get_setting(STRATEGY_KEY).await?.as_deref() {
                Some("pack") => Strategy::Pack,
                _ => Strategy::Spread,
            },
        )
    }

    pub async fn set_placement_strategy(&self, name: &str) -> Result<Strategy> {
        let s = match name {
            "spread" => Strategy::Spread,
            "pack" => Strategy::Pack,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown placement strategy {other:?}: spread or pack"
                )));
            }
        };
        self.store.put_setting(STRATEGY_KEY, name).await?;
        Ok(s)
    }

    pub async fn list_servers(&self) -> Result<Vec<ServerView>> {
        Ok(self
            .servers_counted()
            .await?
            .into_iter()
            .map(|(n, s, count)| ServerView {
                id: n.id.clone(),
                state: s.state,
                cpus: n.info.cpus,
                memory_bytes: n.info.memory_bytes,
                memory_reserved: s.allocated.memory,
                disk_bytes: n.info.disk_bytes,
                disk_reserved: s.allocated.disk,
                containers: count,
                address: n.address.clone(),
                last_seen: n.last_seen,
            })
            .collect())
    }

    /// Drains (`true`) or re-enables a server.
    pub async fn set_draining(&self, id: &str, draining: bool) -> Result<ServerView> {
        let mut n = self.node(id).await?;
        n.draining = draining;
        self.store.upsert_node(&n).await?;
        self.server_view(id).await
    }

    /// Forgets a server that is down and holds no containers.
    pub async fn forget_server(&self, id: &str) -> Result<()> {
        let n = self.node(id).await?;
        if self.agent_connected(&n.id) {
            return Err(Error::Conflict(format!(
                "server {id} is up: only a server that is down can be forgotten"
            )));
        }
        let held = self.store.containers_on_node(id).await?.len();
        if held > 0 {
            return Err(Error::Conflict(format!(
                "server {id} still holds {held} container(s): remove them first"
            )));
        }
        self.remove_agent(id);
        self.store.delete_node(id).await?;
        Ok(())
    }

    async fn node(&self, id: &str) -> Result<NodeRecord> {
        self.store
            .list_nodes()
            .await?
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::NotFound(format!("No such server: {id}")))
    }

    async fn server_view(&self, id: &str) -> Result<ServerView> {
        self.list_servers()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::NotFound(format!("No such server: {id}")))
    }

    /// Where every container runs, all accounts.
    pub async fn list_placements(&self) -> Result<Vec<PlacementView>> {
        let mut out = Vec::new();
        for n in self.store.list_nodes().await? {
            for c in self.store.containers_on_node(&n.id).await? {
                out.push(PlacementView {
                    id: c.id.clone(),
                    account: c.account.clone(),
                    name: c.name.clone(),
                    server: c.node.clone(),
                    package: c.package.clone(),
                    status: format!("{:?}", c.state.status).to_lowercase(),
                });
            }
        }
        Ok(out)
    }

    pub async fn list_packages(&self) -> Result<Vec<Package>> {
        Ok(self.store.list_packages().await?)
    }

    /// Creates or replaces a package.
    pub async fn put_package(&self, p: Package) -> Result<Package> {
        validate_package(&p)?;
        self.store.put_package(&p).await?;
        Ok(p)
    }

    pub async fn delete_package(&self, name: &str) -> Result<()> {
        match self.store.delete_package(name).await {
            Err(StoreError::NotFound) => Err(Error::NotFound(format!("No such package: {name}"))),
            r => Ok(r?),
        }
    }
}

fn validate_package(p: &Package) -> Result<()> {
    let bad = |m: &str| Err(Error::InvalidArgument(format!("package {}: {m}", p.name)));
    if p.name.is_empty()
        || !p
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(Error::InvalidArgument(format!(
            "invalid package name {:?}: letters, digits and . _ - only",
            p.name
        )));
    }
    if p.memory_bytes < 6 * MB {
        return bad("memory must be at least 6 MB");
    }
    if p.disk_bytes == 0 {
        return bad("disk must be more than 0");
    }
    if p.cpu_shares == 1 || p.cpu_shares > 262_144 {
        return bad("cpu shares must be 0 (default) or between 2 and 262144");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_packages_are_valid_with_one_default() {
        let p = sample_packages();
        for x in &p {
            validate_package(x).unwrap();
        }
        assert_eq!(p.iter().filter(|x| x.default).count(), 1);
        assert_eq!(p[0].name, "sample-64M");
        assert_eq!(p[4].name, "sample-1G");
        assert_eq!(p[4].cpu_cap, 100);
        assert_eq!(p[6].cpu_cap, 400);
    }

    #[test]
    fn bad_packages_are_refused() {
        let mut p = sample_packages().remove(0);
        p.name = "no spaces".into();
        assert!(validate_package(&p).is_err());
        let mut p = sample_packages().remove(0);
        p.memory_bytes = MB;
        assert!(
            validate_package(&p)
                .unwrap_err()
                .to_string()
                .contains("6 MB")
        );
    }
}
