//! `docker push`: every blob the registry lacks goes up (mounted from another
//! repository of the same registry when one is known to hold it, else
//! uploaded in one PUT or in PATCH chunks), then the manifest. Blobs stream
//! from the store's files; nothing is buffered whole.

use std::collections::{BTreeSet, HashMap};
use std::io::SeekFrom;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::StreamBody;
use hyper::body::Frame;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::*;

/// Blobs going up at once, as `docker push` does by default.
const CONCURRENT_UPLOADS: usize = 5;
/// Blobs larger than this go up in PATCH chunks of this size.
pub const DEFAULT_UPLOAD_CHUNK: u64 = 64 << 20;
/// Reads of a blob file into a request body.
const READ_CHUNK: usize = 256 << 10;
/// Repositories tried for a cross-repository mount, per push; each costs a
/// token scope and a request.
const MOUNT_SOURCES_MAX: usize = 4;

/// What [`RegistryClient::push`] reports, one variant per line `docker push`
/// prints. `id` is the first 12 hex digits of the layer's diff ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushProgress {
    Preparing {
        id: String,
    },
    /// Queued behind the uploads already running.
    Waiting {
        id: String,
    },
    Pushing {
        id: String,
        current: u64,
        total: u64,
    },
    Pushed {
        id: String,
    },
    /// "Layer already exists": the registry holds it in this repository.
    AlreadyExists {
        id: String,
    },
    /// "Mounted from REPO": the registry copied it from another repository.
    Mounted {
        id: String,
        from: String,
    },
}

/// What to push: an image's config and layers, all in the store.
#[derive(Debug, Clone, Copy)]
pub struct PushImage<'a> {
    pub config: &'a Digest,
    pub layers: &'a [PulledLayer],
}

/// The manifest a push put under the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest {
    pub digest: Digest,
    pub size: u64,
    /// The manifest itself, as the registry stores it.
    pub bytes: Bytes,
}

#[derive(Serialize)]
struct ManifestOut<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: DescriptorOut<'a>,
    layers: Vec<DescriptorOut<'a>>,
}

#[derive(Serialize)]
struct DescriptorOut<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    size: u64,
    digest: &'a Digest,
}

