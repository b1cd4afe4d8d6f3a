//! Host ports of published container ports (on a server's own addresses,
//! where there is no public network): which are free, and which the
//! datacenter keeps for itself. A published port must never shadow a port
//! of the server: the operator's reserved ranges and atoll's own ports are
//! refused here, at create; what a server listens on is refused by its agent
//! at start.

use std::fmt;

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::model::NodeRecord;

const RESERVED_KEY: &str = "ports.reserved";

/// Ports atoll itself uses on servers and heads: the Docker API (plain and
/// TLS) and the default cluster port. A server's agent port is added from
/// its address.
const OWN: [(u16, u16); 2] = [(2375, 2376), (7071, 7071)];

/// Docker's ephemeral range, where `-p 80` (no host port) gets one.
const EPHEMERAL: (u16, u16) = (32768, 60999);

/// Inclusive port ranges, as `22,8000-8100`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    /// `""` or `none`: no ranges.
    pub fn parse(text: &str) -> Result<PortRanges> {
        let bad = |what: &str| {
            Error::InvalidArgument(format!(
                "invalid port range {what:?}: ports 1-65535 as PORT or LOW-HIGH, comma-separated"
            ))
        };
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(PortRanges::default());
        }
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
            match (port(lo), port(hi)) {
                (Some(lo), Some(hi)) if lo <= hi => ranges.push((lo, hi)),
                _ => return Err(bad(part)),
            }
        }
        ranges.sort_unstable();
        ranges.dedup();
        Ok(PortRanges(ranges))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn with(mut self, more: impl IntoIterator<Item = (u16, u16)>) -> PortRanges {
        self.0.extend(more);
        self.0.sort_unstable();
        self.0.dedup();
        self
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The port of an agent address `tcp://HOST:PORT` (none for a unix socket).
fn agent_port(address: &str) -> Option<u16> {
    let rest = address.strip_prefix("tcp://")?;
    rest.rsplit_once(':')?.1.parse().ok()
}

fn port_is_free(proto: &str, port: u16) -> bool {
    if proto == "udp" {
        std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok()
    } else {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    }
}

impl Cluster {
    /// The ranges the operator reserved (atoll's own ports come on top).
    pub async fn reserved_ports(&self) -> Result<PortRanges> {
        match self.store.get_setting(RESERVED_KEY).await? {
            Some(text) => PortRanges::parse(&text),
            None => Ok(PortRanges::default()),
        }
    }

    pub async fn set_reserved_ports(&self, text: &str) -> Result<PortRanges> {
        let ranges = PortRanges::parse(text)?;
        self.store
            .put_setting(RESERVED_KEY, &ranges.to_string())
            .await?;
        Ok(ranges)
    }

    /// Gives every `host_port: 0` a free port in Docker's ephemeral range
    /// and checks explicit ones against the reservations and the other
    /// containers of the server.
    pub(crate) async fn assign_host_ports(
        &self,
        node: &NodeRecord,
        ports: &mut [agent_client::PortMapping],
    ) -> Result<()> {
        let reserved = self
            .reserved_ports()
            .await?
            .with(OWN)
            .with(agent_port(&node.address).map(|p| (p, p)));
        let others = self.store.containers_on_node(&node.id).await?;
        let taken: Vec<(String, u16)> = others
            .iter()
            .filter(|c| c.spec.public.is_none())
            .flat_map(|c| c.spec.ports.iter().map(|p| (p.proto.clone(), p.host_port)))
            .collect();
        let mut mine: Vec<(String, u16)> = Vec::new();
        for p in ports.iter_mut() {
            if p.host_port == 0 {
                let (first, last) = EPHEMERAL;
                let start = first + rand::random::<u16>() % (last - first);
                let mut port = start;
                loop {
                    let key = (p.proto.clone(), port);
                    if !reserved.contains(port)
                        && !taken.contains(&key)
                        && !mine.contains(&key)
                        && port_is_free(&p.proto, port)
                    {
                        break;
                    }
                    port = if port >= last { first } else { port + 1 };
                    if port == start {
                        return Err(Error::Conflict("no free host port left".into()));
                    }
                }
                p.host_port = port;
            } else if reserved.contains(p.host_port) {
                return Err(Error::InvalidArgument(format!(
                    "cannot publish port {}/{} on host port {}: the datacenter reserves it (reserved: {reserved})",
                    p.container_port, p.proto, p.host_port
                )));
            } else if taken.contains(&(p.proto.clone(), p.host_port)) {
                return Err(Error::Conflict(format!(
                    "Bind for {}:{} failed: port is already allocated",
                    if p.host_ip.is_empty() {
                        "0.0.0.0"
                    } else {
                        &p.host_ip
                    },
                    p.host_port
                )));
            }
            mine.push((p.proto.clone(), p.host_port));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_print() {
        let r = PortRanges::parse("8000-8100, 22,22").unwrap();
        assert_eq!(r.to_string(), "22,8000-8100");
        assert!(r.contains(22) && r.contains(8000) && r.contains(8100));
        assert!(!r.contains(23) && !r.contains(8101));
        assert!(PortRanges::parse("none").unwrap().is_empty());
        assert!(PortRanges::parse("").unwrap().is_empty());
        for bad in ["0", "70000", "9-8", "a", "1-", "22,,23"] {
            let e = PortRanges::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid port range"), "{bad}: {e}");
        }
        assert_eq!(agent_port("tcp://192.0.2.3:7080"), Some(7080));
        assert_eq!(agent_port("unix:///run/atoll/agent.sock"), None);
        let own = PortRanges::default().with(OWN).with(Some((7080, 7080)));
        assert_eq!(own.to_string(), "2375-2376,7071,7080");
    }
}
