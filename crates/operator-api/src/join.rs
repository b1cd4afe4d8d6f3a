//! Servers joining the datacenter, and what the operator hands out for it: join
//! tokens and operator certificates. Also the one rule of who may call what over
//! TLS ([`authorize`]).

use std::sync::Arc;
use std::time::Duration;

use agent_client::serve::Remote;
use agent_client::{CaResponse, JoinRequest, JoinResponse};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cluster::{Cluster, Error};
use docker_api::{ApiError, ApiResult};
use pki::{Ca, Role};
use serde::{Deserialize, Serialize};

struct Pki {
    cluster: Arc<Cluster>,
    ca: Arc<Ca>,
}

pub(crate) fn routes(cluster: Arc<Cluster>, ca: Arc<Ca>) -> Router {
    Router::new()
        .route("/v1/ca", get(ca_certificate))
        .route("/v1/join", post(join))
        .route("/v1/join-tokens", post(new_join_token))
        .route("/v1/certificates", post(new_operator_certificate))
        .with_state(Arc::new(Pki { cluster, ca }))
}

/// The routes a caller without a certificate may use (a joining agent).
const OPEN_ROUTES: [&str; 2] = ["/v1/ca", "/v1/join"];

/// Over TLS, everything but [`OPEN_ROUTES`] needs an operator certificate of
/// this cluster (the TLS layer verified it against the CA). On the unix socket
/// (no [`Remote`]) the caller is root.
pub(crate) async fn authorize(req: Request, next: Next) -> Response {
    if let Some(remote) = req.extensions().get::<Remote>()
        && !OPEN_ROUTES.contains(&req.uri().path())
    {
        let who = remote.certificate.as_deref().and_then(pki::identify);
        if !matches!(who, Some(ref id) if id.role == Role::Operator) {
            return ApiError(Error::Unauthorized(
                "this needs an operator certificate of this cluster".into(),
            ))
            .into_response();
        }
    }
    next.run(req).await
}

async fn ca_certificate(State(p): State<Arc<Pki>>) -> Json<CaResponse> {
    Json(CaResponse {
        ca: p.ca.cert_pem().to_string(),
    })
}

/// A server's name: it becomes part of a DNS name in its certificate.
fn check_server_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "invalid server name {name:?}: use 1-63 lowercase letters, digits and '-'"
        )))
    }
}

async fn join(State(p): State<Arc<Pki>>, body: Bytes) -> ApiResult<Json<JoinResponse>> {
    let req: JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("bad join request: {e}")))?;
    check_server_name(&req.name)?;
    let token = pki::JoinToken::parse(&req.token)
        .map_err(|e| ApiError(Error::Unauthorized(e.to_string())))?;
    if token.ca_fingerprint != p.ca.fingerprint() {
        return Err(ApiError(Error::Unauthorized(
            "this join token is for another cluster".into(),
        )));
    }
    // Signed before the token is used, so a bad request does not cost a token.
    let certificate =
        p.ca.sign_request(
            &req.csr,
            Role::Agent,
            &req.name,
            &[pki::agent_dns_name(&req.name)],
        )
        .map_err(|e| ApiError::bad(e.to_string()))?;
    p.cluster
        .join_server(&token.secret_hash(), &req.name, &req.address)
        .await?;
    Ok(Json(JoinResponse {
        certificate,
        ca: p.ca.cert_pem().to_string(),
    }))
}

#[derive(Deserialize, Default)]
struct TokenRequest {
    /// Seconds; one hour if absent.
    ttl_seconds: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_at: String,
}

async fn new_join_token(State(p): State<Arc<Pki>>, body: Bytes) -> ApiResult<Json<TokenResponse>> {
    let req: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("bad request: {e}")))?
    };
    let token = pki::JoinToken::generate(p.ca.fingerprint());
    let ttl = Duration::from_secs(req.ttl_seconds.unwrap_or(3600));
    let expires = p.cluster.add_join_token(&token.secret_hash(), ttl).await?;
    Ok(Json(TokenResponse {
        token: token.to_string(),
        expires_at: expires.to_rfc3339(),
    }))
}

#[derive(Deserialize)]
struct CertificateRequest {
    name: String,
}

#[derive(Serialize, Deserialize)]
pub struct CertificateResponse {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A certificate and key for an operator working from another machine.
async fn new_operator_certificate(
    State(p): State<Arc<Pki>>,
    body: Bytes,
) -> ApiResult<Json<CertificateResponse>> {
    let req: CertificateRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("bad request: {e}")))?;
    let c =
        p.ca.issue_with_key(Role::Operator, &req.name, &[])
            .map_err(|e| ApiError::bad(e.to_string()))?;
    tracing::info!("issued an operator certificate for {}", req.name);
    Ok(Json(CertificateResponse {
        ca: c.ca_pem,
        cert: c.cert_pem,
        key: c.key_pem,
    }))
}
