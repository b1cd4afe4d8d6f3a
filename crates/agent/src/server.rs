//! The agent's HTTP API (see agent-client for the client side and wire types).

use std::sync::Arc;

use agent_client::{AgentErrorBody, ContainerSpec, KillRequest, StopRequest};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use futures::{StreamExt, TryStreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::AgentError;
use crate::logs::{LogOptions, log_stream};
use crate::manager::{Agent, PendingAttach};

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(AgentErrorBody {
                message: crate::error::scrub(&self.to_string()),
            }),
        )
            .into_response()
    }
}

type R<T> = Result<T, AgentError>;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/events", get(events))
        .route("/v1/layers/{diff_id}", get(has_layer).put(put_layer))
        .route("/v1/containers", get(list))
        .route("/v1/volumes/{id}", delete(remove_volume))
        .route("/v1/volumes/{id}/size", get(volume_size))
        .route("/v1/networks/{vni}", put(put_network_map))
        .route("/v1/containers/{id}/networks", post(connect_network))
        .route(
            "/v1/containers/{id}/networks/{network}",
            delete(disconnect_network),
        )
        .route("/v1/containers/{id}", delete(remove))
        .route("/v1/containers/{id}/start", post(start))
        .route("/v1/containers/{id}/stop", post(stop))
        .route("/v1/containers/{id}/kill", post(kill))
        .route("/v1/containers/{id}/logs", get(logs))
        .route("/v1/containers/{id}/attach", post(attach))
        .route("/v1/containers/{id}/resize", post(resize))
        .route("/v1/containers/{id}/pause", post(pause))
        .route("/v1/containers/{id}/unpause", post(unpause))
        .route("/v1/containers/{id}/update", post(update))
        .route("/v1/containers/{id}/stats", get(stats))
        .route("/v1/containers/{id}/top", get(top))
        .route("/v1/containers/{id}/prepare", post(prepare))
        .route(
            "/v1/containers/{id}/archive",
            get(archive_get).head(archive_head).put(archive_put),
        )
        .route("/v1/containers/{id}/export", get(export))
        .route("/v1/containers/{id}/layer", get(layer))
        .route("/v1/containers/{id}/changes", get(changes))
        .route("/v1/containers/{id}/size", get(size))
        .route(
            "/v1/containers/{id}/execs/{eid}",
            put(exec_create).get(exec_state),
        )
        .route("/v1/containers/{id}/execs/{eid}/start", post(exec_start))
        .route("/v1/containers/{id}/execs/{eid}/resize", post(exec_resize))
        .route("/v1/containers/{id}/execs/{eid}/wait", get(exec_wait))
        .with_state(agent)
}

/// Serves the agent API on `listener` (a unix socket for the local agent, TCP
/// on a server's underlay address) until `shutdown` resolves.
pub async fn serve<L: agent_client::serve::Accept>(
    listener: L,
    agent: Arc<Agent>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = tower::ServiceExt::map_request(
        router(agent),
        |req: http::Request<hyper::body::Incoming>| req.map(Body::new),
    );
    agent_client::serve::serve(listener, app, shutdown).await
}

async fn info(State(a): State<Arc<Agent>>) -> Json<agent_client::AgentInfo> {
    Json(a.info())
}

async fn list(State(a): State<Arc<Agent>>) -> Json<Vec<agent_client::ContainerStatus>> {
    Json(a.list())
}

/// Every state change as one JSON line, for as long as the head listens.
async fn events(State(a): State<Arc<Agent>>) -> Response {
    let rx = a.subscribe();
    let changes = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| async move {
        let st = r.ok()?;
        let mut b = serde_json::to_vec(&st).ok()?;
        b.push(b'\n');
        Some(Ok::<_, std::io::Error>(Bytes::from(b)))
    });
    // Heartbeats: the head takes a silent server for down.
    let beats = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
        agent_client::client::HEARTBEAT_INTERVAL,
    ))
    .map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"\n")));
    let stream = futures::stream::select(changes, beats);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn has_layer(State(a): State<Arc<Agent>>, Path(diff_id): Path<String>) -> R<StatusCode> {
    let d = images::Digest::parse(&diff_id)?;
    if a.layers.has(&d) {
        Ok(StatusCode::OK)
    } else {
        Err(AgentError::NotFound(format!("layer {diff_id} not present")))
    }
}

