//! Placement decision time on a synthetic datacenter: 10,000 servers and 200,000
//! containers over 2,000 accounts; the deciding account owns 100 of them. Median
//! and p99 of 2,000 decisions each, without rules, with hard rules, with soft
//! rules, and packed. Target (issue 4): median ≤ 1 ms.
//!
//! Run: `cargo bench -p placement` (or `bench/placement.sh`).

use std::collections::BTreeMap;
use std::time::Instant;

use placement::{
    Candidate, Placed, Request, Resources, Rule, Server, ServerState, Strategy, place,
};

const SERVERS: usize = 10_000;
const CONTAINERS: usize = 200_000;
const ACCOUNTS: usize = 2_000;
const DECISIONS: usize = 2_000;
const GB: u64 = 1024 * 1024 * 1024;

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

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut servers: Vec<Server> = (0..SERVERS)
        .map(|i| Server {
            id: format!("server-{i:05}"),
            state: if i % 97 == 0 {
                ServerState::Draining
            } else {
                ServerState::Up
            },
            capacity: Resources {
                memory: 256 * GB,
                disk: 4096 * GB,
            },
            allocated: Resources::default(),
        })
        .collect();
    // 200,000 containers of 1 GB; the allocations the head keeps per server.
    let mut mine: Vec<(Ctr, usize)> = Vec::new();
    for i in 0..CONTAINERS {
        let s = rng.below(SERVERS);
        servers[s].allocated.memory += GB;
        servers[s].allocated.disk += 10 * GB;
        let account = i % ACCOUNTS;
        if account == 7 {
            let n = mine.len();
            let mut labels = BTreeMap::new();
            labels.insert(
                "role".to_string(),
                ["web", "db", "cache"][n % 3].to_string(),
            );
            mine.push((
                Ctr {
                    id: format!("{:064x}", rng.next()),
                    name: format!("{}{}", ["web", "db", "cache"][n % 3], n),
                    labels,
                },
                s,
            ));
        }
    }
    let placed: Vec<Placed<'_, Ctr>> = mine
        .iter()
        .map(|(c, s)| Placed {
            container: c,
            server: *s,
        })
        .collect();
    let parse = |v: &[&str]| -> Vec<Rule> { v.iter().map(|t| Rule::parse(t).unwrap()).collect() };
    let cases: Vec<(&str, Vec<Rule>, Strategy)> = vec![
        ("no rules, spread", vec![], Strategy::Spread),
        ("no rules, pack", vec![], Strategy::Pack),
        (
            "hard: container!=web*, role!=db",
            parse(&["container!=web*", "role!=db"]),
            Strategy::Spread,
        ),
        (
            "hard: container==db1",
            parse(&["container==db1"]),
            Strategy::Spread,
        ),
        (
            "soft: container==~/^cache/, role!=~web",
            parse(&["container==~/^cache/", "role!=~web"]),
            Strategy::Spread,
        ),
    ];
    println!(
        "placement on {SERVERS} servers, {CONTAINERS} containers ({} of the deciding account)",
        placed.len()
    );
    println!();
    println!("| case | median (µs) | p99 (µs) | decisions |");
    println!("|---|---:|---:|---:|");
    let mut worst_median = 0.0f64;
    for (label, rules, strategy) in &cases {
        let mut times = Vec::with_capacity(DECISIONS);
        for _ in 0..DECISIONS {
            let req = Request {
                needs: Resources {
                    memory: GB,
                    disk: 10 * GB,
                },
                rules,
                pinned: None,
                strategy: *strategy,
            };
            let t = Instant::now();
            let r = place(&servers, &placed, &req);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(r.expect("a decision"));
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let p99 = times[times.len() * 99 / 100];
        worst_median = worst_median.max(median);
        println!("| {label} | {median:.0} | {p99:.0} | {DECISIONS} |");
    }
    println!();
    println!(
        "worst median: {:.3} ms (target <= 1 ms): {}",
        worst_median / 1000.0,
        if worst_median <= 1000.0 {
            "met"
        } else {
            "NOT MET"
        }
    );
}
