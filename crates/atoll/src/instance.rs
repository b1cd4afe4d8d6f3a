//! An instance is one data dir. Every host-wide name it creates (bridge, nft table,
//! cgroups) derives from a short hash of the data dir's path, so several instances
//! run side by side on one machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub struct Instance {
    pub data_dir: PathBuf,
    /// 6 hex chars.
    pub id: String,
}

impl Instance {
    pub fn open(data_dir: &Path) -> Result<Instance> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", data_dir.display()))?;
        // Tenants' container roots pass through it (see agent::userns).
        agent::userns::allow_search(&data_dir)
            .with_context(|| format!("allowing search in {}", data_dir.display()))?;
        let hash = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
        let id = hex::encode(&hash[..3]);
        Ok(Instance { data_dir, id })
    }
    pub fn head_dir(&self) -> PathBuf {
        self.data_dir.join("head")
    }
    /// The head's operator API (root only).
    pub fn operator_socket(&self) -> PathBuf {
        self.head_dir().join("operator.sock")
    }
    pub fn agent_dir(&self) -> PathBuf {
        self.data_dir.join("agent")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.agent_dir().join("agent.sock")
    }
}
