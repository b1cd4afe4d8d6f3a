//! `docker cp` (HEAD/GET/PUT `/containers/{id}/archive`), `export`, `diff`.

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::{Account, AppState};

const STAT_HEADER: &str = "x-docker-container-path-stat";

/// The `path` parameter: (decoded, as sent).
fn path_param(q: &Option<String>) -> ApiResult<(String, String)> {
    let p = Params::parse(q.as_deref());
    let decoded = p
        .get("path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad("path cannot be empty"))?
        .to_string();
    let raw = q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("path="))
        .next()
        .unwrap_or("")
        .to_string();
    Ok((decoded, raw))
}

fn with_stat(mut r: Response, stat: &str) -> ApiResult<Response> {
    r.headers_mut().insert(
        STAT_HEADER,
        HeaderValue::from_str(stat).map_err(|_| ApiError::bad("bad stat header"))?,
    );
    Ok(r)
}

pub async fn head(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let (path, raw) = path_param(&q)?;
    let stat = st.cluster.archive_stat(&acct.0, &id, &path, &raw).await?;
    with_stat(StatusCode::OK.into_response(), &stat)
}

pub async fn get(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let (path, raw) = path_param(&q)?;
    let (stat, body) = st.cluster.archive_get(&acct.0, &id, &path, &raw).await?;
    let mut r = Response::new(Body::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    with_stat(r, &stat)
}

pub async fn put(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<Response> {
    let (path, raw) = path_param(&q)?;
    // Docker's flags, and nothing else of the client's query.
    let params = Params::parse(q.as_deref());
    let mut query = format!("path={raw}");
    for flag in ["noOverwriteDirNonDir", "copyUIDGID"] {
        if params
            .get(flag)
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        {
            query.push_str(&format!("&{flag}=1"));
        }
    }
    // Forwarded through a channel: the request body is not `Sync`, the
    // agent client's body must be.
    let mut body = TryStreamExt::map_err(req.into_body().into_data_stream(), std::io::Error::other);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(chunk) = futures::StreamExt::next(&mut body).await {
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let tar = tokio_stream::wrappers::ReceiverStream::new(rx);
    st.cluster
        .archive_put(&acct.0, &id, &path, &query, tar)
        .await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn export(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let body = st.cluster.export_container(&acct.0, &id).await?;
    let mut r = Response::new(Body::new(BodyExt::map_err(body, std::io::Error::other)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(r)
}

pub async fn changes(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    // Docker's answer for no changes is null, not [].
    let changes = st.cluster.container_changes(&acct.0, &id).await?;
    Ok(Json(match changes {
        Value::Array(a) if a.is_empty() => Value::Null,
        v => v,
    }))
}
