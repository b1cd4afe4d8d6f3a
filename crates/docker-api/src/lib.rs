//! The Docker Engine API surface of the head: routes, Docker's quirks (version
//! prefix, lenient query values, filters, error body), hijacked streams and stream
//! encoders. No business logic: handlers parse into cluster commands.

#![recursion_limit = "256"]

mod archive;
mod build;
mod containers;
mod error;
mod events;
mod exec;
mod images;
mod networks;
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

/// The API version a request speaks: its `/vX.Y` prefix, else the newest
/// (as Docker does). Answers whose shape changed between versions follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    pub const CURRENT: ApiVersion = ApiVersion(1, 50);

    /// Whether the client speaks `1.minor` or newer.
    pub fn at_least(self, minor: u32) -> bool {
        self >= ApiVersion(1, minor)
    }

    pub(crate) fn parse(s: &str) -> Option<ApiVersion> {
        let (major, minor) = s.split_once('.')?;
        Some(ApiVersion(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ApiVersion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ApiVersion>()
            .copied()
            .unwrap_or(ApiVersion::CURRENT))
    }
}

/// Strips Docker's optional `/vX.Y` prefix before routing, keeping the
/// version for the handlers.
fn strip_version(mut req: Request) -> Request {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v")
        && let Some(slash) = rest.find('/')
        && rest[..slash]
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        let version = ApiVersion::parse(&rest[..slash]);
        let new_path = rest[slash..].to_string();
        let pq = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        if let Ok(uri) = pq.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
        if let Some(v) = version {
            req.extensions_mut().insert(v);
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
            let refused = Refused {
                cluster: cluster.clone(),
                id,
            };
            // Hijacked streams (attach, exec) watch it themselves.
            req.extensions_mut().insert(refused.clone());
            let resp = next.run(req).await;
            end_streams_when_refused(resp, refused)
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// The caller of a request over TLS, to end its long-lived streams once its
/// certificate or account is refused (revoked, disabled, deleted).
#[derive(Clone)]
pub struct Refused {
    cluster: Arc<Cluster>,
    id: pki::Identity,
}

impl Refused {
    /// Resolves once the caller is refused.
    pub async fn wait(self) {
        self.cluster.refused(&self.id).await
    }
}

/// A streamed body (no known length: logs -f, events, stats) ends when the
/// caller is refused; bodies of a known size are left as they are.
fn end_streams_when_refused(resp: Response, refused: Refused) -> Response {
    use axum::body::HttpBody as _;
    use futures::StreamExt;
    if resp.body().size_hint().exact().is_some() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().take_until(Box::pin(refused.wait()));
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// Every route of the API, with its methods: the router is built only from
/// here, so [`route_table`] lists every route (the tenant-isolation test walks
/// them all with another tenant's ids).
struct Table {
    router: Router<AppState>,
    routes: Vec<(&'static [&'static str], &'static str)>,
}

impl Table {
    fn add(
        mut self,
        methods: &'static [&'static str],
        path: &'static str,
        handler: axum::routing::MethodRouter<AppState>,
    ) -> Table {
        self.routes.push((methods, path));
        self.router = self.router.route(path, handler);
        self
    }
}

fn table() -> Table {
    Table {
        router: Router::new(),
        routes: Vec::new(),
    }
    .add(
        &["GET", "HEAD"],
        "/_ping",
        get(system::ping).head(system::ping),
    )
    .add(&["GET"], "/version", get(system::version))
    .add(&["GET"], "/info", get(system::info))
    .add(&["GET"], "/system/df", get(system::df))
    .add(&["POST"], "/auth", post(images::auth))
    .add(&["POST"], "/build", post(build::build))
    .add(&["POST"], "/build/prune", post(build::prune))
    .add(&["GET"], "/events", get(events::events))
    .add(&["POST"], "/containers/create", post(containers::create))
    .add(&["GET"], "/containers/json", get(containers::list))
    .add(&["POST"], "/commit", post(containers::commit))
    .add(&["POST"], "/containers/prune", post(containers::prune))
    .add(
        &["DELETE"],
        "/containers/{id}",
        axum::routing::delete(containers::remove),
    )
    .add(&["GET"], "/containers/{id}/json", get(containers::inspect))
    .add(
        &["DELETE"],
        "/containers/{id}/{link}",
        axum::routing::delete(containers::remove_link),
    )
    .add(&["POST"], "/containers/{id}/start", post(containers::start))
    .add(&["POST"], "/containers/{id}/stop", post(containers::stop))
    .add(&["POST"], "/containers/{id}/kill", post(containers::kill))
    .add(
        &["POST"],
        "/containers/{id}/restart",
        post(containers::restart),
    )
    .add(
        &["POST"],
        "/containers/{id}/rename",
        post(containers::rename),
    )
    .add(&["POST"], "/containers/{id}/wait", post(containers::wait))
    .add(&["GET"], "/containers/{id}/logs", get(containers::logs))
    .add(
        &["POST"],
        "/containers/{id}/attach",
        post(containers::attach),
    )
    .add(
        &["POST"],
        "/containers/{id}/resize",
        post(containers::resize),
    )
    .add(&["POST"], "/containers/{id}/pause", post(containers::pause))
    .add(
        &["POST"],
        "/containers/{id}/unpause",
        post(containers::unpause),
    )
    .add(
        &["POST"],
        "/containers/{id}/update",
        post(containers::update),
    )
    .add(&["GET"], "/containers/{id}/stats", get(stats::stats))
    .add(&["GET"], "/containers/{id}/top", get(containers::top))
    .add(
        &["GET", "HEAD", "PUT"],
        "/containers/{id}/archive",
        get(archive::get).head(archive::head).put(archive::put),
    )
    .add(&["GET"], "/containers/{id}/export", get(archive::export))
    .add(&["GET"], "/containers/{id}/changes", get(archive::changes))
    .add(&["POST"], "/containers/{id}/exec", post(exec::create))
    .add(&["POST"], "/exec/{id}/start", post(exec::start))
    .add(&["POST"], "/exec/{id}/resize", post(exec::resize))
    .add(&["GET"], "/exec/{id}/json", get(exec::inspect))
    .add(&["GET"], "/volumes", get(volumes::list))
    .add(&["POST"], "/volumes/create", post(volumes::create))
    .add(&["POST"], "/volumes/prune", post(volumes::prune))
    .add(
        &["GET", "DELETE"],
        "/volumes/{name}",
        get(volumes::inspect).delete(volumes::remove),
    )
    .add(&["GET"], "/networks", get(networks::list))
    .add(&["POST"], "/networks/create", post(networks::create))
    .add(&["POST"], "/networks/prune", post(networks::prune))
    .add(
        &["GET", "DELETE"],
        "/networks/{id}",
        get(networks::inspect).delete(networks::remove),
    )
    .add(&["POST"], "/networks/{id}/connect", post(networks::connect))
    .add(
        &["POST"],
        "/networks/{id}/disconnect",
        post(networks::disconnect),
    )
    .add(&["GET"], "/images/json", get(images::list))
    .add(&["POST"], "/images/load", post(images::load))
    .add(&["POST"], "/images/create", post(images::create))
    .add(&["POST"], "/images/prune", post(images::prune))
    .add(&["GET"], "/images/get", get(images::save))
    .add(&["ANY"], "/images/{*rest}", any(images::dispatch))
    .add(&["ANY"], "/swarm", any(system::not_a_swarm))
    .add(&["ANY"], "/swarm/{*rest}", any(system::not_a_swarm))
    .add(&["ANY"], "/nodes", any(system::not_a_swarm))
    .add(&["ANY"], "/nodes/{*rest}", any(system::not_a_swarm))
    .add(&["ANY"], "/services", any(system::not_a_swarm))
    .add(&["ANY"], "/services/{*rest}", any(system::not_a_swarm))
    .add(&["ANY"], "/tasks", any(system::not_a_swarm))
    .add(&["ANY"], "/tasks/{*rest}", any(system::not_a_swarm))
    .add(&["ANY"], "/secrets", any(system::not_a_swarm))
    .add(&["ANY"], "/secrets/{*rest}", any(system::not_a_swarm))
    .add(&["ANY"], "/configs", any(system::not_a_swarm))
    .add(&["ANY"], "/configs/{*rest}", any(system::not_a_swarm))
}

/// `(method, path template)` of every route (`ANY` for the image routes, whose
/// handler dispatches on method and suffix).
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    table()
        .routes
        .into_iter()
        .flat_map(|(methods, path)| methods.iter().map(move |m| (*m, path)))
        .collect()
}

fn routes(cluster: Arc<Cluster>) -> Router {
    table()
        .router
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
    // Docker's: root and the `docker` group (where the server has one).
    let group = nix::unistd::Group::from_name("docker")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    let listener = agent_client::serve::bind_unix_with_mode(path, mode, group)?;
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
    let listener = agent_client::serve::TlsListener::with_credentials(
        tcp,
        creds,
        pki::ClientAuth::Required,
        |_| true,
    )?;
    serve(listener, tls_router(cluster), shutdown).await
}

async fn serve(
    listener: impl agent_client::serve::Accept,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, app, strip_version, shutdown).await
}

/// Serves an axum router (this API, or the operator API) on `listener`;
/// `rewrite` sees every request before routing.
pub async fn serve_router(
    listener: impl agent_client::serve::Accept,
    app: Router,
    rewrite: fn(Request) -> Request,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app =
        tower::ServiceExt::map_request(app, move |req: http::Request<hyper::body::Incoming>| {
            rewrite(req.map(axum::body::Body::new))
        });
    agent_client::serve::serve(listener, app, shutdown).await
}
