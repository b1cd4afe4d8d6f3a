//! The head's client for one agent. One HTTP/1.1 connection per request over a unix
//! socket (local agent) or TLS over TCP (remote agents, mutual TLS with the cluster
//! CA): cheap, and it makes upgrades (attach) and long streams (logs, events)
//! independent. The same client serves an agent's calls to the head when it joins.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::ServerName;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::types::*;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The agent could not be reached at all.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The agent answered with an error status.
    #[error("{message}")]
    Status { status: u16, message: String },
    #[error("bad answer from server: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Where an agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl AgentAddr {
    /// `unix:///path` or `tcp://host:port`.
    pub fn parse(s: &str) -> Result<AgentAddr, ClientError> {
        if let Some(p) = s.strip_prefix("unix://") {
            Ok(AgentAddr::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp://") {
            Ok(AgentAddr::Tcp(a.to_string()))
        } else {
            Err(ClientError::Protocol(format!(
                "unsupported agent address {s}"
            )))
        }
    }
}

/// A byte stream the upgraded attach connection reads and writes.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

#[derive(Debug, Clone)]
pub struct AgentClient {
    addr: AgentAddr,
    /// For TCP: the TLS configuration and the name the server's certificate must carry.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

pub fn json_body<T: Serialize>(v: &T) -> Body {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}

impl AgentClient {
    pub fn new(addr: AgentAddr) -> Self {
        AgentClient { addr, tls: None }
    }

