//! Client side of the agent's file endpoints (`docker cp`, `export`, `diff`).

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::client::{AgentClient, ClientError, empty, json_body};
use crate::types::ContainerSpec;

/// The header carrying a path's stat (base64 JSON), as Docker names it.
pub const PATH_STAT_HEADER: &str = "x-docker-container-path-stat";

impl AgentClient {
    /// Registers a container that has not run on this server yet.
    pub async fn prepare(&self, spec: &ContainerSpec) -> Result<(), ClientError> {
        self.call_empty(
            Method::POST,
            &format!("/v1/containers/{}/prepare", spec.id),
            json_body(spec),
        )
        .await
    }

    /// The stat header of `path` (URL-encoded) in the container.
    pub async fn archive_stat(&self, id: &str, path_encoded: &str) -> Result<String, ClientError> {
        let resp = self
            .send(
                Method::HEAD,
                &format!("/v1/containers/{id}/archive?path={path_encoded}"),
                empty(),
            )
            .await?;
        Ok(stat_header(&resp))
    }

    /// A tar of `path`, with its stat header.
    pub async fn archive_get(
        &self,
        id: &str,
        path_encoded: &str,
    ) -> Result<(String, Incoming), ClientError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v1/containers/{id}/archive?path={path_encoded}"),
                empty(),
            )
            .await?;
        Ok((stat_header(&resp), resp.into_body()))
    }

    /// Extracts a tar stream into the container; `query` is Docker's.
    pub async fn archive_put<S>(&self, id: &str, query: &str, tar: S) -> Result<(), ClientError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let body = BodyExt::boxed(StreamBody::new(tar.map(|r| r.map(Frame::data))));
        self.call_empty(
            Method::PUT,
            &format!("/v1/containers/{id}/archive?{query}"),
            body,
        )
        .await
    }

    /// The whole filesystem as a tar stream.
    pub async fn export(&self, id: &str) -> Result<Incoming, ClientError> {
        Ok(self
            .send(Method::GET, &format!("/v1/containers/{id}/export"), empty())
            .await?
            .into_body())
    }

    /// The container's changes as an uncompressed image layer tar.
    pub async fn diff_layer(&self, id: &str) -> Result<Incoming, ClientError> {
        Ok(self
            .send(Method::GET, &format!("/v1/containers/{id}/layer"), empty())
            .await?
            .into_body())
    }

    /// [`diff_layer`](Self::diff_layer), the server keeping the layer too.
    pub async fn diff_layer_kept(&self, id: &str) -> Result<Incoming, ClientError> {
        Ok(self
            .send(
                Method::GET,
                &format!("/v1/containers/{id}/layer?keep=1"),
                empty(),
            )
            .await?
            .into_body())
    }

    /// Docker's `[{Path, Kind}]`.
    pub async fn changes(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/containers/{id}/changes"),
            empty(),
        )
        .await
    }

    /// The bytes a container's own layer holds (Docker's `SizeRw`).
    pub async fn size(&self, id: &str) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .call(Method::GET, &format!("/v1/containers/{id}/size"), empty())
            .await?;
        Ok(v["rw"].as_u64().unwrap_or(0))
    }
}

fn stat_header<B>(resp: &http::Response<B>) -> String {
    resp.headers()
        .get(PATH_STAT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
