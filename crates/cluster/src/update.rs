//! `docker update`: new limits (applied to a running container's cgroups on its
//! server) and a new restart policy, validated as at create.

use agent_client::Resources;
use bollard_stubs::models::{ContainerCreateBody, ContainerUpdateBody, HostConfig};
use serde_json::json;

use crate::cluster::Cluster;
use crate::containers::upstream;
use crate::create::{MIN_MEMORY, RestartPolicy};
use crate::error::{Error, Result};
use crate::model::Status;

/// `current` with the update's set fields, checked like Docker does. As in
/// Docker, a zero means "unchanged" (the CLI sends every field).
pub fn updated_resources(current: &Resources, u: &ContainerUpdateBody) -> Result<Resources> {
    let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
    let set = |v: Option<i64>| v.filter(|n| *n != 0);
    let u = ContainerUpdateBody {
        memory: set(u.memory),
        memory_swap: set(u.memory_swap),
        nano_cpus: set(u.nano_cpus),
        cpu_quota: set(u.cpu_quota),
        cpu_period: set(u.cpu_period),
        cpu_shares: set(u.cpu_shares),
        pids_limit: u.pids_limit,
        ..Default::default()
    };
    let mut r = current.clone();
    if let Some(m) = u.memory {
        if m < MIN_MEMORY {
            return bad("Minimum memory limit allowed is 6MB");
        }
        r.memory = m;
    }
    match u.memory_swap {
        Some(s) => {
            if s > 0 && r.memory > 0 && s < r.memory {
                return bad(
                    "Minimum memoryswap limit should be larger than memory limit, see usage",
                );
            }
            r.memory_swap = s;
        }
        None => {
            if u.memory.is_some() && r.memory_swap > 0 && r.memory > r.memory_swap {
                return bad(
                    "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time",
                );
            }
        }
    }
    if let Some(n) = u.nano_cpus {
        if n < 0 {
            return bad("invalid CPU value");
        }
        if n > 0 {
            r.cpu_quota = 0;
            r.cpu_period = 0;
        }
        r.nano_cpus = n;
    }
    if let Some(q) = u.cpu_quota {
        r.cpu_quota = q;
    }
    if let Some(p) = u.cpu_period {
        r.cpu_period = p;
    }
    if r.nano_cpus > 0 && (u.cpu_quota.unwrap_or(0) > 0 || u.cpu_period.unwrap_or(0) > 0) {
        return bad("Conflicting options: Nano CPUs and CPU Period cannot both be set");
    }
    if let Some(s) = u.cpu_shares {
        r.cpu_shares = s;
    }
    if let Some(p) = u.pids_limit {
        r.pids_limit = p.max(0);
    }
    Ok(r)
}

impl Cluster {
    /// Applies `u` to the container; the warnings Docker would give.
    pub async fn update_container(
        &self,
        account: &str,
        key: &str,
        u: ContainerUpdateBody,
    ) -> Result<Vec<String>> {
        let id = self.find_container(account, key).await?.id;
        let _g = self.lock(&id).await;
        let mut c = self.find_container(account, &id).await?;
        let resources = updated_resources(&c.spec.resources, &u)?;
        if let Some(rp) = &u.restart_policy {
            let probe = ContainerCreateBody {
                host_config: Some(HostConfig {
                    restart_policy: Some(rp.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let policy = RestartPolicy::of(&probe)?;
            if policy != RestartPolicy::No && c.config["HostConfig"]["AutoRemove"] == true {
                return Err(Error::Conflict(
                    "Restart policy cannot be updated because AutoRemove is enabled for the container"
                        .into(),
                ));
            }
            c.config["HostConfig"]["RestartPolicy"] = json!(rp);
        }
        // Growing past its package moves the container to a larger package,
        // if its server has room for the difference.
        // What it grows by counts against the account's limits.
        let _limits = if c.reservation.memory > 0 && resources.memory as u64 > c.reservation.memory
        {
            let before = c.reservation;
            self.grow_package(&mut c, resources.memory as u64).await?;
            self.check_account_limits(
                account,
                crate::accounts::Needs {
                    memory: c.reservation.memory.saturating_sub(before.memory),
                    storage: c.reservation.disk.saturating_sub(before.disk),
                    what: "container",
                    ..Default::default()
                },
            )
            .await?
        } else {
            None
        };
        if account != crate::model::OPERATOR
            && let Some(pkg) = self
                .store
                .list_packages()
                .await?
                .into_iter()
                .find(|p| p.name == c.package)
        {
            crate::ceiling::check_resources(&resources, &pkg)?;
        }
        if matches!(c.state.status, Status::Running | Status::Paused)
            && resources != c.spec.resources
        {
            self.agent(&c.node)?
                .update(&c.id, &resources)
                .await
                .map_err(upstream)?;
        }
        set_host_config_resources(&mut c.config, &resources);
        c.spec.resources = resources;
        self.store.update_container(&c).await?;
        Ok(Vec::new())
    }
}

/// Writes the limits into the `HostConfig` that inspect shows.
pub(crate) fn set_host_config_resources(
    config: &mut serde_json::Value,
    resources: &agent_client::Resources,
) {
    let hc = &mut config["HostConfig"];
    for (k, v) in [
        ("Memory", resources.memory),
        ("MemorySwap", resources.memory_swap),
        ("NanoCpus", resources.nano_cpus),
        ("CpuShares", resources.cpu_shares),
        ("CpuQuota", resources.cpu_quota),
        ("CpuPeriod", resources.cpu_period),
        ("PidsLimit", resources.pids_limit),
    ] {
        hc[k] = json!(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_merge_and_are_checked() {
        let cur = Resources {
            memory: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let u = ContainerUpdateBody {
            nano_cpus: Some(1_500_000_000),
            pids_limit: Some(50),
            ..Default::default()
        };
        let r = updated_resources(&cur, &u).unwrap();
        assert_eq!(
            (r.memory, r.nano_cpus, r.cpu_quota, r.pids_limit),
            (64 << 20, 1_500_000_000, 0, 50)
        );
        let tiny = ContainerUpdateBody {
            memory: Some(1024),
            ..Default::default()
        };
        assert!(updated_resources(&cur, &tiny).is_err());
        let swapped = Resources {
            memory_swap: 128 << 20,
            ..cur.clone()
        };
        let over = ContainerUpdateBody {
            memory: Some(256 << 20),
            ..Default::default()
        };
        assert!(updated_resources(&swapped, &over).is_err());
        let both = ContainerUpdateBody {
            memory: Some(256 << 20),
            memory_swap: Some(512 << 20),
            ..Default::default()
        };
        assert_eq!(
            updated_resources(&swapped, &both).unwrap().memory_swap,
            512 << 20
        );
    }
}
