//! `docker cp`, `export`, `diff`: the container's files on its server, running
//! or not (a container that never ran is registered there first, its layers
//! pushed as for a start).

use agent_client::AgentClient;
use bytes::Bytes;
use futures::Stream;
use hyper::body::Incoming;

use crate::cluster::Cluster;
use crate::containers::upstream;
use crate::error::{Error, Result};
use crate::model::{ContainerRecord, Status};

impl Cluster {
    pub(crate) async fn files_target(
        &self,
        account: &str,
        key: &str,
    ) -> Result<(ContainerRecord, AgentClient)> {
        let c = self.find_container(account, key).await?;
        if matches!(c.state.status, Status::Removing | Status::Dead) {
            return Err(Error::Conflict(format!(
                "container {} is being removed",
                c.id
            )));
        }
        let agent = self.agent(&c.node)?;
        if !matches!(c.state.status, Status::Running | Status::Paused) {
            self.ensure_layers(&c).await?;
            agent.prepare(&c.spec).await.map_err(upstream)?;
        }
        Ok((c, agent))
    }

    /// Docker's answer for a path that is not there.
    fn no_such_path(e: Error, path: &str, c: &ContainerRecord) -> Error {
        match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "Could not find the file {path} in container {}",
                c.name
            )),
            e => e,
        }
    }

    /// The base64 stat header of `path`.
    pub async fn archive_stat(
        &self,
        account: &str,
        key: &str,
        path: &str,
        path_encoded: &str,
    ) -> Result<String> {
        let (c, agent) = self.files_target(account, key).await?;
        agent
            .archive_stat(&c.id, path_encoded)
            .await
            .map_err(|e| Self::no_such_path(upstream(e), path, &c))
    }

    pub async fn archive_get(
        &self,
        account: &str,
        key: &str,
        path: &str,
        path_encoded: &str,
    ) -> Result<(String, Incoming)> {
        let (c, agent) = self.files_target(account, key).await?;
        agent
            .archive_get(&c.id, path_encoded)
            .await
            .map_err(|e| Self::no_such_path(upstream(e), path, &c))
    }

    /// Extracts a tar into the container; `query` is the client's (path, flags).
    pub async fn archive_put<S>(
        &self,
        account: &str,
        key: &str,
        path: &str,
        query: &str,
        tar: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let (c, agent) = self.files_target(account, key).await?;
        agent
            .archive_put(&c.id, query, tar)
            .await
            .map_err(|e| Self::no_such_path(upstream(e), path, &c))
    }

    pub async fn export_container(&self, account: &str, key: &str) -> Result<Incoming> {
        let (c, agent) = self.files_target(account, key).await?;
        agent.export(&c.id).await.map_err(upstream)
    }

    pub async fn container_changes(&self, account: &str, key: &str) -> Result<serde_json::Value> {
        let (c, agent) = self.files_target(account, key).await?;
        agent.changes(&c.id).await.map_err(upstream)
    }

    /// How long measuring one container or volume may take: a tree of a
    /// million files must not hold a listing.
    pub const SIZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

    /// Docker's `SizeRw` (what the container's own layer holds, measured on
    /// its server) and `SizeRootFs` (that and its image's layers).
    pub async fn container_size(&self, account: &str, key: &str) -> Result<(u64, u64)> {
        let (c, agent) = self.files_target(account, key).await?;
        let rw = agent.size(&c.id).await.map_err(upstream)?;
        let image = match self.store.get_image(account, &c.image_id).await? {
            Some(i) => i.size.max(0) as u64,
            None => 0,
        };
        Ok((rw, rw + image))
    }
}
