//! Agent errors, mapped to HTTP status codes for the head in one place (server.rs).

use std::path::Path;
use std::sync::OnceLock;

use thiserror::Error;

/// The agent's data dir, cut out of every message sent to the head: runc's
/// and the kernel's messages name host paths, which tenants must not see.
static HIDDEN_DIRS: OnceLock<Vec<String>> = OnceLock::new();

/// Hides `dir` (the agent's data dir, as given and resolved) from error
/// messages, from now on.
pub fn hide_paths_under(dir: &Path) {
    let mut dirs = vec![dir.to_string_lossy().into_owned()];
    if let Ok(real) = dir.canonicalize() {
        dirs.push(real.to_string_lossy().into_owned());
    }
    dirs.retain(|d| d.len() > 1);
    // Longest first, so a prefix never leaves half of a longer one.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    let _ = HIDDEN_DIRS.set(dirs);
}

/// `message` with the agent's data dir replaced by `<server>`.
pub fn scrub(message: &str) -> String {
    let mut m = message.to_string();
    for d in HIDDEN_DIRS.get().into_iter().flatten() {
        m = m.replace(d.as_str(), "<server>");
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_paths_are_cut_from_messages() {
        super::hide_paths_under(std::path::Path::new("/var/lib/atoll/agent"));
        assert_eq!(
            super::scrub("mount /var/lib/atoll/agent/containers/ab/rootfs: permission denied"),
            "mount <server>/containers/ab/rootfs: permission denied"
        );
    }
}

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
