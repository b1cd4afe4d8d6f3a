//! The HTTP/1.1 server loop of the head's Docker and operator APIs and of the
//! agent API, on unix sockets, TCP or TLS. Connections are served by hyper directly (not through a
//! protocol-sniffing wrapper), so a hijacked stream's IO is the plain
//! `UnixStream` and [`crate::splice`] can notice a client that went away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

/// Binds a unix socket at `path`, replacing a stale one and creating its
/// directory.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    UnixListener::bind(path)
}

/// In the extensions of every request that came over TLS: the client
/// certificate it showed (DER, verified against the cluster CA), if any.
/// Requests on unix sockets carry none: their callers are local, and the
/// socket's file mode says who may connect.
#[derive(Debug, Clone)]
pub struct Remote {
    pub certificate: Option<Arc<[u8]>>,
}

/// A listener whose connections hyper can serve: a unix socket (head, local
/// agent), TCP, or TLS over TCP ([`TlsListener`]).
pub trait Accept {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Option<Remote>)>> + Send;
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Stream, Option<Remote>)> {
        UnixListener::accept(self).await.map(|(s, _)| (s, None))
    }
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Stream, Option<Remote>)> {
        let (s, _) = TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, None))
    }
}

/// How long a TLS client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type TlsConn = (
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Remote,
);

/// TLS over a TCP listener. Handshakes run in their own tasks, so a slow or
/// silent client delays nobody; `admit` sees each client's certificate and
/// decides whether the connection is served at all.
pub struct TlsListener {
    ready: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<TlsConn>>,
}

impl TlsListener {
    /// TLS with `creds` (a certificate from the cluster CA), clients verified
    /// against the same CA as `auth` says, then kept only if `admit`.
    pub fn with_credentials(
        tcp: TcpListener,
        creds: &pki::Credentials,
        auth: pki::ClientAuth,
        admit: impl Fn(Option<&[u8]>) -> bool + Send + Sync + 'static,
    ) -> std::io::Result<TlsListener> {
        let config = pki::server_config(creds, auth).map_err(std::io::Error::other)?;
        Ok(TlsListener::new(tcp, config, admit))
    }

    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        admit: impl Fn(Option<&[u8]>) -> bool + Send + Sync + 'static,
    ) -> TlsListener {
        let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let admit = Arc::new(admit);
        tokio::spawn(async move {
            loop {
                let (s, peer) = tokio::select! {
                    r = tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    // The listener was dropped: stop accepting.
                    _ = tx.closed() => return,
                };
                let _ = s.set_nodelay(true);
                let (acceptor, tx, admit) = (acceptor.clone(), tx.clone(), admit.clone());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(s)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!("TLS handshake with {peer} failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake with {peer} timed out");
                                return;
                            }
                        };
                    let certificate: Option<Arc<[u8]>> = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::from(c.as_ref()));
                    if !admit(certificate.as_deref()) {
                        tracing::info!(
                            "refused {peer}: its certificate does not allow this service"
                        );
                        return;
                    }
                    let _ = tx.send((tls, Remote { certificate })).await;
                });
            }
        });
        TlsListener {
            ready: tokio::sync::Mutex::new(rx),
        }
    }
}

impl Accept for TlsListener {
    type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn accept(&self) -> std::io::Result<(Self::Stream, Option<Remote>)> {
        self.ready
            .lock()
            .await
            .recv()
            .await
            .map(|(s, r)| (s, Some(r)))
            .ok_or_else(|| std::io::Error::other("TLS listener stopped"))
    }
}

/// Serves `svc` on every connection until `shutdown` resolves. Connections in
/// flight (streams, hijacked sessions) are not waited for: they end with the
/// process, and the containers behind them keep running.
pub async fn serve<L: Accept, S, B>(
    listener: L,
    svc: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of fds, most likely: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                if let Some(r) = &remote {
                    req.extensions_mut().insert(r.clone());
                }
                svc.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
}
