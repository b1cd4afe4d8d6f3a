//! The node side of atoll: one agent per server. Runs containers with runc through
//! per-container shims, keeps the layer cache, wires the container network (via the
//! `net` crate), and serves the agent API to the head.

pub mod archive;
pub mod bundle;
pub mod confined;
pub mod dns;
pub mod error;
pub mod exec;
pub mod files;
pub mod health;
pub mod layers;
pub mod logs;
pub mod manager;
pub mod networks;
pub mod nsexec;
pub mod ports;
pub mod quota;
pub mod reset;
pub mod rootfs;
pub mod runc;
pub mod seccomp;
pub mod server;
pub mod shim;
pub mod stats;
mod syscalls_x86_64;
pub mod top;
pub mod user;
pub mod userns;
pub mod volumes;
pub mod zygote;

pub use error::AgentError;
pub use manager::{Agent, AgentConfig};
pub use reset::reset;
pub use server::serve;
