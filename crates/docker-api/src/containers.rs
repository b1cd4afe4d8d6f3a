//! `/containers/*` handlers: parse, call the cluster, shape Docker's responses.

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bollard_stubs::models::ContainerCreateBody;
use chrono::{DateTime, SecondsFormat, Utc};
use cluster::containers::WaitCondition;
use cluster::model::{ContainerRecord, Status};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::params::{Params, regex_match};
use crate::streams::{MULTIPLEXED, RAW, hijack};
use crate::{Account, ApiVersion, AppState};

fn ts(t: &Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Nanos, true),
        None => "0001-01-01T00:00:00Z".into(),
    }
}

/// Docker's `units.HumanDuration`.
pub fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    if s < 1 {
        "Less than a second".into()
    } else if s == 1 {
        "1 second".into()
    } else if s < 60 {
        format!("{s} seconds")
    } else if s / 60 == 1 {
        "About a minute".into()
    } else if s < 3600 {
        format!("{} minutes", s / 60)
    } else if (s as f64 / 3600.0).round() == 1.0 {
        "About an hour".into()
    } else if s < 48 * 3600 {
        format!("{} hours", (s as f64 / 3600.0).round() as i64)
    } else if s < 7 * 24 * 3600 * 2 {
        format!("{} days", s / 86400)
    } else if s < 30 * 24 * 3600 * 3 {
        format!("{} weeks", s / (7 * 86400))
    } else if s < 365 * 24 * 3600 * 2 {
        format!("{} months", s / (30 * 86400))
    } else {
        format!("{} years", s / (365 * 86400))
    }
}

/// `starting`, `healthy`, `unhealthy`, or `none` without a healthcheck.
fn health_status(c: &ContainerRecord) -> &str {
    match (&c.spec.health, &c.state.health) {
        (None, _) => "none",
        (Some(_), Some(h)) => h.status.as_str(),
        (Some(_), None) => "starting",
    }
}

/// `State.Health` of inspect; absent without a healthcheck.
fn health_json(c: &ContainerRecord) -> Value {
    if c.spec.health.is_none() {
        return Value::Null;
    }
    let h = c
        .state
        .health
        .clone()
        .unwrap_or_else(|| agent_client::HealthState {
            status: "starting".into(),
            failing_streak: 0,
            log: Vec::new(),
        });
    json!({
        "Status": h.status,
        "FailingStreak": h.failing_streak,
        "Log": h.log.iter().map(|r| json!({
            "Start": r.start, "End": r.end, "ExitCode": r.exit_code, "Output": r.output,
        })).collect::<Vec<_>>(),
    })
}

/// The `Status` column of `docker ps`.
pub fn status_text(c: &ContainerRecord) -> String {
    let now = Utc::now();
    match c.state.status {
        Status::Created => "Created".into(),
        Status::Running => format!(
            "Up {}{}",
            human_duration(now - c.state.started_at.unwrap_or(now)),
            match health_status(c) {
                "starting" => " (health: starting)",
                "healthy" => " (healthy)",
                "unhealthy" => " (unhealthy)",
                _ => "",
            }
        ),
        Status::Paused => format!(
            "Up {} (Paused)",
            human_duration(now - c.state.started_at.unwrap_or(now))
        ),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            c.state.exit_code,
            human_duration(now - c.state.finished_at.unwrap_or(now))
        ),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            c.state.exit_code,
            human_duration(now - c.state.finished_at.unwrap_or(now))
        ),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
    }
}

/// Where a published port is reached: the container's public address, else
/// the host address it was bound to (all of them: 0.0.0.0).
fn published_ip(c: &ContainerRecord, p: &agent_client::PortMapping) -> String {
    match &c.spec.public {
        Some(public) => public.ip.to_string(),
        None if p.host_ip.is_empty() => "0.0.0.0".into(),
        None => p.host_ip.clone(),
    }
}

