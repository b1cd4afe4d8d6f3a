//! images: blob store, digests, image config and manifest types, docker load/save,
//! docker import and layer unpacking with overlayfs whiteouts.

pub mod archive;
pub mod blobstore;
pub mod compress;
pub mod config;
pub mod digest;
pub mod error;
pub mod import;
pub mod layer;
pub mod reference;
pub mod registry;
pub mod transport;

pub use blobstore::{BlobStore, BlobWriter};
pub use digest::Digest;
pub use error::{ImageError, Result};