    /// TCP connections use TLS with `config`; the server must prove it is
    /// `server_name` (a DNS name in its certificate).
    pub fn with_tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<Self, ClientError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| ClientError::Protocol(format!("server name {server_name}: {e}")))?;
        self.tls = Some((config, name));
        Ok(self)
    }

    async fn connect(&self) -> Result<Box<dyn Duplex>, ClientError> {
        let unreachable = |e: std::io::Error| ClientError::Unreachable(e.to_string());
        match &self.addr {
            AgentAddr::Unix(p) => UnixStream::connect(p)
                .await
                .map(|s| Box::new(s) as Box<dyn Duplex>)
                .map_err(unreachable),
            AgentAddr::Tcp(a) => {
                let tcp = TcpStream::connect(a).await.map_err(unreachable)?;
                let _ = tcp.set_nodelay(true);
                match &self.tls {
                    None => Ok(Box::new(tcp)),
                    Some((cfg, name)) => tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map(|s| Box::new(s) as Box<dyn Duplex>)
                        .map_err(unreachable),
                }
            }
        }
    }

    /// Sends one request on a fresh connection; returns the response with the
    /// connection driven in the background (so streams and upgrades work).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("agent connection ended: {e}");
            }
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "agent")
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        if resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(resp);
        }
        Err(status_error(resp).await)
    }

    /// Sends a JSON request and decodes the JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub(crate) async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<(), ClientError> {
        let resp = self.send(method, path, body).await?;
        let _ = resp.into_body().collect().await;
        Ok(())
    }

    pub async fn info(&self) -> Result<AgentInfo, ClientError> {
        self.call(Method::GET, "/v1/info", empty()).await
    }

    pub async fn has_layer(&self, diff_id: &str) -> Result<bool, ClientError> {
        match self
            .send(Method::GET, &format!("/v1/layers/{diff_id}"), empty())
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Streams a layer blob (maybe compressed) to the agent, which unpacks it and
    /// checks its diff_id.
    pub async fn put_layer<S>(&self, diff_id: &str, blob: S) -> Result<(), ClientError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let body = BodyExt::boxed(StreamBody::new(blob.map(|r| r.map(Frame::data))));
        self.call_empty(Method::PUT, &format!("/v1/layers/{diff_id}"), body)
            .await
    }

    pub async fn start(&self, spec: &ContainerSpec) -> Result<ContainerStatus, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/containers/{}/start", spec.id),
            json_body(spec),
        )
        .await
    }

    pub async fn stop(&self, id: &str, req: &StopRequest) -> Result<ContainerStatus, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/containers/{id}/stop"),
            json_body(req),
        )
        .await
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), ClientError> {
        let req = KillRequest {
            signal: signal.to_string(),
        };
        self.call_empty(
            Method::POST,
            &format!("/v1/containers/{id}/kill"),
            json_body(&req),
        )
        .await
    }

    /// Freezes (`pause = true`) or thaws a running container.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<(), ClientError> {
        let verb = if pause { "pause" } else { "unpause" };
        self.call_empty(
            Method::POST,
            &format!("/v1/containers/{id}/{verb}"),
            empty(),
        )
        .await
    }

    /// New limits for a running container (applied to its cgroups) and for its
    /// later starts.
    pub async fn update(&self, id: &str, resources: &crate::Resources) -> Result<(), ClientError> {
        self.call_empty(
            Method::POST,
            &format!("/v1/containers/{id}/update"),
            json_body(resources),
        )
        .await
    }

    /// A network's overlay map (the agent keeps the newest version).
    pub async fn put_network_map(&self, map: &crate::NetworkMap) -> Result<(), ClientError> {
        self.call_empty(
            Method::PUT,
            &format!("/v1/networks/{}", map.vni),
            json_body(map),
        )
        .await
    }

    /// Adds a network to a running container (`docker network connect`).
    pub async fn connect_network(
        &self,
        id: &str,
        endpoint: &crate::Endpoint,
    ) -> Result<(), ClientError> {
        self.call_empty(
            Method::POST,
            &format!("/v1/containers/{id}/networks"),
            json_body(endpoint),
        )
        .await
    }

    /// Takes a network from a running container (`docker network disconnect`).
    pub async fn disconnect_network(
        &self,
        id: &str,
        endpoint: &crate::Endpoint,
    ) -> Result<(), ClientError> {
        self.call_empty(
            Method::DELETE,
            &format!("/v1/containers/{id}/networks/{}", endpoint.network),
            empty(),
        )
        .await
    }

    /// Deletes a volume's data on this server (idempotent).
    /// Bytes a volume holds on the server.
    pub async fn volume_size(&self, volume_id: &str) -> Result<u64, ClientError> {
        let v: serde_json::Value = self
            .call(
                Method::GET,
                &format!("/v1/volumes/{volume_id}/size"),
                empty(),
            )
            .await?;
        Ok(v["size"].as_u64().unwrap_or(0))
    }

    pub async fn remove_volume(&self, volume_id: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &format!("/v1/volumes/{volume_id}"), empty())
            .await
    }

    pub async fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.call_empty(
            Method::POST,
            &format!("/v1/containers/{id}/resize"),
            json_body(&ResizeRequest { rows, cols }),
        )
        .await
    }

    /// Kills if needed and removes everything of the container on the server.
    pub async fn remove(&self, id: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &format!("/v1/containers/{id}"), empty())
            .await
    }

    pub async fn list(&self) -> Result<Vec<ContainerStatus>, ClientError> {
        self.call(Method::GET, "/v1/containers", empty()).await
    }

    /// Docker-framed log stream; `query` is passed through (follow, tail, since, ...).
    pub async fn logs(&self, id: &str, query: &str) -> Result<Incoming, ClientError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v1/containers/{id}/logs?{query}"),
                empty(),
            )
            .await?;
        Ok(resp.into_body())
    }

    /// `docker top`: Docker's `{Titles, Processes}`. `ps_args` is URL-encoded.
    pub async fn top(
        &self,
        id: &str,
        ps_args_encoded: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/containers/{id}/top?ps_args={ps_args_encoded}"),
            empty(),
        )
        .await
    }

    /// Stats samples of a running container, one JSON object per line.
    pub async fn stats(
        &self,
        id: &str,
        stream: bool,
        one_shot: bool,
    ) -> Result<Incoming, ClientError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v1/containers/{id}/stats?stream={stream}&one-shot={one_shot}"),
                empty(),
            )
            .await?;
        Ok(resp.into_body())
    }

    /// Opens an attach stream: an upgraded connection carrying Docker frames (or raw
    /// bytes with a TTY) from the container, and stdin to it.
    pub async fn attach(
        &self,
        id: &str,
        query: &str,
    ) -> Result<hyper::upgrade::Upgraded, ClientError> {
        self.upgrade(&format!("/v1/containers/{id}/attach?{query}"))
            .await
    }

    /// POSTs to `path` asking for a connection upgrade; the upgraded stream.
    pub(crate) async fn upgrade(
        &self,
        path: &str,
    ) -> Result<hyper::upgrade::Upgraded, ClientError> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", "agent")
            .header("connection", "Upgrade")
            .header("upgrade", "tcp")
            .body(empty())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(status_error(resp).await);
        }
        hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The agent's stream of state changes, one JSON `ContainerStatus` per line,
    /// with an empty line as heartbeat every [`HEARTBEAT_INTERVAL`]. A stream
    /// silent for [`HEARTBEAT_TIMEOUT`] (a hung or partitioned server) ends with
    /// an error, and so does an agent that does not answer within it.
    pub async fn events(
        &self,
    ) -> Result<impl Stream<Item = Result<ContainerStatus, ClientError>> + Unpin + use<>, ClientError>
    {
        let resp = tokio::time::timeout(
            HEARTBEAT_TIMEOUT,
            self.send(Method::GET, "/v1/events", empty()),
        )
        .await
        .map_err(|_| ClientError::Unreachable("the agent did not answer".into()))??;
        let body = resp.into_body();
        let frames = body.into_data_stream();
        Ok(Box::pin(json_lines(frames)))
    }
}

/// How often an agent's event stream carries a heartbeat (an empty line).
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// Silence after which the head takes a server for down.
pub const HEARTBEAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6);

/// The agent's error answer as a `ClientError`.
async fn status_error(resp: http::Response<Incoming>) -> ClientError {
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<AgentErrorBody>(&bytes)
        .map(|b| b.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    ClientError::Status { status, message }
}

/// Splits a byte stream into JSON lines.
fn json_lines<S, E>(s: S) -> impl Stream<Item = Result<ContainerStatus, ClientError>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    futures::stream::unfold((s, Vec::<u8>::new()), |(mut s, mut buf)| async move {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.len() <= 1 {
                    continue;
                }
                let item = serde_json::from_slice::<ContainerStatus>(&line)
                    .map_err(|e| ClientError::Protocol(e.to_string()));
                return Some((item, (s, buf)));
            }
            let next = match tokio::time::timeout(HEARTBEAT_TIMEOUT, s.next()).await {
                Ok(n) => n,
                Err(_) => {
                    let e = ClientError::Unreachable(format!(
                        "no heartbeat for {} s",
                        HEARTBEAT_TIMEOUT.as_secs()
                    ));
                    return Some((Err(e), (s, buf)));
                }
            };
            match next {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Some((Err(ClientError::Unreachable(e.to_string())), (s, buf)));
                }
                None => return None,
            }
        }
    })
}