fn ports_json(c: &ContainerRecord, running: bool) -> Vec<Value> {
    c.spec
        .ports
        .iter()
        .map(|p| {
            if running {
                json!({"IP": published_ip(c, p),
                       "PrivatePort": p.container_port, "PublicPort": p.host_port, "Type": p.proto})
            } else {
                json!({"PrivatePort": p.container_port, "Type": p.proto})
            }
        })
        .collect()
}

/// Docker's endpoint id: stable per container and network.
pub(crate) fn endpoint_id(container: &str, network: &str) -> String {
    format!(
        "{}{}",
        &container[..container.len().min(32)],
        &network[..network.len().min(32)]
    )
}

fn prefix_len(subnet: &str) -> u64 {
    subnet
        .split_once('/')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}

/// One entry of `NetworkSettings.Networks`: the address while running, the
/// network and settings always (as Docker).
fn endpoint_json(c: &ContainerRecord, e: &agent_client::Endpoint, running: bool) -> Value {
    let aliases = if e.aliases.is_empty() {
        Value::Null
    } else {
        json!(e.aliases)
    };
    let ipam = if e.ip_requested {
        json!({"IPv4Address": e.ip.to_string()})
    } else {
        Value::Null
    };
    let mut dns_names = vec![c.name.clone(), c.id[..12].to_string()];
    dns_names.extend(e.aliases.iter().cloned());
    if running {
        json!({
            "IPAMConfig": ipam, "Links": null, "Aliases": aliases, "MacAddress": e.mac,
            "DriverOpts": null, "GwPriority": 0,
            "NetworkID": e.network, "EndpointID": endpoint_id(&c.id, &e.network),
            "Gateway": e.gateway.to_string(), "IPAddress": e.ip.to_string(),
            "IPPrefixLen": prefix_len(&e.subnet), "IPv6Gateway": "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": dns_names,
        })
    } else {
        json!({
            "IPAMConfig": ipam, "Links": null, "Aliases": aliases, "MacAddress": "",
            "DriverOpts": null, "GwPriority": 0,
            "NetworkID": e.network, "EndpointID": "", "Gateway": "", "IPAddress": "",
            "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "DNSNames": null,
        })
    }
}

/// `NetworkSettings.Networks`, by network name (`none` without networks).
fn networks_json(
    c: &ContainerRecord,
    running: bool,
    version: ApiVersion,
) -> serde_json::Map<String, Value> {
    let mut networks = serde_json::Map::new();
    for e in &c.spec.networks {
        let mut v = endpoint_json(c, e, running);
        // Before 1.45 (when `DNSNames` took it over) Docker listed the short
        // id among a user network's aliases.
        if !version.at_least(45) && e.name != cluster::networks::DEFAULT_NETWORK {
            let mut aliases = vec![json!(c.id[..12])];
            aliases.extend(v["Aliases"].as_array().cloned().unwrap_or_default());
            v["Aliases"] = json!(aliases);
        }
        // Fields of later API versions are not shown to earlier clients.
        if let Some(m) = v.as_object_mut() {
            if !version.at_least(48) {
                m.remove("GwPriority");
            }
            if !version.at_least(44) {
                m.remove("DNSNames");
            }
        }
        networks.insert(e.name.clone(), v);
    }
    if networks.is_empty() {
        let mode = if c.spec.host_network { "host" } else { "none" };
        networks.insert(
            mode.into(),
            json!({"IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": "",
                   "NetworkID": mode, "EndpointID": "", "Gateway": "", "IPAddress": "",
                   "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
                   "GlobalIPv6PrefixLen": 0, "DNSNames": null}),
        );
    }
    networks
}

