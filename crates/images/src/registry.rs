//! A Docker Registry HTTP API v2 client: pulls images into the [`BlobStore`]
//! and pushes them from it ([`push`]).
//!
//! HTTPS, verified, everywhere; plain HTTP only to loopback registries and the
//! operator's `insecure` allow-list. Everything fetched is verified:
//! manifests against their digest, blobs against their digest and size, layers also
//! against the config's `diff_ids` (hashed while downloading, so nothing is read twice).
//! Blobs are streamed to disk in bounded chunks and become visible in the store only
//! once verified; a failed pull leaves no partial file behind.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::TryStreamExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::blobstore::{BlobStore, BlobWriter};
use crate::compress::{self, Compression};
use crate::digest::{Digest, HashingWriter};
use crate::error::ImageError;
use crate::reference::{DEFAULT_DOMAIN, Reference};
use crate::transport::{ConnectError, Tls, host_of};

mod fetch;
pub mod push;
pub use fetch::Downloaded;
pub use push::{PushImage, PushProgress, PushedManifest};

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
const CONFIG_MEDIA_TYPES: &[&str] = &[
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
];
const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// Docker's own limit on manifest size; protects against endless answers.
pub(crate) const MANIFEST_MAX: usize = 4 << 20;
/// Image configs are small JSON documents; refuse absurd ones before fetching.
pub(crate) const CONFIG_MAX: u64 = 32 << 20;
/// Error bodies are only read for their message.
const ERROR_BODY_MAX: usize = 64 << 10;
const MAX_REDIRECTS: usize = 10;
/// How many layers download at once, as `docker pull` does by default.
const CONCURRENT_DOWNLOADS: usize = 3;
/// Downloaded bytes are handed to the (blocking) blob writer in chunks of this size.
const WRITE_CHUNK: usize = 1 << 20;
/// `docker pull` redraws progress bars at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
const USER_AGENT: &str = concat!("atoll/", env!("CARGO_PKG_VERSION"));
/// Who atoll is to token servers' OAuth2 endpoints (`client_id`).
const OAUTH_CLIENT_ID: &str = "atoll";

/// What [`RegistryClient::pull`] reports, one variant per line `docker pull` prints.
/// `id` is the first 12 hex digits of the layer's blob digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// Looking up the manifest.
    Resolving,
    /// "Pulling fs layer": the layer is queued for download.
    LayerWaiting { id: String },
    /// "Downloading [==>   ] current/total".
    LayerDownloading {
        id: String,
        current: u64,
        total: u64,
    },
    /// "Verifying Checksum".
    LayerVerifying { id: String },
    /// "Download complete".
    LayerDownloadComplete { id: String },
    /// "Already exists": the blob is in the store, nothing is downloaded.
    LayerAlreadyExists { id: String },
    /// "Digest: sha256:…": the digest of the manifest (or index) the tag resolved to.
    Digest(Digest),
}

/// One layer of a pulled image, in manifest order (base first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledLayer {
    /// Digest of the blob as stored (usually compressed).
    pub blob: Digest,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

/// The result of a pull; every digest named here is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// What the reference resolved to: the index/manifest list digest for multi-platform
    /// images (what Docker shows as the repo digest), else the image manifest digest.
    pub manifest_digest: Digest,
    /// The platform-specific image manifest (equal to `manifest_digest` when the
    /// reference named an image manifest directly).
    pub image_manifest: Digest,
    /// The image config; its digest is the image ID.
    pub config: Digest,
    pub layers: Vec<PulledLayer>,
}

/// Registry credentials, as `docker login` stores them: a password, or the
/// identity (refresh) token a token server gave at login.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub identity_token: Option<String>,
}

impl Credentials {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
            identity_token: None,
        }
    }

    /// What the CLI sends after a login that returned an identity token.
    pub fn identity(username: impl Into<String>, token: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: String::new(),
            identity_token: Some(token.into()),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The platform picked from multi-platform images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in OCI terms (`linux/amd64`, `linux/arm64`).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    fn matches(&self, p: &PlatformJson) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && match (&self.variant, &p.variant) {
                (Some(want), Some(got)) => want == got,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }
}

impl std::str::FromStr for Platform {
    type Err = ImageError;

    /// `os[/arch[/variant]]` or a bare `arch`, as `--platform` takes it;
    /// architectures by their OCI names (`x86_64` is `amd64`), `arm64/v8`
    /// the same as `arm64`.
    fn from_str(s: &str) -> Result<Platform, ImageError> {
        let bad =
            |why: &str| ImageError::InvalidReference(format!("invalid platform {s:?}: {why}"));
        let parts: Vec<String> = s.split('/').map(str::to_ascii_lowercase).collect();
        if parts.len() > 3 {
            return Err(bad("expected os/arch[/variant]"));
        }
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            return Err(bad("expected os/arch[/variant]"));
        }
        let host = Platform::host();
        let (os, arch, variant) = match parts.as_slice() {
            [one] if one == "linux" => (one.clone(), host.architecture, None),
            [one] => ("linux".to_string(), one.clone(), None),
            [os, arch] => (os.clone(), arch.clone(), None),
            [os, arch, variant] => (os.clone(), arch.clone(), Some(variant.clone())),
            _ => return Err(bad("expected os/arch[/variant]")),
        };
        let architecture = match arch.as_str() {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            "i386" => "386".to_string(),
            _ => arch,
        };
        let variant = variant.filter(|v| !(architecture == "arm64" && v == "v8"));
        Ok(Platform {
            os,
            architecture,
            variant,
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Pulls images over the Registry HTTP API v2. Cheap to share: holds no connections.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    insecure: Vec<String>,
    tls: Arc<Tls>,
    connect_timeout: Duration,
    io_timeout: Duration,
    platform: Platform,
    /// The platform was asked for (`--platform`): an image manifest for
    /// another one is refused instead of taken.
    platform_strict: bool,
    upload_chunk: u64,
    mirrors: Vec<Mirror>,
    /// Networks besides the public internet that downloads may reach.
    url_allow: Vec<String>,
}

/// A pull-through mirror of Docker Hub (`registry-mirrors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// As Docker shows it: `https://host[:port]/`.
    pub url: String,
    authority: String,
    plain: bool,
}

impl std::str::FromStr for Mirror {
    type Err = ImageError;

    /// `https://host[:port]` (or `http://` for a mirror without TLS), no path.
    fn from_str(s: &str) -> Result<Mirror, ImageError> {
        let bad = |why: &str| ImageError::InvalidReference(format!("invalid mirror {s:?}: {why}"));
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("expected https://HOST[:PORT]"))?;
        let plain = match scheme.to_ascii_lowercase().as_str() {
            "https" => false,
            "http" => true,
            _ => return Err(bad("the scheme must be https or http")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "a mirror is a host and port, without path, query or user",
            ));
        }
        authority
            .parse::<http::uri::Authority>()
            .map_err(|_| bad("not a host[:port]"))?;
        if !authority.ends_with(']')
            && let Some((_, port)) = authority.rsplit_once(':')
            && port.parse::<u16>().is_err()
        {
            return Err(bad("the port must be a number"));
        }
        Ok(Mirror {
            url: format!("{}://{authority}/", scheme.to_ascii_lowercase()),
            authority: authority.to_string(),
            plain,
        })
    }
}

impl RegistryClient {
    /// `insecure` lists registries that may be spoken to over plain HTTP besides
    /// loopback ones: `host`, `host:port` or a CIDR such as `10.0.0.0/8`, like Docker's
    /// `insecure-registries`.
    pub fn new(insecure: Vec<String>) -> RegistryClient {
        RegistryClient {
            insecure,
            tls: Arc::new(Tls::new(crate::transport::DEFAULT_CERTS_DIR)),
            connect_timeout: Duration::from_secs(15),
            io_timeout: Duration::from_secs(60),
            platform: Platform::host(),
            platform_strict: false,
            upload_chunk: push::DEFAULT_UPLOAD_CHUNK,
            mirrors: Vec::new(),
            url_allow: Vec::new(),
        }
    }

