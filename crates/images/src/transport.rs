//! Connections to registries: TCP with a connect timeout, then TLS (rustls)
//! verified against the system's roots plus what the operator put in
//! Docker's per-registry layout, `<certs dir>/<host[:port]>/`: every `*.crt`
//! is a CA for that registry, and `client.cert` with `client.key` is the
//! client certificate shown to it. Plain HTTP is the caller's choice (only
//! for loopback and insecure registries); TLS is never unverified.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Where the operator keeps registries' CAs and client certificates.
pub const DEFAULT_CERTS_DIR: &str = "/etc/atoll/certs.d";

/// Why a connection failed, phrased for a registry error.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP: refused, unreachable, timed out.
    Dial(String),
    /// The server does not speak TLS (a plain HTTP registry).
    NotTls,
    /// TLS failed: an untrusted or wrong certificate, a bad client
    /// certificate, a protocol error.
    Tls(String),
}

/// A connection to a registry, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// TLS settings per registry, made once each.
#[derive(Debug)]
pub struct Tls {
    certs_dir: PathBuf,
    configs: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

impl Tls {
    pub fn new(certs_dir: impl Into<PathBuf>) -> Tls {
        Tls {
            certs_dir: certs_dir.into(),
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// The client settings for `authority` (`host[:port]`).
    pub fn config(&self, authority: &str) -> Result<Arc<ClientConfig>, String> {
        if let Some(c) = self.lock().get(authority) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.build(authority)?);
        self.lock().insert(authority.to_string(), c.clone());
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ClientConfig>>> {
        self.configs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(&self, authority: &str) -> Result<ClientConfig, String> {
        let mut roots = system_roots().clone();
        // An authority is a host and maybe a port: never a path.
        let dir = (!authority.contains('/') && !authority.starts_with('.'))
            .then(|| self.certs_dir.join(authority));
        let mut client_cert = None;
        if let Some(dir) = dir.as_deref().filter(|d| d.is_dir()) {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| format!("reading {}: {e}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .collect();
            entries.sort();
            for p in entries.iter().filter(|p| has_ext(p, "crt")) {
                for cert in CertificateDer::pem_file_iter(p)
                    .map_err(|e| format!("reading {}: {e}", p.display()))?
                {
                    let cert = cert.map_err(|e| format!("reading {}: {e}", p.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("CA certificate {}: {e}", p.display()))?;
                }
            }
            for cert in entries.iter().filter(|p| has_ext(p, "cert")) {
                let key = cert.with_extension("key");
                if !key.exists() {
                    return Err(format!(
                        "client certificate {} has no key {}",
                        cert.display(),
                        key.display()
                    ));
                }
                client_cert = Some((cert.clone(), key));
            }
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS versions: {e}"))?
                .with_root_certificates(roots);
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(&cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("reading {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(&key)
                    .map_err(|e| format!("reading {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate {}: {e}", cert.display()))?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A TCP connection to `authority` (`default_port` when it has none),
    /// within `timeout`, then TLS over it when `tls`, the server answering
    /// within `answer`. Link-local addresses are never dialled; loopback
    /// ones only with `loopback` (a remote registry's redirect, upload
    /// location or token realm must not reach the head's own services).
    pub async fn connect(
        &self,
        authority: &str,
        default_port: u16,
        tls: bool,
        timeouts: (Duration, Duration),
        loopback: bool,
    ) -> Result<Box<dyn Stream>, ConnectError> {
        let policy = Dialable {
            allows: &|ip| !link_local(ip) && (loopback || !ip.is_loopback()),
            refusal: "no usable address (link-local addresses, where metadata services live, are never registries; \
                      loopback ones only for a registry on loopback)",
        };
        self.connect_to(authority, default_port, tls, timeouts, policy)
            .await
    }

    /// [`connect`](Self::connect) dialling only the addresses `policy`
    /// allows, as resolved now: the check is on the address dialled.
    pub async fn connect_to(
        &self,
        authority: &str,
        default_port: u16,
        tls: bool,
        (timeout, answer): (Duration, Duration),
        policy: Dialable<'_>,
    ) -> Result<Box<dyn Stream>, ConnectError> {
        let addr = if has_port(authority) {
            authority.to_string()
        } else {
            format!("{authority}:{default_port}")
        };
        let dial = async {
            let targets: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&addr)
                .await?
                .filter(|a| !a.ip().is_unspecified() && (policy.allows)(a.ip()))
                .collect();
            if targets.is_empty() {
                return Err(std::io::Error::other(policy.refusal));
            }
            TcpStream::connect(&targets[..]).await
        };
        let tcp = match tokio::time::timeout(timeout, dial).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Dial(format!("dial tcp {addr}: {e}"))),
            Err(_) => {
                return Err(ConnectError::Dial(format!(
                    "dial tcp {addr}: timed out after {timeout:?}"
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Box::new(tcp));
        }
        let config = self.config(authority).map_err(ConnectError::Tls)?;
        let host = host_of(authority);
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| ConnectError::Tls(format!("invalid server name {host:?}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(answer, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Box::new(s)),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(ConnectError::Tls(format!(
                "TLS handshake with {addr}: no answer within {answer:?}"
            ))),
        }
    }
}

/// Which addresses a connection may dial, and what to say when none may.
#[derive(Clone, Copy)]
pub struct Dialable<'a> {
    pub allows: &'a (dyn Fn(IpAddr) -> bool + Sync),
    pub refusal: &'a str,
}

/// Whether `ip` is in `cidr` (`10.0.0.0/8`, `fd00::/8`); `None` when
/// `cidr` is not one.
pub fn cidr_contains(cidr: &str, ip: IpAddr) -> Option<bool> {
    let (net, bits) = cidr.trim().split_once('/')?;
    let (net, bits) = (net.parse::<IpAddr>().ok()?, bits.parse::<u32>().ok()?);
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            Some(u32::from(n) & mask == u32::from(a) & mask)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            Some(u128::from(n) & mask == u128::from(a) & mask)
        }
        (IpAddr::V4(_), IpAddr::V6(_)) if bits <= 32 => Some(false),
        (IpAddr::V6(_), IpAddr::V4(_)) if bits <= 128 => Some(false),
        _ => None,
    }
}

/// An address of the public internet: not loopback, private (RFC 1918,
/// shared CGNAT space, IPv6 unique-local), link-local, multicast,
/// broadcast or reserved; IPv4-mapped IPv6 is judged as its IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A server that answers a TLS hello with anything but TLS (an HTTP
/// server's "400 Bad Request", or closing) does not speak TLS; anything
/// else is a TLS failure to report.
fn classify(e: std::io::Error) -> ConnectError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return ConnectError::NotTls;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidMessage(_)) => ConnectError::NotTls,
        Some(other) => ConnectError::Tls(other.to_string()),
        None => ConnectError::Tls(e.to_string()),
    }
}

/// 169.254.0.0/16 and fe80::/10: a tenant's pull must not make the head
/// talk to a metadata service.
pub fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e == ext)
}