pub(crate) fn summary(
    c: &ContainerRecord,
    vols: &[cluster::model::VolumeRecord],
    version: ApiVersion,
) -> Value {
    let running = c.state.status.is_running();
    let networks = networks_json(c, running, version);
    // Docker's: the path, then the arguments, those with a space quoted.
    let command = std::iter::once(c.spec.process.args.first().cloned().unwrap_or_default())
        .chain(c.spec.process.args.iter().skip(1).map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ");
    let mode = host_config_json(
        json!({"NetworkMode": c.config["HostConfig"]["NetworkMode"]}),
        version,
    )["NetworkMode"]
        .clone();
    json!({
        "Id": c.id,
        "Names": [format!("/{}", c.name)],
        "Image": c.image_ref,
        "ImageID": c.image_id,
        "Command": command,
        "Created": c.created.timestamp(),
        "Ports": ports_json(c, running),
        "Labels": c.labels,
        "State": c.state.status.as_str(),
        "Status": status_text(c),
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": networks},
        "Mounts": mounts_json(c, vols),
    })
}

/// The `Mounts` of inspect and ps. A volume's host directory is not shown.
fn mounts_json(c: &ContainerRecord, vols: &[cluster::model::VolumeRecord]) -> Vec<Value> {
    c.spec
        .mounts
        .iter()
        .map(|m| match m.kind {
            agent_client::MountKind::Volume => {
                let v = vols.iter().find(|v| v.id == m.source);
                // Docker's default for a named volume: SELinux relabelling
                // ("z"), a no-op on servers without SELinux.
                let named = v.is_some_and(|v| !v.anonymous);
                json!({
                "Type": "volume",
                "Name": v.map(|v| v.name.as_str()).unwrap_or(""),
                "Source": "",
                "Destination": m.destination,
                "Driver": "local",
                "Mode": if named { "z" } else { "" },
                "RW": !m.read_only,
                "Propagation": "",
                })
            }
            agent_client::MountKind::Bind => json!({
                "Type": "bind",
                "Source": m.source,
                "Destination": m.destination,
                "Mode": "",
                "RW": !m.read_only,
                "Propagation": "rprivate",
            }),
        })
        .collect()
}

pub async fn create(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    if body.is_empty() {
        return Err(ApiError::bad(
            "config cannot be empty in order to create a container",
        ));
    }
    let req: ContainerCreateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid JSON in request body: {e}")))?;
    if let Some(pl) = p.get("platform").filter(|s| !s.is_empty())
        && !pl.starts_with("linux")
    {
        return Err(ApiError::bad(format!("platform {pl} is not supported")));
    }
    let (id, warnings) = st
        .cluster
        .create_container(&acct.0, p.get("name"), req)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": id, "Warnings": warnings})),
    )
        .into_response())
}

