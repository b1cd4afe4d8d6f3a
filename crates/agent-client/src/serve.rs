//! The HTTP/1.1 server loop of the head's Docker and operator APIs and of the
//! agent API, on unix sockets, TCP or TLS. Connections are served by hyper directly (not through a
//! protocol-sniffing wrapper), so a hijacked stream's IO is the plain
//! `UnixStream` and [`crate::splice`] can notice a client that went away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::os::unix::fs::DirBuilderExt;

use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

/// Binds a unix socket at `path` with `mode` (who may connect) from the
/// moment it exists: it is bound in a fresh private directory beside `path`,
/// given its mode there and only then renamed into place, so no client ever
/// meets it with the umask's mode. A stale socket is replaced; the
/// directory is created. `group`: the socket's group (else root's).
pub fn bind_unix_with_mode(
    path: &std::path::Path,
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a socket path needs a name",
        )
    })?;
    let mut private = parent.as_os_str().to_os_string();
    private.push(format!(
        "/.{}.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let private = std::path::PathBuf::from(private);
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&staged, None, Some(gid))?;
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// [`bind_unix_with_mode`] for root alone (0600).
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<UnixListener> {
    bind_unix_with_mode(path, 0o600, None)
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
