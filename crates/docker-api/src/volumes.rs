//! `docker volume`: create, ls (filters), inspect, rm, prune.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::SecondsFormat;
use cluster::model::VolumeRecord;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::{Account, ApiVersion, AppState};

/// Docker's volume object. `Mountpoint` (a host path) is not shown.
pub(crate) fn volume_json(v: &VolumeRecord) -> Value {
    json!({
        "Name": v.name,
        "Driver": v.driver,
        "Mountpoint": "",
        "CreatedAt": v.created.to_rfc3339_opts(SecondsFormat::Secs, true),
        "Labels": if v.labels.is_empty() { json!(null) } else { json!(v.labels) },
        "Options": if v.options.is_empty() { json!(null) } else { json!(v.options) },
        "Scope": "local",
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    driver_opts: Option<BTreeMap<String, String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

pub async fn create(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: CreateBody = if body.is_empty() {
        CreateBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("invalid JSON in request body: {e}")))?
    };
    let v = st
        .cluster
        .create_volume(
            &acct.0,
            b.name.as_deref(),
            b.driver.as_deref().unwrap_or(""),
            b.labels.unwrap_or_default(),
            b.driver_opts.unwrap_or_default(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(volume_json(&v))).into_response())
}

pub async fn list(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let f = Params::parse(q.as_deref()).filters()?;
    f.only(&["name", "label", "dangling", "driver"])?;
    let dangling = f.boolean("dangling")?;
    let mut out = Vec::new();
    for v in st.cluster.list_volumes(&acct.0).await? {
        if let Some(names) = f.get("name")
            && !names.iter().any(|n| v.name.contains(n.as_str()))
        {
            continue;
        }
        if let Some(drivers) = f.get("driver")
            && !drivers.contains(&v.driver)
        {
            continue;
        }
        if !f.labels_match("label", &v.labels) {
            continue;
        }
        if let Some(d) = dangling {
            let unused = st.cluster.volume_users(&acct.0, &v).await?.is_empty();
            if unused != d {
                continue;
            }
        }
        out.push(volume_json(&v));
    }
    Ok(Json(json!({"Volumes": out, "Warnings": []})))
}

pub async fn inspect(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(volume_json(
        &st.cluster.get_volume(&acct.0, &name).await?,
    )))
}

pub async fn remove(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    st.cluster.remove_volume(&acct.0, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Unused anonymous volumes; all unused ones with the `all=true` filter
/// (Docker 23+).
pub async fn prune(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    version: ApiVersion,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let f = Params::parse(q.as_deref()).filters()?;
    f.only(&["label", "label!", "all"])?;
    // Named volumes too for clients before 1.42, when prune took every
    // unused volume; `all` asks for that since.
    let all = !version.at_least(42)
        || f.get("all")
            .and_then(|a| a.first())
            .is_some_and(|a| a == "true" || a == "1");
    let (removed, reclaimed) = st
        .cluster
        .prune_volumes(&acct.0, all, |v| f.prune_keeps(&v.labels))
        .await?;
    Ok(Json(
        json!({"VolumesDeleted": removed, "SpaceReclaimed": reclaimed}),
    ))
}
