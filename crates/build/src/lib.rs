//! `docker build`'s pure parts: the Dockerfile as steps (`dockerfile`), the
//! build context received from the client (`context`: spooled, indexed,
//! never unpacked on the head) and the cache keys of steps (`cache`). The
//! cluster runs the steps as containers on a server.

pub mod cache;
pub mod context;
pub mod dockerfile;
pub mod error;

pub use error::{BuildError, Result};
