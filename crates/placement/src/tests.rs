use std::collections::BTreeMap;

use proptest::prelude::{ProptestConfig, any, prop, prop_assert, proptest};
use proptest::strategy::Strategy as _;

use super::*;

const GB: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Ctr {
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
}

impl Candidate for Ctr {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

fn ctr(name: &str, role: &str) -> Ctr {
    let mut labels = BTreeMap::new();
    labels.insert("role".to_string(), role.to_string());
    Ctr {
        id: format!("{:0>64}", name.len()),
        name: name.to_string(),
        labels,
    }
}

fn server(id: &str, mem_gb: u64, used_gb: u64) -> Server {
    Server {
        id: id.to_string(),
        state: ServerState::Up,
        capacity: Resources {
            memory: mem_gb * GB,
            disk: 100 * GB,
        },
        allocated: Resources {
            memory: used_gb * GB,
            disk: 0,
        },
    }
}

fn req(mem_gb: u64, rules: &[Rule]) -> Request<'_> {
    Request {
        needs: Resources {
            memory: mem_gb * GB,
            disk: GB,
        },
        rules,
        pinned: None,
        strategy: Strategy::Spread,
    }
}

fn rules(texts: &[&str]) -> Vec<Rule> {
    texts.iter().map(|t| Rule::parse(t).unwrap()).collect()
}

#[test]
fn spread_prefers_servers_without_the_accounts_containers() {
    let servers = [server("a", 8, 0), server("b", 8, 0), server("c", 8, 0)];
    let cs = [ctr("one", "x"), ctr("two", "x")];
    let mine = [
        Placed {
            container: &cs[0],
            server: 0,
        },
        Placed {
            container: &cs[1],
            server: 1,
        },
    ];
    assert_eq!(place(&servers, &mine, &req(1, &[])), Ok(2));
    // With no containers yet, the emptiest server; ties go to the first.
    assert_eq!(place::<Ctr>(&servers, &[], &req(1, &[])), Ok(0));
    let servers = [server("a", 8, 4), server("b", 8, 1)];
    assert_eq!(place::<Ctr>(&servers, &[], &req(1, &[])), Ok(1));
}

#[test]
fn pack_fills_the_fullest_server_that_fits() {
    let servers = [server("a", 8, 1), server("b", 8, 6), server("c", 8, 7)];
    let mut r = req(2, &[]);
    r.strategy = Strategy::Pack;
    assert_eq!(place::<Ctr>(&servers, &[], &r), Ok(1));
}

#[test]
fn capacity_drain_and_down_are_honoured() {
    let mut servers = vec![server("a", 8, 7), server("b", 8, 0), server("c", 8, 0)];
    servers[1].state = ServerState::Draining;
    servers[2].state = ServerState::Down;
    assert_eq!(
        place::<Ctr>(&servers, &[], &req(2, &[])),
        Err(PlacementError::NoCapacity(Resources {
            memory: 2 * GB,
            disk: GB
        }))
    );
    assert_eq!(
        place::<Ctr>(&servers, &[], &req(2, &[]))
            .unwrap_err()
            .to_string(),
        "no server has capacity for a container of 2 GB memory and 1 GB disk"
    );
    servers[0].state = ServerState::Down;
    assert_eq!(
        place::<Ctr>(&servers, &[], &req(1, &[])),
        Err(PlacementError::NoServer)
    );
    assert_eq!(
        place::<Ctr>(&[], &[], &req(1, &[])),
        Err(PlacementError::NoServer)
    );
}

#[test]
fn hard_and_soft_affinity() {
    let servers = [server("a", 8, 0), server("b", 8, 0), server("c", 8, 0)];
    let cs = [
        ctr("web1", "frontend"),
        ctr("web2", "frontend"),
        ctr("db1", "db"),
    ];
    let mine: Vec<Placed<'_, Ctr>> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| Placed {
            container: c,
            server: i,
        })
        .collect();
    // Together with db1 (on c), whatever spread says.
    assert_eq!(
        place(&servers, &mine, &req(1, &rules(&["container==db1"]))),
        Ok(2)
    );
    assert_eq!(
        place(&servers, &mine, &req(1, &rules(&["role==db"]))),
        Ok(2)
    );
    // Apart from every web*: only c.
    assert_eq!(
        place(&servers, &mine, &req(1, &rules(&["container!=web*"]))),
        Ok(2)
    );
    assert_eq!(
        place(
            &servers,
            &mine,
            &req(1, &rules(&["container!=/^(web|db)/"]))
        ),
        Err(PlacementError::Affinity("container!=/^(web|db)/".into()))
    );
    assert_eq!(
        place(&servers, &mine, &req(1, &rules(&["container==nope"]))),
        Err(PlacementError::NoMatch("container==nope".into()))
    );
    // Soft rules give way when they cannot be met, and are met when they can.
    assert_eq!(
        place(
            &servers,
            &mine,
            &req(1, &rules(&["container!=~/^(web|db)/"]))
        ),
        Ok(0)
    );
    assert_eq!(
        place(&servers, &mine, &req(1, &rules(&["container==~web2"]))),
        Ok(1)
    );
    assert_eq!(
        place(&servers, &mine, &req(1, &rules(&["container==~nope"]))),
        Ok(0)
    );
}