    /// Limits for connecting and for each wait on the registry (headers, next chunk).
    pub fn with_timeouts(mut self, connect: Duration, io: Duration) -> RegistryClient {
        self.connect_timeout = connect;
        self.io_timeout = io;
        self
    }

    /// Where registries' CAs and client certificates are (Docker's
    /// `certs.d` layout; default [`crate::transport::DEFAULT_CERTS_DIR`]).
    pub fn with_certs_dir(mut self, dir: impl Into<std::path::PathBuf>) -> RegistryClient {
        self.tls = Arc::new(Tls::new(dir));
        self
    }

    /// The platform picked from multi-platform images (default: the host's).
    pub fn with_platform(mut self, platform: Platform) -> RegistryClient {
        self.platform = platform;
        self
    }

    /// `docker pull --platform`: `platform` is picked from an index, and an
    /// image manifest for another platform is an error.
    pub fn with_requested_platform(mut self, platform: Platform) -> RegistryClient {
        self.platform = platform;
        self.platform_strict = true;
        self
    }

    /// Mirrors Docker Hub pulls try first, in order.
    pub fn with_mirrors(mut self, mirrors: Vec<Mirror>) -> RegistryClient {
        self.mirrors = mirrors;
        self
    }

    pub fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    /// The registries spoken to in plain HTTP besides loopback ones.
    pub fn insecure(&self) -> &[String] {
        &self.insecure
    }

    /// Blobs larger than `bytes` are pushed in PATCH chunks of that size.
    pub fn with_upload_chunk(mut self, bytes: u64) -> RegistryClient {
        self.upload_chunk = bytes.max(1);
        self
    }

    /// The `host[:port]` to connect to for a reference's domain.
    pub fn endpoint(&self, domain: &str) -> String {
        if domain == DEFAULT_DOMAIN {
            "registry-1.docker.io".to_string()
        } else {
            domain.to_string()
        }
    }

    /// Loopback hosts always, others only when in the `insecure` list.
    pub fn plain_http_allowed(&self, authority: &str) -> bool {
        let host = host_of(authority);
        if is_loopback_host(host) {
            return true;
        }
        self.insecure
            .iter()
            .any(|e| insecure_entry_matches(e, authority, host))
    }

    /// Pulls `reference` (default tag `latest`) anonymously; see
    /// [`pull_with_credentials`](Self::pull_with_credentials).
    pub async fn pull(
        &self,
        reference: &Reference,
        store: &BlobStore,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<PulledImage, ImageError> {
        self.pull_with_credentials(reference, None, store, &Allowance::default(), progress)
            .await
    }

    /// Resolves the reference to an image manifest (picking this client's platform from
    /// an index), then fetches the config and every layer it may not reuse from
    /// `store`: one the puller already owns, or one this registry served before
    /// and now confirms to this request (a HEAD with its credentials). The store is
    /// shared by every account: a blob is never handed to a puller on its digest
    /// alone, so no account assembles another's private layers, nor learns which
    /// digests exist, from a registry of its own that names them. Nothing is
    /// downloaded when what is missing exceeds the allowance's bytes.
    pub async fn pull_with_credentials(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        store: &BlobStore,
        allowance: &Allowance,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<PulledImage, ImageError> {
        let reference = reference.clone().with_default_tag();
        progress(PullProgress::Resolving);
        let scopes = vec![format!("repository:{}:pull", reference.path)];
        // Docker Hub's images come from the operator's mirrors first, in
        // order; any failure of a mirror falls back to the next, then to
        // the origin, whose error is the one shown.
        if reference.domain == DEFAULT_DOMAIN {
            for mirror in &self.mirrors {
                let session = self.session(
                    mirror.authority.clone(),
                    &reference,
                    credentials,
                    scopes.clone(),
                );
                if mirror.plain {
                    session
                        .plain
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                match self
                    .pull_from(&session, store, allowance, &mut *progress)
                    .await
                {
                    Ok(img) => return Ok(img),
                    Err(e @ ImageError::StorageExceeded { .. }) => return Err(e),
                    Err(e) => tracing::info!("mirror {}: {e}; trying the next", mirror.url),
                }
            }
        }
        let session = self.session(
            self.endpoint(&reference.domain),
            &reference,
            credentials,
            scopes,
        );
        session.pick_scheme().await?;
        self.pull_from(&session, store, allowance, progress).await
    }

    fn session<'a>(
        &'a self,
        authority: String,
        reference: &'a Reference,
        credentials: Option<&'a Credentials>,
        scopes: Vec<String>,
    ) -> Session<'a> {
        Session {
            client: self,
            authority,
            reference,
            credentials,
            scopes,
            auth: Mutex::new(None),
            offline: None,
            plain: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// One pull attempt, from the endpoint `session` speaks to.
    async fn pull_from(
        &self,
        session: &Session<'_>,
        store: &BlobStore,
        allowance: &Allowance,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<PulledImage, ImageError> {
        let reference = session.reference;
        let progress = Mutex::new(progress);

        let wanted = match (&reference.digest, &reference.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => crate::reference::DEFAULT_TAG.to_string(),
        };
        let top = session
            .fetch_manifest(&wanted, reference.digest.as_ref())
            .await?;
        let manifest_digest = top.digest.clone();
        let top_kind = top.kind;
        put_blob(store, top.bytes.clone()).await?;
        let image = match top.kind {
            ManifestKind::Image => top,
            ManifestKind::Index => {
                let desc = self.select_platform(&top.json)?;
                let m = session
                    .fetch_manifest(desc.digest.as_str(), Some(&desc.digest))
                    .await?;
                if m.kind != ManifestKind::Image {
                    return Err(session.err(format!(
                        "manifest {} for {} is not an image manifest",
                        desc.digest, self.platform
                    )));
                }
                put_blob(store, m.bytes.clone()).await?;
                m
            }
        };
        let (config_desc, layer_descs) = image_parts(session, &image.json)?;

        let owns = &allowance.owns;
        let (config_reusable, reusable) = futures::future::try_join(
            session.reusable(store, owns, &config_desc.digest),
            futures::future::try_join_all(
                layer_descs
                    .iter()
                    .map(|d| session.reusable(store, owns, &d.digest)),
            ),
        )
        .await?;
        // Refused before any download when it would not fit.
        if let Some(left) = allowance.bytes {
            let mut fetched = HashSet::new();
            let needs: u64 = std::iter::once((config_desc, config_reusable))
                .chain(layer_descs.iter().zip(reusable.iter().copied()))
                .filter(|(d, reuse)| !reuse && fetched.insert(&d.digest))
                .map(|(d, _)| d.size)
                .sum();
            if needs > left {
                return Err(ImageError::StorageExceeded { needs, left });
            }
        }
        if !config_reusable {
            session.download(store, config_desc, None, None).await?;
        }
        let config_bytes = read_blob(store, &config_desc.digest).await?;
        let config = parse_config(session, &config_bytes)?;
        if self.platform_strict
            && top_kind == ManifestKind::Image
            && (config.os != self.platform.os || config.architecture != self.platform.architecture)
        {
            return Err(ImageError::ManifestUnknown(format!(
                "image with reference {} was found but does not match the specified platform: \
                 wanted {}, actual: {}/{}",
                reference.familiar(),
                self.platform,
                config.os,
                config.architecture
            )));
        }
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != layer_descs.len() {
            return Err(session.err("layers from manifest don't match image configuration"));
        }

        let mut queued = HashSet::new();
        let mut to_fetch = Vec::new();
        for ((desc, diff_id), reuse) in layer_descs.iter().zip(&diff_ids).zip(reusable) {
            let id = short_id(&desc.digest);
            if reuse {
                emit(&progress, PullProgress::LayerAlreadyExists { id });
            } else if queued.insert(desc.digest.clone()) {
                emit(&progress, PullProgress::LayerWaiting { id });
                to_fetch.push((desc, diff_id));
            }
        }
        futures::stream::iter(to_fetch.into_iter().map(Ok))
            .try_for_each_concurrent(CONCURRENT_DOWNLOADS, |(desc, diff_id)| {
                session.download(store, desc, Some(diff_id), Some(&progress))
            })
            .await?;

        emit(&progress, PullProgress::Digest(manifest_digest.clone()));
        Ok(PulledImage {
            manifest_digest,
            image_manifest: image.digest,
            config: config_desc.digest.clone(),
            layers: layer_descs
                .iter()
                .zip(diff_ids)
                .map(|(d, diff_id)| PulledLayer {
                    blob: d.digest.clone(),
                    diff_id,
                    size: d.size,
                    media_type: d.media_type.clone(),
                })
                .collect(),
        })
    }

    /// `docker login`: whether `server` (a host[:port], or a URL as the CLI
    /// sends Docker Hub's, `https://index.docker.io/v1/`) accepts
    /// `credentials`, through its basic or token flow. Returns the identity
    /// token a token server gives for an offline login, if it gives one;
    /// nothing is kept.
    pub async fn login(
        &self,
        server: &str,
        credentials: &Credentials,
    ) -> Result<Option<String>, ImageError> {
        let domain = login_domain(server)?;
        let reference = Reference {
            domain: domain.clone(),
            path: String::new(),
            tag: None,
            digest: None,
        };
        let mut session = self.session(
            self.endpoint(&domain),
            &reference,
            Some(credentials),
            Vec::new(),
        );
        session.offline = Some(Mutex::new(None));
        session.pick_scheme().await?;
        let uri: Uri = format!("{}://{}/v2/", session.scheme(), session.authority)
            .parse()
            .map_err(|_| session.err(format!("invalid registry address {server:?}")))?;
        let resp = session.get(uri.clone(), None).await?;
        match resp.status() {
            StatusCode::OK => Ok(session.offline.and_then(|m| m.into_inner().ok().flatten())),
            StatusCode::UNAUTHORIZED => Err(ImageError::Unauthorized(format!(
                "login attempt to {uri} failed with status: 401 Unauthorized"
            ))),
            other => Err(session.err(format!(
                "login attempt to {uri} failed with status: {other}"
            ))),
        }
    }

    /// The index entry for this client's platform, as Docker picks it.
    fn select_platform<'m>(&self, index: &'m ManifestJson) -> Result<&'m Descriptor, ImageError> {
        let entries = index.manifests.as_deref().unwrap_or_default();
        let matching: Vec<&Descriptor> = entries
            .iter()
            .filter(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| self.platform.matches(p))
            })
            .collect();
        // Without a wanted variant, prefer an entry without one, then the first (e.g. v8).
        matching
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none()))
            .or(matching.first())
            .copied()
            .ok_or_else(|| {
                ImageError::ManifestUnknown(format!(
                    "no matching manifest for {} in the manifest list entries",
                    self.platform
                ))
            })
    }
}