async fn put_layer(
    State(a): State<Arc<Agent>>,
    Path(diff_id): Path<String>,
    req: Request,
) -> R<StatusCode> {
    let d = images::Digest::parse(&diff_id)?;
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    a.layers.put(d, reader).await?;
    Ok(StatusCode::CREATED)
}

async fn start(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    body: Bytes,
) -> R<Json<agent_client::ContainerStatus>> {
    let spec: ContainerSpec = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad container spec: {e}")))?;
    if spec.id != id {
        return Err(AgentError::BadRequest("container id mismatch".into()));
    }
    Ok(Json(a.start_container(spec).await?))
}

async fn stop(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    body: Bytes,
) -> R<Json<agent_client::ContainerStatus>> {
    let req: StopRequest = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad stop request: {e}")))?;
    Ok(Json(a.stop(&id, req.timeout, &req.signal).await?))
}

async fn kill(State(a): State<Arc<Agent>>, Path(id): Path<String>, body: Bytes) -> R<StatusCode> {
    let req: KillRequest = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad kill request: {e}")))?;
    a.kill(&id, &req.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(State(a): State<Arc<Agent>>, Path(id): Path<String>) -> R<StatusCode> {
    a.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resize(State(a): State<Arc<Agent>>, Path(id): Path<String>, body: Bytes) -> R<StatusCode> {
    let req: agent_client::ResizeRequest = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad resize request: {e}")))?;
    a.resize(&id, req.rows, req.cols).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_network_map(
    State(a): State<Arc<Agent>>,
    Path(vni): Path<u32>,
    body: Bytes,
) -> R<StatusCode> {
    let map: agent_client::NetworkMap = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad network map: {e}")))?;
    if map.vni != vni {
        return Err(AgentError::BadRequest(
            "the map's VNI is not the path's".into(),
        ));
    }
    a.put_network_map(map).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn connect_network(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    body: Bytes,
) -> R<StatusCode> {
    let e: agent_client::Endpoint = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad endpoint: {e}")))?;
    a.connect_network(&id, e).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn disconnect_network(
    State(a): State<Arc<Agent>>,
    Path((id, network)): Path<(String, String)>,
) -> R<StatusCode> {
    a.disconnect_network(&id, &network).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update(State(a): State<Arc<Agent>>, Path(id): Path<String>, body: Bytes) -> R<StatusCode> {
    let r: agent_client::Resources = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad resources: {e}")))?;
    a.update(&id, r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `stream=1`: one sample per second while the container runs; else one
/// sample (after a short interval, so CPU use has a delta, unless `one-shot`).
async fn stats(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> R<Response> {
    let p = agent_client_params(q.as_deref().unwrap_or(""));
    let (stream, one_shot) = (p("stream"), p("one-shot"));
    let line = |v: serde_json::Value| {
        let mut b = serde_json::to_vec(&v).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    };
    let Some(pid) = a.running_pid(&id)? else {
        return Ok(Response::new(Body::from(line(
            crate::stats::stopped_sample(&id),
        ))));
    };
    let Some(sampler) = crate::stats::Sampler::new(pid, &id) else {
        return Ok(Response::new(Body::from(line(
            crate::stats::stopped_sample(&id),
        ))));
    };
    if !stream {
        let pre = if one_shot {
            None
        } else {
            let read = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            let cpu = sampler.cpu();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            Some((cpu, read))
        };
        return Ok(Response::new(Body::from(line(sampler.sample(&id, pre)))));
    }
    let s = futures::stream::unfold(
        (a, id, sampler, None::<(serde_json::Value, String)>, true),
        move |(a, id, sampler, pre, first)| async move {
            if !first {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if !matches!(a.running_pid(&id), Ok(Some(_))) {
                    return None;
                }
            }
            let v = sampler.sample(&id, pre);
            let next = Some((
                v["cpu_stats"].clone(),
                v["read"].as_str().unwrap_or("").to_string(),
            ));
            Some((
                Ok::<_, std::io::Error>(line(v)),
                (a, id, sampler, next, false),
            ))
        },
    );
    Ok(Response::new(Body::from_stream(s)))
}

async fn top(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> R<Json<serde_json::Value>> {
    let Some(pid) = a.running_pid(&id)? else {
        return Err(AgentError::Conflict(format!(
            "Container {id} is not running"
        )));
    };
    let args = q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("ps_args="))
        .map(percent_decode)
        .next()
        .unwrap_or_default();
    let v = tokio::task::spawn_blocking(move || {
        let pids = crate::top::container_pids(&id, pid)?;
        crate::top::top(&pids, &args)
    })
    .await
    .map_err(|e| AgentError::Internal(e.to_string()))??;
    Ok(Json(v))
}

/// `+` and `%XX` of a query value.
fn percent_decode(v: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn prepare(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    body: Bytes,
) -> R<StatusCode> {
    let spec: ContainerSpec = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad container spec: {e}")))?;
    if spec.id != id {
        return Err(AgentError::BadRequest("container id mismatch".into()));
    }
    a.prepare(spec).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn query_value(q: &Option<String>, key: &str) -> Option<String> {
    q.as_deref()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn archive_error(e: crate::archive::ArchiveError) -> AgentError {
    use crate::archive::ArchiveError as E;
    match e {
        E::NotFound(p) => AgentError::NotFound(format!("no such file or directory: {p}")),
        E::Invalid(m) => AgentError::BadRequest(m),
        E::RootReadOnly => AgentError::Forbidden(E::RootReadOnly.to_string()),
        E::Io(e) => AgentError::Io(e),
    }
}

/// Whether a file operation sees the container's root filesystem alone
/// (`rootfs=1`: a build step's `COPY`, which goes into the image, never into
/// a volume) or, as `docker cp` does, with its volumes and binds.
fn with_mounts(q: &Option<String>) -> bool {
    query_value(q, "rootfs").is_none_or(|v| v != "1" && v != "true")
}

/// The stat of `path`, base64 JSON, as Docker's header wants it.
async fn path_stat(
    a: &Arc<Agent>,
    id: &str,
    path: &str,
    mounts: bool,
) -> R<(String, crate::files::RootfsLease)> {
    let lease = a.lease_rootfs(id, mounts).await?;
    let st = lease.view()?.stat(path).map_err(archive_error)?;
    let json = serde_json::to_vec(&st).map_err(|e| AgentError::Internal(e.to_string()))?;
    use base64::Engine;
    Ok((
        base64::engine::general_purpose::STANDARD.encode(json),
        lease,
    ))
}

const STAT_HEADER: &str = "x-docker-container-path-stat";

async fn archive_head(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> R<Response> {
    let path = query_value(&q, "path").unwrap_or_default();
    let (stat, _lease) = path_stat(&a, &id, &path, with_mounts(&q)).await?;
    let mut resp = Response::new(Body::empty());
    resp.headers_mut().insert(
        STAT_HEADER,
        HeaderValue::from_str(&stat).map_err(|e| AgentError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

/// Streams what a blocking writer produces, keeping `hold` alive until done.
fn blocking_body<T: Send + 'static>(
    hold: T,
    write: impl FnOnce(&T, &mut dyn std::io::Write) -> Result<(), crate::archive::ArchiveError>
    + Send
    + 'static,
) -> Body {
    use futures::StreamExt;
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    let (failed, failure) = tokio::sync::oneshot::channel::<String>();
    tokio::task::spawn_blocking(move || {
        let mut w = SyncIoBridge::new(writer);
        if let Err(e) = write(&hold, &mut w) {
            tracing::debug!("archive stream: {e}");
            // Told before the stream ends, so that its end is an error.
            let _ = failed.send(e.to_string());
        }
        drop(w);
        drop(hold);
    });
    // A stream that failed ends in an error, never in a clean end: the
    // reader must not take half a tar for a whole one.
    let end = futures::stream::once(async move {
        failure
            .await
            .ok()
            .map(|m| Err::<bytes::Bytes, _>(std::io::Error::other(m)))
    })
    .filter_map(|e| async move { e });
    Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024).chain(end))
}

async fn archive_get(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> R<Response> {
    let path = query_value(&q, "path").unwrap_or_default();
    let (stat, lease) = path_stat(&a, &id, &path, with_mounts(&q)).await?;
    let body = blocking_body(lease, move |lease, w| lease.view()?.write_tar(&path, w));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        STAT_HEADER,
        HeaderValue::from_str(&stat).map_err(|e| AgentError::Internal(e.to_string()))?,
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(resp)
}

/// The most of a refused upload read and dropped before answering.
const DRAIN_ON_ERROR: u64 = 256 << 20;

async fn archive_put(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> R<StatusCode> {
    let path = query_value(&q, "path").unwrap_or_default();
    let flag = |k: &str| query_value(&q, k).is_some_and(|v| v == "1" || v == "true");
    let mut opts = crate::archive::ExtractOptions {
        no_overwrite_dir_non_dir: flag("noOverwriteDirNonDir"),
        copy_uid_gid: flag("copyUIDGID"),
        owner: None,
        mkdir: flag("mkdir"),
    };
    let chown = query_value(&q, "chown").filter(|c| !c.is_empty());
    let lease = a.lease_rootfs(&id, with_mounts(&q)).await?;
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let mut reader = SyncIoBridge::new(StreamReader::new(stream));
    tokio::task::spawn_blocking(move || {
        let root = lease.view()?;
        let res = match chown {
            Some(spec) => crate::user::resolve_owner(&lease.rootfs, &spec)
                .map_err(|e| crate::archive::ArchiveError::Invalid(e.to_string()))
                .and_then(|o| {
                    opts.owner = Some(o);
                    root.extract(&path, &mut reader, &opts)
                }),
            None => root.extract(&path, &mut reader, &opts),
        };
        if res.is_err() {
            // Read what is left of the upload (within a bound) so the client
            // gets the error rather than a broken pipe.
            let _ = std::io::copy(
                &mut std::io::Read::take(&mut reader, DRAIN_ON_ERROR),
                &mut std::io::sink(),
            );
        }
        res.map_err(archive_error)
    })
    .await
    .map_err(|e| AgentError::Internal(e.to_string()))??;
    Ok(StatusCode::OK)
}

async fn export(State(a): State<Arc<Agent>>, Path(id): Path<String>) -> R<Response> {
    let lease = a.lease_rootfs(&id, false).await?;
    let body = blocking_body(lease, |lease, w| {
        crate::archive::Root::open(&lease.rootfs, lease.ids)?.write_tar("/", w)
    });
    Ok(Response::new(body))
}

/// The container's changes as an image layer (for `docker commit` and build
/// steps). With `keep=1` the server also keeps the layer in its cache as it
/// writes it out (a tee into the unpacker), so the next build step here has
/// it without the head sending it back.
async fn layer(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> R<Response> {
    let keep = query_value(&q, "keep").is_some_and(|v| v == "1");
    let lease = a.lease_rootfs(&id, false).await?;
    let agent = a.clone();
    let body = blocking_body(lease, move |lease, w| {
        if !keep {
            return crate::archive::write_layer(&lease.upper, w, lease.ids)
                .map_err(crate::archive::ArchiveError::Io);
        }
        let (reader, writer) = std::io::pipe()?;
        let unpacker = std::thread::spawn(move || agent.layers.adopt(reader));
        let mut tee = Tee {
            first: w,
            second: Some(writer),
        };
        let res = crate::archive::write_layer(&lease.upper, &mut tee, lease.ids);
        drop(tee.second.take());
        match unpacker.join() {
            Ok(Err(e)) => tracing::debug!("keeping a committed layer: {e}"),
            Err(_) => tracing::warn!("the layer unpacker panicked"),
            Ok(Ok(_)) => {}
        }
        res.map_err(crate::archive::ArchiveError::Io)
    });
    Ok(Response::new(body))
}

/// Writes to the response and, while it accepts, to the layer unpacker.
struct Tee<'a> {
    first: &'a mut dyn std::io::Write,
    second: Option<std::io::PipeWriter>,
}

impl std::io::Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.first.write(buf)?;
        if let Some(s) = &mut self.second
            && s.write_all(&buf[..n]).is_err()
        {
            self.second = None;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.first.flush()
    }
}

async fn changes(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> R<Json<serde_json::Value>> {
    let lease = a.lease_rootfs(&id, false).await?;
    let list =
        tokio::task::spawn_blocking(move || crate::archive::changes(&lease.upper, &lease.lowers))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
    Ok(Json(serde_json::json!(
        list.into_iter()
            .map(|(p, k)| serde_json::json!({"Path": p, "Kind": k}))
            .collect::<Vec<_>>()
    )))
}

async fn size(State(a): State<Arc<Agent>>, Path(id): Path<String>) -> R<Json<serde_json::Value>> {
    let lease = a.lease_rootfs(&id, false).await?;
    let rw = tokio::task::spawn_blocking(move || crate::archive::tree_size(&lease.upper))
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))??;
    Ok(Json(serde_json::json!({ "rw": rw })))
}

/// What a volume holds, counted as a container's layer is (a volume no
/// container has started yet holds nothing).
async fn volume_size(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> R<Json<serde_json::Value>> {
    crate::volumes::check_volume_id(&id)?;
    let data = crate::volumes::volume_data(&a.volumes_dir(), &id);
    let size = tokio::task::spawn_blocking(move || match crate::archive::tree_size(&data) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        r => r,
    })
    .await
    .map_err(|e| AgentError::Internal(e.to_string()))??;
    Ok(Json(serde_json::json!({ "size": size })))
}

async fn remove_volume(State(a): State<Arc<Agent>>, Path(id): Path<String>) -> R<StatusCode> {
    crate::volumes::remove_volume(&a.volumes_dir(), &id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(a): State<Arc<Agent>>, Path(id): Path<String>) -> R<StatusCode> {
    a.set_paused(&id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unpause(State(a): State<Arc<Agent>>, Path(id): Path<String>) -> R<StatusCode> {
    a.set_paused(&id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logs(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> R<Response> {
    let opts = log_options(q.as_deref().unwrap_or("")).map_err(AgentError::BadRequest)?;
    let Some(path) = a.log_path(&id) else {
        // Never started here: there is no output yet.
        return Ok(Response::new(Body::empty()));
    };
    let tty = a.is_tty(&id);
    let stream = log_stream(path, opts, tty, a.exited(&id));
    Ok(Response::new(Body::from_stream(stream)))
}

async fn attach(
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> R<Response> {
    let header = attach_header(q.as_deref().unwrap_or(""));
    let on_upgrade = hyper::upgrade::on(req);
    let agent = a.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(stream) => {
                if let Err(e) = agent.attach(&id, PendingAttach { stream, header }).await {
                    tracing::warn!("attach to {id}: {e}");
                }
            }
            Err(e) => tracing::debug!("attach upgrade failed: {e}"),
        }
    });
    Ok(switching_protocols())
}

async fn exec_create(
    State(a): State<Arc<Agent>>,
    Path((id, eid)): Path<(String, String)>,
    body: Bytes,
) -> R<StatusCode> {
    let spec: agent_client::ExecSpec = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad exec spec: {e}")))?;
    a.exec_create(&id, &eid, spec).await?;
    Ok(StatusCode::CREATED)
}

async fn exec_state(
    State(a): State<Arc<Agent>>,
    Path((id, eid)): Path<(String, String)>,
) -> R<Json<agent_client::ExecState>> {
    Ok(Json(a.exec_state(&id, &eid).await?))
}

/// Starts an exec. With `Upgrade`, the connection becomes the exec's attach
/// stream (query: stdin/stdout/stderr); without, it runs detached and the
/// answer is its state.
async fn exec_start(
    State(a): State<Arc<Agent>>,
    Path((id, eid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> R<Response> {
    a.exec_spawn(&id, &eid).await?;
    if !req.headers().contains_key(header::UPGRADE) {
        return Ok(Json(a.exec_run(&id, &eid, None).await?).into_response());
    }
    let header = attach_header(q.as_deref().unwrap_or(""));
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(stream) => {
                if let Err(e) = a
                    .exec_run(&id, &eid, Some(PendingAttach { stream, header }))
                    .await
                {
                    tracing::debug!("exec {eid} in {id}: {e}");
                }
            }
            Err(e) => tracing::debug!("exec upgrade failed: {e}"),
        }
    });
    Ok(switching_protocols())
}

async fn exec_wait(
    State(a): State<Arc<Agent>>,
    Path((id, eid)): Path<(String, String)>,
) -> R<Json<agent_client::ExecState>> {
    Ok(Json(a.exec_wait(&id, &eid).await?))
}

async fn exec_resize(
    State(a): State<Arc<Agent>>,
    Path((id, eid)): Path<(String, String)>,
    body: Bytes,
) -> R<StatusCode> {
    let req: agent_client::ResizeRequest = serde_json::from_slice(&body)
        .map_err(|e| AgentError::BadRequest(format!("bad resize request: {e}")))?;
    a.exec_resize(&id, &eid, req.rows, req.cols).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn switching_protocols() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    resp
}

/// The shim's attach header from the query: stdin/stdout/stderr flags and
/// `detach_keys` as comma-separated byte values (the head has parsed Docker's
/// `ctrl-p,ctrl-q` form).
fn attach_header(q: &str) -> String {
    let p = agent_client_params(q);
    let keys: Vec<u8> = q
        .split('&')
        .filter_map(|kv| kv.strip_prefix("detach_keys="))
        .flat_map(|v| v.split(',').filter_map(|b| b.parse::<u8>().ok()))
        .collect();
    serde_json::json!({
        "stdin": p("stdin"), "stdout": p("stdout"), "stderr": p("stderr"),
        "detach_keys": keys,
    })
    .to_string()
}

/// Docker's lenient booleans over a raw query string.
fn agent_client_params(q: &str) -> impl Fn(&str) -> bool + '_ {
    move |key: &str| {
        q.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
            k == key && !matches!(v.to_ascii_lowercase().as_str(), "" | "0" | "false")
        })
    }
}

/// Docker's `logs` query: stdout, stderr, follow, tail (`all` or N), since/until
/// (unix seconds with optional fraction), timestamps.
fn log_options(q: &str) -> Result<LogOptions, String> {
    let on = agent_client_params(q);
    let get = |key: &str| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .next_back()
    };
    let time = |key: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        match get(key).filter(|v| !v.is_empty() && v != "0") {
            None => Ok(None),
            Some(v) => {
                let secs: f64 = v
                    .parse()
                    .map_err(|_| format!("invalid value for {key}: {v}"))?;
                let whole = secs.trunc() as i64;
                let nanos = ((secs - secs.trunc()) * 1e9) as u32;
                Ok(chrono::DateTime::from_timestamp(whole, nanos))
            }
        }
    };
    let tail = match get("tail").as_deref() {
        None | Some("") | Some("all") => None,
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n < 0 => None,
            Ok(n) => Some(n as usize),
            Err(_) => return Err(format!("invalid value for tail: {n}")),
        },
    };
    Ok(LogOptions {
        stdout: on("stdout"),
        stderr: on("stderr"),
        follow: on("follow"),
        tail,
        since: time("since")?,
        until: time("until")?,
        timestamps: on("timestamps"),
    })
}
