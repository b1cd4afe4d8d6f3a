//! net: a server's container networking.
//!
//! Fabric segments (`fabric`: a router namespace per network with its bridge
//! and VXLAN device, overlay maps as FDB and neighbour entries), their
//! lifecycle with uplinks and published ports (`server`), and the server
//! bridge (`node`: one Linux bridge `atl<inst>`, one `inet atoll_<inst>` nft
//! table for masquerade and published ports). Links, addresses and routes go
//! through rtnetlink; nftables changes are applied as whole batches (one
//! transaction each), in-process through libnftables (`libnft`; the `nft`
//! binary where the library is missing). Every privileged operation of the server bridge sits behind a
//! trait (`LinkOps`, `NetnsOps`, `Nft`, `Sysctl`) with a fake in [`fake`].

pub mod error;
pub mod fabric;
pub mod fake;
pub mod ipv4net;
pub mod libnft;
pub mod link;
pub mod names;
pub mod netns;
pub mod nft;
pub mod node;
pub mod public;
pub mod server;
pub mod sysctl;

pub use error::NetError;
pub use ipv4net::Ipv4Net;
pub use link::{LinkOps, RtLinks, VethSpec, VethState};
pub use netns::{NetnsOps, RealNetns};
pub use nft::{Nft, NftCmd, PortMapping};
pub use node::{Backend, NodeNet, NodeNetConfig};
pub use public::{PublicIp, PublicSide, RtPublic};
pub use server::{Attachment, ServerNet};
pub use sysctl::{ProcSysctl, Sysctl};

#[cfg(test)]
mod tests;
