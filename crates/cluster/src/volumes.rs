//! Volumes: named or anonymous, per account, each on one server (where its data
//! directory is). Containers reference them by id in their spec's mounts; a
//! volume any container references is in use and cannot be removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use agent_client::{MountKind, MountSpec};
use chrono::Utc;

use crate::cluster::Cluster;
use crate::containers::upstream;
use crate::create::{MountRequest, MountSource, Planned, validate_volume_name};
use crate::error::{Error, Result, StoreError};
use crate::model::{ContainerRecord, OPERATOR, VolumeRecord};
use crate::names::new_id;
use crate::storage::volume_size;

fn no_such_volume(name: &str) -> Error {
    Error::NotFound(format!("get {name}: no such volume"))
}

impl Cluster {
    /// `docker volume create`: idempotent for an existing name, as in Docker.
    pub async fn create_volume(
        &self,
        account: &str,
        name: Option<&str>,
        driver: &str,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
    ) -> Result<VolumeRecord> {
        let exists = match name.filter(|n| !n.is_empty()) {
            Some(n) => self.store.get_volume(account, n).await?.is_some(),
            None => false,
        };
        let storage = if exists {
            0
        } else {
            volume_size(account, volume_options(&options)?)
        };
        let _limits = self
            .check_account_limits(
                account,
                crate::accounts::Needs {
                    storage,
                    what: "volume",
                    ..Default::default()
                },
            )
            .await?;
        self.create_volume_on(account, name, driver, labels, options, None)
            .await
    }

    /// The storage of the volumes a new container makes: its anonymous ones
    /// and the named ones that do not exist yet.
    pub(crate) async fn new_volumes_storage(
        &self,
        account: &str,
        planned: &Planned,
    ) -> Result<u64> {
        if account == OPERATOR || planned.mounts.is_empty() {
            return Ok(0); // unbounded volumes; no lookups on the common path
        }
        let mut bytes = 0;
        for m in &planned.mounts {
            let new = match &m.source {
                MountSource::Anonymous => true,
                MountSource::Named(name) => self.store.get_volume(account, name).await?.is_none(),
                MountSource::Host { .. } => false,
            };
            if new {
                bytes += volume_size(account, None);
            }
        }
        Ok(bytes)
    }

