//! The cluster's certificate authority and the TLS configurations built on it.
//!
//! One CA per cluster, kept by the head (`<data>/head/pki/`). Every certificate it
//! issues names its holder in the subject: `O=atoll`, `OU=<role>`, `CN=<name>`.
//! Peers check the role after the handshake (an agent serves only the head; the
//! head's cluster port serves operators). Names are verified with fixed DNS names
//! rather than addresses ([`HEAD_NAME`], [`agent_dns_name`]), so a head or an agent
//! can be reached at whatever address the network gives it.
//!
//! Agents join with a one-time [`JoinToken`] that also carries the CA's
//! fingerprint, so the joining agent can trust the head before it has any
//! certificate (as `docker swarm join` tokens do).

mod token;

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SerialNumber,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use token::JoinToken;

/// The DNS name in every head certificate: agents and operators verify the head by it.
pub const HEAD_NAME: &str = "head.atoll.internal";

/// The DNS name in server `node`'s agent certificate: the head verifies it by it.
pub fn agent_dns_name(node: &str) -> String {
    format!("{node}.agents.atoll.internal")
}

const ORGANIZATION: &str = "atoll";
const CA_DAYS: i64 = 3650;
/// Leaf certificates (head, agents, operators). Renewal is not automated yet: the
/// head's own is reissued at every start; an agent's lasts five years.
pub const LEAF_DAYS: i64 = 5 * 365;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PkiError {
    let context = context.into();
    move |source| PkiError::Io { context, source }
}

/// What a certificate entitles its holder to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The head: agents serve only it.
    Head,
    /// A server's agent.
    Agent,
    /// A person or program running the datacenter (operator commands).
    Operator,
    /// A tenant account (the Docker API).
    Account,
}

impl Role {
    fn unit(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Account => "account",
        }
    }

    fn from_unit(s: &str) -> Option<Role> {
        [Role::Head, Role::Agent, Role::Operator, Role::Account]
            .into_iter()
            .find(|r| r.unit() == s)
    }
}

