//! The crate's error type. Messages may reach a Docker user through the agent, so they name
//! what failed without host paths.

use crate::ipv4net::Ipv4Net;
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network instance id {0:?} (want 1-6 lowercase letters or digits)")]
    InvalidInstance(String),
    #[error("invalid container id for networking: {0:?}")]
    InvalidId(String),
    #[error("invalid MAC address {0:?}")]
    InvalidMac(String),
    #[error("invalid subnet {0:?}")]
    InvalidSubnet(String),
    #[error("invalid port mapping: {0}")]
    InvalidPort(String),
    #[error("address {ip} is not inside the node subnet {subnet}")]
    AddressOutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {0} is reserved in the container network")]
    ReservedAddress(Ipv4Addr),
    #[error("subnet {0} overlaps a network already in use on this host")]
    SubnetInUse(Ipv4Net),
    #[error("no free /24 left for the container network")]
    NoFreeSubnet,
    #[error("container bridge already uses subnet {existing}, not the requested {wanted}")]
    SubnetMismatch { existing: Ipv4Net, wanted: Ipv4Net },
    #[error("this server is not on the public network (its agent has no --public-interface)")]
    NoPublicInterface,
    #[error("interface name {0} is already used by another container")]
    NameCollision(String),
    #[error("netlink {op} failed: {msg}")]
    Netlink { op: String, msg: String },
    #[error("network namespace {op} failed: {source}")]
    Netns {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables: {0}")]
    Nft(String),
    #[error("sysctl {key} failed: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    pub(crate) fn netlink(op: impl Into<String>, err: impl std::fmt::Display) -> Self {
        NetError::Netlink {
            op: op.into(),
            msg: err.to_string(),
        }
    }
}