/// The image manifest for `image`: Docker's schema 2, or OCI's when a layer
/// came with an OCI media type (from an OCI archive or registry). Deterministic: the same image gives the
/// same bytes, hence the same digest, on every push.
pub fn image_manifest(store: &BlobStore, image: PushImage<'_>) -> Result<Bytes, ImageError> {
    let oci = image
        .layers
        .iter()
        .any(|l| l.media_type.starts_with("application/vnd.oci."));
    let config_size = store.size(image.config)?;
    let layers = image
        .layers
        .iter()
        .map(|l| {
            Ok(DescriptorOut {
                media_type: layer_media_type(&l.media_type, oci)?,
                size: l.size,
                digest: &l.blob,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    let m = ManifestOut {
        schema_version: 2,
        media_type: if oci {
            MEDIA_OCI_MANIFEST
        } else {
            MEDIA_DOCKER_MANIFEST
        },
        config: DescriptorOut {
            media_type: CONFIG_MEDIA_TYPES[usize::from(oci)],
            size: config_size,
            digest: image.config,
        },
        layers,
    };
    let mut bytes = serde_json::to_vec_pretty(&m).map_err(|e| ImageError::json("manifest", e))?;
    bytes.push(b'\n');
    Ok(Bytes::from(bytes))
}

/// A layer's media type in a Docker (or, with `oci`, an OCI) manifest.
fn layer_media_type(stored: &str, oci: bool) -> Result<&'static str, ImageError> {
    const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    const OCI_FOREIGN: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    let kind = match stored {
        DOCKER_GZIP | OCI_GZIP => 0,
        DOCKER_TAR | OCI_TAR => 1,
        DOCKER_FOREIGN | OCI_FOREIGN => 2,
        OCI_ZSTD if oci => return Ok(OCI_ZSTD),
        other => {
            return Err(ImageError::Unsupported(format!(
                "cannot push a layer of media type {other:?}"
            )));
        }
    };
    Ok(if oci {
        [OCI_GZIP, OCI_TAR, OCI_FOREIGN][kind]
    } else {
        [DOCKER_GZIP, DOCKER_TAR, DOCKER_FOREIGN][kind]
    })
}

impl RegistryClient {
    /// Pushes `image` to `reference` (its tag; `latest` when it has none):
    /// layers the registry lacks, then the config, then the manifest. The
    /// token asked for covers pushing to the repository and reading the
    /// repositories blobs may be mounted from; the registry decides what the
    /// credentials may do.
    pub async fn push(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        store: &BlobStore,
        image: PushImage<'_>,
        progress: &mut (dyn FnMut(PushProgress) + Send),
    ) -> Result<PushedManifest, ImageError> {
        let reference = reference.clone().with_default_tag();
        let tag = reference
            .tag
            .clone()
            .unwrap_or_else(|| crate::reference::DEFAULT_TAG.to_string());
        let authority = self.endpoint(&reference.domain);
        let manifest = {
            let store = store.clone();
            let (config, layers) = (image.config.clone(), image.layers.to_vec());
            blocking(move || {
                image_manifest(
                    &store,
                    PushImage {
                        config: &config,
                        layers: &layers,
                    },
                )
            })
            .await?
        };
        let mut blobs: Vec<(&Digest, u64, Option<String>)> = Vec::new();
        for l in image.layers {
            if !blobs.iter().any(|(d, _, _)| **d == l.blob) {
                blobs.push((&l.blob, l.size, Some(short_id(&l.diff_id))));
            }
        }
        let config_size = store.size(image.config)?;
        // Read once: where each blob may be mounted from.
        let mut origins: HashMap<&Digest, Vec<String>> = HashMap::new();
        let mut sources = BTreeSet::new();
        for d in blobs.iter().map(|b| b.0).chain([image.config]) {
            for repo in store.origin_repositories(d, &reference.domain) {
                if repo != reference.path
                    && (sources.contains(&repo) || sources.len() < MOUNT_SOURCES_MAX)
                {
                    sources.insert(repo.clone());
                    origins.entry(d).or_default().push(repo);
                }
            }
        }
        let no_origins = Vec::new();
        let origins_of = |d: &Digest| origins.get(d).unwrap_or(&no_origins).as_slice();
        let mut scopes = vec![format!("repository:{}:pull,push", reference.path)];
        scopes.extend(sources.iter().map(|r| format!("repository:{r}:pull")));
        let session = self.session(authority, &reference, credentials, scopes);
        session.pick_scheme().await?;
        let progress = Mutex::new(progress);

        for (i, (_, _, id)) in blobs.iter().enumerate() {
            if let Some(id) = id {
                emit(&progress, PushProgress::Preparing { id: id.clone() });
                if i >= CONCURRENT_UPLOADS {
                    emit(&progress, PushProgress::Waiting { id: id.clone() });
                }
            }
        }
        futures::stream::iter(blobs.iter().map(Ok))
            .try_for_each_concurrent(CONCURRENT_UPLOADS, |(d, size, id)| {
                session.push_blob(store, (d, *size, origins_of(d)), id.as_deref(), &progress)
            })
            .await?;
        session
            .push_blob(
                store,
                (image.config, config_size, origins_of(image.config)),
                None,
                &progress,
            )
            .await?;

        let digest = Digest::of(&manifest);
        let media_type = serde_json::from_slice::<ManifestJson>(&manifest)
            .ok()
            .and_then(|m| m.media_type)
            .unwrap_or_else(|| MEDIA_DOCKER_MANIFEST.to_string());
        let uri = session.url(&format!("manifests/{tag}"))?;
        let headers = [(header::CONTENT_TYPE, header_value(&media_type)?)];
        let resp = session
            .request_with(Method::PUT, uri, &headers, Some(manifest.clone()))
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(session.push_error(resp, "manifest").await);
        }
        session.check_announced(&resp, &digest, "manifest")?;
        // The registry holds them now: a later push mounts them from here, a
        // later pull (with its own credentials) may reuse them.
        for d in blobs.iter().map(|b| b.0).chain([image.config]) {
            store.add_origin(d, &reference.domain)?;
            store.add_origin_repository(d, &reference.domain, &reference.path)?;
        }
        Ok(PushedManifest {
            digest,
            size: manifest.len() as u64,
            bytes: manifest,
        })
    }
}

impl Session<'_> {
    /// One blob: nothing when the repository has it, a mount when another
    /// repository of the registry (`mount_from`) does, else an upload.
    async fn push_blob(
        &self,
        store: &BlobStore,
        (digest, size, mount_from): (&Digest, u64, &[String]),
        id: Option<&str>,
        progress: &ProgressSink<'_, PushProgress>,
    ) -> Result<(), ImageError> {
        let report = |event: fn(String) -> PushProgress| {
            if let Some(id) = id {
                emit(progress, event(id.to_string()));
            }
        };
        let head = self
            .request(Method::HEAD, self.url(&format!("blobs/{digest}"))?, None)
            .await?;
        match head.status() {
            StatusCode::OK => {
                report(|id| PushProgress::AlreadyExists { id });
                return Ok(());
            }
            StatusCode::NOT_FOUND => {}
            _ => return Err(self.push_error(head, "blob").await),
        }
        let mut started = None;
        for from in mount_from {
            let uri = self.url(&format!(
                "blobs/uploads/?mount={digest}&from={}",
                query_escape(from)
            ))?;
            let resp = self
                .request_with(Method::POST, uri.clone(), &[], Some(Bytes::new()))
                .await?;
            match resp.status() {
                StatusCode::CREATED => {
                    if let Some(id) = id {
                        emit(
                            progress,
                            PushProgress::Mounted {
                                id: id.to_string(),
                                from: from.clone(),
                            },
                        );
                    }
                    return Ok(());
                }
                // The registry could not mount and opened an upload instead.
                StatusCode::ACCEPTED => {
                    started = Some((uri, resp));
                    break;
                }
                // Not readable with these credentials: upload it instead.
                _ => drop(self.push_error(resp, "blob mount").await),
            }
        }
        let (from, resp) = match started {
            Some(s) => s,
            None => {
                let uri = self.url("blobs/uploads/")?;
                let resp = self
                    .request_with(Method::POST, uri.clone(), &[], Some(Bytes::new()))
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(self.push_error(resp, "blob upload").await);
                }
                (uri, resp)
            }
        };
        let mut location = self.location(&from, &resp, "upload")?;
        let chunk = self.client.upload_chunk;
        let put = if size > chunk {
            let mut offset = 0;
            while offset < size {
                let len = chunk.min(size - offset);
                let range = format!("{offset}-{}", offset + len - 1);
                let resp = self
                    .upload(
                        Method::PATCH,
                        &location,
                        (store, digest),
                        (offset, len, size),
                        Some(&range),
                        id.map(|id| (id, progress)),
                    )
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(self.push_error(resp, "blob upload").await);
                }
                location = self.location(&location, &resp, "upload")?;
                offset += len;
            }
            let uri = with_digest(&location, digest)?;
            self.upload(
                Method::PUT,
                &uri,
                (store, digest),
                (size, 0, size),
                None,
                None,
            )
            .await?
        } else {
            let uri = with_digest(&location, digest)?;
            self.upload(
                Method::PUT,
                &uri,
                (store, digest),
                (0, size, size),
                None,
                id.map(|id| (id, progress)),
            )
            .await?
        };
        if put.status() != StatusCode::CREATED {
            return Err(self.push_error(put, "blob upload").await);
        }
        self.check_announced(&put, digest, "blob")?;
        report(|id| PushProgress::Pushed { id });
        Ok(())
    }

    /// Sends bytes `offset..offset+len` of a stored blob of `total` bytes.
    /// No overall deadline: the upload fails when no byte moves (or, once
    /// all are sent, no answer comes) within the I/O timeout.
    async fn upload(
        &self,
        method: Method,
        uri: &Uri,
        (store, digest): (&BlobStore, &Digest),
        (offset, len, total): (u64, u64, u64),
        range: Option<&str>,
        progress: Option<(&str, &ProgressSink<'_, PushProgress>)>,
    ) -> Result<Response<Incoming>, ImageError> {
        let file = store.open_blob(digest)?;
        let mut file = tokio::fs::File::from_std(file);
        file.seek(SeekFrom::Start(offset)).await?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_CHUNK)
            .map_ok(move |b| {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
                Frame::data(b)
            });
        let body = http_body_util::BodyExt::boxed(StreamBody::new(stream));
        let mut headers = vec![
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
        ];
        if let Some(r) = range {
            headers.push((HeaderName::from_static("content-range"), header_value(r)?));
        }
        if let Some(auth) = self.auth_for(uri) {
            headers.push((header::AUTHORIZATION, auth));
        }
        let answer = self.roundtrip_untimed(method, uri, &headers, body);
        tokio::pin!(answer);
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        let (mut seen, mut moved) = (0, Instant::now());
        loop {
            tokio::select! {
                r = &mut answer => {
                    if let Some((id, p)) = progress {
                        let current = offset + sent.load(Ordering::Relaxed);
                        emit(p, PushProgress::Pushing { id: id.to_string(), current, total });
                    }
                    return r;
                }
                _ = tick.tick() => {
                    let n = sent.load(Ordering::Relaxed);
                    if n != seen {
                        (seen, moved) = (n, Instant::now());
                        if let Some((id, p)) = progress {
                            emit(p, PushProgress::Pushing {
                                id: id.to_string(),
                                current: offset + n,
                                total,
                            });
                        }
                    } else if moved.elapsed() >= self.client.io_timeout {
                        return Err(self.err(format!(
                            "upload of blob {digest} stalled: nothing moved within {:?}",
                            self.client.io_timeout
                        )));
                    }
                }
            }
        }
    }

    /// A digest the registry announces must be the one sent.
    fn check_announced(
        &self,
        resp: &Response<Incoming>,
        digest: &Digest,
        what: &str,
    ) -> Result<(), ImageError> {
        match resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            Some(a) if a != digest.as_str() => Err(self.err(format!(
                "{what} {digest} was stored as {a}: the registry changed it"
            ))),
            _ => Ok(()),
        }
    }

    /// A refused push step, phrased as Docker phrases it.
    async fn push_error(&self, resp: Response<Incoming>, what: &str) -> ImageError {
        let (status, first) = self.error_body(resp).await;
        let text = match &first {
            Some(e) if !e.code.is_empty() => {
                format!("{}: {}", e.code.replace('_', " ").to_lowercase(), e.message)
            }
            _ => String::new(),
        };
        match status {
            StatusCode::UNAUTHORIZED => ImageError::Unauthorized(if text.is_empty() {
                "unauthorized: authentication required".into()
            } else {
                text
            }),
            StatusCode::FORBIDDEN => ImageError::Unauthorized(if text.is_empty() {
                "denied: requested access to the resource is denied".into()
            } else {
                text
            }),
            _ => self.err(format!(
                "{what} for {}: {status}{}",
                self.reference.repository(),
                error_suffix(&first)
            )),
        }
    }
}

