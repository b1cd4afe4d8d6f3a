//! A tiny IPv4 prefix type; all this crate needs (no extra dependency).

use crate::error::NetError;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: the address is always the network address (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// Builds the network containing `addr` with `prefix` bits (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        if prefix > 32 {
            return Err(NetError::InvalidSubnet(format!("{addr}/{prefix}")));
        }
        Ok(Ipv4Net {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// The `n`th address of the network (1 = the usual gateway), if it lies inside.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let a = u32::from(self.network).checked_add(n)?;
        let ip = Ipv4Addr::from(a);
        self.contains(ip).then_some(ip)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// True when the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.network) & mask(p) == u32::from(other.network) & mask(p)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::InvalidSubnet(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        Ipv4Net::new(addr, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_and_prints() {
        let n: Ipv4Net = "10.200.3.7/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.200.3.0/24");
        assert_eq!(n.host(1), Some(Ipv4Addr::new(10, 200, 3, 1)));
        assert_eq!(n.host(256), None);
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 200, 3, 255));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Net>().is_err());
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn overlap() {
        let a: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.200.5.0/24".parse().unwrap();
        let c: Ipv4Net = "10.201.5.0/24".parse().unwrap();
        let host: Ipv4Net = "10.200.5.9/32".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!b.overlaps(&c));
        assert!(b.overlaps(&host));
        assert!(!c.overlaps(&host));
    }
}
