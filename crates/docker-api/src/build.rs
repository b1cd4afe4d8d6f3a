//! `POST /build`: the classic builder's API. The body is the context tar;
//! the answer is the builder's JSON stream (`stream`, `aux`, `errorDetail`).
//! Until the first line, failures (a bad Dockerfile, a missing target) are
//! plain HTTP errors, as dockerd's are.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{RawQuery, Request, State};
use axum::response::Response;
use cluster::build::BuildOptions;
use futures::TryStreamExt;

use crate::error::{ApiError, ApiResult};
use crate::images::{AuthConfig, progress_response};
use crate::params::Params;
use crate::{Account, AppState};

/// A JSON object parameter (`buildargs`, `labels`), empty when absent.
fn json_param<T: serde::de::DeserializeOwned + Default>(p: &Params, key: &str) -> ApiResult<T> {
    match p.get(key).filter(|v| !v.is_empty()) {
        None => Ok(T::default()),
        Some(v) => serde_json::from_str(v)
            .map_err(|e| ApiError::bad(format!("invalid {key} parameter: {e}"))),
    }
}

/// `X-Registry-Config`: base64url JSON, registry → credentials, for the
/// pulls of `FROM` lines. Used for this build only.
fn registry_config(
    headers: &http::HeaderMap,
) -> ApiResult<BTreeMap<String, images::registry::Credentials>> {
    use base64::Engine as _;
    let Some(value) = headers.get("x-registry-config") else {
        return Ok(BTreeMap::new());
    };
    let bad = || ApiError::bad("invalid X-Registry-Config header: not base64url JSON");
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Ok(BTreeMap::new());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .map_err(|_| bad())?;
    let map: BTreeMap<String, AuthConfig> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let mut out = BTreeMap::new();
    for (registry, c) in map {
        if let Some(creds) = c.credentials().ok_or_else(bad)? {
            out.insert(registry, creds);
        }
    }
    Ok(out)
}

pub fn options(p: &Params, headers: &http::HeaderMap) -> ApiResult<BuildOptions> {
    if p.get("remote").is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::bad(
            "remote build contexts (git or URL) are not supported: send the context as a tar",
        ));
    }
    if p.bool("squash") {
        return Err(ApiError::bad("--squash is not supported"));
    }
    if p.get("outputs").is_some_and(|o| !o.is_empty() && o != "[]") {
        return Err(ApiError::bad(
            "--output needs BuildKit, which atoll does not offer",
        ));
    }
    let cache_from: Vec<String> = json_param(p, "cachefrom")?;
    Ok(BuildOptions {
        tags: p.all("t").into_iter().filter(|t| !t.is_empty()).collect(),
        dockerfile: p.get("dockerfile").unwrap_or("").to_string(),
        quiet: p.bool("q"),
        no_cache: p.bool("nocache"),
        pull: p.bool("pull"),
        remove: p.get("rm").is_none() || p.bool("rm"),
        force_remove: p.bool("forcerm"),
        build_args: json_param(p, "buildargs")?,
        labels: json_param(p, "labels")?,
        target: p
            .get("target")
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        network_mode: p
            .get("networkmode")
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        extra_hosts: p
            .get("extrahosts")
            .map(|h| {
                h.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        shm_size: p.int("shmsize")?.filter(|v| *v > 0),
        memory: p.int("memory")?.filter(|v| *v > 0),
        memory_swap: p.int("memswap")?.filter(|v| *v != 0),
        cpu_shares: p.int("cpushares")?.filter(|v| *v > 0),
        cpu_period: p.int("cpuperiod")?.filter(|v| *v > 0),
        cpu_quota: p.int("cpuquota")?.filter(|v| *v > 0),
        cpuset_cpus: p
            .get("cpusetcpus")
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        platform: p
            .get("platform")
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        cache_from,
        credentials: registry_config(headers)?,
    })
}

pub async fn build(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let opts = match options(&p, req.headers()) {
        Ok(o) => o,
        Err(e) => {
            // Read on (within a bound) so the client, still sending its
            // context, gets the answer rather than a broken pipe.
            let mut body = req.into_body().into_data_stream();
            let mut drained = 0usize;
            while drained < cluster::build::DRAIN_ON_REFUSAL {
                match futures::StreamExt::next(&mut body).await {
                    Some(Ok(c)) => drained += c.len(),
                    _ => break,
                }
            }
            return Err(e);
        }
    };
    let quiet = opts.quiet;
    let body = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let prepared = st
        .cluster
        .prepare_build(&acct.0, opts, Box::pin(body))
        .await?;
    let cluster = st.cluster.clone();
    progress_response(move |tx| async move {
        if quiet {
            // `-q`: only the image id (the `aux` line) and errors reach the client.
            let (inner, mut rx) = tokio::sync::mpsc::channel::<serde_json::Value>(64);
            let forward = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    // The CLI prints what streams in quiet mode: the id alone
                    // (and keepalives, which carry the client's hang-up back).
                    let out = if m.is_null() {
                        vec![m]
                    } else if let Some(id) = m["aux"]["ID"].as_str() {
                        let line = serde_json::json!({"stream": format!("{id}\n")});
                        vec![m.clone(), line]
                    } else {
                        Vec::new()
                    };
                    for o in out {
                        if tx.send(o).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let r = cluster.run_build(prepared, inner).await;
            let _ = forward.await;
            r.map(|_| ())
        } else {
            cluster.run_build(prepared, tx).await.map(|_| ())
        }
    })
    .await
}

/// `POST /build/prune` (`docker builder prune`).
pub async fn prune(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let p = Params::parse(q.as_deref());
    let filters = p.filters()?;
    filters.only(&["until"])?;
    let until = filters.until()?;
    let (deleted, reclaimed) = st
        .cluster
        .prune_build_cache(&acct.0, p.bool("all"), until)
        .await?;
    Ok(axum::Json(serde_json::json!({
        "CachesDeleted": deleted,
        "SpaceReclaimed": reclaimed,
    })))
}

/// The account's build cache as `docker system df` lists it.
pub async fn cache_usage(st: &AppState, account: &str) -> ApiResult<Vec<serde_json::Value>> {
    let images: std::collections::BTreeSet<String> = st
        .cluster
        .store()
        .list_images(account)
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    Ok(st
        .cluster
        .build_cache(account)
        .await?
        .into_iter()
        .map(|e| {
            let mount = e.key.starts_with("mount/");
            serde_json::json!({
                "ID": &e.key[e.key.len().saturating_sub(25)..],
                "Parent": "",
                "Parents": [],
                "Type": if mount { "exec.cachemount" } else { "regular" },
                "Description": e.description,
                "InUse": false,
                "Shared": images.contains(&e.image_id),
                "Size": e.size,
                "CreatedAt": e.created.to_rfc3339(),
                "LastUsedAt": e.last_used.to_rfc3339(),
                "UsageCount": e.usage_count,
            })
        })
        .collect())
}
