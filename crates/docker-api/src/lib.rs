//! The Docker Engine API surface of the head: routes, Docker's quirks (version
//! prefix, lenient query values, filters, error body), hijacked streams and stream
//! encoders. No business logic: handlers parse into cluster commands.

#![recursion_limit = "256"]

mod archive;
mod containers;
mod error;
mod events;
mod exec;
mod images;
mod params;
mod stats;
mod streams;
mod system;
mod volumes;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post};
use cluster::Cluster;

pub use error::{ApiError, ApiResult};

/// The API version we speak; docker CLI 28.x negotiates down to it.
pub const API_VERSION: &str = "1.50";
pub const MIN_API_VERSION: &str = "1.24";

/// Who is calling. The unix socket is the operator's; over TLS, the client
/// certificate names the account ([`serve_tls`]).
#[derive(Debug, Clone)]
pub struct Account(pub String);

#[derive(Clone)]
pub struct AppState {
    pub cluster: Arc<Cluster>,
}

/// Strips Docker's optional `/vX.Y` prefix before routing.
fn strip_version(mut req: Request) -> Request {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v")
        && let Some(slash) = rest.find('/')
        && rest[..slash]
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        let new_path = rest[slash..].to_string();
        let pq = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        if let Ok(uri) = pq.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    req
}

async fn docker_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    h.insert("ostype", HeaderValue::from_static("linux"));
    h.insert("server", HeaderValue::from_static("atoll/0.1 (linux)"));
    resp
}

async fn not_found() -> ApiError {
    ApiError(cluster::Error::NotFound("page not found".into()))
}

/// The whole API for callers acting as `account`.
pub fn router(cluster: Arc<Cluster>, account: &str) -> Router {
    routes(cluster).layer(axum::Extension(Account(account.to_string())))
}

/// The whole API for callers over TLS: each acts as the account its client
/// certificate names (checked on every request: revoked certificates and
/// disabled accounts get 401).
pub fn tls_router(cluster: Arc<Cluster>) -> Router {
    routes(cluster.clone()).layer(middleware::from_fn_with_state(
        cluster,
        account_of_certificate,
    ))
}

async fn account_of_certificate(
    axum::extract::State(cluster): axum::extract::State<Arc<Cluster>>,
    mut req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let id = req
        .extensions()
        .get::<agent_client::serve::Remote>()
        .and_then(|r| r.certificate.as_deref())
        .and_then(pki::identify);
    let Some(id) = id else {
        return ApiError(cluster::Error::Unauthorized(
            "a client certificate of this cluster is required".into(),
        ))
        .into_response();
    };
    match cluster.authenticate(&id).await {
        Ok(account) => {
            req.extensions_mut().insert(Account(account));
            next.run(req).await
        }
        Err(e) => ApiError(e).into_response(),
    }
}

fn routes(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/system/df", get(system::df))
        .route("/events", get(events::events))
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/commit", post(containers::commit))
        .route("/containers/prune", post(containers::prune))
        .route(
            "/containers/{id}",
            axum::routing::delete(containers::remove),
        )
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/restart", post(containers::restart))
        .route("/containers/{id}/rename", post(containers::rename))
        .route("/containers/{id}/wait", post(containers::wait))
        .route("/containers/{id}/logs", get(containers::logs))
        .route("/containers/{id}/attach", post(containers::attach))
        .route("/containers/{id}/resize", post(containers::resize))
        .route("/containers/{id}/pause", post(containers::pause))
        .route("/containers/{id}/unpause", post(containers::unpause))
        .route("/containers/{id}/update", post(containers::update))
        .route("/containers/{id}/stats", get(stats::stats))
        .route("/containers/{id}/top", get(containers::top))
        .route(
            "/containers/{id}/archive",
            get(archive::get).head(archive::head).put(archive::put),
        )
        .route("/containers/{id}/export", get(archive::export))
        .route("/containers/{id}/changes", get(archive::changes))
        .route("/containers/{id}/exec", post(exec::create))
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/exec/{id}/json", get(exec::inspect))
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route(
            "/volumes/{name}",
            get(volumes::inspect).delete(volumes::remove),
        )
        .route("/images/json", get(images::list))
        .route("/images/load", post(images::load))
        .route("/images/create", post(images::create))
        .route("/images/prune", post(images::prune))
        .route("/images/get", get(images::save))
        .route("/images/{*rest}", any(images::dispatch))
        .fallback(not_found)
        .layer(middleware::from_fn(docker_headers))
        .with_state(AppState { cluster })
}

/// Serves the API on a unix socket until `shutdown` resolves.
pub async fn serve_unix(
    path: &Path,
    cluster: Arc<Cluster>,
    account: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = agent_client::serve::bind_unix(path)?;
    serve(listener, router(cluster, account), shutdown).await
}

/// Serves the API over TLS on `tcp` with the head's API certificate `creds`:
/// clients must show a certificate from the cluster CA ([`tls_router`]).
pub async fn serve_tls(
    tcp: tokio::net::TcpListener,
    cluster: Arc<Cluster>,
    creds: &pki::Credentials,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config =
        pki::server_config(creds, pki::ClientAuth::Required).map_err(std::io::Error::other)?;
    let listener = agent_client::serve::TlsListener::new(tcp, config, |_| true);
    serve(listener, tls_router(cluster), shutdown).await
}

async fn serve(
    listener: impl agent_client::serve::Accept,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = tower::ServiceExt::map_request(app, |req: http::Request<hyper::body::Incoming>| {
        strip_version(req.map(axum::body::Body::new))
    });
    agent_client::serve::serve(listener, app, shutdown).await
}
