//! `docker network`: create, ls (filters), inspect, rm, prune, connect,
//! disconnect. Every account sees only its own networks (its default one is
//! named `bridge`).

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bollard_stubs::models::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use chrono::SecondsFormat;
use cluster::model::NetworkRecord;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::{Account, ApiVersion, AppState};

/// Docker's network object; `containers` only for inspect.
fn network_json(
    n: &NetworkRecord,
    containers: Option<serde_json::Map<String, Value>>,
    version: ApiVersion,
) -> Value {
    let mut cfg = json!({"Subnet": n.subnet, "Gateway": n.gateway.to_string()});
    if let Some(r) = &n.ip_range {
        cfg["IPRange"] = json!(r);
    }
    let mut out = json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created.to_rfc3339_opts(SecondsFormat::Nanos, true),
        "Scope": "local",
        "Driver": n.driver,
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": [cfg]},
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers.unwrap_or_default(),
        "Options": n.options,
        "Labels": n.labels,
    });
    if !version.at_least(47) {
        out.as_object_mut().map(|o| o.remove("EnableIPv4"));
    }
    out
}

fn body<T: DeserializeOwned + Default>(b: &Bytes) -> ApiResult<T> {
    if b.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(b)
        .map_err(|e| ApiError::bad(format!("invalid JSON in request body: {e}")))
}

pub async fn create(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    b: Bytes,
) -> ApiResult<Response> {
    let req: NetworkCreateRequest = body(&b)?;
    if req.name.is_empty() {
        return Err(ApiError::bad("network name is required"));
    }
    let n = st.cluster.create_network(&acct.0, &req).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": n.id, "Warning": ""})),
    )
        .into_response())
}

pub async fn list(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    version: ApiVersion,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let f = Params::parse(q.as_deref()).filters()?;
    f.only(&["driver", "id", "label", "name", "scope", "type", "dangling"])?;
    let dangling = f.boolean("dangling")?;
    if let Some(t) = f.get("type") {
        for v in t {
            if v != "custom" && v != "builtin" {
                return Err(ApiError::bad(format!("invalid filter: 'type'='{v}'")));
            }
        }
    }
    let used = match dangling {
        Some(_) => st.cluster.networks_in_use(&acct.0).await?,
        None => Default::default(),
    };
    let mut out = Vec::new();
    for n in st.cluster.list_networks(&acct.0).await? {
        let any = |key: &str, hit: &dyn Fn(&String) -> bool| {
            f.get(key).is_none_or(|vals| vals.iter().any(hit))
        };
        if !any("name", &|v| n.name.contains(v.as_str()))
            || !any("id", &|v| n.id.starts_with(v.as_str()))
            || !any("driver", &|v| *v == n.driver)
            || !any("scope", &|v| v == "local")
            || !any("type", &|v| (v == "builtin") == n.default)
            || !f.labels_match("label", &n.labels)
        {
            continue;
        }
        if let Some(d) = dangling {
            let unused = !used.contains(&n.id);
            if unused != d || (d && n.default) {
                continue;
            }
        }
        out.push(network_json(&n, None, version));
    }
    Ok(Json(Value::Array(out)))
}

pub async fn inspect(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    version: ApiVersion,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let n = st.cluster.find_network(&acct.0, &id).await?;
    let mut containers = serde_json::Map::new();
    for (c, e) in st.cluster.network_containers(&acct.0, &n).await? {
        if !c.state.status.is_running() {
            continue;
        }
        let prefix = e.subnet.split_once('/').map_or("32", |(_, p)| p);
        containers.insert(
            c.id.clone(),
            json!({
                "Name": c.name,
                "EndpointID": crate::containers::endpoint_id(&c.id, &n.id),
                "MacAddress": e.mac,
                "IPv4Address": format!("{}/{prefix}", e.ip),
                "IPv6Address": "",
            }),
        );
    }
    Ok(Json(network_json(&n, Some(containers), version)))
}

pub async fn remove(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.cluster.remove_network(&acct.0, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn prune(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let f = Params::parse(q.as_deref()).filters()?;
    f.only(&["label", "label!", "until"])?;
    let until = f.until()?;
    // Networks in use are kept by the store itself (it refuses their removal).
    let removed = st
        .cluster
        .prune_networks(&acct.0, |n| {
            f.prune_keeps(&n.labels) || until.is_some_and(|u| n.created > u)
        })
        .await?;
    Ok(Json(json!({"NetworksDeleted": removed})))
}

pub async fn connect(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    // The network first: another account's is 404 whatever the body says.
    st.cluster.find_network(&acct.0, &id).await?;
    let req: NetworkConnectRequest = body(&b)?;
    if req.container.is_empty() {
        return Err(ApiError::bad("container is required"));
    }
    let ep = match &req.endpoint_config {
        Some(e) => cluster::create::endpoint_request(&id, e)?,
        None => cluster::networks::EndpointRequest {
            network: id.clone(),
            ..Default::default()
        },
    };
    st.cluster
        .connect_network(&acct.0, &id, &req.container, ep)
        .await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn disconnect(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<Response> {
    // The network first: another account's is 404 whatever the body says.
    st.cluster.find_network(&acct.0, &id).await?;
    let req: NetworkDisconnectRequest = body(&b)?;
    if req.container.is_empty() {
        return Err(ApiError::bad("container is required"));
    }
    st.cluster
        .disconnect_network(&acct.0, &id, &req.container)
        .await?;
    Ok(StatusCode::OK.into_response())
}
