//! `/images/*` handlers. Image names may contain slashes (`host:5000/a/b:tag`), so
//! everything under `/images/` is dispatched here by suffix, as Docker's router does.

use std::io::Read;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat};
use cluster::create::ImageDefaults;
use cluster::images::RemovedItem;
use cluster::model::ImageRecord;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::streams::json_lines;
use crate::{Account, ApiVersion, AppState};

/// A request body as a blocking reader, for the image library's sync parsers.
pub(crate) fn body_reader(body: Body) -> impl Read + Send + 'static {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    SyncIoBridge::new(StreamReader::new(stream))
}

fn removed_json(items: &[RemovedItem]) -> Vec<Value> {
    items
        .iter()
        .map(|i| match i {
            RemovedItem::Untagged(t) => json!({"Untagged": t}),
            RemovedItem::Deleted(d) => json!({"Deleted": d}),
        })
        .collect()
}

pub(crate) async fn summary(st: &AppState, acct: &str, i: &ImageRecord) -> ApiResult<Value> {
    let tags = st.cluster.image_tags(acct, &i.id).await?;
    let cfg = st.cluster.image_config(&i.id)?;
    Ok(json!({
        "Id": i.id,
        "ParentId": "",
        "RepoTags": tags,
        "RepoDigests": i.repo_digests,
        "Created": i.created.timestamp(),
        "Size": i.size,
        "SharedSize": -1,
        "VirtualSize": i.size,
        "Labels": cfg["config"]["Labels"].as_object().cloned().unwrap_or_default(),
        "Containers": -1,
    }))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<Value>>> {
    let p = Params::parse(q.as_deref());
    let f = p.filters()?;
    f.only(&["dangling", "label", "before", "since", "reference", "until"])?;
    let dangling = f.boolean("dangling")?;
    let mut before = None;
    let mut since = None;
    if let Some(b) = f.get("before").and_then(|v| v.first()) {
        before = Some(st.cluster.find_image(&acct.0, b).await?.created);
    }
    if let Some(s) = f.get("since").and_then(|v| v.first()) {
        since = Some(st.cluster.find_image(&acct.0, s).await?.created);
    }
    let mut images = st.cluster.store().list_images(&acct.0).await?;
    images.sort_by_key(|i| std::cmp::Reverse(i.created));
    let mut out = Vec::new();
    for i in &images {
        let mut s = summary(&st, &acct.0, i).await?;
        let tags: Vec<String> = s["RepoTags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(d) = dangling
            && d != tags.is_empty()
        {
            continue;
        }
        if let Some(refs) = f.get("reference") {
            let kept: Vec<String> = tags
                .iter()
                .filter(|t| refs.iter().any(|r| reference_matches(r, t)))
                .cloned()
                .collect();
            if kept.is_empty() {
                continue;
            }
            s["RepoTags"] = json!(kept);
        }
        let labels = ImageDefaults::from_config(&st.cluster.image_config(&i.id)?).labels;
        if !f.labels_match("label", &labels) {
            continue;
        }
        if before.is_some_and(|b| i.created >= b) || since.is_some_and(|x| i.created <= x) {
            continue;
        }
        if !p.bool("all") && tags.is_empty() && dangling.is_none() && f.get("reference").is_some() {
            continue;
        }
        out.push(s);
    }
    Ok(Json(out))
}

/// Docker matches `reference` filters as a path glob against the familiar name,
/// with or without the tag.
fn reference_matches(pattern: &str, tag: &str) -> bool {
    let repo = tag.rsplit_once(':').map(|(r, _)| r).unwrap_or(tag);
    glob(pattern, tag) || glob(pattern, repo)
}

fn glob(pattern: &str, s: &str) -> bool {
    let re = format!(
        "^{}$",
        regex::escape(pattern)
            .replace("\\*", "[^/]*")
            .replace("\\?", "[^/]")
    );
    regex::Regex::new(&re)
        .map(|r| r.is_match(s))
        .unwrap_or(false)
}

/// A container config with every field at Docker's empty value.
fn empty_container_config() -> Value {
    json!({
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false,
        "AttachStdout": false, "AttachStderr": false, "Tty": false, "OpenStdin": false,
        "StdinOnce": false, "Env": null, "Cmd": null, "Image": "", "Volumes": null,
        "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": null,
    })
}

async fn inspect(
    st: &AppState,
    acct: &str,
    name: &str,
    version: ApiVersion,
) -> ApiResult<Response> {
    let i = st.cluster.find_image(acct, name).await?;
    let cfg = st.cluster.image_config(&i.id)?;
    let tags = st.cluster.image_tags(acct, &i.id).await?;
    let created = cfg["created"].as_str().unwrap_or("").to_string();
    let mut config = match &cfg["config"] {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if !version.at_least(48) {
        // Earlier clients read the container-config fields images never set.
        for (k, v) in empty_container_config().as_object().into_iter().flatten() {
            config.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut out = json!({
        "Id": i.id,
        "RepoTags": tags,
        "RepoDigests": i.repo_digests,
        "Parent": "",
        "Comment": cfg["comment"].as_str().unwrap_or(""),
        "Created": if created.is_empty() { i.created.to_rfc3339_opts(SecondsFormat::Nanos, true) } else { created },
        "DockerVersion": cfg["docker_version"].as_str().unwrap_or(""),
        "Author": cfg["author"].as_str().unwrap_or(""),
        "Config": config,
        "Architecture": cfg["architecture"].as_str().unwrap_or("amd64"),
        "Os": cfg["os"].as_str().unwrap_or("linux"),
        "Size": i.size,
        "VirtualSize": i.size,
        "GraphDriver": {"Name": "overlay2", "Data": null},
        "RootFS": {"Type": "layers", "Layers": i.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        "Metadata": {"LastTagTime": i.added.to_rfc3339_opts(SecondsFormat::Nanos, true)},
    });
    if let Some(v) = cfg.get("variant").filter(|v| !v.is_null()) {
        out["Variant"] = v.clone();
    }
    if !version.at_least(45) {
        // The build's last container, gone from the API since 1.45; compose
        // 1.x reads them on every recreate.
        out["Container"] = cfg.get("container").cloned().unwrap_or(json!(""));
        out["ContainerConfig"] = cfg
            .get("container_config")
            .cloned()
            .unwrap_or_else(empty_container_config);
    }
    Ok(Json(out).into_response())
}

async fn history(st: &AppState, acct: &str, name: &str) -> ApiResult<Response> {
    let i = st.cluster.find_image(acct, name).await?;
    let cfg = st.cluster.image_config(&i.id)?;
    let tags = st.cluster.image_tags(acct, &i.id).await?;
    let hist = cfg["history"].as_array().cloned().unwrap_or_default();
    let mut layer_sizes = i.layers.iter().map(|l| l.size);
    let mut out = Vec::new();
    for h in &hist {
        let empty = h["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layer_sizes.next().unwrap_or(0)
        };
        let created = h["created"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp())
            .unwrap_or(0);
        out.push(json!({
            "Id": "<missing>",
            "Created": created,
            "CreatedBy": h["created_by"].as_str().unwrap_or(""),
            "Tags": null,
            "Size": size,
            "Comment": h["comment"].as_str().unwrap_or(""),
        }));
    }
    if out.is_empty() {
        out.push(json!({"Id": "<missing>", "Created": i.created.timestamp(), "CreatedBy": "", "Tags": null, "Size": i.size, "Comment": ""}));
    }
    out.reverse();
    out[0]["Id"] = json!(i.id);
    out[0]["Tags"] = json!(tags);
    Ok(Json(out).into_response())
}

/// Everything under `/images/{name...}`.
pub async fn dispatch(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    version: ApiVersion,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let method = req.method().clone();
    let a = &acct.0;
    let split = |suffix: &str| rest.strip_suffix(suffix).filter(|n| !n.is_empty());
    if method == Method::GET {
        if let Some(name) = split("/json") {
            return inspect(&st, a, name, version).await;
        }
        if let Some(name) = split("/history") {
            return history(&st, a, name).await;
        }
        if let Some(name) = split("/get") {
            return save_names(&st, a, vec![name.to_string()]).await;
        }
    } else if method == Method::POST {
        if let Some(name) = split("/tag") {
            let repo = p.get("repo").unwrap_or("");
            if repo.is_empty() {
                return Err(ApiError::bad(
                    "repository name must have at least one component",
                ));
            }
            st.cluster
                .tag_image(a, name, repo, p.get("tag").unwrap_or(""))
                .await?;
            return Ok(StatusCode::CREATED.into_response());
        }
        if let Some(name) = split("/push") {
            let credentials = registry_auth(req.headers())?;
            let (cluster, account) = (st.cluster.clone(), a.clone());
            let (name, tag) = (name.to_string(), p.get("tag").unwrap_or("").to_string());
            return progress_response(move |tx| async move {
                cluster
                    .push_image(&account, &name, &tag, credentials, tx)
                    .await
            })
            .await;
        }
    } else if method == Method::DELETE {
        let items = st.cluster.remove_image(a, &rest, p.bool("force")).await?;
        return Ok(Json(removed_json(&items)).into_response());
    }
    Err(ApiError(cluster::Error::NotFound("page not found".into())))
}

pub async fn load(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    req: Request,
) -> ApiResult<Response> {
    let reader = body_reader(req.into_body());
    let lines = st.cluster.load_images(&acct.0, reader).await?;
    let msgs: Vec<Value> = lines
        .into_iter()
        .map(|l| json!({"stream": format!("{l}\n")}))
        .collect();
    Ok(json_lines(futures::stream::iter(msgs)))
}

/// The registry credentials of one request (`X-Registry-Auth`: base64url
/// JSON, as the docker CLI sends them): used for this request only, never
/// kept. None when absent or empty (`{}`, the CLI's "not logged in").
pub fn registry_auth(
    headers: &http::HeaderMap,
) -> ApiResult<Option<images::registry::Credentials>> {
    use base64::Engine as _;
    let Some(value) = headers.get("x-registry-auth") else {
        return Ok(None);
    };
    let bad = || ApiError::bad("invalid X-Registry-Auth header: not base64url JSON");
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .map_err(|_| bad())?;
    let c: AuthConfig = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    c.credentials().ok_or_else(bad)
}

/// One registry's entry in `X-Registry-Auth` / `X-Registry-Config`.
#[derive(serde::Deserialize)]
pub(crate) struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// `user:password`, base64, as in a config.json.
    #[serde(default)]
    auth: String,
    /// What a login answered as `IdentityToken`, instead of a password.
    #[serde(default)]
    identitytoken: String,
}

impl AuthConfig {
    /// None inside: no credentials given; None outside: a bad `auth`.
    pub(crate) fn credentials(self) -> Option<Option<images::registry::Credentials>> {
        use base64::Engine as _;
        if !self.identitytoken.is_empty() {
            return Some(Some(images::registry::Credentials::identity(
                self.username,
                self.identitytoken,
            )));
        }
        let (username, password) = if !self.username.is_empty() {
            (self.username, self.password)
        } else if !self.auth.is_empty() {
            let pair = base64::engine::general_purpose::STANDARD
                .decode(&self.auth)
                .ok()?;
            let pair = String::from_utf8(pair).ok()?;
            let (u, p) = pair.split_once(':')?;
            (u.to_string(), p.to_string())
        } else {
            return Some(None);
        };
        Some(Some(images::registry::Credentials::basic(
            username, password,
        )))
    }
}

/// `POST /auth` (`docker login`): checks the credentials against the
/// registry and answers as dockerd does. Nothing is kept: every later pull
/// or push carries its own `X-Registry-Auth`.
pub async fn auth(
    State(st): State<AppState>,
    Extension(_acct): Extension<Account>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    #[derive(serde::Deserialize)]
    struct AuthBody {
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        #[serde(default)]
        serveraddress: String,
    }
    let b: AuthBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid JSON in request body: {e}")))?;
    if b.username.is_empty() {
        return Err(ApiError::bad("username is required"));
    }
    let server = if b.serveraddress.is_empty() {
        "https://index.docker.io/v1/"
    } else {
        &b.serveraddress
    };
    let credentials = images::registry::Credentials::basic(b.username, b.password);
    let identity = st.cluster.registry_login(server, &credentials).await?;
    Ok(Json(
        json!({"Status": "Login Succeeded", "IdentityToken": identity.unwrap_or_default()}),
    ))
}

/// `POST /images/create`: pull (`fromImage`) or import (`fromSrc`).
pub async fn create(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    if let Some(src) = p.get("fromSrc").filter(|s| !s.is_empty()) {
        if src != "-" {
            return Err(ApiError::bad(
                "importing from a URL is not supported; pipe the tarball to `docker import -`",
            ));
        }
        let repo = p.get("repo").unwrap_or("");
        let tag = p.get("tag").unwrap_or("");
        let reference = match (repo, tag) {
            ("", _) => None,
            (r, "") => Some(r.to_string()),
            (r, t) => Some(format!("{r}:{t}")),
        };
        let reader = body_reader(req.into_body());
        let id = st
            .cluster
            .import_image(
                &acct.0,
                reader,
                reference.as_deref(),
                p.all("changes"),
                p.get("message").unwrap_or("").to_string(),
            )
            .await?;
        return Ok(json_lines(futures::stream::iter(vec![
            json!({"status": id}),
        ])));
    }
    let image = p.get("fromImage").unwrap_or("");
    if image.is_empty() {
        return Err(ApiError::bad("either fromImage or fromSrc must be given"));
    }
    let tag = p.get("tag").unwrap_or("");
    let reference = if tag.is_empty() {
        image.to_string()
    } else if tag.starts_with("sha256:") {
        format!("{image}@{tag}")
    } else {
        format!("{image}:{tag}")
    };
    let credentials = registry_auth(req.headers())?;
    let platform = p
        .get("platform")
        .filter(|p| !p.is_empty())
        .map(str::parse::<images::registry::Platform>)
        .transpose()
        .map_err(|e| ApiError(e.into()))?;
    let (cluster, account) = (st.cluster.clone(), acct.0.clone());
    progress_response(move |tx| async move {
        cluster
            .pull_image(&account, &reference, credentials, platform, tx)
            .await
    })
    .await
}

/// Runs `job` (a pull, a push) with a progress channel and answers with its
/// lines as a JSON stream. Until the first line, a failure is still an HTTP
/// error (Docker does the same); after it, errors travel in the stream.
pub(crate) async fn progress_response<F, Fut>(job: F) -> ApiResult<Response>
where
    F: FnOnce(cluster::images::ProgressTx) -> Fut,
    Fut: std::future::Future<Output = cluster::Result<()>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(256);
    let mut task = tokio::spawn(job(tx));
    // The job's end closes the channel: a closed channel before any line
    // means the job's result is the answer.
    let mut finished = None;
    let first = tokio::select! {
        m = rx.recv() => m,
        r = &mut task => {
            finished = Some(r);
            rx.recv().await
        }
    };
    let outcome = async move {
        match finished {
            Some(r) => r,
            None => task.await,
        }
    };
    if first.is_none() {
        return match outcome.await {
            Ok(Ok(())) => Ok(json_lines(futures::stream::empty())),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(ApiError(cluster::Error::internal("progress task", e))),
        };
    }
    let outcome = Some(Box::pin(outcome));
    let tail = futures::stream::unfold((rx, outcome), |(mut rx, outcome)| async move {
        if let Some(m) = rx.recv().await {
            return Some((m, (rx, outcome)));
        }
        match outcome?.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((
                json!({"errorDetail": {"message": e.to_string()}, "error": e.to_string()}),
                (rx, None),
            )),
            Err(e) => Some((json!({"error": e.to_string()}), (rx, None))),
        }
    });
    let head = futures::stream::iter(first);
    Ok(json_lines(head.chain(tail)))
}

pub async fn prune(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let p = Params::parse(q.as_deref());
    let f = p.filters()?;
    f.only(&["dangling", "label", "label!", "until"])?;
    let all = matches!(
        f.get("dangling")
            .and_then(|v| v.first())
            .map(String::as_str),
        Some("false") | Some("0")
    );
    let until = f.until()?;
    let mut labels_of = std::collections::HashMap::new();
    for i in st.cluster.store().list_images(&acct.0).await? {
        let labels = ImageDefaults::from_config(&st.cluster.image_config(&i.id)?).labels;
        labels_of.insert(i.id.clone(), labels);
    }
    let (items, reclaimed) = st
        .cluster
        .prune_images(&acct.0, all, |i| {
            let l = labels_of.get(&i.id).cloned().unwrap_or_default();
            f.prune_keeps(&l) || until.is_some_and(|u| i.created > u)
        })
        .await?;
    Ok(Json(json!({
        "ImagesDeleted": if items.is_empty() { Value::Null } else { json!(removed_json(&items)) },
        "SpaceReclaimed": reclaimed,
    })))
}

pub async fn save(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let names = p.all("names");
    if names.is_empty() {
        return Err(ApiError::bad("no images given: use names="));
    }
    save_names(&st, &acct.0, names).await
}

/// Streams a docker-save tarball, written by a blocking task into a pipe.
async fn save_names(st: &AppState, acct: &str, names: Vec<String>) -> ApiResult<Response> {
    let plan = st.cluster.save_plan(acct, &names).await?;
    let blobs = st.cluster.blob_store().clone();
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    tokio::task::spawn_blocking(move || {
        let w = SyncIoBridge::new(writer);
        if let Err(e) = images::archive::save_archive(&plan, &blobs, w) {
            tracing::warn!("docker save failed mid-stream: {e}");
        }
    });
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(Body::from_stream(stream))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_filter_globs() {
        assert!(reference_matches("busybox", "busybox:latest"));
        assert!(reference_matches("busy*", "busybox:latest"));
        assert!(reference_matches("busybox:lat*", "busybox:latest"));
        assert!(!reference_matches("busy", "busybox:latest"));
        assert!(!reference_matches("*", "library/busybox:latest"));
    }
}
