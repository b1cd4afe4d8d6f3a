//! The default seccomp profile, modelled on Docker's: every known system call is
//! allowed except those that reach outside a container (kernel modules, kexec,
//! the clock, keyrings, mounts and new namespaces, raw IO, BPF and perf,
//! io_uring, …), which become allowed only with the capability that guards them;
//! `clone` may not make namespaces without CAP_SYS_ADMIN and `clone3` says ENOSYS
//! (so libcs fall back to `clone`); `personality` takes only harmless values;
//! sockets of family AF_VSOCK are refused. Unknown system calls fail with EPERM.
//!
//! One description, two forms: the OCI `linux.seccomp` object for runc
//! ([`oci_profile`]), and BPF for the exec shim's native exec ([`Filters`]), so
//! a container and its execs are confined alike.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde_json::{Value, json};

use crate::syscalls_x86_64::SYSCALLS;

/// Refused to everyone.
const BLOCKED: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "nfsservctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "sysfs",
    "_sysctl",
    "vm86",
    "vm86old",
    "swapon",
    "swapoff",
    "pivot_root",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "afs_syscall",
    "tuxcall",
    "security",
    "vserver",
    "getpmsg",
    "putpmsg",
    "lookup_dcookie",
];

/// Allowed only to processes that hold the capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "clock_settime", "clock_adjtime"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
            "move_pages",
            "migrate_pages",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Allowed with conditions on their arguments (below), not by name alone.
const CONDITIONAL: &[&str] = &["clone", "clone3", "personality", "socket"];

/// The namespace flags of `clone` (CLONE_NEWNS … CLONE_NEWCGROUP, CLONE_NEWTIME).
const CLONE_NAMESPACES: u64 = 0x7E02_0080;
/// `personality` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and the query.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;
const EPERM: u32 = 1;

/// What the profile allows a process with `caps` (OCI names).
struct Plan {
    by_name: Vec<&'static str>,
    sys_admin: bool,
}

fn plan(caps: &[&str]) -> Plan {
    let sys_admin = caps.contains(&"CAP_SYS_ADMIN");
    let granted: Vec<&str> = BY_CAPABILITY
        .iter()
        .filter(|(cap, _)| caps.contains(cap))
        .flat_map(|(_, calls)| calls.iter().copied())
        .collect();
    let guarded = |n: &str| BY_CAPABILITY.iter().any(|(_, calls)| calls.contains(&n));
    let mut by_name: Vec<&'static str> = SYSCALLS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !BLOCKED.contains(n) && !CONDITIONAL.contains(n))
        .filter(|n| !guarded(n) || granted.contains(n))
        .collect();
    if sys_admin {
        by_name.extend(["clone", "clone3"]);
    }
    by_name.sort_unstable();
    by_name.dedup();
    Plan { by_name, sys_admin }
}

/// The OCI `linux.seccomp` object for a process with capabilities `caps`.
pub fn oci_profile(caps: &[&str]) -> Value {
    let p = plan(caps);
    let mut syscalls = vec![json!({"names": p.by_name, "action": "SCMP_ACT_ALLOW"})];
    for v in PERSONALITIES {
        syscalls.push(json!({
            "names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}],
        }));
    }
    syscalls.push(json!({
        "names": ["socket"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}],
    }));
    if !p.sys_admin {
        syscalls.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACES, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })
}

/// The profile as BPF, for the native exec: the allow list (everything else
/// EPERM), then, without CAP_SYS_ADMIN, a second filter that answers `clone3`
/// with ENOSYS (the most recently installed filter decides between two errnos).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters(pub Vec<BpfProgram>);