/// An upload URL with the `digest` parameter that completes it.
fn with_digest(location: &Uri, digest: &Digest) -> Result<Uri, ImageError> {
    let sep = if location.query().is_some() { '&' } else { '?' };
    format!("{location}{sep}digest={}", query_escape(digest.as_str()))
        .parse()
        .map_err(|_| ImageError::Registry(format!("invalid upload location {location}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str) -> PulledLayer {
        PulledLayer {
            blob: Digest::of(media_type.as_bytes()),
            diff_id: Digest::of(b"diff"),
            size: 10,
            media_type: media_type.into(),
        }
    }

    #[test]
    fn manifests_are_docker_unless_a_layer_is_oci_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let config = store.put_bytes(b"{}").unwrap();
        let docker = [
            layer("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            layer("application/vnd.docker.image.rootfs.diff.tar"),
        ];
        let m = image_manifest(
            &store,
            PushImage {
                config: &config,
                layers: &docker,
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["mediaType"], MEDIA_DOCKER_MANIFEST);
        assert_eq!(
            v["layers"][1]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar"
        );
        assert_eq!(v["config"]["size"], 2);
        // The same image gives the same bytes.
        let again = image_manifest(
            &store,
            PushImage {
                config: &config,
                layers: &docker,
            },
        )
        .unwrap();
        assert_eq!(m, again);

        let zstd = [
            layer("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            layer("application/vnd.oci.image.layer.v1.tar+zstd"),
        ];
        let m = image_manifest(
            &store,
            PushImage {
                config: &config,
                layers: &zstd,
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["mediaType"], MEDIA_OCI_MANIFEST);
        assert_eq!(
            v["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(
            v["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );

        let odd = [layer("application/x-unknown")];
        let e = image_manifest(
            &store,
            PushImage {
                config: &config,
                layers: &odd,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot push a layer of media type"));
    }

    #[test]
    fn the_digest_parameter_joins_the_upload_query() {
        let d = Digest::of(b"x");
        let plain: Uri = "https://r.example/v2/a/blobs/uploads/u1".parse().unwrap();
        assert_eq!(
            with_digest(&plain, &d).unwrap().to_string(),
            format!(
                "https://r.example/v2/a/blobs/uploads/u1?digest=sha256%3A{}",
                d.hex()
            )
        );
        let q: Uri = "https://r.example/v2/a/blobs/uploads/u1?_state=abc"
            .parse()
            .unwrap();
        assert!(
            with_digest(&q, &d)
                .unwrap()
                .to_string()
                .ends_with(&format!("?_state=abc&digest=sha256%3A{}", d.hex()))
        );
    }
}
