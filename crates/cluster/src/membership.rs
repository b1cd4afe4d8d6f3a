//! How servers become members of the datacenter: one-time join tokens, joining,
//! and following every known server again after the head restarts. The
//! certificates themselves are the `pki` crate's and the API's business; this
//! only keeps the store's side (token hashes, server records).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::model::NodeRecord;

/// The longest a join token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Cluster {
    /// Records a join token by the hash of its secret; when it expires.
    pub async fn add_join_token(&self, secret_hash: &str, ttl: Duration) -> Result<DateTime<Utc>> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(Error::InvalidArgument(
                "a join token lives between 1 second and 7 days".into(),
            ));
        }
        let expires = Utc::now()
            + chrono::Duration::from_std(ttl).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.store
            .put_join_token(secret_hash, expires.timestamp())
            .await?;
        Ok(expires)
    }

    /// Admits server `id`, whose agent will listen at `address`, if the token
    /// (by its secret's hash) is valid; the token is used up either way once it
    /// matched. The caller has checked the agent's key and issues its certificate.
    pub async fn join_server(
        self: &Arc<Self>,
        secret_hash: &str,
        id: &str,
        address: &str,
    ) -> Result<()> {
        if !address.starts_with("tcp://") {
            return Err(Error::InvalidArgument(format!(
                "a server's address must be tcp://ADDR:PORT, got {address}"
            )));
        }
        let client = self.client_for(id, address)?;
        let known = self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .any(|n| n.id == id);
        if known {
            // Checked before the token is used, so a typo does not cost a token.
            return Err(Error::Conflict(format!(
                "a server named {id} is already a member: forget it first, or choose another name"
            )));
        }
        if !self
            .store
            .take_join_token(secret_hash, Utc::now().timestamp())
            .await?
        {
            return Err(Error::Unauthorized(
                "invalid join token: unknown, already used or expired".into(),
            ));
        }
        // Its resources are unknown until its agent answers: no placement before.
        self.store
            .upsert_node(&NodeRecord {
                id: id.to_string(),
                address: address.to_string(),
                info: Default::default(),
                last_seen: Utc::now(),
                draining: false,
            })
            .await?;
        tracing::info!("server {id} joined from {address}");
        self.follow(id, client);
        Ok(())
    }

    /// Follows every server the store knows (after the head starts): each shows
    /// down until its agent answers.
    pub async fn resume_servers(self: &Arc<Self>) -> Result<()> {
        for n in self.store.list_nodes().await? {
            match self.client_for(&n.id, &n.address) {
                Ok(client) => self.follow(&n.id, client),
                Err(e) => tracing::warn!("server {}: {e}", n.id),
            }
        }
        Ok(())
    }

    /// Records what a server's agent reports about itself.
    pub(crate) async fn refresh_node_info(
        &self,
        id: &str,
        info: agent_client::AgentInfo,
    ) -> Result<()> {
        let Some(mut n) = self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .find(|n| n.id == id)
        else {
            return Ok(()); // forgotten meanwhile
        };
        if n.info != info {
            n.info = info;
            n.last_seen = Utc::now();
            self.store.upsert_node(&n).await?;
        }
        Ok(())
    }
}