impl Filters {
    pub fn new(caps: &[&str]) -> Result<Filters, String> {
        let p = plan(caps);
        let nr = |name: &str| {
            SYSCALLS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, nr)| *nr)
                .ok_or_else(|| format!("unknown system call {name}"))
        };
        let cond = |op, value| {
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
        };
        let rule = |c| SeccompRule::new(vec![c]).map_err(|e| e.to_string());
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for name in &p.by_name {
            rules.insert(nr(name)?, Vec::new());
        }
        rules.insert(
            nr("personality")?,
            PERSONALITIES
                .iter()
                .map(|v| rule(cond(SeccompCmpOp::Eq, *v)?))
                .collect::<Result<_, _>>()?,
        );
        rules.insert(
            nr("socket")?,
            vec![rule(cond(SeccompCmpOp::Ne, AF_VSOCK)?)?],
        );
        if !p.sys_admin {
            rules.insert(
                nr("clone")?,
                vec![rule(cond(SeccompCmpOp::MaskedEq(CLONE_NAMESPACES), 0)?)?],
            );
        }
        let compile = |rules, mismatch, matched| -> Result<BpfProgram, String> {
            SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
                .and_then(BpfProgram::try_from)
                .map_err(|e| e.to_string())
        };
        let mut out = vec![compile(
            rules,
            SeccompAction::Errno(EPERM),
            SeccompAction::Allow,
        )?];
        if !p.sys_admin {
            let enosys = BTreeMap::from([(nr("clone3")?, Vec::new())]);
            out.push(compile(
                enosys,
                SeccompAction::Allow,
                SeccompAction::Errno(ENOSYS),
            )?);
        }
        Ok(Filters(out))
    }

    /// Installs the filters on the calling thread. Needs CAP_SYS_ADMIN or
    /// no_new_privs already set (it does not set no_new_privs: setuid programs
    /// in the container keep working, as under runc).
    ///
    /// # Safety
    /// Only in a forked child about to exec.
    pub unsafe fn install(&self) -> std::io::Result<()> {
        for prog in &self.0 {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: a valid program that outlives the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &[&str] = agent_client::caps::DOCKER_DEFAULT;

    fn names(v: &Value) -> Vec<String> {
        v["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_default_profile_blocks_what_reaches_outside() {
        let allowed = names(&oci_profile(DEFAULT));
        for blocked in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "init_module",
            "finit_module",
            "kexec_load",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "clock_settime",
            "settimeofday",
            "reboot",
            "io_uring_setup",
            "userfaultfd",
            "pivot_root",
            "swapon",
            "iopl",
            "open_by_handle_at",
            "clone",
            "clone3",
            "personality",
            "socket",
        ] {
            assert!(
                !allowed.iter().any(|n| n == blocked),
                "{blocked} allowed by name"
            );
        }
        for ok in [
            "read",
            "write",
            "openat",
            "execve",
            "fork",
            "vfork",
            "wait4",
            "chroot",
            "setuid",
            "capset",
            "prctl",
            "ptrace",
            "fchmodat2",
            "futex_waitv",
            "statx",
        ] {
            assert!(allowed.iter().any(|n| n == ok), "{ok} refused");
        }
        assert!(allowed.len() > 280, "{}", allowed.len());
    }

    #[test]
    fn capabilities_open_their_system_calls() {
        let mut caps = DEFAULT.to_vec();
        caps.extend(["CAP_SYS_ADMIN", "CAP_SYS_TIME"]);
        let allowed = names(&oci_profile(&caps));
        for n in [
            "mount",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "clock_settime",
        ] {
            assert!(allowed.iter().any(|a| a == n), "{n}");
        }
        let p = oci_profile(&caps);
        assert!(
            !p.to_string().contains("SCMP_CMP_MASKED_EQ"),
            "no clone rule with SYS_ADMIN"
        );
        // Dropping CHROOT takes chroot away.
        let fewer: Vec<&str> = DEFAULT
            .iter()
            .copied()
            .filter(|c| *c != "CAP_SYS_CHROOT")
            .collect();
        assert!(!names(&oci_profile(&fewer)).iter().any(|n| n == "chroot"));
    }

    #[test]
    fn every_name_is_a_known_system_call_and_compiles() {
        for (_, calls) in BY_CAPABILITY {
            for c in *calls {
                assert!(SYSCALLS.iter().any(|(n, _)| n == c), "{c}");
            }
        }
        for c in BLOCKED.iter().chain(CONDITIONAL) {
            assert!(
                SYSCALLS.iter().any(|(n, _)| n == c) || ["vm86", "vm86old"].contains(c),
                "{c}"
            );
        }
        let f = Filters::new(DEFAULT).unwrap();
        assert_eq!(f.0.len(), 2);
        assert_eq!(Filters::new(agent_client::caps::ALL).unwrap().0.len(), 1);
    }
}
