//! The agent's side of `docker cp`, `export` and `diff`: access to a container's
//! root filesystem whether it runs or not. A stopped container's overlay is
//! mounted for the operation and unmounted after, under the container's
//! operation lock, so a concurrent start waits.

use std::path::PathBuf;
use std::sync::Arc;

use agent_client::{ContainerSpec, RunState};
use tokio::sync::OwnedMutexGuard;

use crate::archive::{Root, View};
use crate::error::AgentError;
use crate::manager::Agent;
use crate::rootfs::Mounter;

/// A container's mounted rootfs, held for one operation.
pub struct RootfsLease {
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub read_only: bool,
    /// The container's user-namespace mapping (file owners are shifted).
    pub ids: Option<agent_client::IdMap>,
    /// Its volumes and binds, sources resolved to the server's directories
    /// (empty unless asked for).
    pub mounts: Vec<agent_client::MountSpec>,
    unmount: Option<crate::rootfs::RealMounter>,
    _op: OwnedMutexGuard<()>,
}

impl Drop for RootfsLease {
    fn drop(&mut self) {
        if let Some(m) = &self.unmount
            && let Err(e) = m.unmount(&self.rootfs)
        {
            tracing::warn!(
                "unmounting {} after a file operation: {e}",
                self.rootfs.display()
            );
        }
    }
}

impl Agent {
    /// Registers a container that was created but never run here (for file
    /// operations before its first start). Its layers must be present.
    pub async fn prepare(&self, spec: ContainerSpec) -> Result<(), AgentError> {
        let ctr = self.ctr_or_insert(&spec);
        let _op = ctr.op.lock().await;
        if ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state == RunState::Running {
            return Ok(());
        }
        *ctr.spec.lock().unwrap_or_else(|p| p.into_inner()) = spec.clone();
        let paths = self.paths(&spec.id);
        std::fs::create_dir_all(&paths.root)?;
        crate::userns::make_private(&paths.root, spec.userns.as_ref())?;
        std::fs::write(
            paths.root.join("spec.json"),
            serde_json::to_vec(&spec).map_err(|e| AgentError::Internal(e.to_string()))?,
        )?;
        Ok(())
    }

    /// The container's rootfs, mounted for as long as the lease lives; with
    /// `mounts`, its volumes too (made now if it has never run, as Docker
    /// makes them at create).
    pub async fn lease_rootfs(
        self: &Arc<Self>,
        id: &str,
        mounts: bool,
    ) -> Result<RootfsLease, AgentError> {
        let ctr = self
            .ctr(id)
            .ok_or_else(|| AgentError::NotFound(format!("no such container: {id}")))?;
        let op = ctr.op.clone().lock_owned().await;
        // A finished run may still be releasing its mount.
        drop(ctr.cleanup.lock().await);
        let spec = ctr.spec.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let paths = self.paths(id);
        let lowers = self.lowers(&spec)?;
        let running =
            ctr.status.lock().unwrap_or_else(|p| p.into_inner()).state == RunState::Running;
        let mut unmount = None;
        if !self.mounter.is_mounted(&paths.rootfs) {
            if running {
                return Err(AgentError::Internal(
                    "the running container has no rootfs".into(),
                ));
            }
            self.prepare_rw(&paths, spec.resources.disk)?;
            self.mounter
                .mount_overlay(
                    &lowers,
                    &paths.upper,
                    &paths.work,
                    &paths.rootfs,
                    spec.userns.as_ref(),
                )
                .map_err(|e| AgentError::Internal(e.to_string()))?;
            unmount = Some(crate::rootfs::RealMounter);
        }
        let mut lease = RootfsLease {
            rootfs: paths.rootfs,
            upper: paths.upper,
            lowers,
            read_only: spec.read_only,
            ids: spec.userns,
            mounts: Vec::new(),
            unmount,
            _op: op,
        };
        if mounts && !spec.mounts.is_empty() {
            lease.mounts = crate::volumes::prepare_volumes(
                &spec,
                &self.volumes_dir(),
                &lease.rootfs,
                &*self.volume_quota,
            )?
            .mounts;
        }
        Ok(lease)
    }
}

impl RootfsLease {
    /// The container's files as its processes see them (`docker cp`).
    pub fn view(&self) -> std::io::Result<View> {
        let mut view = View::new(Root::open(&self.rootfs, self.ids)?, self.read_only);
        for m in &self.mounts {
            view.mount(&m.destination, std::path::Path::new(&m.source), m.read_only)?;
        }
        Ok(view)
    }
}
