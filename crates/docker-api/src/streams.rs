//! Stream encoders: JSON lines for progress, hijacked (101 Upgraded) connections.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const MULTIPLEXED: &str = "application/vnd.docker.multiplexed-stream";
pub const RAW: &str = "application/vnd.docker.raw-stream";

/// A response streaming one JSON object per line.
pub fn json_lines<S>(s: S) -> Response
where
    S: Stream<Item = Value> + Send + 'static,
{
    let body = s.map(|v| {
        // `null` is a keepalive: a blank line, which JSON stream readers skip.
        let mut b = if v.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&v).unwrap_or_default()
        };
        b.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(b))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

/// Answers an attach that does not stream with `body` and the end: 101 and
/// the body written to the upgraded connection when the client asked to
/// upgrade (docker-py does), else 200 with it.
pub fn finite(req: axum::extract::Request, body: Body, tty: bool) -> Response {
    if !req.headers().contains_key(header::UPGRADE) {
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if tty { RAW } else { MULTIPLEXED }),
        );
        return resp;
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let Ok(client) = on_upgrade.await else { return };
        let mut client = TokioIo::new(client);
        let mut data = body.into_data_stream();
        while let Some(Ok(chunk)) = data.next().await {
            if client.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = client.shutdown().await;
    });
    switching(tty)
}

/// 101 to a raw TCP stream of Docker's framing.
fn switching(tty: bool) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if tty { RAW } else { MULTIPLEXED }),
    );
    resp
}

/// Answers a hijack request with 101 and splices the client's connection to
/// `upstream` in both directions, half-closes included; a client that goes away
/// closes `upstream` too (see `agent_client::splice`).
pub fn hijack(
    req: axum::extract::Request,
    upstream: hyper::upgrade::Upgraded,
    tty: bool,
) -> Response {
    if !req.headers().contains_key(header::UPGRADE) {
        // Not asked to upgrade (a plain HTTP client): Docker answers 200 and
        // sends the output until it ends.
        let body = tokio_util::io::ReaderStream::with_capacity(TokioIo::new(upstream), 256 << 10);
        return finite(req, Body::from_stream(body), tty);
    }
    let refused = req.extensions().get::<crate::Refused>().cloned();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let splice = async move {
            match on_upgrade.await {
                Ok(client) => agent_client::splice::splice(client, TokioIo::new(upstream)).await,
                Err(e) => tracing::debug!("client upgrade failed: {e}"),
            }
        };
        match refused {
            // A caller over TLS loses the session once refused: both
            // connections are dropped.
            Some(r) => {
                tokio::select! {
                    _ = splice => {}
                    _ = r.wait() => tracing::info!("ended a hijacked stream: its caller was refused"),
                }
            }
            None => splice.await,
        }
    });
    switching(tty)
}
