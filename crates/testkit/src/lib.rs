//! Test helpers for atoll's integration tests and benchmarks: locally built test
//! images ([`test_images`]), a temporary `atoll up` driven by the real docker CLI
//! ([`AtollInstance`]), a real registry on loopback ([`Registry`]), a file
//! server ([`FileServer`]) and polling ([`wait_for`]).

pub mod file_server;
pub mod http;
pub mod instance;
pub mod registry;
pub mod tenant;
pub mod testimages;
pub mod token_issuer;
pub mod wait;

pub use file_server::{FileServer, Route};
pub use instance::{AtollInstance, BtrfsMount, StartOptions, atoll_bin, docker_cli};
pub use registry::Registry;
pub use tenant::Tenant;
pub use testimages::{ImageFacts, TestImages, sha256_hex, test_images};
pub use token_issuer::{TokenIssuer, TokenUser};
pub use wait::{try_wait_for_some, wait_for, wait_for_some};

/// A finished command's stdout and stderr together, and its exit code (-1
/// when killed by a signal).
pub fn combined(out: &std::process::Output) -> (String, i32) {
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.code().unwrap_or(-1),
    )
}

/// Parses command output as JSON; panics with the text if it is not.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The first entry named `name` that is not a directory, anywhere under
/// `dir` (a file in a volume's or layer's directory on the server).
pub fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_type().ok()?.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if e.file_name() == name {
            return Some(p);
        }
    }
    None
}
