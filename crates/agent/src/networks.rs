//! The agent's side of fabric networks: overlay maps from the head, and
//! networks connected to or disconnected from running containers.

use agent_client::{Endpoint, NetworkMap};

use crate::error::AgentError;
use crate::manager::{Agent, attachment};

impl Agent {
    /// Keeps a network's overlay map (the newest version wins) and programs
    /// it where the network's segment exists on this server.
    pub async fn put_network_map(&self, map: NetworkMap) -> Result<(), AgentError> {
        let mut members = Vec::with_capacity(map.members.len());
        for m in &map.members {
            // Members without an underlay address are on servers alone:
            // nothing to tunnel to.
            if let Some(vtep) = m.vtep {
                members.push(net::fabric::Member {
                    mac: net::names::parse_mac(&m.mac)
                        .map_err(|e| AgentError::BadRequest(e.to_string()))?,
                    ip: m.ip,
                    vtep,
                });
            }
        }
        self.names.update(&map);
        self.net.set_map(map.vni, map.version, members).await?;
        Ok(())
    }

    /// `docker network connect` on a running container: a new interface,
    /// and the network kept in its spec (so its exit detaches it).
    pub async fn connect_network(&self, id: &str, e: Endpoint) -> Result<(), AgentError> {
        let ctr = self.running_ctr(id)?;
        let _op = ctr.op.lock().await;
        let a = attachment(&e).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        {
            let spec = ctr.spec.lock().unwrap_or_else(|p| p.into_inner());
            if spec.networks.iter().any(|n| n.network == e.network) {
                return Ok(());
            }
        }
        let routed = {
            let spec = ctr.spec.lock().unwrap_or_else(|p| p.into_inner());
            spec.networks.iter().any(|n| !n.internal)
        };
        self.net.connect(id, &a).await?;
        // A container with no way out gets it through the new network.
        if !routed && !a.internal {
            self.net.route_default(id, &a).await?;
        }
        self.update_spec(&ctr, |s| s.networks.push(e))
    }

    /// `docker network disconnect` on a running container.
    pub async fn disconnect_network(&self, id: &str, network: &str) -> Result<(), AgentError> {
        let ctr = self.running_ctr(id)?;
        let _op = ctr.op.lock().await;
        let (e, next) = {
            let spec = ctr.spec.lock().unwrap_or_else(|p| p.into_inner());
            let mut outward = spec.networks.iter().filter(|n| !n.internal);
            // The default route is the first outward network's: when that
            // one goes, the next takes it (Docker's way).
            let next = match outward.next() {
                Some(first) if first.network == network => outward.next().cloned(),
                _ => None,
            };
            let e = spec.networks.iter().find(|n| n.network == network).cloned();
            (e, next)
        };
        let Some(e) = e else { return Ok(()) };
        self.net.disconnect(id, &attachment(&e)?).await?;
        if let Some(next) = next {
            self.net.route_default(id, &attachment(&next)?).await?;
        }
        self.update_spec(&ctr, |s| s.networks.retain(|n| n.network != network))
    }
}
