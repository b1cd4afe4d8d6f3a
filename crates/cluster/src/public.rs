//! The datacenter's public network (Triton's "external" network). The
//! operator sets its subnet, gateway and the range containers get addresses
//! from. A container that publishes ports gets its own address there, and
//! its ports are reached at that address: no two tenants ever compete for a
//! port, and `-p 8080:80` means port 8080 of the container's own address.
//! Without a public network, ports are published on the container's server.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use agent_client::{PortMapping, PublicAddress};
use serde::{Deserialize, Serialize};

use crate::networks::Cidr;
use crate::{Cluster, Error, Result};

const PUBLIC_KEY: &str = "network.public";

/// The operator's public network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicNetwork {
    /// CIDR, e.g. "198.51.100.0/24".
    pub subnet: String,
    /// The datacenter's router on it: where replies to the world go.
    pub gateway: Ipv4Addr,
    /// CIDR inside the subnet that containers' addresses come from.
    pub range: String,
}

impl PublicNetwork {
    /// Checks the subnet, and that the gateway and range are inside it.
    pub fn validate(&self) -> Result<()> {
        let subnet = Cidr::parse(&self.subnet)?;
        if subnet.prefix > 30 {
            return Err(Error::InvalidArgument(format!(
                "public subnet {} is too small",
                self.subnet
            )));
        }
        if !subnet.contains(self.gateway) || subnet.is_edge(self.gateway) {
            return Err(Error::InvalidArgument(format!(
                "gateway {} is not a host address of {}",
                self.gateway, self.subnet
            )));
        }
        let range = Cidr::parse(&self.range)?;
        if range.prefix < subnet.prefix || !subnet.contains(range.base) {
            return Err(Error::InvalidArgument(format!(
                "range {} is not inside {}",
                self.range, self.subnet
            )));
        }
        Ok(())
    }

    /// The lowest address of the range that is not the gateway, the
    /// subnet's network or broadcast address, or in `used`.
    fn free(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let subnet = Cidr::parse(&self.subnet).ok()?;
        let range = Cidr::parse(&self.range).ok()?;
        range
            .hosts()
            .find(|ip| *ip != self.gateway && !subnet.is_edge(*ip) && !used.contains(ip))
    }
}

/// Ports as a container with its own public address publishes them: at
/// that address, so a port left to the system (`-P`, `-p 80`) is the
/// container's own port. A host address cannot be chosen (the address is
/// the container's).
pub fn public_ports(ports: &mut [PortMapping]) -> Result<()> {
    for p in ports.iter_mut() {
        if !matches!(p.host_ip.as_str(), "" | "0.0.0.0" | "::") {
            return Err(Error::InvalidArgument(format!(
                "cannot publish on host address {}: published ports are reached at the container's own public address; leave the address out",
                p.host_ip
            )));
        }
        p.host_ip = String::new();
        if p.host_port == 0 {
            p.host_port = p.container_port;
        }
    }
    for (i, p) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|q| q.proto == p.proto && q.host_port == p.host_port)
        {
            return Err(Error::InvalidArgument(format!(
                "port {}/{} is published twice",
                p.host_port, p.proto
            )));
        }
    }
    Ok(())
}

impl Cluster {
    /// The public network, if the operator set one.
    pub async fn public_network(&self) -> Result<Option<PublicNetwork>> {
        match self.store.get_setting(PUBLIC_KEY).await? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| Error::internal("decoding the public network", e)),
        }
    }

    /// Sets (or, with None, removes) the public network. Refused while a
    /// container holds an address the new setting would not contain.
    pub async fn set_public_network(&self, p: Option<PublicNetwork>) -> Result<()> {
        if let Some(p) = &p {
            p.validate()?;
        }
        let subnet = p.as_ref().map(|p| Cidr::parse(&p.subnet)).transpose()?;
        let held = self.store.public_ips().await?;
        if let Some(ip) = held
            .iter()
            .find(|ip| !subnet.is_some_and(|s| s.contains(**ip)))
        {
            return Err(Error::Conflict(format!(
                "public address {ip} is held by a container; remove the containers with public addresses outside the new subnet first"
            )));
        }
        let value = match &p {
            Some(p) => serde_json::to_string(p)
                .map_err(|e| Error::internal("encoding the public network", e))?,
            None => String::new(),
        };
        self.store.put_setting(PUBLIC_KEY, &value).await?;
        Ok(())
    }

    /// A free address of the public network for a new container. Two
    /// creates may pick the same one: the store keeps it unique and the
    /// loser (`Conflict("public ip")`) asks again.
    pub(crate) async fn allocate_public(&self, net: &PublicNetwork) -> Result<PublicAddress> {
        let used: BTreeSet<Ipv4Addr> = self.store.public_ips().await?.into_iter().collect();
        let ip = net.free(&used).ok_or_else(|| {
            Error::Conflict("no public address left: ask the operator to widen the range".into())
        })?;
        Ok(PublicAddress {
            ip,
            subnet: net.subnet.clone(),
            gateway: net.gateway,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str, gateway: &str, range: &str) -> PublicNetwork {
        PublicNetwork {
            subnet: subnet.into(),
            gateway: gateway.parse().unwrap(),
            range: range.into(),
        }
    }

    #[test]
    fn validation() {
        net("198.51.100.0/24", "198.51.100.1", "198.51.100.64/26")
            .validate()
            .unwrap();
        for bad in [
            net("198.51.100.1/24", "198.51.100.1", "198.51.100.0/24"),
            net("198.51.100.0/24", "198.51.101.1", "198.51.100.0/24"),
            net("198.51.100.0/24", "198.51.100.0", "198.51.100.0/24"),
            net("198.51.100.0/24", "198.51.100.255", "198.51.100.0/24"),
            net("198.51.100.0/24", "198.51.100.1", "198.51.101.0/26"),
            net("198.51.100.0/24", "198.51.100.1", "198.51.0.0/16"),
            net("198.51.100.0/31", "198.51.100.1", "198.51.100.0/31"),
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn free_addresses_skip_gateway_edges_and_used() {
        let n = net("10.9.0.0/29", "10.9.0.1", "10.9.0.0/29");
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(ip) = n.free(&used) {
            used.insert(ip);
            got.push(ip.to_string());
        }
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        );
    }

    #[test]
    fn ports_on_a_public_address() {
        let p = |ip: &str, host: u16, ctr: u16| PortMapping {
            proto: "tcp".into(),
            container_port: ctr,
            host_ip: ip.into(),
            host_port: host,
        };
        let mut ports = vec![p("", 8080, 80), p("0.0.0.0", 0, 443)];
        public_ports(&mut ports).unwrap();
        assert_eq!(ports, vec![p("", 8080, 80), p("", 443, 443)]);
        assert!(matches!(
            public_ports(&mut [p("127.0.0.1", 8080, 80)]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            public_ports(&mut [p("", 8080, 80), p("", 8080, 81)]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
