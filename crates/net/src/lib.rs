//! net: the node-local container network of one atoll instance.
//!
//! One Linux bridge (`atl<inst>`) carrying the gateway address, one veth pair per container
//! whose peer is `eth0` inside a pinned network namespace file, and one nftables table
//! (`inet atoll_<inst>`) for egress masquerade and published ports. Links, addresses and
//! routes go through rtnetlink; nftables changes are applied as whole `nft -f -` batches.
//! Every privileged operation sits behind a trait (`LinkOps`, `NetnsOps`, `Nft`,
//! `Sysctl`) with a real implementation and a fake in [`fake`].

pub mod error;
pub mod fabric;
pub mod fake;
pub mod ipv4net;
pub mod link;
pub mod names;
pub mod netns;
pub mod nft;
pub mod node;
pub mod server;
pub mod sysctl;

pub use error::NetError;
pub use ipv4net::Ipv4Net;
pub use link::{LinkOps, RtLinks, VethSpec, VethState};
pub use netns::{NetnsOps, RealNetns};
pub use nft::{Nft, NftCmd, PortMapping};
pub use node::{Backend, NodeNet, NodeNetConfig};
pub use server::{Attachment, ServerNet};
pub use sysctl::{ProcSysctl, Sysctl};

#[cfg(test)]
mod tests;
