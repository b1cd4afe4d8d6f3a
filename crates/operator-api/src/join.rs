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

pub(crate) struct Pki {
    pub cluster: Arc<Cluster>,
    pub ca: Arc<Ca>,
}

pub(crate) fn routes(pki: Arc<Pki>) -> Router {
    Router::new()
        .route("/v1/ca", get(ca_certificate))
        .route("/v1/join", post(join))
        .route("/v1/join-tokens", post(new_join_token))
        .route("/v1/certificates", post(new_operator_certificate))
        .with_state(pki)
}

/// The routes a caller without a certificate may use (a joining agent).
const OPEN_ROUTES: [&str; 2] = ["/v1/ca", "/v1/join"];

/// Over TLS, everything but [`OPEN_ROUTES`] needs an operator certificate of
/// this cluster: verified against the CA by the TLS layer, on record and not
/// revoked. On the unix socket (no [`Remote`]) the caller is root.
pub(crate) async fn authorize(State(p): State<Arc<Pki>>, req: Request, next: Next) -> Response {
    if let Some(remote) = req.extensions().get::<Remote>()
        && !OPEN_ROUTES.contains(&req.uri().path())
    {
        let refused = || {
            ApiError(Error::Unauthorized(
                "this needs an operator certificate of this cluster".into(),
            ))
            .into_response()
        };
        let Some(id) = remote.certificate.as_deref().and_then(pki::identify) else {
            return refused();
        };
        if id.role != Role::Operator {
            return refused();
        }
        if let Err(e) = p.cluster.authenticate(&id).await {
            return ApiError(e).into_response();
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
    /// Days; a year if absent.
    days: Option<i64>,
}

#[derive(Serialize, Deserialize)]
pub struct CertificateResponse {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub serial: String,
    pub expires: String,
}

/// How long certificates for people and programs last unless asked otherwise.
pub(crate) const DEFAULT_DAYS: i64 = 365;

impl Pki {
    /// Issues a certificate and key for `name` in `role`, and records it.
    pub(crate) async fn issue(
        &self,
        role: Role,
        name: &str,
        days: Option<i64>,
    ) -> ApiResult<CertificateResponse> {
        let c = self
            .ca
            .issue_with_key_for_days(role, name, &[], days.unwrap_or(DEFAULT_DAYS))
            .map_err(|e| ApiError::bad(e.to_string()))?;
        let id = c
            .identity()
            .map_err(|e| ApiError(Error::internal("reading an issued certificate", e)))?;
        let expires = chrono::DateTime::from_timestamp(id.not_after, 0).unwrap_or_default();
        self.cluster
            .record_certificate(&cluster::model::CertificateRecord {
                serial: id.serial.clone(),
                holder: name.to_string(),
                role: if role == Role::Operator {
                    "operator"
                } else {
                    "account"
                }
                .into(),
                issued: chrono::Utc::now(),
                expires,
                revoked: None,
            })
            .await?;
        tracing::info!("issued certificate {} for {name}", id.serial);
        Ok(CertificateResponse {
            ca: c.ca_pem,
            cert: c.cert_pem,
            key: c.key_pem,
            serial: id.serial,
            expires: expires.to_rfc3339(),
        })
    }
}

/// A certificate and key for an operator working from another machine.
async fn new_operator_certificate(
    State(p): State<Arc<Pki>>,
    body: Bytes,
) -> ApiResult<Json<CertificateResponse>> {
    let req: CertificateRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("bad request: {e}")))?;
    Ok(Json(p.issue(Role::Operator, &req.name, req.days).await?))
}
