//! `GET /containers/{id}/stats`: the server's samples with the container's name
//! added; zeros for a container that is not running, as Docker answers.

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::Response;
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::params::Params;
use crate::{Account, AppState};

fn with_name(mut v: Value, name: &str, id: &str) -> Bytes {
    v["name"] = json!(format!("/{name}"));
    v["id"] = json!(id);
    let mut b = serde_json::to_vec(&v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

pub async fn stats(
    State(st): State<AppState>,
    Extension(acct): Extension<Account>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    // Docker's default is to stream.
    let stream = p.get("stream").is_none_or(|_| p.bool("stream"));
    let one_shot = p.bool("one-shot");
    let (c, body) = st
        .cluster
        .container_stats(&acct.0, &id, stream, one_shot)
        .await?;
    let response = |b: Body| {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(b)
            .unwrap_or_default()
    };
    let Some(body) = body else {
        let zero = json!({
            "read": "0001-01-01T00:00:00Z", "preread": "0001-01-01T00:00:00Z",
            "pids_stats": {}, "blkio_stats": {}, "num_procs": 0, "storage_stats": {},
            "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
            "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
            "memory_stats": {},
        });
        return Ok(response(Body::from(with_name(zero, &c.name, &c.id))));
    };
    let (name, cid) = (c.name.clone(), c.id.clone());
    let frames = body.into_data_stream();
    // Re-split the server's JSON lines and add the name to each.
    let lines = futures::stream::unfold(
        (frames, Vec::<u8>::new(), name, cid),
        |(mut frames, mut buf, name, cid)| async move {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let out = with_name(v, &name, &cid);
                    return Some((Ok::<_, std::io::Error>(out), (frames, buf, name, cid)));
                }
                match frames.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    _ => return None,
                }
            }
        },
    );
    Ok(response(Body::from_stream(lines)))
}
