//! The head's domain: accounts' containers and images, their commands, the `Store`
//! trait, and the link to agents. No HTTP here: `docker-api` translates.

pub mod accounts;
pub mod build;
pub mod ceiling;
pub mod cluster;
pub mod commit;
pub mod containers;
pub mod create;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod images;
pub mod membership;
pub mod model;
pub mod names;
pub mod networks;
pub mod ports;
pub mod public;
pub mod security;
pub mod servers;
pub mod storage;
pub mod store;
pub mod update;
pub mod volumes;

pub use cluster::{Change, Cluster};
pub use error::{Error, Result, StoreError};
pub use store::Store;
