//! A tenant's package is a ceiling, not a default: limits asked for on
//! create or update may be lower than the package's, never higher, and
//! never "unlimited". The operator's own containers are not bounded.

use agent_client::{Resources, Ulimit};
use placement::Package;

use crate::error::{Error, Result};

/// Most RLIMIT_NOFILE a tenant's container may have (Docker's default).
const MAX_NOFILE: i64 = 1_048_576;
/// Most bytes of POSIX message queues (the kernel's default).
const MAX_MSGQUEUE: i64 = 819_200;

fn over(
    what: &str,
    asked: impl std::fmt::Display,
    limit: impl std::fmt::Display,
    pkg: &Package,
) -> Error {
    Error::InvalidArgument(format!(
        "{what} {asked} is above the limit of package {} ({limit})",
        pkg.name
    ))
}

/// Checks `r` (the package's defaults already filled in) against `pkg`.
pub fn check_resources(r: &Resources, pkg: &Package) -> Result<()> {
    let memory = pkg.memory_bytes as i64;
    if r.memory > memory {
        return Err(over("--memory", r.memory, memory, pkg));
    }
    // Docker's default is as much swap as memory (total 2x): that is the most.
    if r.memory_swap < 0 {
        return Err(over("--memory-swap", "-1 (unlimited)", 2 * memory, pkg));
    }
    if r.memory_swap > 2 * memory {
        return Err(over("--memory-swap", r.memory_swap, 2 * memory, pkg));
    }
    if pkg.cpu_shares > 0 && r.cpu_shares > pkg.cpu_shares as i64 {
        return Err(over("--cpu-shares", r.cpu_shares, pkg.cpu_shares, pkg));
    }
    if pkg.cpu_cap > 0 {
        let cap_nanos = pkg.cpu_cap as i64 * 10_000_000;
        let cpus = |n: i64| format!("{:.2} CPUs", n as f64 / 1e9);
        if r.nano_cpus > cap_nanos {
            return Err(over("--cpus", cpus(r.nano_cpus), cpus(cap_nanos), pkg));
        }
        if r.nano_cpus == 0 {
            if r.cpu_quota <= 0 {
                return Err(over("--cpu-quota", "-1 (unlimited)", cpus(cap_nanos), pkg));
            }
            let period = if r.cpu_period > 0 {
                r.cpu_period
            } else {
                100_000
            };
            // quota/period CPUs, compared without rounding.
            if r.cpu_quota as i128 * 100 > pkg.cpu_cap as i128 * period as i128 {
                let asked = r.cpu_quota as i128 * 1_000_000_000 / period as i128;
                return Err(over(
                    "--cpu-quota",
                    cpus(asked as i64),
                    cpus(cap_nanos),
                    pkg,
                ));
            }
        }
    }
    if pkg.pids > 0 {
        if r.pids_limit <= 0 {
            return Err(over("--pids-limit", "-1 (unlimited)", pkg.pids, pkg));
        }
        if r.pids_limit > pkg.pids as i64 {
            return Err(over("--pids-limit", r.pids_limit, pkg.pids, pkg));
        }
    }
    Ok(())
}

/// A tenant's json-file log without `max-size`: Docker's `local` driver's
/// bounds (20 MiB, five files), so no container fills a server with output.
pub const DEFAULT_LOG_SIZE: u64 = 20 << 20;
pub const DEFAULT_LOG_FILES: u32 = 5;

/// Bounds a tenant's log: the default where none is set, and at most the
/// package's disk in all (size × files) where one is.
pub fn bound_logs(spec: &mut agent_client::ContainerSpec, pkg: &Package) -> Result<()> {
    if spec.log_max_size == 0 {
        spec.log_max_size = DEFAULT_LOG_SIZE;
        spec.log_max_files = DEFAULT_LOG_FILES;
        return Ok(());
    }
    let total = spec
        .log_max_size
        .saturating_mul(spec.log_max_files.max(1) as u64);
    if total > pkg.disk_bytes {
        return Err(over(
            "--log-opt max-size × max-file",
            total,
            pkg.disk_bytes,
            pkg,
        ));
    }
    Ok(())
}

