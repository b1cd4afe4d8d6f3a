//! The build library's errors; the cluster maps them to Docker's statuses.

pub type Result<T, E = BuildError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A Dockerfile that does not parse or asks for what is not allowed. 400.
    #[error("{0}")]
    Dockerfile(String),
    /// A build context that cannot be read, or a source it does not have. 400.
    #[error("{0}")]
    Context(String),
    /// A context larger than the builder accepts. 413.
    #[error("the build context is larger than {0} bytes")]
    ContextTooLarge(u64),
    /// The head's own storage failed. 500.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl BuildError {
    pub(crate) fn from_image(e: images::ImageError) -> BuildError {
        BuildError::Dockerfile(e.to_string())
    }
}