pub async fn list(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    version: ApiVersion,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<Value>>> {
    let p = Params::parse(q.as_deref());
    let f = p.filters()?;
    f.only(&[
        "id", "name", "label", "status", "ancestor", "exited", "before", "since", "network",
        "health", "is-task", "volume", "publish", "expose",
    ])?;
    if let Some(st) = f.get("status") {
        for s in st {
            if Status::parse(s).is_none() {
                return Err(ApiError::bad(format!("invalid filter 'status={s}'")));
            }
        }
    }
    let health: Vec<String> = f.get("health").unwrap_or_default().to_vec();
    for h in &health {
        if !["starting", "healthy", "unhealthy", "none"].contains(&h.as_str()) {
            return Err(ApiError::bad(format!(
                "Unrecognised filter value for health: {h}"
            )));
        }
    }
    let exited: Vec<i32> = f
        .get("exited")
        .unwrap_or_default()
        .iter()
        .map(|e| {
            e.parse()
                .map_err(|_| ApiError::bad(format!("invalid filter 'exited={e}'")))
        })
        .collect::<ApiResult<_>>()?;
    let all_flag = p.bool("all");
    let limit = p.int("limit")?.unwrap_or(-1);
    let all = st.cluster.list_containers(&acct.0).await?;
    let vols = st.cluster.list_volumes(&acct.0).await?;
    // before/since refer to other containers of the caller.
    let mut before = None;
    let mut since = None;
    if let Some(b) = f.get("before").and_then(|v| v.first()) {
        before = Some(st.cluster.find_container(&acct.0, b).await?.created);
    }
    if let Some(s) = f.get("since").and_then(|v| v.first()) {
        since = Some(st.cluster.find_container(&acct.0, s).await?.created);
    }
    let mut ancestors = Vec::new();
    for a in f.get("ancestor").unwrap_or_default() {
        if let Ok(img) = st.cluster.find_image(&acct.0, a).await {
            ancestors.push(img.id);
        }
    }
    let mut out = Vec::new();
    for c in &all {
        let show_all = all_flag || limit > 0 || f.get("status").is_some() || !exited.is_empty();
        if !show_all && !c.state.status.is_running() {
            continue;
        }
        if let Some(ids) = f.get("id")
            && !ids.iter().any(|i| c.id.starts_with(i.as_str()))
        {
            continue;
        }
        if let Some(names) = f.get("name")
            && !names
                .iter()
                .any(|n| regex_match(n.trim_start_matches('/'), &c.name))
        {
            continue;
        }
        if !f.labels_match("label", &c.labels) {
            continue;
        }
        if let Some(sts) = f.get("status")
            && !sts.iter().any(|s| s == c.state.status.as_str())
        {
            continue;
        }
        if !exited.is_empty()
            && (c.state.status != Status::Exited || !exited.contains(&c.state.exit_code))
        {
            continue;
        }
        if !health.is_empty() && !health.iter().any(|h| h == health_status(c)) {
            continue;
        }
        if let Some(want) = f.get("volume") {
            let mounts = mounts_json(c, &vols);
            let hit = want.iter().any(|w| {
                mounts
                    .iter()
                    .any(|m| m["Name"] == w.as_str() || m["Destination"] == w.as_str())
            });
            if !hit {
                continue;
            }
        }
        if f.get("ancestor").is_some() && !ancestors.contains(&c.image_id) {
            continue;
        }
        if before.is_some_and(|b| c.created >= b) || since.is_some_and(|s| c.created <= s) {
            continue;
        }
        if let Some(nets) = f.get("network")
            && !nets.iter().any(|n| {
                c.spec
                    .networks
                    .iter()
                    .any(|e| &e.name == n || &e.network == n)
                    || (n == "none" && c.spec.networks.is_empty())
            })
        {
            continue;
        }
        let mut v = summary(c, &vols, version);
        if st.cluster.server_down(&c.node) && c.state.status.is_running() {
            v["Status"] = json!(format!("{} (server down)", status_text(c)));
        }
        out.push(v);
        if limit > 0 && out.len() as i64 >= limit {
            break;
        }
    }
    if p.bool("size") {
        add_sizes(&st, &acct.0, &mut out).await;
    }
    Ok(Json(out))
}

/// How many containers' sizes are measured at once, and how long one may take.
const SIZES_AT_ONCE: usize = 8;

/// `SizeRw` and `SizeRootFs` of each listed container, measured on their
/// servers a few at a time; one that cannot be measured (its server down,
/// too slow) shows 0, as the rest of the list is still worth having.
pub(crate) async fn add_sizes(st: &AppState, account: &str, list: &mut [Value]) {
    use futures::StreamExt;
    let ids: Vec<String> = list
        .iter()
        .map(|v| v["Id"].as_str().unwrap_or_default().to_string())
        .collect();
    let sizes: Vec<(u64, u64)> = futures::stream::iter(ids)
        .map(|id| async move {
            tokio::time::timeout(
                cluster::Cluster::SIZE_TIMEOUT,
                st.cluster.container_size(account, &id),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or((0, 0))
        })
        .buffered(SIZES_AT_ONCE)
        .collect()
        .await;
    for (v, (rw, rootfs)) in list.iter_mut().zip(sizes) {
        v["SizeRw"] = json!(rw);
        v["SizeRootFs"] = json!(rootfs);
    }
}

pub async fn inspect(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    version: ApiVersion,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let c = st.cluster.find_container(&acct.0, &id).await?;
    let running = c.state.status.is_running();
    let exec_ids = match st.cluster.exec_ids(&c.id) {
        ids if ids.is_empty() => Value::Null,
        ids => json!(ids),
    };
    let mut hc = host_config_json(c.config["HostConfig"].clone(), version);
    // Docker names the runtime once the container has started.
    if c.state.started_at.is_some() && hc.get("Runtime").is_none_or(Value::is_null) {
        hc["Runtime"] = json!("runc");
    }
    let mut ports = serde_json::Map::new();
    for p in &c.spec.ports {
        let key = format!("{}/{}", p.container_port, p.proto);
        let v = if running {
            json!([{"HostIp": published_ip(&c, p), "HostPort": p.host_port.to_string()}])
        } else {
            Value::Null
        };
        ports.insert(key, v);
    }
    let networks = networks_json(&c, running, version);
    // The top-level address fields are the default network's, as Docker's.
    let net = c
        .spec
        .networks
        .iter()
        .find(|e| e.name == cluster::networks::DEFAULT_NETWORK)
        .map(|e| endpoint_json(&c, e, running))
        .unwrap_or(Value::Null);
    let cfg = &c.config;
    let args = &c.spec.process.args;
    let mut out = json!({
        "Id": c.id,
        "Created": c.created.to_rfc3339_opts(SecondsFormat::Nanos, true),
        "Path": args.first().cloned().unwrap_or_default(),
        "Args": args.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": c.state.status.as_str(),
            "Running": running && c.state.status != Status::Restarting,
            "Paused": c.state.status == Status::Paused,
            "Restarting": c.state.status == Status::Restarting,
            "OOMKilled": c.state.oom_killed,
            "Dead": c.state.status == Status::Dead,
            "Pid": c.state.pid,
            "ExitCode": c.state.exit_code,
            "Error": if st.cluster.server_down(&c.node) {
                json!(cluster::Cluster::SERVER_DOWN)
            } else {
                json!(c.state.error)
            },
            "StartedAt": ts(&c.state.started_at),
            "FinishedAt": ts(&c.state.finished_at),
        },
        "Image": c.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": "",
        "Name": format!("/{}", c.name),
        "RestartCount": c.state.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": exec_ids,
        "HostConfig": hc,
        "GraphDriver": {"Name": "overlay2", "Data": null},
        "Mounts": mounts_json(&c, &st.cluster.list_volumes(&acct.0).await?),
        "Config": c.docker_config(),
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": if running { c.id.clone() } else { String::new() },
            "SandboxKey": "",
            "Ports": ports,
            "HairpinMode": false,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "SecondaryIPAddresses": null,
            "SecondaryIPv6Addresses": null,
            "EndpointID": if running { c.id.clone() } else { String::new() },
            "Gateway": net["Gateway"].as_str().unwrap_or(""),
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": net["IPAddress"].as_str().unwrap_or(""),
            "IPPrefixLen": net["IPPrefixLen"].as_u64().unwrap_or(0),
            "IPv6Gateway": "",
            "MacAddress": net["MacAddress"].as_str().unwrap_or(""),
            "Networks": networks,
        },
    });
    // Docker leaves these out when there is nothing to say.
    // Health is watched from the first start on.
    let health = health_json(&c);
    if !health.is_null() && c.state.started_at.is_some() {
        out["State"]["Health"] = health;
    }
    for key in ["Healthcheck", "StopTimeout"] {
        if let Some(v) = cfg.get(key).filter(|v| !v.is_null()) {
            out["Config"][key] = v.clone();
        }
    }
    if let Some(p) = cfg.get("ExposedPorts").filter(|p| !p.is_null()) {
        out["Config"]["ExposedPorts"] = p.clone();
    }
    if cfg.get("StopSignal").is_some_and(|s| !s.is_null()) || c.spec.stop_signal != "SIGTERM" {
        out["Config"]["StopSignal"] = json!(c.spec.stop_signal);
    }
    if Params::parse(q.as_deref()).bool("size") {
        let (rw, rootfs) = st.cluster.container_size(&acct.0, &c.id).await?;
        out["SizeRw"] = json!(rw);
        out["SizeRootFs"] = json!(rootfs);
    }
    Ok(Json(out))
}

