//! What an account holds on the datacenter's disks, against its storage
//! limit (`atoll account limit --storage`): its images (each blob once), its
//! volumes (their sizes) and its containers (the package's disk for the
//! writable layer, plus the bound of its logs). Sizes are what is granted,
//! not what is used today, so a limit holds whatever the containers write:
//! servers enforce a writable layer's and a volume's size where their disk
//! can (btrfs quota groups).

use std::collections::HashSet;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::error::Result;
use crate::model::{ContainerRecord, OPERATOR, VolumeRecord};

/// A tenant's volume without `--opt size`: Triton's default for volumes.
pub const DEFAULT_VOLUME_SIZE: u64 = 10 << 30;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StorageUse {
    pub images: u64,
    pub volumes: u64,
    pub containers: u64,
    /// Blobs of build cache entries no image of the account holds.
    pub build_cache: u64,
}

impl StorageUse {
    pub fn total(&self) -> u64 {
        self.images + self.volumes + self.containers + self.build_cache
    }
}

/// What a container holds: its writable layer's limit and its logs' bound.
pub fn container_storage(c: &ContainerRecord) -> u64 {
    c.reservation.disk + log_bound(c.spec.log_max_size, c.spec.log_max_files)
}

/// Most bytes a container's logs keep (0: unbounded).
pub fn log_bound(max_size: u64, max_files: u32) -> u64 {
    max_size.saturating_mul(u64::from(max_files.max(1)))
}

/// The size a new volume gets: the one asked for, else the default for a
/// tenant; the operator's volumes are unbounded unless asked.
pub fn volume_size(account: &str, asked: Option<u64>) -> u64 {
    match asked {
        Some(n) => n,
        None if account == OPERATOR => 0,
        None => DEFAULT_VOLUME_SIZE,
    }
}

fn volumes_storage(vols: &[VolumeRecord]) -> u64 {
    vols.iter().map(|v| v.size_bytes).sum()
}

impl Cluster {
    /// What `account` holds now.
    pub async fn storage_use(&self, account: &str) -> Result<StorageUse> {
        let images = self.store.list_images(account).await?;
        let mut seen = HashSet::new();
        let mut image_bytes = 0;
        for img in &images {
            for l in &img.layers {
                if seen.insert(l.blob.as_str()) {
                    image_bytes += l.size.max(0) as u64;
                }
            }
            if seen.insert(img.id.as_str()) {
                image_bytes += images::Digest::parse(&img.id)
                    .ok()
                    .and_then(|d| self.blobs.size(&d).ok())
                    .unwrap_or(0);
            }
        }
        let mut build_cache = 0;
        let entries = self.store.list_build_cache(account).await?;
        for e in &entries {
            for l in &e.layers {
                if seen.insert(l.blob.as_str()) {
                    build_cache += l.size.max(0) as u64;
                }
            }
        }
        let volumes = volumes_storage(&self.store.list_volumes(account).await?);
        let containers = self
            .store
            .list_containers(account)
            .await?
            .iter()
            .map(container_storage)
            .sum();
        Ok(StorageUse {
            images: image_bytes,
            volumes,
            containers,
            build_cache,
        })
    }

    /// The blobs `account`'s images hold (their configs and layers).
    pub(crate) async fn owned_blobs(&self, account: &str) -> Result<HashSet<images::Digest>> {
        Ok(self
            .store
            .list_images(account)
            .await?
            .iter()
            .flat_map(|i| {
                std::iter::once(i.id.as_str()).chain(i.layers.iter().map(|l| l.blob.as_str()))
            })
            .filter_map(|d| images::Digest::parse(d).ok())
            .collect())
    }

    /// `account`'s storage limit, if it has one (one record read).
    pub(crate) async fn storage_limit(&self, account: &str) -> Result<Option<u64>> {
        if account == OPERATOR {
            return Ok(None);
        }
        Ok(self
            .store
            .get_account(account)
            .await?
            .and_then(|a| a.limits.storage_bytes))
    }

    /// How many more bytes `account` may hold (None: no storage limit).
    pub(crate) async fn storage_left(&self, account: &str) -> Result<Option<u64>> {
        let Some(limit) = self.storage_limit(account).await? else {
            return Ok(None);
        };
        Ok(Some(
            limit.saturating_sub(self.storage_use(account).await?.total()),
        ))
    }
}
