//! The default seccomp profile, modelled on Docker's: the system calls that
//! reach outside a container (kernel modules, kexec, the clock, keyrings,
//! mounts and new namespaces, raw IO, BPF and perf, io_uring, swap, …) fail
//! with EPERM unless the process holds the capability that guards them;
//! `clone` may not make namespaces without CAP_SYS_ADMIN and `clone3` says
//! ENOSYS (so libcs fall back to `clone`); sockets of family AF_VSOCK are
//! refused; 32-bit and x32 system calls of an exec are refused.
//!
//! A deny list, where Docker's is an allow list: runc builds the filter with
//! libseccomp at every start, and the ≈ 300 names of an allow list cost it
//! 12–22 ms per `docker run` here (`bench/hardening.py`), the ≈ 60 of this list
//! nothing measurable. The price: a system call newer than this list is allowed
//! until it is added here.
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

/// Refused with conditions on their arguments (below), not by name alone.
const CONDITIONAL: &[&str] = &["clone", "clone3", "socket"];

/// The namespace flags of `clone`: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];
const AF_VSOCK: u64 = 40;
/// System call numbers with this bit are the x32 ABI's.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const ENOSYS: u32 = 38;
const EPERM: u32 = 1;

/// What the profile refuses a process with `caps` (OCI names).
struct Plan {
    denied: Vec<&'static str>,
    sys_admin: bool,
}

fn plan(caps: &[&str]) -> Plan {
    let sys_admin = caps.contains(&"CAP_SYS_ADMIN");
    let granted = |n: &str| {
        BY_CAPABILITY
            .iter()
            .any(|(cap, calls)| caps.contains(cap) && calls.contains(&n))
    };
    let mut denied: Vec<&'static str> = BLOCKED
        .iter()
        .copied()
        .chain(
            BY_CAPABILITY
                .iter()
                .flat_map(|(_, calls)| calls.iter().copied()),
        )
        .filter(|n| !CONDITIONAL.contains(n) && !granted(n))
        .filter(|n| SYSCALLS.iter().any(|(s, _)| s == n))
        .collect();
    denied.sort_unstable();
    denied.dedup();
    Plan { denied, sys_admin }
}

/// The OCI `linux.seccomp` object for a process with capabilities `caps`.
pub fn oci_profile(caps: &[&str]) -> Value {
    let p = plan(caps);
    let mut syscalls =
        vec![json!({"names": p.denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM})];
    syscalls.push(json!({
        "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
        "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_EQ"}],
    }));
    if !p.sys_admin {
        for flag in CLONE_NAMESPACE_FLAGS {
            syscalls.push(json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })
}

/// The profile as BPF, for the native exec: the deny list; without
/// CAP_SYS_ADMIN a second filter that answers `clone3` with ENOSYS (the most
/// recently installed filter decides between two errnos); and a first one that
/// refuses x32 system calls (seccompiler matches x86_64 numbers only, and an
/// x32 number would slip past a deny list).
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
        for name in &p.denied {
            rules.insert(nr(name)?, Vec::new());
        }
        rules.insert(
            nr("socket")?,
            vec![rule(cond(SeccompCmpOp::Eq, AF_VSOCK)?)?],
        );
        if !p.sys_admin {
            rules.insert(
                nr("clone")?,
                CLONE_NAMESPACE_FLAGS
                    .iter()
                    .map(|f| rule(cond(SeccompCmpOp::MaskedEq(*f), *f)?))
                    .collect::<Result<_, _>>()?,
            );
        }
        let compile = |rules, mismatch, matched| -> Result<BpfProgram, String> {
            SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
                .and_then(BpfProgram::try_from)
                .map_err(|e| e.to_string())
        };
        let mut out = vec![
            no_x32(),
            compile(rules, SeccompAction::Allow, SeccompAction::Errno(EPERM))?,
        ];
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

/// `nr >= X32_SYSCALL_BIT` → EPERM, else allow (the arch is checked by the
/// other filters).
fn no_x32() -> BpfProgram {
    use seccompiler::sock_filter;
    // BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.nr is at offset 0.
        op(LD_W_ABS, 0, 0, 0),
        op(JGE_K, 0, 1, X32_SYSCALL_BIT),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | EPERM),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &[&str] = agent_client::caps::DOCKER_DEFAULT;

    fn denied(v: &Value) -> Vec<String> {
        v["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_default_profile_refuses_what_reaches_outside() {
        let p = oci_profile(DEFAULT);
        let denied = denied(&p);
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
            "fsopen",
            "open_tree",
            "move_mount",
        ] {
            assert!(denied.iter().any(|n| n == blocked), "{blocked} not refused");
        }
        for ok in [
            "read", "execve", "chroot", "setuid", "capset", "prctl", "ptrace", "clone",
        ] {
            assert!(!denied.iter().any(|n| n == ok), "{ok} refused");
        }
        let text = p.to_string();
        assert!(text.contains("SCMP_CMP_MASKED_EQ"), "clone namespace flags");
        assert!(text.contains(r#""names":["clone3"]"#), "clone3 ENOSYS");
    }

    #[test]
    fn capabilities_allow_their_system_calls() {
        let mut caps = DEFAULT.to_vec();
        caps.extend(["CAP_SYS_ADMIN", "CAP_SYS_TIME"]);
        let p = oci_profile(&caps);
        let denied = denied(&p);
        for n in ["mount", "unshare", "setns", "clone3", "clock_settime"] {
            assert!(!denied.iter().any(|a| a == n), "{n}");
        }
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
        assert!(
            self::denied(&oci_profile(&fewer))
                .iter()
                .any(|n| n == "chroot")
        );
    }

    #[test]
    fn every_name_is_known_and_the_filters_compile() {
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
        assert_eq!(Filters::new(DEFAULT).unwrap().0.len(), 3);
        assert_eq!(Filters::new(agent_client::caps::ALL).unwrap().0.len(), 2);
    }

    /// The filters installed in a child: refused calls fail as they should,
    /// the rest work.
    #[test]
    fn installed_filters_refuse_and_allow() {
        let filters = Filters::new(DEFAULT).unwrap();
        // SAFETY: fork in a test process; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || filters.install().is_err()
                {
                    10
                } else if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                    11
                } else if *libc::__errno_location() != libc::EPERM {
                    12
                } else if libc::syscall(libc::SYS_clone3, 0, 0) != -1
                    || *libc::__errno_location() != libc::ENOSYS
                {
                    13
                } else if libc::syscall(libc::SYS_getpid | X32_SYSCALL_BIT as i64) != -1 {
                    14
                } else if libc::getppid() <= 0 {
                    15
                } else {
                    0
                }
            };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "killed: {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
