//! The agent's wire protocol: request/response types and the HTTP client the head uses.
pub mod caps;
pub mod client;
mod exec;
pub mod faults;
pub mod files;
pub mod join;
pub mod serve;
pub mod splice;
pub mod types;
pub use client::{AgentAddr, AgentClient, Body, ClientError};
pub use types::*;
