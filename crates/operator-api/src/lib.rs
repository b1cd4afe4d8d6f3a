//! The operator API: servers (list, drain, enable, forget, join tokens),
//! packages (list, create or replace, delete), where each container runs, and
//! operator certificates. JSON in and out; errors are `{"message": …}` with the
//! same status mapping as the Docker API (`docker_api::ApiError`). The `atoll
//! server|package|container|placement` commands are its client.
//!
//! Served twice: on `<data>/head/operator.sock` (root only, so every caller is
//! the operator) and on the head's cluster port over TLS ([`serve_tls`]), where
//! a caller must show an operator certificate, except for the two routes of
//! joining agents (`GET /v1/ca`, `POST /v1/join`), which a join token guards.

mod accounts;
mod join;

pub use join::{CertificateResponse, TokenResponse};

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use cluster::Cluster;
use cluster::servers::{PlacementView, ServerView};
use docker_api::{ApiError, ApiResult};
use placement::Package;

/// The operator API and the join routes. `ca` signs agents' and operators' certificates.
pub fn router(cluster: Arc<Cluster>, ca: Arc<pki::Ca>) -> Router {
    let pki = Arc::new(join::Pki {
        cluster: cluster.clone(),
        ca,
    });
    operator_routes(cluster)
        .merge(join::routes(pki.clone()))
        .merge(accounts::routes(pki.clone()))
        .layer(axum::middleware::from_fn_with_state(pki, join::authorize))
}

fn operator_routes(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/v1/servers", get(list_servers))
        .route("/v1/servers/{id}", axum::routing::delete(forget_server))
        .route("/v1/servers/{id}/drain", post(drain))
        .route("/v1/servers/{id}/enable", post(enable))
        .route("/v1/packages", get(list_packages))
        .route(
            "/v1/packages/{name}",
            put(put_package).delete(delete_package),
        )
        .route("/v1/containers", get(list_containers))
        .route("/v1/placement", get(get_placement).put(put_placement))
        .route(
            "/v1/public-network",
            get(get_public_network)
                .put(put_public_network)
                .delete(delete_public_network),
        )
        .with_state(cluster)
}

/// Serves the operator API on a unix socket that only root may open.
pub async fn serve_unix(
    path: &Path,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = agent_client::serve::bind_unix(path)?;
    serve(listener, app, shutdown).await
}

/// Serves the head's cluster port: TLS with the head's certificate; client
/// certificates from the cluster CA are checked per route ([`router`]).
pub async fn serve_tls(
    tcp: tokio::net::TcpListener,
    head: &pki::Credentials,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = agent_client::serve::TlsListener::with_credentials(
        tcp,
        head,
        pki::ClientAuth::Optional,
        |_| true,
    )?;
    serve(listener, app, shutdown).await
}

async fn serve(
    listener: impl agent_client::serve::Accept,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    docker_api::serve_router(listener, app, |req| req, shutdown).await
}

async fn list_servers(State(c): State<Arc<Cluster>>) -> ApiResult<Json<Vec<ServerView>>> {
    Ok(Json(c.list_servers().await?))
}

async fn drain(
    State(c): State<Arc<Cluster>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<ServerView>> {
    Ok(Json(c.set_draining(&id, true).await?))
}

async fn enable(
    State(c): State<Arc<Cluster>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<ServerView>> {
    Ok(Json(c.set_draining(&id, false).await?))
}

async fn forget_server(
    State(c): State<Arc<Cluster>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    c.forget_server(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_packages(State(c): State<Arc<Cluster>>) -> ApiResult<Json<Vec<Package>>> {
    Ok(Json(c.list_packages().await?))
}

async fn put_package(
    State(c): State<Arc<Cluster>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<Package>> {
    let mut p: Package =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("bad package: {e}")))?;
    p.name = name;
    Ok(Json(c.put_package(p).await?))
}

async fn delete_package(
    State(c): State<Arc<Cluster>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    c.delete_package(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_containers(State(c): State<Arc<Cluster>>) -> ApiResult<Json<Vec<PlacementView>>> {
    Ok(Json(c.list_placements().await?))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PlacementSetting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy: Option<String>,
    /// Host ports no published port may take, as `22,8000-8100` (atoll's
    /// own ports are reserved on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reserved_ports: Option<String>,
}

fn strategy_name(s: placement::Strategy) -> String {
    match s {
        placement::Strategy::Spread => "spread".into(),
        placement::Strategy::Pack => "pack".into(),
    }
}

async fn placement_setting(c: &Cluster) -> ApiResult<Json<PlacementSetting>> {
    Ok(Json(PlacementSetting {
        strategy: Some(strategy_name(c.placement_strategy().await?)),
        reserved_ports: Some(c.reserved_ports().await?.to_string()),
    }))
}

async fn get_placement(State(c): State<Arc<Cluster>>) -> ApiResult<Json<PlacementSetting>> {
    placement_setting(&c).await
}

async fn put_placement(
    State(c): State<Arc<Cluster>>,
    body: Bytes,
) -> ApiResult<Json<PlacementSetting>> {
    let p: PlacementSetting = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("bad placement setting: {e}")))?;
    if let Some(s) = &p.strategy {
        c.set_placement_strategy(s).await?;
    }
    if let Some(r) = &p.reserved_ports {
        c.set_reserved_ports(r).await?;
    }
    placement_setting(&c).await
}

/// The datacenter's public network: `null` when none is set.
async fn get_public_network(
    State(c): State<Arc<Cluster>>,
) -> ApiResult<Json<Option<cluster::public::PublicNetwork>>> {
    Ok(Json(c.public_network().await?))
}

async fn put_public_network(
    State(c): State<Arc<Cluster>>,
    body: Bytes,
) -> ApiResult<Json<Option<cluster::public::PublicNetwork>>> {
    let p: cluster::public::PublicNetwork = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("bad public network: {e}")))?;
    c.set_public_network(Some(p)).await?;
    Ok(Json(c.public_network().await?))
}

async fn delete_public_network(State(c): State<Arc<Cluster>>) -> ApiResult<StatusCode> {
    c.set_public_network(None).await?;
    Ok(StatusCode::NO_CONTENT)
}