    /// `create_volume` on `node` (a container's server), or on a server chosen
    /// by placement.
    pub(crate) async fn create_volume_on(
        &self,
        account: &str,
        name: Option<&str>,
        driver: &str,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
        node: Option<&str>,
    ) -> Result<VolumeRecord> {
        if !(driver.is_empty() || driver == "local") {
            return Err(Error::NotFound(format!(
                "error looking up volume plugin {driver}: plugin \"{driver}\" not found"
            )));
        }
        let size_bytes = volume_size(account, volume_options(&options)?);
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                validate_volume_name(n)?;
                n.to_string()
            }
            None => new_id(),
        };
        if let Some(v) = self.store.get_volume(account, &name).await? {
            return Ok(v);
        }
        let node = match node {
            Some(n) => n.to_string(),
            None => self.place_volume(account).await?.id,
        };
        let mut v = new_volume(account, &name, &node, labels, false);
        v.size_bytes = size_bytes;
        v.options = options;
        match self.store.insert_volume(&v).await {
            Ok(()) => {
                self.emit_volume(&v, "create");
                Ok(v)
            }
            // Created meanwhile by another request: that one is it.
            Err(StoreError::Conflict(_)) => self
                .store
                .get_volume(account, &name)
                .await?
                .ok_or_else(|| no_such_volume(&name)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_volume(&self, account: &str, name: &str) -> Result<VolumeRecord> {
        self.store
            .get_volume(account, name)
            .await?
            .ok_or_else(|| no_such_volume(name))
    }

    pub async fn list_volumes(&self, account: &str) -> Result<Vec<VolumeRecord>> {
        Ok(self.store.list_volumes(account).await?)
    }

    /// Ids of the account's containers that mount the volume.
    pub async fn volume_users(&self, account: &str, v: &VolumeRecord) -> Result<Vec<String>> {
        Ok(self
            .store
            .list_containers(account)
            .await?
            .into_iter()
            .filter(|c| uses_volume(c, &v.id))
            .map(|c| c.id)
            .collect())
    }

    /// `docker volume rm`: refused (409) while any container uses it.
    pub async fn remove_volume(&self, account: &str, name: &str) -> Result<()> {
        let v = self.get_volume(account, name).await?;
        let users = self.volume_users(account, &v).await?;
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "remove {name}: volume is in use - [{}]",
                users.join(", ")
            )));
        }
        self.agent(&v.node)?
            .remove_volume(&v.id)
            .await
            .map_err(upstream)?;
        self.store.delete_volume(account, name).await?;
        self.emit_volume(&v, "destroy");
        Ok(())
    }

    pub(crate) fn emit_volume(&self, v: &VolumeRecord, action: &str) {
        let attrs = BTreeMap::from([("driver".to_string(), v.driver.clone())]);
        self.emit(&v.account, "volume", action, &v.name, attrs);
    }

    /// Removes unused volumes (only anonymous ones unless `all`) that `keep`
    /// does not protect; their names.
    pub async fn prune_volumes(
        &self,
        account: &str,
        all: bool,
        keep: impl Fn(&VolumeRecord) -> bool,
    ) -> Result<(Vec<String>, u64)> {
        let mut removed = Vec::new();
        let mut reclaimed = 0;
        let containers = self.store.list_containers(account).await?;
        for v in self.store.list_volumes(account).await? {
            if (!all && !v.anonymous)
                || keep(&v)
                || containers.iter().any(|c| uses_volume(c, &v.id))
            {
                continue;
            }
            let size = self.volume_size(&v).await.unwrap_or(0);
            match self.remove_volume(account, &v.name).await {
                Ok(()) => {
                    removed.push(v.name);
                    reclaimed += size;
                }
                Err(Error::Conflict(_) | Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((removed, reclaimed))
    }

    /// Bytes a volume holds on its server; None when the server cannot say
    /// within [`Cluster::SIZE_TIMEOUT`].
    pub async fn volume_size(&self, v: &VolumeRecord) -> Option<u64> {
        let agent = self.agent(&v.node).ok()?;
        tokio::time::timeout(Self::SIZE_TIMEOUT, agent.volume_size(&v.id))
            .await
            .ok()?
            .ok()
    }

    /// The account's volumes with their sizes (-1 where the server cannot
    /// say) and how many containers use each (`docker system df`).
    pub async fn volume_usage(&self, account: &str) -> Result<Vec<(VolumeRecord, i64, i64)>> {
        let containers = self.store.list_containers(account).await?;
        let volumes = self.store.list_volumes(account).await?;
        // A few servers asked at once: a datacenter's volumes are many.
        let mut sizes = Vec::with_capacity(volumes.len());
        for chunk in volumes.chunks(8) {
            let asked = chunk.iter().map(|v| self.volume_size(v));
            sizes.extend(
                futures::future::join_all(asked)
                    .await
                    .into_iter()
                    .map(|s| s.map_or(-1, |s| s as i64)),
            );
        }
        Ok(volumes
            .into_iter()
            .zip(sizes)
            .map(|(v, size)| {
                let users = containers.iter().filter(|c| uses_volume(c, &v.id)).count();
                (v, size, users as i64)
            })
            .collect())
    }

    /// The container's mounts with volume names resolved to ids (named volumes
    /// are created on first use, as Docker does) and `--volumes-from` expanded;
    /// plus the anonymous volumes to record once the container exists.
    pub(crate) async fn resolve_mounts(
        &self,
        account: &str,
        node: &str,
        planned: &Planned,
    ) -> Result<(Vec<MountSpec>, Vec<VolumeRecord>)> {
        let mut mounts: Vec<MountSpec> = Vec::new();
        let mut anonymous = Vec::new();
        for (from, ro) in &planned.volumes_from {
            let c = self.find_container(account, from).await?;
            if c.node != node {
                return Err(Error::Conflict(format!(
                    "--volumes-from {from}: the container is on another server"
                )));
            }
            for m in &c.spec.mounts {
                if mounts.iter().any(|x| x.destination == m.destination) {
                    continue;
                }
                mounts.push(MountSpec {
                    read_only: ro.unwrap_or(m.read_only),
                    ..m.clone()
                });
            }
        }
        for MountRequest {
            source,
            destination,
            read_only,
        } in &planned.mounts
        {
            // Explicit mounts win over --volumes-from ones at the same path.
            mounts.retain(|m| &m.destination != destination);
            let mut fresh = None;
            let (kind, source, size_bytes) = match source {
                MountSource::Host { path, create } => {
                    if account != OPERATOR {
                        return Err(Error::Forbidden(
                            "host bind mounts are not allowed for this account".into(),
                        ));
                    }
                    if *create {
                        // Made on the server when missing, as Docker's `-v`.
                        fresh = Some(agent_client::FreshVolume {
                            uid: 0,
                            gid: 0,
                            mode: 0o755,
                        });
                    }
                    (MountKind::Bind, path.clone(), 0)
                }
                MountSource::Named(name) => {
                    let v = self
                        .create_volume_on(
                            account,
                            Some(name),
                            "local",
                            BTreeMap::new(),
                            BTreeMap::new(),
                            Some(node),
                        )
                        .await?;
                    if v.node != node {
                        return Err(Error::Conflict(format!(
                            "volume {name} is on another server"
                        )));
                    }
                    (MountKind::Volume, v.id, v.size_bytes)
                }
                MountSource::Anonymous => {
                    let mut v = new_volume(account, &new_id(), node, BTreeMap::new(), true);
                    v.size_bytes = volume_size(account, None);
                    let (id, size) = (v.id.clone(), v.size_bytes);
                    anonymous.push(v);
                    (MountKind::Volume, id, size)
                }
            };
            mounts.push(MountSpec {
                kind,
                source,
                destination: destination.clone(),
                read_only: *read_only,
                size_bytes,
                fresh,
            });
        }
        Ok((mounts, anonymous))
    }

    /// After `docker rm -v` (or an auto-removed container): its anonymous
    /// volumes that no other container uses.
    pub async fn remove_anonymous_volumes(self: &Arc<Self>, c: &ContainerRecord) {
        let Ok(vols) = self.store.list_volumes(&c.account).await else {
            return;
        };
        for v in vols.iter().filter(|v| v.anonymous && uses_volume(c, &v.id)) {
            if let Err(e) = self.remove_volume(&c.account, &v.name).await {
                tracing::debug!("keeping volume {}: {e}", v.name);
            }
        }
    }
}

/// The size `--opt size=…` asks for (the only option of the local driver
/// here).
fn volume_options(options: &BTreeMap<String, String>) -> Result<Option<u64>> {
    let mut size = None;
    for (k, v) in options {
        match k.as_str() {
            "size" => {
                size = Some(
                    crate::create::parse_size(v)
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "invalid volume size {v:?}: a size such as 512M or 10G"
                            ))
                        })?,
                );
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "volume option {other:?} is not supported: only size"
                )));
            }
        }
    }
    Ok(size)
}

fn uses_volume(c: &ContainerRecord, id: &str) -> bool {
    c.spec
        .mounts
        .iter()
        .any(|m| m.kind == MountKind::Volume && m.source == id)
}

fn new_volume(
    account: &str,
    name: &str,
    node: &str,
    labels: BTreeMap<String, String>,
    anonymous: bool,
) -> VolumeRecord {
    VolumeRecord {
        account: account.to_string(),
        name: name.to_string(),
        id: new_id(),
        node: node.to_string(),
        driver: "local".into(),
        labels,
        options: BTreeMap::new(),
        created: Utc::now(),
        anonymous,
        size_bytes: 0,
    }
}