/// What one pull may take: blobs of the shared store, and bytes of its
/// puller's storage.
#[derive(Debug, Clone, Default)]
pub struct Allowance {
    /// Blobs the puller holds already (its images' configs and layers):
    /// reused without asking the registry.
    pub owns: HashSet<Digest>,
    /// Most bytes it may download (None: no limit).
    pub bytes: Option<u64>,
}

/// Per-pull state: where to connect and the authorization obtained so far.
struct Session<'a> {
    client: &'a RegistryClient,
    authority: String,
    reference: &'a Reference,
    credentials: Option<&'a Credentials>,
    /// Token scopes asked for (`repository:NAME:pull,push`); empty: the
    /// challenge's own.
    scopes: Vec<String>,
    auth: Mutex<Option<HeaderValue>>,
    /// A login asks the token server for an identity (refresh) token too,
    /// kept here for the answer.
    offline: Option<Mutex<Option<String>>>,
    /// Plain HTTP: the registry does not speak TLS (allowed for loopback
    /// and insecure registries only).
    plain: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManifestKind {
    Image,
    Index,
}

struct FetchedManifest {
    bytes: Bytes,
    digest: Digest,
    kind: ManifestKind,
    json: ManifestJson,
}

#[derive(Debug, Deserialize)]
struct ManifestJson {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: Digest,
    size: u64,
    platform: Option<PlatformJson>,
}

#[derive(Debug, Deserialize)]
struct PlatformJson {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct ConfigJson {
    rootfs: Option<RootFsJson>,
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
struct RootFsJson {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

/// `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"…"}]}` as registries answer.
#[derive(Deserialize)]
struct ErrorsJson {
    #[serde(default)]
    errors: Vec<ErrorJson>,
}

#[derive(Deserialize)]
struct ErrorJson {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// What a failed request was for, to phrase its error like Docker.
enum Subject<'a> {
    Manifest,
    Blob(&'a Digest),
}

impl Session<'_> {
    fn domain(&self) -> &str {
        &self.reference.domain
    }

    fn scheme(&self) -> &'static str {
        if self.plain.load(std::sync::atomic::Ordering::Relaxed) {
            "http"
        } else {
            "https"
        }
    }