/// Who holds a certificate issued by the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    /// Hex, for revocation lists.
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// Reads the holder out of a certificate (DER). `None` for a certificate that is
/// not one of ours. Only meaningful after the TLS layer verified it against the CA.
pub fn identify(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let org = subject.iter_organization().next()?.as_str().ok()?;
    if org != ORGANIZATION {
        return None;
    }
    let role = Role::from_unit(subject.iter_organizational_unit().next()?.as_str().ok()?)?;
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(Identity {
        role,
        name,
        serial: hex::encode(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The SHA-256 of a certificate's DER, hex: what a join token pins.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The fingerprint of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &str) -> Result<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
    Ok(fingerprint(&der))
}

/// The cluster CA: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    fingerprint: String,
}

impl Ca {
    /// Loads the CA from `dir` (`ca.pem`, `ca-key.pem`), creating it on first use.
    pub fn load_or_create(dir: &Path, cluster: &str) -> Result<Ca> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if !cert_path.exists() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = subject(Role::Head, &format!("{cluster} CA"));
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            validity(&mut params, CA_DAYS);
            let cert = params.self_signed(&key)?;
            // The key first: a CA certificate without its key would be unusable.
            write_private(&key_path, &key.serialize_pem())?;
            write_atomic(&cert_path, &cert.pem(), 0o644)?;
        }
        let cert_pem = std::fs::read_to_string(&cert_path)
            .map_err(io(format!("reading {}", cert_path.display())))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .map_err(io(format!("reading {}", key_path.display())))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        let fingerprint = fingerprint_pem(&cert_pem)?;
        Ok(Ca {
            cert_pem,
            issuer,
            fingerprint,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate, hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Issues a certificate for `public_key`, valid for [`LEAF_DAYS`].
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
        public_key: &impl PublicKeyData,
    ) -> Result<String> {
        self.issue_for_days(role, name, dns_names, public_key, LEAF_DAYS)
    }

    /// Issues a certificate for `public_key`, valid for `days`.
    pub fn issue_for_days(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
        public_key: &impl PublicKeyData,
        days: i64,
    ) -> Result<String> {
        if !(1..=LEAF_DAYS).contains(&days) {
            return Err(PkiError::Invalid(format!(
                "a certificate lasts 1 to {LEAF_DAYS} days"
            )));
        }
        check_name(name)?;
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params.distinguished_name = subject(role, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }

    /// Issues a certificate and the key it certifies (for holders that cannot
    /// make their own, e.g. an operator's command line on the head's machine).
    pub fn issue_with_key(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
    ) -> Result<Credentials> {
        self.issue_with_key_for_days(role, name, dns_names, LEAF_DAYS)
    }

    /// [`issue_with_key`](Self::issue_with_key), valid for `days`.
    pub fn issue_with_key_for_days(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
        days: i64,
    ) -> Result<Credentials> {
        let key = KeyPair::generate()?;
        let cert_pem = self.issue_for_days(role, name, dns_names, &key, days)?;
        Ok(Credentials {
            ca_pem: self.cert_pem.clone(),
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for the key of a signing request. Only the key is
    /// taken from the request: the subject and names are the CA's choice.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        dns_names: &[String],
    ) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Invalid(format!("bad certificate signing request: {e}")))?;
        self.issue(role, name, dns_names, &csr.public_key)
    }
}

/// Names that go into certificates and DNS names: what a server or account may be called.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "invalid name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

fn subject(role: Role, name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::OrganizationalUnitName, role.unit());
    dn.push(DnType::CommonName, name);
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind the CA's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// A new key and a signing request for it (what a joining agent sends).
pub fn key_and_request(name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// A holder's credentials, stored as Docker names them (`ca.pem`, `cert.pem`,
/// `key.pem`), so a directory of them also works as a `DOCKER_CERT_PATH`.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Credentials {
    /// The credentials in `dir`, if it holds all three files.
    pub fn load(dir: &Path) -> Result<Option<Credentials>> {
        let read = |f: &str| {
            let p = dir.join(f);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(format!("reading {}", p.display()))(e)),
            }
        };
        match (read("ca.pem")?, read("cert.pem")?, read("key.pem")?) {
            (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Ok(Some(Credentials {
                ca_pem,
                cert_pem,
                key_pem,
            })),
            _ => Ok(None),
        }
    }

    /// Writes the three files (the key readable by its owner only); the
    /// certificate last, so a directory with `cert.pem` is complete.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        write_private(&dir.join("key.pem"), &self.key_pem)?;
        write_atomic(&dir.join("ca.pem"), &self.ca_pem, 0o644)?;
        write_atomic(&dir.join("cert.pem"), &self.cert_pem, 0o644)
    }

    /// Who these credentials say their holder is.
    pub fn identity(&self) -> Result<Identity> {
        let der = self.cert_der()?;
        identify(&der).ok_or_else(|| PkiError::Invalid("not a certificate of this cluster".into()))
    }

    fn cert_der(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("bad certificate: {e}")))
    }

    fn chain_and_key(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("bad private key: {e}")))?;
        Ok((vec![self.cert_der()?], key))
    }
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    write_atomic(path, data, 0o600)
}

fn write_atomic(path: &Path, data: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(format!("writing {}", tmp.display())))?;
    f.write_all(data.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let der = der.map_err(|e| PkiError::Invalid(format!("bad CA certificate: {e}")))?;
        roots.add(der)?;
    }
    if roots.is_empty() {
        return Err(PkiError::Invalid("no CA certificate".into()));
    }
    Ok(roots)
}

/// Whether a TLS server insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client shows a certificate from the cluster CA (agents, the Docker API).
    Required,
    /// Clients may come without one (the head's cluster port: agents join there
    /// with a token before they have a certificate).
    Optional,
}

/// A server configuration: our certificate, clients verified against the CA,
/// HTTP/1.1 only (HTTP/2 cannot be hijacked for attach and exec).
pub fn server_config(creds: &Credentials, auth: ClientAuth) -> Result<Arc<ServerConfig>> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&creds.ca_pem)?), provider());
    let verifier = match auth {
        ClientAuth::Required => verifier.build(),
        ClientAuth::Optional => verifier.allow_unauthenticated().build(),
    }
    .map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
    let (chain, key) = creds.chain_and_key()?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration that trusts the cluster CA and shows our certificate.
pub fn client_config(creds: &Credentials) -> Result<Arc<ClientConfig>> {
    let (chain, key) = creds.chain_and_key()?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&creds.ca_pem)?)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration that trusts the CA in `ca_pem` and shows no
/// certificate (an agent joining with a token).
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration that accepts any server certificate. Only for
/// fetching the CA certificate, which the caller then checks against the
/// fingerprint in its join token before trusting anything it says.
pub fn fetch_ca_client_config() -> Result<Arc<ClientConfig>> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