#[test]
fn pinned_requests_land_on_their_server_or_fail_clearly() {
    let mut servers = vec![server("a", 8, 0), server("b", 8, 7)];
    let mut r = req(1, &[]);
    r.pinned = Some(1);
    assert_eq!(place::<Ctr>(&servers, &[], &r), Ok(1));
    r.needs.memory = 2 * GB;
    assert!(matches!(
        place::<Ctr>(&servers, &[], &r),
        Err(PlacementError::Pinned(m)) if m.contains("no capacity")
    ));
    servers[1].state = ServerState::Down;
    assert!(matches!(
        place::<Ctr>(&servers, &[], &r),
        Err(PlacementError::Pinned(m)) if m.contains("down")
    ));
}

// Property tests: random datacenters, containers and rules against a
// brute-force reading of the same rules.

fn arb_server() -> impl proptest::strategy::Strategy<Value = Server> {
    (0u8..3, 1u64..16, 0u64..16, 10u64..100).prop_map(|(st, cap, used, disk)| Server {
        id: String::new(),
        state: [ServerState::Up, ServerState::Draining, ServerState::Down][st as usize],
        capacity: Resources {
            memory: cap * GB,
            disk: disk * GB,
        },
        allocated: Resources {
            memory: used.min(cap + 1) * GB,
            disk: 0,
        },
    })
}

const NAMES: [&str; 6] = ["web1", "web2", "db1", "db2", "cache", "worker"];
const RULES: [&str; 10] = [
    "container==web1",
    "container!=web*",
    "container==~db*",
    "container!=~cache",
    "role==db",
    "role!=frontend",
    "role==~frontend",
    "container!=/^w/",
    "container==/[0-9]$/",
    "role!=~db",
];

fn role_of(name: &str) -> &'static str {
    if name.starts_with("web") {
        "frontend"
    } else if name.starts_with("db") {
        "db"
    } else {
        "other"
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decisions_keep_every_invariant(
        servers in prop::collection::vec(arb_server(), 1..12),
        placed in prop::collection::vec((0usize..6, 0usize..12), 0..10),
        rule_idx in prop::collection::vec(0usize..10, 0..3),
        need in 1u64..6,
        pack in any::<bool>(),
    ) {
        let cs: Vec<Ctr> = placed.iter().map(|(n, _)| ctr(NAMES[*n], role_of(NAMES[*n]))).collect();
        let mine: Vec<Placed<'_, Ctr>> = cs
            .iter()
            .zip(&placed)
            .map(|(c, (_, s))| Placed { container: c, server: s % servers.len() })
            .collect();
        let rs = rules(&rule_idx.iter().map(|i| RULES[*i]).collect::<Vec<_>>());
        let mut r = req(need, &rs);
        if pack {
            r.strategy = Strategy::Pack;
        }
        let hosts = |rule: &Rule, i: usize| mine.iter().any(|p| p.server == i && rule.matches(p.container));
        let hard_ok = |i: usize| rs.iter().filter(|x| x.hard).all(|x| hosts(x, i) == (x.op == Op::Together));
        let eligible = |i: usize| {
            let s = &servers[i];
            s.state == ServerState::Up
                && s.allocated.memory + r.needs.memory <= s.capacity.memory
                && s.allocated.disk + r.needs.disk <= s.capacity.disk
        };
        let feasible: Vec<usize> = (0..servers.len()).filter(|&i| eligible(i) && hard_ok(i)).collect();
        match place(&servers, &mine, &r) {
            Ok(i) => {
                // Never over-commit, never a server that is not up, never break a hard rule.
                prop_assert!(eligible(i), "server {} is not eligible", i);
                prop_assert!(hard_ok(i), "server {} breaks a hard rule", i);
                // Spread means spread: no feasible server that also meets the soft
                // rules the decision met holds fewer of the account's containers.
                if !pack {
                    let count = |j: usize| mine.iter().filter(|p| p.server == j).count();
                    let soft_met: Vec<&Rule> = rs.iter().filter(|x| !x.hard && hosts(x, i) == (x.op == Op::Together)).collect();
                    for &j in &feasible {
                        if soft_met.iter().all(|x| hosts(x, j) == (x.op == Op::Together)) {
                            prop_assert!(count(j) >= count(i), "server {} holds fewer than {}", j, i);
                        }
                    }
                }
            }
            Err(e) => {
                // Only when no server could take it.
                prop_assert!(feasible.is_empty(), "refused with {:?} though {:?} fit", e, feasible);
            }
        }
    }
}
