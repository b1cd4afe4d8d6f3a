//! `docker exec`: create, start (hijacked or detached), resize, inspect.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bollard_stubs::models::{ExecConfig, ExecStartConfig};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::streams::hijack;
use crate::{Account, AppState};

pub async fn create(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: ExecConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid JSON in request body: {e}")))?;
    let cfg = cluster::exec::ExecConfig {
        cmd: req.cmd.unwrap_or_default(),
        env: req.env.unwrap_or_default(),
        user: req.user.unwrap_or_default(),
        working_dir: req.working_dir.unwrap_or_default(),
        tty: req.tty.unwrap_or(false),
        attach_stdin: req.attach_stdin.unwrap_or(false),
        attach_stdout: req.attach_stdout.unwrap_or(false),
        attach_stderr: req.attach_stderr.unwrap_or(false),
        privileged: req.privileged.unwrap_or(false),
        detach_keys: req.detach_keys.unwrap_or_default(),
    };
    let eid = st.cluster.create_exec(&acct.0, &id, cfg).await?;
    Ok((StatusCode::CREATED, Json(json!({"Id": eid}))).into_response())
}

pub async fn start(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(eid): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|e| ApiError::bad(format!("reading the request body: {e}")))?;
    let start: ExecStartConfig = if body.is_empty() {
        ExecStartConfig::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("invalid JSON in request body: {e}")))?
    };
    if start.detach.unwrap_or(false) {
        st.cluster.start_exec_detached(&acct.0, &eid).await?;
        return Ok(StatusCode::OK.into_response());
    }
    let (tty, upstream) = st.cluster.start_exec_attached(&acct.0, &eid).await?;
    Ok(hijack(
        Request::from_parts(parts, axum::body::Body::empty()),
        upstream,
        tty,
    ))
}

pub async fn resize(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(eid): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let (h, w) = Params::parse(q.as_deref()).terminal_size()?;
    st.cluster.resize_exec(&acct.0, &eid, h, w).await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn inspect(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(eid): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = st.cluster.inspect_exec(&acct.0, &eid).await?;
    let (entrypoint, arguments) = match e.config.cmd.split_first() {
        Some((first, rest)) => (first.clone(), rest.to_vec()),
        None => (String::new(), Vec::new()),
    };
    let mut out = json!({
        "ID": e.id,
        "Running": e.running,
        "ExitCode": e.exit_code,
        "ProcessConfig": {
            "tty": e.config.tty,
            "entrypoint": entrypoint,
            "arguments": arguments,
            "privileged": e.config.privileged,
        },
        "OpenStdin": e.config.attach_stdin,
        "OpenStderr": e.config.attach_stderr,
        "OpenStdout": e.config.attach_stdout,
        "CanRemove": false,
        "ContainerID": e.container_id,
        "DetachKeys": e.config.detach_keys,
        "Pid": e.pid,
    });
    // Docker leaves the user out when none was asked for.
    if !e.config.user.is_empty() {
        out["ProcessConfig"]["user"] = json!(e.config.user);
    }
    Ok(Json(out))
}
