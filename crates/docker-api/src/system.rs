//! `/_ping`, `/version`, `/info`, `/system/df`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chrono::Utc;
use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::{API_VERSION, Account, AppState, MIN_API_VERSION};

pub async fn ping() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
        ],
        "OK",
    )
}

pub async fn version(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let nodes = st.cluster.store().list_nodes().await?;
    let kernel = nodes
        .first()
        .map(|n| n.info.kernel_version.clone())
        .unwrap_or_default();
    Ok(Json(json!({
        "Platform": {"Name": "atoll"},
        "Components": [{
            "Name": "Engine",
            "Version": env!("CARGO_PKG_VERSION"),
            "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux", "Arch": "amd64"}
        }],
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": kernel,
        "BuildTime": "",
    })))
}

pub async fn info(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
) -> ApiResult<Json<Value>> {
    let c = &st.cluster;
    let (total, running, paused, stopped, images) = c.counts(&acct.0).await?;
    let nodes = c.store().list_nodes().await?;
    // The datacenter's capacity: servers that are up.
    let up: Vec<_> = nodes.iter().filter(|n| !c.server_down(&n.id)).collect();
    let cpus: u32 = up.iter().map(|n| n.info.cpus).sum();
    let mem: u64 = up.iter().map(|n| n.info.memory_bytes).sum();
    let first = nodes.first().map(|n| n.info.clone());
    Ok(Json(json!({
        "ID": c.name,
        "Name": c.name,
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": stopped,
        "Images": images,
        "Driver": "overlay2",
        "DriverStatus": [["Servers", nodes.len().to_string()], ["Servers up", up.len().to_string()]],
        "SystemStatus": [["Servers", nodes.len().to_string()], ["Servers up", up.len().to_string()]],
        "Plugins": {"Volume": [], "Network": ["bridge", "null"], "Authorization": null, "Log": ["json-file"]},
        "MemoryLimit": true,
        "SwapLimit": true,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": false,
        "PidsLimit": true,
        "IPv4Forwarding": true,
        "Debug": false,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": first.as_ref().map(|i| i.cgroup_version.clone()).unwrap_or_else(|| "1".into()),
        "NEventsListener": 0,
        "KernelVersion": first.as_ref().map(|i| i.kernel_version.clone()).unwrap_or_default(),
        "OperatingSystem": "atoll",
        "OSVersion": env!("CARGO_PKG_VERSION"),
        "OSType": "linux",
        "Architecture": "x86_64",
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": registry_config(c.registry()),
        "NCPU": cpus,
        "MemTotal": mem,
        "DockerRootDir": "",
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": {"runc": {"path": "runc"}},
        "DefaultRuntime": "runc",
        "LiveRestoreEnabled": true,
        "Isolation": "",
        "InitBinary": "docker-init",
        "SecurityOptions": [],
        "Warnings": [],
    })))
}

pub async fn df(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    version: crate::ApiVersion,
) -> ApiResult<Json<Value>> {
    let c = &st.cluster;
    let containers = c.list_containers(&acct.0).await?;
    let images = c.store().list_images(&acct.0).await?;
    let mut layer_blobs = std::collections::BTreeMap::new();
    let mut image_list = Vec::new();
    for i in &images {
        for l in &i.layers {
            layer_blobs.insert(l.blob.clone(), l.size);
        }
        // The image list's entries, with how many containers use each.
        let mut s = crate::images::summary(&st, &acct.0, i).await?;
        s["Containers"] = json!(containers.iter().filter(|x| x.image_id == i.id).count());
        for key in ["RepoDigests", "Labels"] {
            let empty = s[key].as_array().is_some_and(Vec::is_empty)
                || s[key].as_object().is_some_and(serde_json::Map::is_empty);
            if empty {
                s[key] = Value::Null;
            }
        }
        if version.at_least(44)
            && let Some(m) = s.as_object_mut()
        {
            m.remove("VirtualSize");
        }
        image_list.push(s);
    }
    let layers_size: i64 = layer_blobs.values().sum();
    let build_cache = crate::build::cache_usage(&st, &acct.0).await?;
    let vols = c.store().list_volumes(&acct.0).await?;
    // The container list's entries, with their sizes.
    let mut container_list: Vec<Value> = containers
        .iter()
        .map(|x| crate::containers::summary(x, &vols, version))
        .collect();
    crate::containers::add_sizes(&st, &acct.0, &mut container_list).await;
    let volumes: Vec<Value> = c
        .volume_usage(&acct.0)
        .await?
        .iter()
        .map(|(v, size, users)| {
            let mut j = crate::volumes::volume_json(v);
            j["UsageData"] = json!({"Size": size, "RefCount": users});
            j
        })
        .collect();
    let mut out = json!({
        "LayersSize": layers_size,
        "Images": image_list,
        "Containers": container_list,
        "Volumes": volumes,
        // Docker leaves an empty list out (null).
        "BuildCache": if build_cache.is_empty() { Value::Null } else { json!(build_cache) },
    });
    if !version.at_least(42) {
        // Removed in API 1.42: the build cache's size, now in `BuildCache`.
        let size: i64 = build_cache.iter().filter_map(|b| b["Size"].as_i64()).sum();
        out["BuilderSize"] = json!(size);
    }
    Ok(Json(out))
}

/// `RegistryConfig` as dockerd reports it: insecure CIDRs, one index entry
/// per registry (Docker Hub with its mirrors, each insecure host), mirrors.
fn registry_config(r: &images::registry::RegistryClient) -> Value {
    let mirrors: Vec<&str> = r.mirrors().iter().map(|m| m.url.as_str()).collect();
    let mut cidrs = vec!["127.0.0.0/8".to_string(), "::1/128".to_string()];
    let mut indexes = serde_json::Map::new();
    indexes.insert(
        "docker.io".into(),
        json!({"Name": "docker.io", "Mirrors": mirrors, "Secure": true, "Official": true}),
    );
    for entry in r.insecure() {
        if entry.contains('/') {
            cidrs.push(entry.clone());
        } else {
            indexes.insert(
                entry.clone(),
                json!({"Name": entry, "Mirrors": [], "Secure": false, "Official": false}),
            );
        }
    }
    json!({"InsecureRegistryCIDRs": cidrs, "IndexConfigs": indexes, "Mirrors": mirrors})
}

/// Docker's answer on every swarm endpoint of a daemon outside swarm mode.
const NOT_A_MANAGER: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
const NOT_IN_SWARM: &str = "This node is not part of a swarm";

/// Swarm mode's endpoints (`/swarm`, `/nodes`, `/services`, `/tasks`,
/// `/secrets`, `/configs`): the datacenter places containers itself and is
/// not a swarm, so they answer as a daemon outside swarm mode does (503):
/// tools probe them (`docker info`, `swarm leave --force`, `node ls`).
/// `swarm init` and `join` are refused the same way rather than starting one.
pub async fn not_a_swarm(uri: axum::http::Uri) -> crate::ApiError {
    let path = uri.path();
    let msg = if path.ends_with("/swarm/leave") || path.ends_with("/swarm/unlock") {
        NOT_IN_SWARM.to_string()
    } else if path.ends_with("/swarm/init") || path.ends_with("/swarm/join") {
        "atoll does not offer swarm mode: its datacenter places containers itself".to_string()
    } else {
        NOT_A_MANAGER.to_string()
    };
    crate::ApiError(cluster::Error::Unavailable(msg))
}
