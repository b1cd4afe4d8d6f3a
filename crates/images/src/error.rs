//! The one error type of the image library. Variants are chosen so the HTTP layer can
//! pick a status code; messages are meant to be shown to a Docker user as they are.

use crate::digest::Digest;

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A tarball (load, import, layer) that cannot be read or makes no sense. 400.
    #[error("{0}")]
    InvalidArchive(String),
    /// A malformed image reference (name:tag@digest). 400.
    #[error("{0}")]
    InvalidReference(String),
    /// A string that should have been a digest but is not. 400.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// Content whose sha256 differs from what it was announced as. 400.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// A blob, manifest or image that does not exist. 404.
    #[error("{0}")]
    NotFound(String),
    /// Local storage failed. 500.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A tar entry that would land outside its root or write through a symlink. 400.
    #[error("{path}: {reason}")]
    UnsafePath { path: String, reason: String },
    /// A bad `--change` instruction for `docker import`. 400.
    #[error("{0}")]
    InvalidChange(String),
    /// JSON (config, manifest, index) that does not have the expected shape. 400.
    #[error("{0}")]
    Json(String),
    /// Something valid but not supported here (e.g. bzip2 compression). 400.
    #[error("{0}")]
    Unsupported(String),
    /// The registry says the manifest or repository is not there (or not for this
    /// caller), phrased like Docker's pull errors. 404.
    #[error("{0}")]
    ManifestUnknown(String),
    /// Talking to a registry failed: unreachable, https-only, or answers that make no
    /// sense (bad JSON, wrong content type, digest mismatch). 500.
    #[error("{0}")]
    Registry(String),
    /// The registry refused the credentials. 401.
    #[error("{0}")]
    Unauthorized(String),
    /// What a pull would download exceeds what its puller may still store. 403.
    #[error("the image needs {needs} bytes of storage, {left} are left")]
    StorageExceeded { needs: u64, left: u64 },
}

impl ImageError {
    pub(crate) fn archive(msg: impl Into<String>) -> Self {
        ImageError::InvalidArchive(msg.into())
    }

    pub(crate) fn unsafe_path(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::UnsafePath {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A serde_json error while reading `what`, phrased like Docker's Go messages.
    pub(crate) fn json(what: &str, e: serde_json::Error) -> Self {
        ImageError::Json(format!("{what}: json: cannot unmarshal: {e}"))
    }
}