/// Checks `--ulimit`s: none may raise what a shared server must keep
/// (real-time priority and niceness let one container starve the others).
pub fn check_ulimits(ulimits: &[Ulimit], r: &Resources, pkg: &Package) -> Result<()> {
    for u in ulimits {
        let max = match u.name.as_str() {
            "rtprio" | "nice" => 0,
            "nofile" => MAX_NOFILE,
            "msgqueue" => MAX_MSGQUEUE,
            // Locked memory is the container's memory.
            "memlock" => r.memory,
            _ => continue,
        };
        if u.hard < 0 || u.hard > max {
            let asked = if u.hard < 0 {
                "-1 (unlimited)".to_string()
            } else {
                u.hard.to_string()
            };
            return Err(over(&format!("--ulimit {}", u.name), asked, max, pkg));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg() -> Package {
        Package {
            name: "small".into(),
            memory_bytes: 512 << 20,
            cpu_shares: 512,
            cpu_cap: 100,
            disk_bytes: 10 << 30,
            pids: 4096,
            accounts: Vec::new(),
            default: true,
        }
    }

    fn filled() -> Resources {
        Resources {
            memory: 512 << 20,
            cpu_shares: 512,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            pids_limit: 4096,
            ..Default::default()
        }
    }

    fn refusal(r: Resources) -> String {
        check_resources(&r, &pkg())
            .expect_err("over the package")
            .to_string()
    }

    #[test]
    fn the_package_is_a_ceiling() {
        check_resources(&filled(), &pkg()).expect("the package itself");
        let lower = Resources {
            memory: 64 << 20,
            memory_swap: 128 << 20,
            cpu_shares: 2,
            nano_cpus: 500_000_000,
            pids_limit: 10,
            ..filled()
        };
        check_resources(&lower, &pkg()).expect("lower is fine");
        assert_eq!(
            refusal(Resources {
                pids_limit: 4_000_000,
                ..filled()
            }),
            "--pids-limit 4000000 is above the limit of package small (4096)"
        );
        assert_eq!(
            refusal(Resources {
                pids_limit: 0,
                ..filled()
            }),
            "--pids-limit -1 (unlimited) is above the limit of package small (4096)"
        );
        assert_eq!(
            refusal(Resources {
                cpu_shares: 262_144,
                ..filled()
            }),
            "--cpu-shares 262144 is above the limit of package small (512)"
        );
        assert_eq!(
            refusal(Resources {
                nano_cpus: 2_000_000_000,
                cpu_quota: 0,
                cpu_period: 0,
                ..filled()
            }),
            "--cpus 2.00 CPUs is above the limit of package small (1.00 CPUs)"
        );
        assert_eq!(
            refusal(Resources {
                cpu_quota: 150_000,
                ..filled()
            }),
            "--cpu-quota 1.50 CPUs is above the limit of package small (1.00 CPUs)"
        );
        assert!(
            refusal(Resources {
                cpu_quota: -1,
                ..filled()
            })
            .contains("unlimited")
        );
        assert_eq!(
            refusal(Resources {
                memory_swap: -1,
                ..filled()
            }),
            "--memory-swap -1 (unlimited) is above the limit of package small (1073741824)"
        );
        assert!(
            refusal(Resources {
                memory: 1 << 30,
                ..filled()
            })
            .starts_with("--memory 1073741824")
        );
    }

    #[test]
    fn logs_are_bounded() {
        let mut spec = agent_client::ContainerSpec {
            log_max_size: 0,
            log_max_files: 1,
            ..Default::default()
        };
        bound_logs(&mut spec, &pkg()).expect("default");
        assert_eq!((spec.log_max_size, spec.log_max_files), (20 << 20, 5));
        spec.log_max_size = 1 << 30;
        spec.log_max_files = 20;
        assert_eq!(
            bound_logs(&mut spec, &pkg())
                .expect_err("20 GiB")
                .to_string(),
            "--log-opt max-size × max-file 21474836480 is above the limit of package small (10737418240)"
        );
        spec.log_max_files = 2;
        bound_logs(&mut spec, &pkg()).expect("2 GiB");
    }

    #[test]
    fn ulimits_that_would_harm_the_server_are_refused() {
        let u = |name: &str, hard: i64| Ulimit {
            name: name.into(),
            soft: 0,
            hard,
        };
        let r = filled();
        check_ulimits(
            &[u("nofile", 1024), u("core", -1), u("nproc", 100)],
            &r,
            &pkg(),
        )
        .expect("ordinary ulimits");
        for (bad, text) in [
            (
                u("rtprio", 99),
                "--ulimit rtprio 99 is above the limit of package small (0)",
            ),
            (
                u("nice", 40),
                "--ulimit nice 40 is above the limit of package small (0)",
            ),
            (
                u("nofile", -1),
                "--ulimit nofile -1 (unlimited) is above the limit of package small (1048576)",
            ),
            (
                u("nofile", 99_999_999),
                "--ulimit nofile 99999999 is above the limit of package small (1048576)",
            ),
        ] {
            assert_eq!(
                check_ulimits(&[bad], &r, &pkg())
                    .expect_err("refused")
                    .to_string(),
                text
            );
        }
    }
}
