//! The one domain error of the head. `docker-api` maps it to HTTP in one place.
//! Messages are written for the tenant: they never carry host paths, node names
//! or another account's objects. Internal detail goes to the log, not the message.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// 400: the request is malformed or asks for something invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// 404: the object does not exist for this account.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the object's current state.
    #[error("{0}")]
    Conflict(String),
    /// 403: forbidden for this account.
    #[error("{0}")]
    Forbidden(String),
    /// 401: the caller did not prove who it is (a bad join token, no certificate).
    #[error("{0}")]
    Unauthorized(String),
    /// 304-style "nothing to do" (e.g. starting a running container).
    #[error("{0}")]
    NotModified(String),
    /// 501: the request is valid but the object cannot serve it (logs of a
    /// container whose log driver keeps none).
    #[error("{0}")]
    NotImplemented(String),
    /// 503: the service the request needs is not offered here (swarm mode).
    #[error("{0}")]
    Unavailable(String),
    /// 502/500: a dependency (agent, registry) failed; the message is safe to show.
    #[error("{0}")]
    Upstream(String),
    /// 500: something broke inside; details are logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {e}");
        Error::Internal(context.to_string())
    }
    pub fn no_such_container(name: &str) -> Self {
        Error::NotFound(format!("No such container: {name}"))
    }
    pub fn no_such_image(name: &str) -> Self {
        Error::NotFound(format!("No such image: {name}"))
    }
}

impl From<images::ImageError> for Error {
    fn from(e: images::ImageError) -> Self {
        use images::ImageError as E;
        match e {
            E::Io(io) => Error::internal("image storage failed", io),
            E::NotFound(m) | E::ManifestUnknown(m) => Error::NotFound(m),
            E::Registry(m) => Error::Upstream(m),
            E::Unauthorized(m) => Error::Unauthorized(m),
            E::StorageExceeded { needs, left } => Error::Forbidden(format!(
                "account limit reached: this image needs {} more storage, {} is left",
                placement::human(needs),
                placement::human(left)
            )),
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

/// Errors of the store, mapped into the domain error by the cluster.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("store backend: {0}")]
    Backend(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Error::Conflict(m),
            StoreError::NotFound => Error::NotFound("not found".into()),
            StoreError::Backend(m) => Error::internal("store failed", m),
        }
    }
}
