//! Tenant accounts: create, list, disable/enable, limits, delete; their
//! certificates: issue, list, revoke.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use cluster::accounts::AccountView;
use cluster::model::{AccountLimits, AccountRecord, CertificateRecord};
use docker_api::{ApiError, ApiResult};
use pki::Role;
use serde::Deserialize;

use crate::join::{CertificateResponse, Pki};

pub(crate) fn routes(pki: Arc<Pki>) -> Router {
    Router::new()
        .route("/v1/accounts", get(list).post(create))
        .route(
            "/v1/accounts/{name}",
            get(inspect).patch(update).delete(remove),
        )
        .route(
            "/v1/accounts/{name}/certificates",
            get(certificates).post(new_certificate),
        )
        .route("/v1/certificates/{serial}/revoke", post(revoke))
        .with_state(pki)
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("bad request: {e}")))
}

#[derive(Deserialize)]
struct CreateRequest {
    name: String,
}

async fn create(
    State(p): State<Arc<Pki>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<AccountRecord>)> {
    let req: CreateRequest = parse(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(p.cluster.create_account(&req.name).await?),
    ))
}

async fn list(State(p): State<Arc<Pki>>) -> ApiResult<Json<Vec<AccountView>>> {
    Ok(Json(p.cluster.list_accounts().await?))
}

async fn inspect(
    State(p): State<Arc<Pki>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<AccountRecord>> {
    Ok(Json(p.cluster.account(&name).await?))
}

#[derive(Deserialize)]
struct UpdateRequest {
    disabled: Option<bool>,
    limits: Option<AccountLimits>,
}

async fn update(
    State(p): State<Arc<Pki>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<AccountRecord>> {
    let req: UpdateRequest = parse(&body)?;
    Ok(Json(
        p.cluster
            .update_account(&name, req.disabled, req.limits)
            .await?,
    ))
}

async fn remove(
    State(p): State<Arc<Pki>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    p.cluster.delete_account(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn certificates(
    State(p): State<Arc<Pki>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Vec<CertificateRecord>>> {
    p.cluster.account(&name).await?;
    Ok(Json(p.cluster.list_certificates(&name).await?))
}

#[derive(Deserialize, Default)]
struct CertificateRequest {
    days: Option<i64>,
}

async fn new_certificate(
    State(p): State<Arc<Pki>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<CertificateResponse>> {
    let req: CertificateRequest = if body.is_empty() {
        CertificateRequest::default()
    } else {
        parse(&body)?
    };
    let account = p.cluster.account(&name).await?;
    if account.disabled {
        return Err(ApiError(cluster::Error::Conflict(format!(
            "account {name} is disabled"
        ))));
    }
    Ok(Json(p.issue(Role::Account, &name, req.days).await?))
}

async fn revoke(
    State(p): State<Arc<Pki>>,
    UrlPath(serial): UrlPath<String>,
) -> ApiResult<Json<CertificateRecord>> {
    Ok(Json(p.cluster.revoke_certificate(&serial).await?))
}
