//! Client side of the agent's exec endpoints.

use http::Method;

use crate::client::{AgentClient, ClientError, empty, json_body};
use crate::types::{ExecSpec, ExecState, ResizeRequest};

impl AgentClient {
    /// Prepares exec `eid` in running container `id`.
    pub async fn exec_create(
        &self,
        id: &str,
        eid: &str,
        spec: &ExecSpec,
    ) -> Result<(), ClientError> {
        self.call_empty(
            Method::PUT,
            &format!("/v1/containers/{id}/execs/{eid}"),
            json_body(spec),
        )
        .await
    }

    /// Starts it attached: the upgraded stream carries its output (Docker frames
    /// unless tty) and takes its stdin. `query`: stdin/stdout/stderr flags.
    pub async fn exec_start_attached(
        &self,
        id: &str,
        eid: &str,
        query: &str,
    ) -> Result<hyper::upgrade::Upgraded, ClientError> {
        self.upgrade(&format!("/v1/containers/{id}/execs/{eid}/start?{query}"))
            .await
    }

    /// Starts it detached; errors if the process could not start.
    pub async fn exec_start_detached(&self, id: &str, eid: &str) -> Result<ExecState, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/containers/{id}/execs/{eid}/start"),
            empty(),
        )
        .await
    }

    /// Resolves when the exec has ended.
    pub async fn exec_wait(&self, id: &str, eid: &str) -> Result<ExecState, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/containers/{id}/execs/{eid}/wait"),
            empty(),
        )
        .await
    }

    pub async fn exec_state(&self, id: &str, eid: &str) -> Result<ExecState, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/containers/{id}/execs/{eid}"),
            empty(),
        )
        .await
    }

    pub async fn exec_resize(
        &self,
        id: &str,
        eid: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), ClientError> {
        self.call_empty(
            Method::POST,
            &format!("/v1/containers/{id}/execs/{eid}/resize"),
            json_body(&ResizeRequest { rows, cols }),
        )
        .await
    }
}
