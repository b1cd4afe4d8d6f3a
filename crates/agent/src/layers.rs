//! The server's layer cache: each layer unpacked once, as an overlayfs lower dir
//! named by its diff_id. Concurrent puts of one layer are serialised.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use images::Digest;
use tokio::sync::Mutex;

use crate::error::AgentError;

pub struct LayerCache {
    dir: PathBuf,
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl LayerCache {
    pub fn open(dir: &Path) -> Result<LayerCache, AgentError> {
        std::fs::create_dir_all(dir)?;
        // Unpacked layers keep their setuid bits and device nodes with host
        // ids: nobody but root may reach them (overlayfs reads them with the
        // agent's credentials).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(LayerCache {
            dir: dir.to_path_buf(),
            locks: StdMutex::new(HashMap::new()),
        })
    }

    /// The unpacked directory of a layer (whether or not it exists yet).
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    pub fn has(&self, diff_id: &Digest) -> bool {
        self.path(diff_id).is_dir()
    }

    /// Unpacks a layer whose diff_id is known only at its end (a container's
    /// changes, as they are written out) and keeps it under that diff_id.
    pub fn adopt<R: Read>(&self, blob: R) -> Result<Digest, AgentError> {
        let staging = self
            .dir
            .join(format!(".commit-{}", std::process::id()))
            .with_extension(format!("{:x}", rand_suffix()));
        let diff_id = images::layer::unpack_layer(blob, &staging, None)?;
        let dest = self.path(&diff_id);
        if std::fs::rename(&staging, &dest).is_err() {
            // Already there (the same content committed before): keep that.
            std::fs::remove_dir_all(&staging)?;
        }
        Ok(diff_id)
    }

    /// Unpacks `blob` (compressed or not) as layer `diff_id`, verifying the digest.
    /// Idempotent: a layer already present is not unpacked again.
    pub async fn put<R: Read + Send + 'static>(
        &self,
        diff_id: Digest,
        blob: R,
    ) -> Result<(), AgentError> {
        let lock = {
            let mut l = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            l.entry(diff_id.to_string()).or_default().clone()
        };
        let _g = lock.lock().await;
        let dest = self.path(&diff_id);
        if dest.is_dir() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            images::layer::unpack_layer(blob, &dest, Some(&diff_id)).map(|_| ())
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))??;
        Ok(())
    }
}

/// A name part no other staging directory of this process has.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (NEXT.fetch_add(1, Ordering::Relaxed) << 32) | nanos
}