    /// HTTPS, verified; a loopback or insecure registry that does not speak
    /// TLS (or has nothing on the HTTPS port) is spoken to in plain HTTP.
    /// A TLS failure (an untrusted certificate) is never a reason to fall
    /// back: it is the error.
    async fn pick_scheme(&self) -> Result<(), ImageError> {
        if !self.client.plain_http_allowed(&self.authority) {
            return Ok(());
        }
        let timeouts = (self.client.connect_timeout, self.client.io_timeout);
        match self
            .client
            .tls
            .connect(&self.authority, 443, true, timeouts, true)
            .await
        {
            Ok(_) => Ok(()),
            Err(ConnectError::NotTls | ConnectError::Dial(_)) => {
                self.plain.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(ConnectError::Tls(m)) => Err(self.err(format!("tls: {m}"))),
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> ImageError {
        ImageError::Registry(format!("registry {}: {msg}", self.domain()))
    }

    fn url(&self, tail: &str) -> Result<Uri, ImageError> {
        let s = format!(
            "{}://{}/v2/{}/{tail}",
            self.scheme(),
            self.authority,
            self.reference.path
        );
        s.parse()
            .map_err(|_| self.err(format!("cannot build a request URL from {s:?}")))
    }

    /// GETs a manifest by tag or digest, checks it and tells image from index.
    async fn fetch_manifest(
        &self,
        wanted: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest, ImageError> {
        let uri = self.url(&format!("manifests/{wanted}"))?;
        let accept = [
            MEDIA_OCI_INDEX,
            MEDIA_DOCKER_MANIFEST_LIST,
            MEDIA_OCI_MANIFEST,
            MEDIA_DOCKER_MANIFEST,
        ]
        .join(", ");
        let resp = self.get(uri, Some(&accept)).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.error_from_response(resp, Subject::Manifest).await);
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body();
        let bytes = self
            .read_limited(&mut body, MANIFEST_MAX, "manifest")
            .await?;
        let digest = Digest::of(&bytes);
        if let Some(exp) = expected
            && *exp != digest
        {
            return Err(self.err(format!("manifest verification failed for digest {exp}")));
        }
        if expected.is_none()
            && let Some(a) = announced
            && a != digest.as_str()
        {
            return Err(self.err(format!(
                "manifest verification failed: registry announced digest {a}, content has {digest}"
            )));
        }
        if MEDIA_DOCKER_SCHEMA1.contains(&content_type.as_str()) {
            return Err(schema1_error(self.reference));
        }
        let json: ManifestJson = serde_json::from_slice(&bytes).map_err(|e| {
            self.err(format!(
                "invalid manifest for {}: {e}",
                self.reference.familiar()
            ))
        })?;
        let kind = manifest_kind(&content_type, &json).map_err(|m| self.err(m))?;
        if json.schema_version == Some(1) {
            return Err(schema1_error(self.reference));
        }
        if json.schema_version.is_some_and(|v| v != 2) {
            return Err(self.err(format!(
                "unsupported manifest schema version {:?}",
                json.schema_version
            )));
        }
        Ok(FetchedManifest {
            bytes,
            digest,
            kind,
            json,
        })
    }

    /// Whether blob `digest` in the shared store may serve this pull without a
    /// download (see [`RegistryClient::pull_with_credentials`]).
    async fn reusable(
        &self,
        store: &BlobStore,
        owns: &HashSet<Digest>,
        digest: &Digest,
    ) -> Result<bool, ImageError> {
        if !store.has(digest) {
            return Ok(false);
        }
        if owns.contains(digest) {
            return Ok(true);
        }
        if !store.has_origin(digest, self.domain()) {
            return Ok(false);
        }
        let uri = self.url(&format!("blobs/{digest}"))?;
        let resp = self.request(Method::HEAD, uri, None).await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Streams one blob into the store, verifying size, digest and (for layers) the
    /// uncompressed `diff_id`. Reports progress when `progress` is given.
    async fn download(
        &self,
        store: &BlobStore,
        desc: &Descriptor,
        diff_id: Option<&Digest>,
        progress: Option<&ProgressSink<'_>>,
    ) -> Result<(), ImageError> {
        let id = short_id(&desc.digest);
        let uri = self.url(&format!("blobs/{}", desc.digest))?;
        let resp = self.get(uri, None).await?;
        if resp.status() != StatusCode::OK {
            return Err(self
                .error_from_response(resp, Subject::Blob(&desc.digest))
                .await);
        }
        let total = desc.size;
        let mut sink = BlobSink {
            writer: store.writer()?,
            diff: diff_id.map(|_| DiffHasher::Sniffing(Vec::new())),
        };
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        let mut body = resp.into_body();
        let mut current = 0u64;
        let mut last_report: Option<Instant> = None;
        while let Some(chunk) = self.next_chunk(&mut body).await? {
            current += chunk.len() as u64;
            if current > total {
                return Err(self.err(format!(
                    "blob {} is larger than the {total} bytes its manifest announces",
                    desc.digest
                )));
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= WRITE_CHUNK {
                blocking_io(|| sink.write(&buf)).map_err(|e| self.layer_error(&desc.digest, e))?;
                buf.clear();
            }
            if let Some(p) = progress
                && last_report.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL)
            {
                last_report = Some(Instant::now());
                emit(
                    p,
                    PullProgress::LayerDownloading {
                        id: id.clone(),
                        current,
                        total,
                    },
                );
            }
        }
        if current != total {
            return Err(self.err(format!(
                "blob {}: got {current} bytes, expected {total}",
                desc.digest
            )));
        }
        if let Some(p) = progress {
            emit(
                p,
                PullProgress::LayerDownloading {
                    id: id.clone(),
                    current,
                    total,
                },
            );
            emit(p, PullProgress::LayerVerifying { id: id.clone() });
        }
        let blob = &desc.digest;
        let verified = blocking_io(move || {
            sink.write(&buf)?;
            let BlobSink { writer, diff } = sink;
            if let (Some(h), Some(want)) = (diff, diff_id) {
                let got = h.finish()?;
                if got != *want {
                    // Dropping `writer` removes the temp file.
                    return Ok(Err(format!(
                        "filesystem layer verification failed for digest {blob}: \
                         uncompressed content is {got}, the image config says {want}"
                    )));
                }
            }
            match writer.commit(Some(blob)) {
                Ok(_) => Ok(Ok(())),
                Err(ImageError::DigestMismatch { .. }) => Ok(Err(format!(
                    "filesystem layer verification failed for digest {blob}"
                ))),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.layer_error(blob, e))?;
        verified.map_err(|m| self.err(m))?;
        store.add_origin(blob, self.domain())?;
        store.add_origin_repository(blob, self.domain(), &self.reference.path)?;
        if let Some(p) = progress {
            emit(p, PullProgress::LayerDownloadComplete { id });
        }
        Ok(())
    }

    /// Undecodable layer data is a verification failure, as Docker words it.
    fn layer_error(&self, blob: &Digest, e: ImageError) -> ImageError {
        match e {
            ImageError::Registry(m) => self.err(format!(
                "filesystem layer verification failed for digest {blob}: {m}"
            )),
            e => e,
        }
    }

    async fn get(&self, uri: Uri, accept: Option<&str>) -> Result<Response<Incoming>, ImageError> {
        self.request(Method::GET, uri, accept).await
    }

    async fn request(
        &self,
        method: Method,
        start: Uri,
        accept: Option<&str>,
    ) -> Result<Response<Incoming>, ImageError> {
        let headers = match accept {
            Some(a) => vec![(header::ACCEPT, header_value(a)?)],
            None => Vec::new(),
        };
        self.request_with(method, start, &headers, None).await
    }

    /// A request that follows redirects (registries send blobs to object
    /// storage; only for GET and HEAD) and answers one authentication
    /// challenge. `body` is small and sent again on a retry.
    async fn request_with(
        &self,
        method: Method,
        start: Uri,
        extra: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, ImageError> {
        let mut uri = start;
        let mut redirects = 0;
        let mut authenticated = false;
        let follows = method == Method::GET || method == Method::HEAD;
        loop {
            let mut headers = extra.to_vec();
            if let Some(auth) = self.auth_for(&uri) {
                headers.push((header::AUTHORIZATION, auth));
            }
            let req_body = body.clone().map_or_else(empty_body, bytes_body);
            let resp = self
                .roundtrip(method.clone(), &uri, &headers, req_body)
                .await?;
            let status = resp.status();
            let same_origin = self.same_origin(&uri);
            if follows && status.is_redirection() && resp.headers().contains_key(header::LOCATION) {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(self.err("too many redirects"));
                }
                uri = self.redirect_target(&uri, &resp)?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && same_origin && !authenticated {
                authenticated = true;
                let challenges: Vec<String> = resp
                    .headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                    .collect();
                if self.authenticate(&challenges).await? {
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    fn redirect_target(&self, from: &Uri, resp: &Response<Incoming>) -> Result<Uri, ImageError> {
        self.location(from, resp, "redirect")
    }

    /// The `Location` of an answer (a redirect, an upload), resolved against
    /// the request; plain HTTP only where it is allowed.
    fn location(
        &self,
        from: &Uri,
        resp: &Response<Incoming>,
        what: &str,
    ) -> Result<Uri, ImageError> {
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.err(format!("{what} without a usable Location")))?;
        let target = resolve_location(from, loc)
            .ok_or_else(|| self.err(format!("{what} to an invalid location {loc:?}")))?;
        if target.authority() != from.authority() || target.scheme() != from.scheme() {
            self.check_plain_http(&target, what)?;
        }
        Ok(target)
    }

    /// HTTPS anywhere; plain HTTP only to allowed hosts: redirects and token
    /// realms are checked too.
    fn check_plain_http(&self, uri: &Uri, what: &str) -> Result<(), ImageError> {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        match uri.scheme_str() {
            Some("https") => Ok(()),
            Some("http") if self.client.plain_http_allowed(authority) => Ok(()),
            _ => Err(self.err(format!(
                "{what} to {uri}: only https, or http to loopback and insecure registries"
            ))),
        }
    }

    /// Handles a 401 challenge. Ok(false) when there is nothing to retry with.
    async fn authenticate(&self, challenges: &[String]) -> Result<bool, ImageError> {
        let parsed: Vec<Challenge> = challenges
            .iter()
            .filter_map(|c| parse_challenge(c))
            .collect();
        if let Some(bearer) = parsed
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        {
            let realm = bearer
                .param("realm")
                .ok_or_else(|| self.err("token challenge without a realm"))?;
            // A login (no repository) asks for a token without a scope.
            let scopes: Vec<&str> = if self.scopes.is_empty() {
                bearer.param("scope").into_iter().collect()
            } else {
                self.scopes.iter().map(String::as_str).collect()
            };
            let service = bearer.param("service");
            let resp = match self.credentials.and_then(|c| c.identity_token.as_deref()) {
                Some(refresh) => self.refresh_grant(realm, service, &scopes, refresh).await?,
                None => self.token_request(realm, service, &scopes).await?,
            };
            let status = resp.status();
            let mut body = resp.into_body();
            let bytes = self.read_limited(&mut body, MANIFEST_MAX, "token").await?;
            if status == StatusCode::UNAUTHORIZED {
                let detail = error_detail(&bytes).unwrap_or_else(|| status.to_string());
                return Err(ImageError::Unauthorized(format!(
                    "registry {}: {detail}",
                    self.domain()
                )));
            }
            if status != StatusCode::OK {
                let detail = error_detail(&bytes).unwrap_or_else(|| status.to_string());
                return Err(self.err(format!("authentication failed: {detail}")));
            }
            #[derive(Deserialize)]
            struct TokenJson {
                token: Option<String>,
                access_token: Option<String>,
                refresh_token: Option<String>,
            }
            let t: TokenJson = serde_json::from_slice(&bytes)
                .map_err(|e| self.err(format!("invalid token response: {e}")))?;
            if let (Some(slot), Some(r)) =
                (&self.offline, t.refresh_token.filter(|r| !r.is_empty()))
                && let Ok(mut g) = slot.lock()
            {
                *g = Some(r);
            }
            let token = t
                .token
                .or(t.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| self.err("token response without a token"))?;
            let value = header_value(&format!("Bearer {token}"))?;
            if let Ok(mut g) = self.auth.lock() {
                *g = Some(value);
            }
            return Ok(true);
        }
        if parsed
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
            && let Some(c) = self.credentials.filter(|c| c.identity_token.is_none())
        {
            let value = basic_auth(c)?;
            if let Ok(mut g) = self.auth.lock() {
                *g = Some(value);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// `GET realm?service=…&scope=…` with the password (Basic), as Docker
    /// asks a token server; a login also asks for an identity token
    /// (`offline_token`).
    async fn token_request(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
    ) -> Result<Response<Incoming>, ImageError> {
        let mut query = Vec::new();
        if let Some(service) = service {
            query.push(format!("service={}", query_escape(service)));
        }
        for scope in scopes {
            query.push(format!("scope={}", query_escape(scope)));
        }
        if self.offline.is_some() {
            query.push(format!("offline_token=true&client_id={OAUTH_CLIENT_ID}"));
        }
        let mut url = realm.to_string();
        if !query.is_empty() {
            url.push(if realm.contains('?') { '&' } else { '?' });
            url.push_str(&query.join("&"));
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| self.err(format!("invalid token realm {realm:?}")))?;
        self.check_plain_http(&uri, "token request")?;
        let mut headers = Vec::new();
        if let Some(c) = self.credentials {
            headers.push((header::AUTHORIZATION, basic_auth(c)?));
        }
        self.roundtrip(Method::GET, &uri, &headers, empty_body())
            .await
    }

    /// The OAuth2 refresh grant (`POST realm`, a form) Docker uses with the
    /// identity token a login returned.
    async fn refresh_grant(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
        refresh: &str,
    ) -> Result<Response<Incoming>, ImageError> {
        let uri: Uri = realm
            .parse()
            .map_err(|_| self.err(format!("invalid token realm {realm:?}")))?;
        self.check_plain_http(&uri, "token request")?;
        let mut form = format!(
            "grant_type=refresh_token&refresh_token={}&client_id={OAUTH_CLIENT_ID}",
            query_escape(refresh)
        );
        if let Some(service) = service {
            form.push_str(&format!("&service={}", query_escape(service)));
        }
        if !scopes.is_empty() {
            form.push_str(&format!("&scope={}", query_escape(&scopes.join(" "))));
        }
        let headers = [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(form.len())),
        ];
        self.roundtrip(Method::POST, &uri, &headers, bytes_body(Bytes::from(form)))
            .await
    }

    /// The Authorization header for a request to `uri`: credentials never
    /// leave the registry's origin (storage redirects are signed).
    fn auth_for(&self, uri: &Uri) -> Option<HeaderValue> {
        if !self.same_origin(uri) {
            return None;
        }
        self.auth.lock().ok().and_then(|g| g.clone())
    }

    /// The registry itself may be on loopback; a target it names elsewhere
    /// (a redirect, an upload location, a token realm) may be only when the
    /// registry is on loopback too.
    fn may_dial_loopback(&self, uri: &Uri) -> bool {
        self.same_origin(uri) || is_loopback_host(host_of(&self.authority))
    }

    fn same_origin(&self, uri: &Uri) -> bool {
        uri.authority().map(|a| a.as_str()) == Some(self.authority.as_str())
    }

    /// One HTTP/1.1 request on a fresh connection; the answer's headers
    /// must come within the I/O timeout.
    async fn roundtrip(
        &self,
        method: Method,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: ReqBody,
    ) -> Result<Response<Incoming>, ImageError> {
        match tokio::time::timeout(
            self.client.io_timeout,
            self.roundtrip_untimed(method, uri, headers, body),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(self.err(format!(
                "{uri}: no answer within {:?}",
                self.client.io_timeout
            ))),
        }
    }

    /// [`roundtrip`](Self::roundtrip) without the overall timeout (connect
    /// still has its own), for uploads whose caller watches progress.
    async fn roundtrip_untimed(
        &self,
        method: Method,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: ReqBody,
    ) -> Result<Response<Incoming>, ImageError> {
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| self.err(format!("request URL without a host: {uri}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(self.err(format!("unsupported URL {uri}"))),
        };
        let port = if tls { 443 } else { 80 };
        // Go's wording, as Docker's messages have it: `Get "https://…": …`.
        let verb = {
            let m = method.as_str().to_ascii_lowercase();
            let mut c = m.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        };
        let stream = self
            .client
            .tls
            .connect(
                &authority,
                port,
                tls,
                (self.client.connect_timeout, self.client.io_timeout),
                self.may_dial_loopback(uri),
            )
            .await
            .map_err(|e| match e {
                ConnectError::Dial(m) => self.err(format!("{verb} \"{uri}\": {m}")),
                ConnectError::NotTls => self.err(format!(
                    "{verb} \"{uri}\": http: server gave HTTP response to HTTPS client"
                )),
                ConnectError::Tls(m) => self.err(format!("{verb} \"{uri}\": tls: {m}")),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.err(format!("{verb} \"{uri}\": {e}")))?;
        // The connection's own error says why a request failed when the
        // request only learns that it was cancelled (a TLS 1.3 server
        // refuses a client certificate after the handshake, with an alert).
        let (ended, why) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("registry connection ended: {e}");
                let _ = ended.send(error_chain(&e));
            }
        });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::USER_AGENT, USER_AGENT);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(body)
            .map_err(|e| self.err(format!("{verb} \"{uri}\": {e}")))?;
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let cause = match tokio::time::timeout(Duration::from_secs(1), why).await {
                    Ok(Ok(c)) if e.is_canceled() => c,
                    _ => error_chain(&e),
                };
                Err(self.err(format!("{verb} \"{uri}\": {cause}")))
            }
        }
    }

    async fn next_chunk(&self, body: &mut Incoming) -> Result<Option<Bytes>, ImageError> {
        loop {
            match tokio::time::timeout(self.client.io_timeout, body.frame()).await {
                Err(_) => {
                    return Err(self.err(format!(
                        "connection stalled: no data within {:?}",
                        self.client.io_timeout
                    )));
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(self.err(format!("reading response: {e}"))),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    async fn read_limited(
        &self,
        body: &mut Incoming,
        limit: usize,
        what: &str,
    ) -> Result<Bytes, ImageError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(body).await? {
            if out.len() + chunk.len() > limit {
                return Err(self.err(format!("{what} is larger than {limit} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    /// The status of a failed answer and the first error its body names
    /// (`{"errors":[{"code":…,"message":…}]}`), read within a bound.
    async fn error_body(&self, resp: Response<Incoming>) -> (StatusCode, Option<ErrorJson>) {
        let status = resp.status();
        let mut body = resp.into_body();
        let bytes = self
            .read_limited(&mut body, ERROR_BODY_MAX, "error response")
            .await
            .unwrap_or_default();
        let first = serde_json::from_slice::<ErrorsJson>(&bytes)
            .ok()
            .and_then(|e| e.errors.into_iter().next());
        (status, first)
    }

    /// Turns a non-success answer into the error Docker would show.
    async fn error_from_response(
        &self,
        resp: Response<Incoming>,
        subject: Subject<'_>,
    ) -> ImageError {
        let (status, first) = self.error_body(resp).await;
        let code = first.as_ref().map(|e| e.code.as_str()).unwrap_or_default();
        let text = |default: &str| match &first {
            Some(e) if !e.code.is_empty() => format!(
                "{}: {}",
                e.code.replace('_', " ").to_lowercase(),
                if e.message.is_empty() {
                    default
                } else {
                    &e.message
                }
            ),
            _ => default.to_string(),
        };
        let r = self.reference;
        let denied = || {
            ImageError::ManifestUnknown(format!(
                "pull access denied for {}, repository does not exist or may require \
                 'docker login': {}",
                r.repository(),
                text("denied: requested access to the resource is denied")
            ))
        };
        match subject {
            Subject::Manifest => match code {
                "NAME_UNKNOWN" => ImageError::ManifestUnknown(format!(
                    "repository {} not found: {}",
                    r.repository(),
                    text("name unknown")
                )),
                "DENIED" | "UNAUTHORIZED" => denied(),
                "MANIFEST_UNKNOWN" => ImageError::ManifestUnknown(format!(
                    "manifest for {} not found: {}",
                    r.familiar(),
                    text("manifest unknown")
                )),
                _ if status == StatusCode::NOT_FOUND => ImageError::ManifestUnknown(format!(
                    "manifest for {} not found: manifest unknown: manifest unknown",
                    r.familiar()
                )),
                _ if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
                    denied()
                }
                _ => self.err(format!(
                    "unexpected answer to manifest request: {status}{}",
                    error_suffix(&first)
                )),
            },
            Subject::Blob(d) => match code {
                "DENIED" | "UNAUTHORIZED" => denied(),
                _ => self.err(format!(
                    "fetching blob {d}: {status}{}",
                    error_suffix(&first)
                )),
            },
        }
    }
}

/// A `Location` resolved against the request it answers (a relative one
/// keeps the request's scheme and authority).
fn resolve_location(from: &Uri, loc: &str) -> Option<Uri> {
    let target: Uri = loc.parse().ok()?;
    if target.scheme().is_some() {
        return Some(target);
    }
    let path = if loc.starts_with('/') {
        loc.to_string()
    } else {
        let base = from.path();
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{loc}")
    };
    let authority = from.authority().map(|a| a.as_str()).unwrap_or_default();
    let scheme = from.scheme_str().unwrap_or("https");
    format!("{scheme}://{authority}{path}").parse().ok()
}

/// `localhost` or a loopback address.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error with its causes (hyper's "connection error" says little; the
/// TLS alert under it says why).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn error_suffix(e: &Option<ErrorJson>) -> String {
    match e {
        Some(e) if !e.code.is_empty() || !e.message.is_empty() => {
            format!(
                " ({}: {})",
                e.code.replace('_', " ").to_lowercase(),
                e.message
            )
        }
        _ => String::new(),
    }
}

/// `code: message` of the first error in a registry/token error body.
fn error_detail(bytes: &[u8]) -> Option<String> {
    let e = serde_json::from_slice::<ErrorsJson>(bytes)
        .ok()?
        .errors
        .into_iter()
        .next()?;
    Some(format!(
        "{}: {}",
        e.code.replace('_', " ").to_lowercase(),
        e.message
    ))
}

fn schema1_error(r: &Reference) -> ImageError {
    ImageError::Unsupported(format!(
        "[DEPRECATION NOTICE] Docker Image Format v1 and Docker Image manifest version 2, \
         schema 1 support has been removed. Suggest the author of {} to upgrade the image \
         to the OCI Format or Docker Image manifest v2, schema 2. More information at \
         https://docs.docker.com/go/deprecated-image-specs/",
        r.familiar()
    ))
}

/// The manifest kind from its Content-Type, falling back to the document itself when
/// the registry sends a generic JSON type.
fn manifest_kind(content_type: &str, json: &ManifestJson) -> Result<ManifestKind, String> {
    let kind_of = |t: &str| match t {
        MEDIA_DOCKER_MANIFEST | MEDIA_OCI_MANIFEST => Some(ManifestKind::Image),
        MEDIA_DOCKER_MANIFEST_LIST | MEDIA_OCI_INDEX => Some(ManifestKind::Index),
        _ => None,
    };
    let declared = json.media_type.as_deref().filter(|t| !t.is_empty());
    match (kind_of(content_type), declared) {
        (Some(_), Some(d)) if d != content_type => Err(format!(
            "mediaType in manifest should be '{content_type}' not '{d}'"
        )),
        (Some(k), _) => Ok(k),
        (None, _) if !matches!(content_type, "" | "application/json") => Err(format!(
            "unsupported manifest content type {content_type:?}"
        )),
        (None, Some(d)) => {
            kind_of(d).ok_or_else(|| format!("unsupported manifest media type {d:?}"))
        }
        (None, None) => match (&json.manifests, &json.config) {
            (Some(_), None) => Ok(ManifestKind::Index),
            (None, Some(_)) => Ok(ManifestKind::Image),
            _ => Err("cannot tell the manifest's media type".to_string()),
        },
    }
}

/// Config and layer descriptors of an image manifest, with their media types checked.
fn image_parts<'m>(
    session: &Session<'_>,
    m: &'m ManifestJson,
) -> Result<(&'m Descriptor, &'m [Descriptor]), ImageError> {
    let config = m
        .config
        .as_ref()
        .ok_or_else(|| session.err("image manifest without a config"))?;
    if !config.media_type.is_empty() && !CONFIG_MEDIA_TYPES.contains(&config.media_type.as_str()) {
        return Err(ImageError::Unsupported(format!(
            "{} is not a container image: unsupported config media type {}",
            session.reference.familiar(),
            config.media_type
        )));
    }
    if config.size > CONFIG_MAX {
        return Err(session.err(format!(
            "image config of {} bytes is too large",
            config.size
        )));
    }
    let layers = m.layers.as_deref().unwrap_or_default();
    for l in layers {
        if !LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()) {
            return Err(ImageError::Unsupported(format!(
                "unsupported layer media type {:?} in {}",
                l.media_type,
                session.reference.familiar()
            )));
        }
    }
    Ok((config, layers))
}

fn parse_config(session: &Session<'_>, config: &[u8]) -> Result<ConfigJson, ImageError> {
    serde_json::from_slice(config)
        .map_err(|e| session.err(format!("invalid image configuration: {e}")))
}

type ProgressSink<'a, P = PullProgress> = Mutex<&'a mut (dyn FnMut(P) + Send)>;

fn emit<P>(sink: &ProgressSink<'_, P>, event: P) {
    // A panicking callback poisons the lock; keep reporting to it regardless.
    let mut f = sink.lock().unwrap_or_else(|e| e.into_inner());
    (*f)(event);
}

/// The short layer id `docker pull` prints.
pub fn short_id(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

async fn blocking<T, F>(f: F) -> Result<T, ImageError>
where
    F: FnOnce() -> Result<T, ImageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Io(io::Error::other(format!("blob writer failed: {e}"))))?
}

/// Runs file work (writes, decompression, fsync) where it cannot stall other tasks:
/// `block_in_place` on a multi-threaded runtime, inline on a current-thread one.
/// Unlike `spawn_blocking`, the blob writer never leaves the pull future, so a failed
/// or cancelled pull has removed its temp file by the time it returns.
fn blocking_io<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A request body: small ones are kept for a retry, uploads stream.
type ReqBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

fn empty_body() -> ReqBody {
    Empty::<Bytes>::new().map_err(|n| match n {}).boxed()
}

fn bytes_body(b: Bytes) -> ReqBody {
    http_body_util::Full::new(b).map_err(|n| match n {}).boxed()
}

async fn put_blob(store: &BlobStore, bytes: Bytes) -> Result<Digest, ImageError> {
    let store = store.clone();
    blocking(move || store.put_bytes(&bytes)).await
}

async fn read_blob(store: &BlobStore, d: &Digest) -> Result<Vec<u8>, ImageError> {
    let (store, d) = (store.clone(), d.clone());
    blocking(move || store.read(&d)).await
}

/// The blob being written plus, for layers, the hash of its uncompressed content.
struct BlobSink {
    writer: BlobWriter,
    diff: Option<DiffHasher>,
}

impl BlobSink {
    fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.writer.write_all(data)?;
        if let Some(d) = &mut self.diff {
            d.write(data)?;
        }
        Ok(())
    }
}

/// Hashes the decompressed stream of a layer as it is downloaded, so the `diff_id`
/// from the config is checked without reading the blob again.
enum DiffHasher {
    /// Not enough bytes yet to recognise the compression.
    Sniffing(Vec<u8>),
    Plain(HashingWriter<io::Sink>),
    Gzip(Box<flate2::write::MultiGzDecoder<HashingWriter<io::Sink>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashingWriter<io::Sink>>>),
}

/// Longest magic number `compress::detect` looks at.
const SNIFF_LEN: usize = 6;

impl DiffHasher {
    fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        if let DiffHasher::Sniffing(head) = self {
            head.extend_from_slice(data);
            if head.len() < SNIFF_LEN {
                return Ok(());
            }
            let head = std::mem::take(head);
            *self = DiffHasher::start(&head)?;
            return self.feed(&head);
        }
        self.feed(data)
    }

    fn start(head: &[u8]) -> Result<DiffHasher, ImageError> {
        let sink = HashingWriter::new(io::sink());
        Ok(match compress::detect(head)? {
            Compression::None => DiffHasher::Plain(sink),
            Compression::Gzip => {
                DiffHasher::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink)))
            }
            Compression::Zstd => {
                DiffHasher::Zstd(Box::new(zstd::stream::write::Decoder::new(sink)?))
            }
        })
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), ImageError> {
        let r = match self {
            DiffHasher::Sniffing(h) => {
                h.extend_from_slice(data);
                Ok(())
            }
            DiffHasher::Plain(w) => w.write_all(data),
            DiffHasher::Gzip(w) => w.write_all(data),
            DiffHasher::Zstd(w) => w.write_all(data),
        };
        r.map_err(corrupt_layer)
    }

    fn finish(self) -> Result<Digest, ImageError> {
        let h = match self {
            DiffHasher::Sniffing(head) => {
                let mut d = DiffHasher::start(&head)?;
                d.feed(&head)?;
                return d.finish();
            }
            DiffHasher::Plain(w) => w,
            DiffHasher::Gzip(w) => w.finish().map_err(corrupt_layer)?,
            DiffHasher::Zstd(mut w) => {
                w.flush().map_err(corrupt_layer)?;
                w.into_inner()
            }
        };
        Ok(h.finish().1)
    }
}

fn corrupt_layer(e: io::Error) -> ImageError {
    ImageError::Registry(format!("layer data cannot be decompressed: {e}"))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `Bearer realm="…",service="…",scope="…"` (quoted strings may contain `\"`).
fn parse_challenge(s: &str) -> Option<Challenge> {
    let s = s.trim();
    let (scheme, mut rest) = match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end = end?;
            value = v;
            rest = q[end + 1..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        params.push((key, value));
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// Everything except RFC 3986 unreserved characters is escaped in query values.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn query_escape(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

fn basic_auth(c: &Credentials) -> Result<HeaderValue, ImageError> {
    let raw = format!("{}:{}", c.username, c.password);
    let mut v = header_value(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))?;
    v.set_sensitive(true);
    Ok(v)
}

fn header_value(s: &str) -> Result<HeaderValue, ImageError> {
    HeaderValue::from_str(s)
        .map_err(|_| ImageError::Registry(format!("invalid header value {s:?}")))
}

/// The registry a `docker login` names: `host[:port]`, with any scheme and
/// path dropped; Docker Hub's addresses are `docker.io`.
fn login_domain(server: &str) -> Result<String, ImageError> {
    let s = server.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or_default();
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    if !valid {
        return Err(ImageError::InvalidReference(format!(
            "invalid registry address {server:?}"
        )));
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DEFAULT_DOMAIN.to_string(),
        h => h.to_ascii_lowercase(),
    })
}

/// One `insecure-registries` entry: `host`, `host:port` or a CIDR.
fn insecure_entry_matches(entry: &str, authority: &str, host: &str) -> bool {
    let e = entry.trim();
    let e = e.strip_prefix("http://").unwrap_or(e).trim_end_matches('/');
    if e.eq_ignore_ascii_case(authority) || e.eq_ignore_ascii_case(host) {
        return true;
    }
    host.parse::<IpAddr>()
        .ok()
        .and_then(|ip| crate::transport::cidr_contains(e, ip))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg \"x\"",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:1/token"));
        assert_eq!(c.param("SERVICE"), Some("reg \"x\""));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull"));
        assert_eq!(c.param("nope"), None);

        let c = parse_challenge("Basic realm=registry , charset=UTF-8").unwrap();
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.param("realm"), Some("registry"));
        assert_eq!(c.param("charset"), Some("UTF-8"));

        let c = parse_challenge("Basic").unwrap();
        assert!(c.params.is_empty());
        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
        assert_eq!(parse_challenge("Bearer novalue"), None);
    }

    #[test]
    fn plain_http_only_for_loopback_and_insecure() {
        let c = RegistryClient::new(vec![
            "reg.example:5000".into(),
            "plain.example".into(),
            "10.1.0.0/16".into(),
            "fd00::/8".into(),
        ]);
        for ok in [
            "127.0.0.1:5000",
            "127.3.4.5",
            "localhost",
            "LOCALHOST:80",
            "[::1]:5000",
            "[::1]",
            "reg.example:5000",
            "plain.example:8080",
            "plain.example",
            "10.1.200.3:5000",
            "[fd12::1]:5000",
        ] {
            assert!(c.plain_http_allowed(ok), "{ok}");
        }
        for no in [
            "docker.io",
            "reg.example",
            "reg.example:5001",
            "128.0.0.1:5000",
            "10.2.0.1",
            "[fe80::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!c.plain_http_allowed(no), "{no}");
        }
        assert_eq!(c.endpoint("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(c.endpoint("quay.io"), "quay.io");
        // Docker Hub is reached at its API host.
        assert_eq!(c.endpoint("docker.io"), "registry-1.docker.io");
    }

    fn json(s: &str) -> ManifestJson {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn manifest_kinds() {
        let image = json(
            r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1},"layers":[]}"#,
        );
        let index = json(r#"{"schemaVersion":2,"manifests":[]}"#);
        let typed = json(&format!(
            r#"{{"mediaType":"{MEDIA_OCI_INDEX}","manifests":[]}}"#
        ));
        let empty = json("{}");
        let cases: Vec<(&str, &ManifestJson, Result<ManifestKind, &str>)> = vec![
            (MEDIA_DOCKER_MANIFEST, &image, Ok(ManifestKind::Image)),
            (MEDIA_OCI_MANIFEST, &image, Ok(ManifestKind::Image)),
            (MEDIA_DOCKER_MANIFEST_LIST, &index, Ok(ManifestKind::Index)),
            (MEDIA_OCI_INDEX, &typed, Ok(ManifestKind::Index)),
            ("application/json", &typed, Ok(ManifestKind::Index)),
            ("", &image, Ok(ManifestKind::Image)),
            ("", &index, Ok(ManifestKind::Index)),
            (
                MEDIA_OCI_MANIFEST,
                &typed,
                Err("mediaType in manifest should be"),
            ),
            (
                "text/html",
                &image,
                Err("unsupported manifest content type"),
            ),
            ("application/json", &empty, Err("cannot tell")),
        ];
        for (ct, m, want) in cases {
            match (manifest_kind(ct, m), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{ct}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{ct}: {got}"),
                (got, want) => panic!("{ct}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn picks_the_platform() {
        let d = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let index = json(&format!(
            r#"{{"manifests":[
              {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"digest":"{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}},
              {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"digest":"{}","size":1,"platform":{{"os":"windows","architecture":"amd64"}}}},
              {{"digest":"{}","size":1}}
            ]}}"#,
            d(1),
            d(2),
            d(3),
            d(4),
            d(5)
        ));
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let c = RegistryClient::new(vec![]).with_platform(amd64);
        assert_eq!(c.select_platform(&index).unwrap().digest.as_str(), d(3));
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: None,
        };
        let c = c.with_platform(arm.clone());
        assert_eq!(c.select_platform(&index).unwrap().digest.as_str(), d(1));
        let v7 = Platform {
            variant: Some("v7".into()),
            ..arm
        };
        let c = c.with_platform(v7);
        let e = c.select_platform(&index).unwrap_err();
        assert!(matches!(e, ImageError::ManifestUnknown(_)));
        assert_eq!(
            e.to_string(),
            "no matching manifest for linux/arm64/v7 in the manifest list entries"
        );
    }

    #[test]
    fn mirrors_are_hosts_with_a_scheme() {
        let m: Mirror = "https://mirror.example:5000/".parse().unwrap();
        assert_eq!(m.url, "https://mirror.example:5000/");
        assert_eq!(m.authority, "mirror.example:5000");
        assert!(!m.plain);
        let m: Mirror = "HTTP://127.0.0.1:5000".parse().unwrap();
        assert_eq!(m.url, "http://127.0.0.1:5000/");
        assert!(m.plain);
        for bad in [
            "mirror.example",
            "ftp://mirror.example",
            "https://",
            "https://mirror.example/v2/",
            "https://user@mirror.example",
            "https://mirror.example:port",
        ] {
            let e = bad.parse::<Mirror>().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid mirror {bad:?}")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn platforms_parse_as_the_platform_flag_takes_them() {
        let p = |s: &str| s.parse::<Platform>().map(|p| p.to_string());
        assert_eq!(p("linux/arm64").unwrap(), "linux/arm64");
        assert_eq!(p("linux/arm64/v8").unwrap(), "linux/arm64");
        assert_eq!(p("linux/arm/v7").unwrap(), "linux/arm/v7");
        assert_eq!(p("linux/x86_64").unwrap(), "linux/amd64");
        assert_eq!(p("LINUX/AMD64").unwrap(), "linux/amd64");
        assert_eq!(p("arm64").unwrap(), "linux/arm64");
        assert_eq!(p("linux").unwrap(), Platform::host().to_string());
        for bad in ["", "linux/", "/amd64", "linux/arm/v7/x", "linux/am d64"] {
            let e = p(bad).unwrap_err();
            assert!(
                matches!(&e, ImageError::InvalidReference(m) if m.starts_with("invalid platform")),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn diff_hasher_sees_through_compression() {
        let data = b"pretend this is a tar stream ".repeat(5000);
        let want = Digest::of(&data);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        for (name, packed) in [("plain", data.clone()), ("gzip", gz), ("zstd", zst)] {
            // Odd chunk sizes, including ones shorter than the magic number.
            for chunk in [1usize, 5, 4096] {
                let mut h = DiffHasher::Sniffing(Vec::new());
                for c in packed.chunks(chunk) {
                    h.write(c).unwrap();
                }
                assert_eq!(h.finish().unwrap(), want, "{name} in chunks of {chunk}");
            }
        }
        // Tiny and empty layers never leave the sniffing state before finish.
        let mut h = DiffHasher::Sniffing(Vec::new());
        h.write(b"abc").unwrap();
        assert_eq!(h.finish().unwrap(), Digest::of(b"abc"));
        assert_eq!(
            DiffHasher::Sniffing(Vec::new()).finish().unwrap(),
            Digest::of(b"")
        );
        // Corrupt gzip is an error, not a wrong digest or a panic.
        let mut h = DiffHasher::Sniffing(Vec::new());
        let r = h
            .write(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff])
            .and_then(|_| h.finish().map(|_| ()));
        assert!(r.is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(
            query_escape("repository:a/b:pull,push x"),
            "repository%3Aa%2Fb%3Apull%2Cpush%20x"
        );
        let v = basic_auth(&Credentials::basic("user", "pa:ss")).unwrap();
        assert_eq!(v.to_str().unwrap(), "Basic dXNlcjpwYTpzcw==");
        assert!(v.is_sensitive());
        let creds = Credentials::basic("u", "secret");
        assert!(!format!("{creds:?}").contains("secret"));
        let creds = Credentials::identity("u", "refresh-secret");
        assert!(!format!("{creds:?}").contains("refresh-secret"));
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("a.b:5000"), "a.b");
        assert_eq!(host_of("a.b"), "a.b");
        let d = Digest::of(b"x");
        assert_eq!(short_id(&d), &d.hex()[..12]);
        assert_eq!(
            error_detail(br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad password"}]}"#)
                .as_deref(),
            Some("unauthorized: bad password")
        );
        assert_eq!(error_detail(b"<html>"), None);
        assert_eq!(Platform::host().os, "linux");
    }
}
