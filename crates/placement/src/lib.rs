//! The scheduler: a pure function from the servers, what is allocated on them,
//! the caller's own containers and a request, to one server (DESIGN.md §7).
//!
//! Filter, then score:
//! - filter: servers that are up (not draining, not down), have room for the
//!   request's memory and disk, are the pinned server when volumes pin one, and
//!   satisfy every hard affinity rule;
//! - soft rules, in order, narrow the set when they can and are dropped when not;
//! - score: `Spread` (the default) picks the server with the fewest of the
//!   account's containers, then the most free memory; `Pack` the server with
//!   the least free memory that fits. Ties go to the lower index, so a decision
//!   is reproducible.
//!
//! Allocations are reservations (the package's memory and disk), not usage: a
//! server is never promised beyond its capacity. CPU is shared by weight and
//! capped per container, not reserved, as on Triton.

pub mod affinity;
pub mod packages;

pub use affinity::{Candidate, Key, Op, Rule, RuleError};
pub use packages::{Package, PackageError, choose_package};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Takes new containers.
    Up,
    /// Keeps its containers, takes no new ones (operator's choice).
    Draining,
    /// Stopped heartbeating.
    Down,
}

/// Memory and disk, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory: u64,
    pub disk: u64,
}

/// A server as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Server {
    pub id: String,
    pub state: ServerState,
    pub capacity: Resources,
    /// The sum of the reservations of every container on it (all accounts).
    pub allocated: Resources,
}

impl Server {
    fn free(&self) -> Resources {
        Resources {
            memory: self.capacity.memory.saturating_sub(self.allocated.memory),
            disk: self.capacity.disk.saturating_sub(self.allocated.disk),
        }
    }

    fn fits(&self, r: Resources) -> bool {
        let f = self.free();
        f.memory >= r.memory && f.disk >= r.disk
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    #[default]
    Spread,
    Pack,
}

/// One of the caller's own containers and the index of its server.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a, C: Candidate> {
    pub container: &'a C,
    pub server: usize,
}

pub struct Request<'a> {
    pub needs: Resources,
    pub rules: &'a [Rule],
    /// The server the request must land on (a named volume, `--volumes-from`).
    pub pinned: Option<usize>,
    pub strategy: Strategy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no server is available to run containers")]
    NoServer,
    #[error("no server has capacity for a container of {}", describe(.0))]
    NoCapacity(Resources),
    /// The pinned server is down, draining or full.
    #[error("the server holding this container's volumes cannot take it now ({0})")]
    Pinned(String),
    /// A hard `==` rule that names none of the caller's containers.
    #[error("no container matches the affinity rule {0:?}")]
    NoMatch(String),
    #[error("no server satisfies the affinity rules ({0})")]
    Affinity(String),
}

fn describe(r: &Resources) -> String {
    let mut s = format!("{} memory", human(r.memory));
    if r.disk > 0 {
        s.push_str(&format!(" and {} disk", human(r.disk)));
    }
    s
}

/// 512 MB, 1.5 GB: how sizes read in messages.
pub fn human(bytes: u64) -> String {
    const MB: u64 = 1024 * 1024;
    const GB: u64 = 1024 * MB;
    if bytes >= GB {
        format!("{} GB", trim(bytes as f64 / GB as f64))
    } else if bytes >= MB {
        format!("{} MB", trim(bytes as f64 / MB as f64))
    } else {
        format!("{bytes} bytes")
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Picks the server for `req`: an index into `servers`. `mine` are the caller's
/// own containers (affinity matches only those, and spread counts only those).
pub fn place<C: Candidate>(
    servers: &[Server],
    mine: &[Placed<'_, C>],
    req: &Request<'_>,
) -> Result<usize, PlacementError> {
    let up = |s: &Server| s.state == ServerState::Up;
    let mut cands: Vec<usize> = match req.pinned {
        Some(p) => {
            let s = servers.get(p).ok_or(PlacementError::NoServer)?;
            if !up(s) {
                return Err(PlacementError::Pinned(
                    format!("server is {:?}", s.state).to_lowercase(),
                ));
            }
            if !s.fits(req.needs) {
                return Err(PlacementError::Pinned(format!(
                    "it has no capacity for {}",
                    describe(&req.needs)
                )));
            }
            vec![p]
        }
        None => {
            let mut any_up = false;
            let c: Vec<usize> = servers
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    let u = up(s);
                    any_up |= u;
                    u && s.fits(req.needs)
                })
                .map(|(i, _)| i)
                .collect();
            if !any_up {
                return Err(PlacementError::NoServer);
            }
            if c.is_empty() {
                return Err(PlacementError::NoCapacity(req.needs));
            }
            c
        }
    };

    // Servers hosting a match of each rule, as a bitmap over server indices.
    let hosts = |rule: &Rule| -> Vec<bool> {
        let mut v = vec![false; servers.len()];
        for p in mine {
            if p.server < v.len() && rule.matches(p.container) {
                v[p.server] = true;
            }
        }
        v
    };
    let keep = |rule: &Rule, cands: &[usize]| -> Vec<usize> {
        let h = hosts(rule);
        cands
            .iter()
            .copied()
            .filter(|&i| h[i] == (rule.op == Op::Together))
            .collect()
    };
    for rule in req.rules.iter().filter(|r| r.hard) {
        if rule.op == Op::Together && !mine.iter().any(|p| rule.matches(p.container)) {
            return Err(PlacementError::NoMatch(rule.text.clone()));
        }
        cands = keep(rule, &cands);
        if cands.is_empty() {
            let hard: Vec<&str> = req
                .rules
                .iter()
                .filter(|r| r.hard)
                .map(|r| r.text.as_str())
                .collect();
            return Err(PlacementError::Affinity(hard.join(", ")));
        }
    }
    for rule in req.rules.iter().filter(|r| !r.hard) {
        let narrowed = keep(rule, &cands);
        if !narrowed.is_empty() {
            cands = narrowed;
        }
    }

    let pick = match req.strategy {
        Strategy::Spread => {
            let mut count = vec![0u32; servers.len()];
            for p in mine {
                if let Some(n) = count.get_mut(p.server) {
                    *n += 1;
                }
            }
            cands
                .iter()
                .copied()
                .min_by_key(|&i| (count[i], std::cmp::Reverse(servers[i].free().memory), i))
        }
        Strategy::Pack => cands
            .iter()
            .copied()
            .min_by_key(|&i| (servers[i].free().memory, i)),
    };
    pick.ok_or(PlacementError::NoCapacity(req.needs))
}

#[cfg(test)]
mod tests;
