//! Agent errors, mapped to HTTP status codes for the head in one place (server.rs).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    /// The runtime refused to create/start the process (bad command, bad user...).
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Internal(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Image(#[from] images::ImageError),
    #[error("network: {0}")]
    Net(#[from] net::NetError),
}

impl AgentError {
    pub fn status(&self) -> u16 {
        match self {
            AgentError::BadRequest(_) | AgentError::Runtime(_) | AgentError::Image(_) => 400,
            AgentError::NotFound(_) => 404,
            AgentError::Conflict(_) => 409,
            AgentError::Forbidden(_) => 403,
            _ => 500,
        }
    }
}