/// The host of `host[:port]` (an IPv6 literal keeps no brackets).
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => authority,
    }
}

fn has_port(authority: &str) -> bool {
    host_of(authority) != authority.trim_start_matches('[').trim_end_matches(']')
}

/// The system's trusted roots (Debian's ca-certificates), read once.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("reading the system's CA certificates: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!("{added} system CA certificates ({ignored} unusable)");
        roots
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split() {
        assert_eq!(host_of("registry.example:5000"), "registry.example");
        assert_eq!(host_of("registry.example"), "registry.example");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert!(has_port("127.0.0.1:5000") && !has_port("ghcr.io"));
        assert!(!has_port("[::1]"));
    }

    #[tokio::test]
    async fn link_local_addresses_are_never_dialled() {
        assert!(link_local("169.254.169.254".parse().unwrap()));
        assert!(link_local("fe80::1".parse().unwrap()));
        assert!(!link_local("127.0.0.1".parse().unwrap()));
        let tls = Tls::new("/nonexistent");
        let t = (Duration::from_secs(2), Duration::from_secs(2));
        match tls.connect("169.254.169.254", 80, false, t, true).await {
            Err(ConnectError::Dial(m)) => assert!(m.contains("link-local"), "{m}"),
            other => panic!("dialled a link-local address: {:?}", other.err()),
        }
        // Positive control: the same path dials a listening loopback port.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(tls.connect(&addr, 80, false, t, true).await.is_ok());
        // The same listener, for a target a remote registry named: refused.
        match tls.connect(&addr, 80, false, t, false).await {
            Err(ConnectError::Dial(m)) => assert!(m.contains("loopback ones only"), "{m}"),
            other => panic!("dialled loopback for a remote registry: {:?}", other.err()),
        }
    }

    #[test]
    fn per_registry_files_make_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls::new(dir.path());
        // Nothing for it: the system's roots only.
        tls.config("ghcr.io").unwrap();
        let reg = dir.path().join("reg.test:5000");
        std::fs::create_dir(&reg).unwrap();
        std::fs::write(
            reg.join("ca.crt"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = tls.config("reg.test:5000").unwrap_err();
        assert!(e.contains("ca.crt"), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["reg.test".into()]).unwrap();
        std::fs::write(reg.join("ca.crt"), ca.cert.pem()).unwrap();
        std::fs::write(reg.join("client.cert"), ca.cert.pem()).unwrap();
        let e = Tls::new(dir.path()).config("reg.test:5000").unwrap_err();
        assert!(e.contains("has no key"), "{e}");
        std::fs::write(reg.join("client.key"), ca.signing_key.serialize_pem()).unwrap();
        Tls::new(dir.path()).config("reg.test:5000").unwrap();
        // Not a path.
        assert!(Tls::new(dir.path()).config("../etc").is_ok());
    }
}