/// The `HostConfig` inspect shows: what the create stored, over Docker's
/// value for every field it left out (clients read fields without checking
/// that they are there).
fn host_config_json(stored: Value, version: ApiVersion) -> Value {
    let mut hc = match stored {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    // Docker 25 (API 1.44) names the defaults; earlier daemons left them empty.
    let newer = version.at_least(44);
    if hc
        .get("NetworkMode")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        hc.insert(
            "NetworkMode".into(),
            json!(if newer { "bridge" } else { "default" }),
        );
    }
    if hc.get("RestartPolicy").is_none_or(Value::is_null) {
        hc.insert(
            "RestartPolicy".into(),
            json!({"Name": if newer { "no" } else { "" }, "MaximumRetryCount": 0}),
        );
    }
    let defaults = json!({
        "Binds": null, "ContainerIDFile": "", "LogConfig": {"Type": "json-file", "Config": {}},
        "PortBindings": null, "AutoRemove": false, "VolumeDriver": "", "VolumesFrom": null,
        "ConsoleSize": [0, 0], "CapAdd": null, "CapDrop": null, "CgroupnsMode": "host",
        "Dns": null, "DnsOptions": null, "DnsSearch": null, "ExtraHosts": null, "GroupAdd": null,
        "IpcMode": "private", "Cgroup": "", "Links": null, "OomScoreAdj": 0, "PidMode": "",
        "Privileged": false, "PublishAllPorts": false, "ReadonlyRootfs": false,
        "SecurityOpt": null, "UTSMode": "", "UsernsMode": "", "ShmSize": 67108864,
        "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0, "CgroupParent": "",
        "BlkioWeight": 0, "BlkioWeightDevice": null, "BlkioDeviceReadBps": null,
        "BlkioDeviceWriteBps": null, "BlkioDeviceReadIOps": null, "BlkioDeviceWriteIOps": null,
        "CpuPeriod": 0, "CpuQuota": 0, "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0,
        "CpusetCpus": "", "CpusetMems": "", "Devices": null, "DeviceCgroupRules": null,
        "DeviceRequests": null, "KernelMemory": 0, "KernelMemoryTCP": 0, "MemoryReservation": 0,
        "MemorySwap": 0, "MemorySwappiness": null, "OomKillDisable": false, "PidsLimit": null,
        "Ulimits": null, "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0, "MaskedPaths": agent_client::MASKED_PATHS,
        "ReadonlyPaths": agent_client::READONLY_PATHS,
    });
    let privileged = hc.get("Privileged") == Some(&json!(true));
    let host = |k: &str| hc.get(k).and_then(Value::as_str) == Some("host");
    if privileged || host("PidMode") || host("IpcMode") {
        // Docker turns SELinux labelling off for these.
        if hc.get("SecurityOpt").is_none_or(Value::is_null) {
            hc.insert("SecurityOpt".into(), json!(["label=disable"]));
        }
    }
    if privileged {
        // Nothing is masked or read-only in a privileged container.
        hc.insert("MaskedPaths".into(), Value::Null);
        hc.insert("ReadonlyPaths".into(), Value::Null);
    }
    for (k, v) in defaults.as_object().into_iter().flatten() {
        hc.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if version.at_least(42) {
        // Gone from the API since 1.42 (Docker 23).
        hc.remove("KernelMemory");
        hc.remove("KernelMemoryTCP");
    }
    Value::Object(hc)
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

pub async fn start(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.cluster.start_container(&acct.0, &id).await?;
    Ok(no_content())
}

pub async fn stop(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    st.cluster
        .stop_container(&acct.0, &id, p.int("t")?, p.get("signal"))
        .await?;
    Ok(no_content())
}

pub async fn kill(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    st.cluster
        .kill_container(&acct.0, &id, p.get("signal"))
        .await?;
    Ok(no_content())
}

pub async fn restart(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    st.cluster
        .restart_container(&acct.0, &id, p.int("t")?, p.get("signal"))
        .await?;
    Ok(no_content())
}

pub async fn rename(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    st.cluster
        .rename_container(&acct.0, &id, p.get("name").unwrap_or(""))
        .await?;
    Ok(no_content())
}

pub async fn remove(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    if p.bool("link") {
        return Err(ApiError::bad("links are not supported"));
    }
    let c = st.cluster.find_container(&acct.0, &id).await?;
    st.cluster
        .remove_container(&acct.0, &c.id, p.bool("force"))
        .await?;
    if p.bool("v") {
        st.cluster.remove_anonymous_volumes(&c).await;
    }
    Ok(no_content())
}

pub async fn wait(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let cond = WaitCondition::parse(p.get("condition").unwrap_or(""))?;
    let fut = st.cluster.wait_container(&acct.0, &id, cond).await?;
    // Headers go out now; the body when the condition is met (Docker does the same,
    // so clients can start the container after the wait is registered).
    let body = futures::stream::once(async move {
        let v = match fut.await {
            Ok(code) => json!({"StatusCode": code, "Error": null}),
            Err(e) => json!({"StatusCode": -1, "Error": {"Message": e.to_string()}}),
        };
        let mut b = serde_json::to_vec(&v).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(b))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_default())
}

pub async fn logs(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    if !p.bool("stdout") && !p.bool("stderr") {
        return Err(ApiError::bad(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    if let Some(t) = p.get("tail")
        && t != "all"
        && !t.is_empty()
        && t.parse::<i64>().is_err()
    {
        return Err(ApiError::bad(format!("invalid value for tail: {t}")));
    }
    for key in ["since", "until"] {
        if let Some(v) = p.get(key).filter(|v| !v.is_empty())
            && v.parse::<f64>().is_err()
        {
            return Err(ApiError::bad(format!("invalid value for {key}: {v}")));
        }
    }
    let c = st.cluster.find_container(&acct.0, &id).await?;
    if c.config["HostConfig"]["LogConfig"]["Type"] == "none" {
        return Err(ApiError(cluster::Error::NotImplemented(
            "configured logging driver does not support reading".into(),
        )));
    }
    let (tty, body) = st
        .cluster
        .container_logs(&acct.0, &c.id, q.as_deref().unwrap_or(""))
        .await?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, if tty { RAW } else { MULTIPLEXED })
        .body(Body::new(body))
        .unwrap_or_default())
}

/// `DELETE /containers/{parent}/{alias}?link=1`: removes a legacy link.
pub async fn remove_link(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path((parent, alias)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    if !Params::parse(q.as_deref()).bool("link") {
        // Without `link`, Docker reads the path as a container's name.
        return Err(ApiError(cluster::Error::no_such_container(&format!(
            "{parent}/{alias}"
        ))));
    }
    st.cluster.remove_link(&acct.0, &parent, &alias).await?;
    Ok(no_content())
}

pub async fn pause(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.cluster.set_paused(&acct.0, &id, true).await?;
    Ok(no_content())
}

pub async fn unpause(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.cluster.set_paused(&acct.0, &id, false).await?;
    Ok(no_content())
}

pub async fn resize(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let (h, w) = Params::parse(q.as_deref()).terminal_size()?;
    st.cluster.resize_container(&acct.0, &id, h, w).await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /commit`: the container's changes as a new image.
pub async fn commit(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let container = p
        .get("container")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad("container is required"))?;
    let repo = p.get("repo").unwrap_or("");
    let tag = p.get("tag").unwrap_or("");
    let reference = match (repo, tag) {
        ("", _) => String::new(),
        (r, "") => r.to_string(),
        (r, t) => format!("{r}:{t}"),
    };
    let config = if body.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice::<Value>(&body)
                .map_err(|e| ApiError::bad(format!("invalid JSON in request body: {e}")))?,
        )
    };
    let opts = cluster::commit::CommitOptions {
        reference,
        comment: p.get("comment").unwrap_or("").to_string(),
        author: p.get("author").unwrap_or("").to_string(),
        changes: p.all("changes"),
        config,
    };
    let id = st
        .cluster
        .commit_container(&acct.0, container, opts)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "Id": id }))).into_response())
}

pub async fn top(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let raw = q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("ps_args="))
        .next()
        .unwrap_or("");
    Ok(Json(st.cluster.top_container(&acct.0, &id, raw).await?))
}

pub async fn update(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let u: bollard_stubs::models::ContainerUpdateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid JSON in request body: {e}")))?;
    let warnings = st.cluster.update_container(&acct.0, &id, u).await?;
    Ok(Json(json!({ "Warnings": warnings })))
}

pub async fn attach(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let keys: Vec<String> = cluster::exec::parse_detach_keys(p.get("detachKeys").unwrap_or(""))?
        .iter()
        .map(|b| b.to_string())
        .collect();
    let query = format!(
        "{}&detach_keys={}",
        q.as_deref().unwrap_or(""),
        keys.join(",")
    );
    if p.get("stream").is_some() && !p.bool("stream") {
        // Not streaming: what was logged (with `logs`), then the end.
        let c = st.cluster.find_container(&acct.0, &id).await?;
        let tty = c.spec.process.tty;
        if !p.bool("logs") {
            return Ok(crate::streams::finite(req, Body::empty(), tty));
        }
        let streams = format!(
            "stdout={}&stderr={}",
            u8::from(p.bool("stdout")),
            u8::from(p.bool("stderr"))
        );
        let (_, body) = st.cluster.container_logs(&acct.0, &c.id, &streams).await?;
        return Ok(crate::streams::finite(req, Body::new(body), tty));
    }
    let (tty, upstream) = st.cluster.attach_container(&acct.0, &id, &query).await?;
    Ok(hijack(req, upstream, tty))
}

pub async fn prune(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let p = Params::parse(q.as_deref());
    let f = p.filters()?;
    f.only(&["label", "label!", "until"])?;
    let until = f.until()?;
    let (removed, reclaimed) = st
        .cluster
        .prune_containers(&acct.0, |c| {
            f.prune_keeps(&c.labels) || until.is_some_and(|u| c.created > u)
        })
        .await?;
    Ok(Json(
        json!({"ContainersDeleted": removed, "SpaceReclaimed": reclaimed}),
    ))
}

/// `until` values: a unix timestamp, RFC 3339, or a Go duration like `10m`, `24h`.
pub fn parse_until(s: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(secs) = s.parse::<f64>() {
        return DateTime::from_timestamp(secs as i64, 0)
            .ok_or_else(|| ApiError::bad(format!("invalid until: {s}")));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (num, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: i64 = num
        .parse()
        .map_err(|_| ApiError::bad(format!("invalid until: {s}")))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(ApiError::bad(format!("invalid until: {s}"))),
    };
    Ok(Utc::now() - chrono::Duration::seconds(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_config_shows_dockers_defaults_for_the_version_asked() {
        assert_eq!(
            crate::ApiVersion::parse(crate::API_VERSION),
            Some(crate::ApiVersion::CURRENT)
        );
        let old = host_config_json(json!({"Memory": 5}), crate::ApiVersion(1, 41));
        assert_eq!(old["Memory"], 5, "what create stored stays");
        assert_eq!(old["NetworkMode"], "default");
        assert_eq!(old["RestartPolicy"]["Name"], "");
        assert_eq!(old["KernelMemory"], 0);
        assert_eq!(old["ShmSize"], 67108864);
        let new = host_config_json(json!({"NetworkMode": "mynet"}), crate::ApiVersion::CURRENT);
        assert_eq!(new["NetworkMode"], "mynet");
        assert_eq!(new["RestartPolicy"]["Name"], "no");
        assert!(new.get("KernelMemory").is_none());
    }

    #[test]
    fn durations_read_like_docker() {
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(0)), "Less than a second");
        assert_eq!(human_duration(d(5)), "5 seconds");
        assert_eq!(human_duration(d(65)), "About a minute");
        assert_eq!(human_duration(d(600)), "10 minutes");
        assert_eq!(human_duration(d(3700)), "About an hour");
        assert_eq!(human_duration(d(5 * 3600)), "5 hours");
        assert!(parse_until("10m").is_ok());
        assert!(parse_until("soon").is_err());
    }
}
