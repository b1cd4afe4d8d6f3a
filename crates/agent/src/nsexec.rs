//! Native exec into a running container, for the exec shim: what `runc exec`
//! does for our containers (join the init's cgroups and namespaces, enter its
//! root, set rlimits, ids, capabilities and no_new_privs, exec), without runc's
//! two Go process start-ups. Measured here: `runc exec` ≈ 15 ms, this ≈ 1 ms.
//!
//! The process is described by the exec's OCI `process.json` (built by the agent
//! from the container's own process, see `exec.rs`), so it gets exactly the
//! container's capabilities, limits and seccomp profile (the default one,
//! compiled to BPF by `seccomp.rs`). Anything this module does not know how to
//! apply (AppArmor, SELinux) is refused by [`ExecPlan::from_process`] rather
//! than silently skipped. A tenant's user namespace is joined like the others.
//!
//! Only called from the single-threaded shim: it forks, and the children run
//! ordinary Rust (allocation included) before `execve`.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Namespaces joined, in this order (mount last: the others are opened through
/// the host's /proc, which the container's mount namespace hides). The user
/// namespace (a tenant's) comes after those the host's root may join and
/// before the mount namespace, which needs privilege inside it.
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
];

const RLIMITS: &[(&str, libc::__rlimit_resource_t)] = &[
    ("RLIMIT_CPU", libc::RLIMIT_CPU),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
    ("RLIMIT_DATA", libc::RLIMIT_DATA),
    ("RLIMIT_STACK", libc::RLIMIT_STACK),
    ("RLIMIT_CORE", libc::RLIMIT_CORE),
    ("RLIMIT_RSS", libc::RLIMIT_RSS),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("RLIMIT_AS", libc::RLIMIT_AS),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("RLIMIT_NICE", libc::RLIMIT_NICE),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
];

/// Capability sets as bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// Everything the child applies, parsed and checked before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub caps: CapSets,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub no_new_privs: bool,
    pub tty: bool,
    /// `$PATH` of the process, for finding a command given without a slash.
    pub path: Vec<Vec<u8>>,
    /// The default seccomp profile for these capabilities, compiled.
    pub seccomp: Option<crate::seccomp::Filters>,
}

/// The key in an exec's `process.json` that asks for the default seccomp
/// profile (the container has it in `linux.seccomp`, which a process lacks).
pub const DEFAULT_SECCOMP: &str = "atollDefaultSeccomp";

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

fn cap_mask(v: &Value) -> Result<u64, String> {
    let mut m = 0u64;
    for c in v.as_array().into_iter().flatten() {
        let name = c.as_str().unwrap_or("");
        let bit = agent_client::caps::number(name)
            .ok_or_else(|| format!("unknown capability {name:?}"))?;
        m |= 1 << bit;
    }
    Ok(m)
}

impl ExecPlan {
    /// From an OCI process object (`process.json`).
    pub fn from_process(p: &Value) -> Result<ExecPlan, String> {
        for unsupported in ["apparmorProfile", "selinuxLabel"] {
            if p.get(unsupported).is_some_and(|v| !v.is_null() && v != "") {
                return Err(format!("{unsupported} is not supported for exec"));
            }
        }
        let strings = |key: &str| -> Vec<String> {
            p[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let args = strings("args");
        if args.is_empty() {
            return Err("no command".into());
        }
        let env = strings("env");
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| d.as_bytes().to_vec())
            .collect();
        let cwd = p["cwd"].as_str().filter(|c| !c.is_empty()).unwrap_or("/");
        if !cwd.starts_with('/') {
            return Err(format!("cwd {cwd:?} is not an absolute path"));
        }
        let user = &p["user"];
        let id = |k: &str| -> Result<u32, String> {
            match &user[k] {
                Value::Null => Ok(0),
                v => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("bad user.{k}")),
            }
        };
        let groups = user["additionalGids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                g.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| "bad user.additionalGids".to_string())
            })
            .collect::<Result<Vec<u32>, String>>()?;
        let c = &p["capabilities"];
        let caps = CapSets {
            bounding: cap_mask(&c["bounding"])?,
            effective: cap_mask(&c["effective"])?,
            permitted: cap_mask(&c["permitted"])?,
            inheritable: cap_mask(&c["inheritable"])?,
            ambient: cap_mask(&c["ambient"])?,
        };
        let mut rlimits = Vec::new();
        for r in p["rlimits"].as_array().into_iter().flatten() {
            let name = r["type"].as_str().unwrap_or("");
            let res = RLIMITS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, r)| *r)
                .ok_or_else(|| format!("unknown rlimit {name:?}"))?;
            let v = |k: &str| r[k].as_u64().ok_or_else(|| format!("bad {name} {k}"));
            rlimits.push((res, v("soft")?, v("hard")?));
        }
        Ok(ExecPlan {
            args: args
                .iter()
                .map(|a| cstring(a, "an argument"))
                .collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|e| cstring(e, "an environment variable"))
                .collect::<Result<_, _>>()?,
            cwd: cstring(cwd, "the working directory")?,
            uid: id("uid")?,
            gid: id("gid")?,
            groups,
            caps,
            rlimits,
            no_new_privs: p["noNewPrivileges"].as_bool().unwrap_or(false),
            tty: p["terminal"].as_bool().unwrap_or(false),
            path,
            seccomp: if p[DEFAULT_SECCOMP].as_bool() == Some(true) {
                let names: Vec<&str> = agent_client::caps::ALL
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| caps.bounding & (1 << i) != 0)
                    .map(|(_, n)| *n)
                    .collect();
                Some(crate::seccomp::Filters::new(&names)?)
            } else {
                None
            },
        })
    }
}

/// The running container, as handles opened before the fork.
pub struct Target {
    /// Namespaces of the container that differ from ours.
    namespaces: Vec<(File, libc::c_int)>,
    /// The container's root directory (`/proc/<init>/root`).
    root: File,
    /// `tasks` of every v1 hierarchy the init is in.
    cgroup_procs: Vec<PathBuf>,
    /// Its v2 cgroup directory, entered at fork (`CLONE_INTO_CGROUP`).
    unified: Option<File>,
}

/// The mount directory of a v1 hierarchy (or the v2 one) under /sys/fs/cgroup.
fn cgroup_dir(controllers: &str) -> &str {
    if controllers.is_empty() {
        "unified"
    } else {
        controllers.strip_prefix("name=").unwrap_or(controllers)
    }
}

/// How to join the cgroups of a `/proc/<pid>/cgroup`: the v1 `tasks` files to
/// write "0" to, and the v2 directory. Moving a process into a cgroup by
/// writing `cgroup.procs` takes a global lock whose RCU grace period costs
/// ≈ 12–15 ms per exec here; writing v1 `tasks` moves only the calling thread
/// (our process has one) without that lock, and v2 is entered at fork with
/// `clone3(CLONE_INTO_CGROUP)`, which needs no migration at all.
pub fn cgroup_files(proc_cgroup: &str, base: &Path) -> (Vec<PathBuf>, Option<PathBuf>) {
    let mut v1 = Vec::new();
    let mut unified = None;
    for l in proc_cgroup.lines() {
        let mut parts = l.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let dir = base
            .join(cgroup_dir(ctrl))
            .join(path.trim_start_matches('/'));
        if ctrl.is_empty() {
            unified = Some(dir).filter(|d| d.join("cgroup.procs").exists());
        } else if dir.join("tasks").exists() {
            v1.push(dir.join("tasks"));
        }
    }
    (v1, unified)
}

impl Target {
    pub fn open(init_pid: i32) -> Result<Target, String> {
        let gone = |e: std::io::Error| format!("the container is not running ({e})");
        let proc = PathBuf::from(format!("/proc/{init_pid}"));
        let mut namespaces = Vec::new();
        for (name, flag) in NAMESPACES {
            let theirs = proc.join("ns").join(name);
            let ino =
                |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            if ino(&theirs).map_err(gone)?
                == ino(&Path::new("/proc/self/ns").join(name)).map_err(gone)?
            {
                continue;
            }
            namespaces.push((File::open(&theirs).map_err(gone)?, *flag));
        }
        let root = File::open(proc.join("root")).map_err(gone)?;
        let cgroup = std::fs::read_to_string(proc.join("cgroup")).map_err(gone)?;
        let (cgroup_procs, unified) = cgroup_files(&cgroup, Path::new("/sys/fs/cgroup"));
        let unified = match unified {
            Some(dir) => Some(File::open(&dir).map_err(gone)?),
            None => None,
        };
        Ok(Target {
            namespaces,
            root,
            cgroup_procs,
            unified,
        })
    }
}

/// The started process: its host pid and, with a terminal, the pty master.
pub struct Spawned {
    pub pid: i32,
    pub pty_master: Option<File>,
}

fn pipe_cloexec() -> Result<(File, File), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    Ok((File::from(r), File::from(w)))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Starts the process in `target`. `stdio` (stdin, stdout, stderr) when there
/// is no terminal; with one, a pty is opened inside the container (its own
/// devpts, as runc does) and its master returned. Err is Docker's message.
pub fn spawn(
    plan: &ExecPlan,
    target: &Target,
    stdio: Option<[RawFd; 3]>,
) -> Result<Spawned, String> {
    let (mut err_r, err_w) = pipe_cloexec()?;
    let (sock_parent, sock_child) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("cannot create a socket pair: {e}"))?;
    // Children are born in the container's pid namespace (this process stays
    // in its own), so one fork suffices: no intermediate process.
    for (f, flag) in &target.namespaces {
        // SAFETY: setns with an open namespace fd; CLONE_NEWPID only changes
        // the namespace of our future children.
        if *flag == libc::CLONE_NEWPID && unsafe { libc::setns(f.as_raw_fd(), *flag) } != 0 {
            return Err(format!(
                "cannot join the container's pid namespace: {}",
                errno()
            ));
        }
    }
    match fork_into(target.unified.as_ref()) {
        -1 => Err(format!("cannot fork in the container: {}", errno())),
        0 => {
            drop(err_r);
            drop(sock_parent);
            let code = child(plan, target, stdio, &err_w, &sock_child);
            // SAFETY: leaving the forked child without unwinding or atexit.
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(err_w);
            drop(sock_child);
            // EOF when the process has exec'd (the pipe is close-on-exec), or
            // why it could not; a child that failed is reaped by the shim.
            let mut err = String::new();
            let _ = err_r.read_to_string(&mut err);
            if !err.is_empty() {
                return Err(err);
            }
            let pty_master = if plan.tty {
                Some(receive_fd(&sock_parent)?)
            } else {
                None
            };
            Ok(Spawned { pid, pty_master })
        }
    }
}

/// The forked process before `execve`: joins the v1 cgroups and the other
/// namespaces, then becomes the exec's program. Returns only on failure.
fn child(
    plan: &ExecPlan,
    target: &Target,
    stdio: Option<[RawFd; 3]>,
    err_w: &File,
    sock: &std::os::unix::net::UnixStream,
) -> i32 {
    let fail = |code: i32, msg: String| {
        let _ = (&*err_w).write_all(msg.as_bytes());
        code
    };
    // Not dumpable: processes in the container cannot open our /proc entries
    // (the host binary behind /proc/<pid>/exe) while we are in their namespaces.
    // SAFETY: prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    for f in &target.cgroup_procs {
        if let Err(e) = std::fs::write(f, b"0") {
            return fail(1, format!("cannot join the container's cgroup: {e}"));
        }
    }
    for (f, flag) in &target.namespaces {
        if *flag == libc::CLONE_NEWPID {
            continue;
        }
        // SAFETY: setns with an open namespace fd.
        if unsafe { libc::setns(f.as_raw_fd(), *flag) } != 0 {
            return fail(
                1,
                format!("cannot join the container's namespaces: {}", errno()),
            );
        }
    }
    match exec_child(plan, target, stdio, sock) {
        Ok(never) => match never {},
        Err((code, msg)) => fail(code, msg),
    }
}

/// Forks, the child born in the v2 cgroup `unified` (clone3 with
/// CLONE_INTO_CGROUP); where the kernel cannot, forks and moves the child.
fn fork_into(unified: Option<&File>) -> libc::pid_t {
    let Some(dir) = unified else {
        // SAFETY: single-threaded process.
        return unsafe { libc::fork() };
    };
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let args = CloneArgs {
        // CLONE_INTO_CGROUP (libc's c_int constant overflows).
        flags: 0x2_0000_0000,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM or a stack behaves as fork; single-threaded.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    } as libc::pid_t;
    if pid >= 0 {
        return pid;
    }
    // SAFETY: single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Through the directory fd: our mount namespace is the container's now.
        // SAFETY: openat relative to an open directory fd.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c"cgroup.procs".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        // SAFETY: writing to the fd we just opened.
        let ok = fd >= 0 && unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } == 1;
        if !ok {
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(126) };
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
    }
    pid
}

/// The real process: root, terminal or pipes, limits, ids, capabilities,
/// working dir, exec. Returns only on failure: (exit code, message).
fn exec_child(
    plan: &ExecPlan,
    target: &Target,
    stdio: Option<[RawFd; 3]>,
    sock: &std::os::unix::net::UnixStream,
) -> Result<std::convert::Infallible, (i32, String)> {
    let fail = |what: &str| (126, format!("{what}: {}", errno()));
    // SAFETY: plain syscalls on our own process and fds.
    unsafe {
        if libc::fchdir(target.root.as_raw_fd()) != 0 || libc::chroot(c".".as_ptr()) != 0 {
            return Err(fail("cannot enter the container's root"));
        }
        libc::setsid();
        match stdio {
            Some(fds) => {
                for (i, fd) in fds.into_iter().enumerate() {
                    if libc::dup2(fd, i as RawFd) < 0 {
                        return Err(fail("cannot set up stdio"));
                    }
                }
            }
            None => {
                let master = libc::open(
                    c"/dev/ptmx".as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                );
                if master < 0 {
                    return Err(fail("cannot open the container's /dev/ptmx"));
                }
                let unlock: libc::c_int = 0;
                let slave = if libc::ioctl(master, libc::TIOCSPTLCK, &unlock) == 0 {
                    libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY)
                } else {
                    -1
                };
                if slave < 0 {
                    return Err(fail("cannot open the terminal"));
                }
                send_fd(sock, master)
                    .map_err(|e| (126, format!("cannot pass the terminal: {e}")))?;
                libc::close(master);
                for i in 0..3 {
                    libc::dup2(slave, i);
                }
                libc::close(slave);
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
        }
        // Undo the shim's own signal setup: SIGCHLD blocked, SIGPIPE ignored.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        for &(res, soft, hard) in &plan.rlimits {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(res, &lim) != 0 {
                return Err(fail("cannot set rlimits"));
            }
        }
        // Seccomp needs CAP_SYS_ADMIN or no_new_privs to install: without
        // no_new_privs, before the capabilities are dropped (what runc does);
        // the profile allows every call made from here to execve.
        let seccomp = |when: bool| match &plan.seccomp {
            Some(f) if when => f
                .install()
                .map_err(|e| (126, format!("cannot apply seccomp: {e}"))),
            _ => Ok(()),
        };
        seccomp(!plan.no_new_privs)?;
        set_ids_and_caps(plan)?;
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(fail("cannot set no_new_privs"));
        }
        seccomp(plan.no_new_privs)?;
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            let e = errno();
            return Err((
                126,
                format!(
                    "exec failed: unable to start container process: chdir to cwd ({:?}) set in config.json failed: {}",
                    plan.cwd.to_string_lossy(),
                    io_text(&e)
                ),
            ));
        }
        let prog = find_program(plan)?;
        let mut argv: Vec<*const libc::c_char> = plan.args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = plan.env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // Nothing of the shim's may leak into the container.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
        let e = errno();
        let code = if e.raw_os_error() == Some(libc::ENOENT) {
            127
        } else {
            126
        };
        Err((
            code,
            format!(
                "exec failed: unable to start container process: exec: {:?}: {}",
                prog.to_string_lossy(),
                io_text(&e)
            ),
        ))
    }
}

/// Groups, gid, uid, then the capability sets (kept across setuid).
///
/// # Safety
/// Only in the forked child about to exec.
unsafe fn set_ids_and_caps(plan: &ExecPlan) -> Result<(), (i32, String)> {
    let fail = |what: &str| (126, format!("{what}: {}", errno()));
    // SAFETY: syscalls on our own credentials.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(fail("cannot keep capabilities"));
        }
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(40);
        for cap in 0..=last.min(63) {
            if plan.caps.bounding & (1 << cap) == 0 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
        }
        let groups: Vec<libc::gid_t> = plan.groups.clone();
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(fail("cannot set groups"));
        }
        if libc::setresgid(plan.gid, plan.gid, plan.gid) != 0 {
            return Err(fail("cannot set gid"));
        }
        if libc::setresuid(plan.uid, plan.uid, plan.uid) != 0 {
            return Err(fail("cannot set uid"));
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let c = plan.caps;
        let split = |m: u64| [m as u32, (m >> 32) as u32];
        let (e, p, i) = (split(c.effective), split(c.permitted), split(c.inheritable));
        let data = [
            Data {
                effective: e[0],
                permitted: p[0],
                inheritable: i[0],
            },
            Data {
                effective: e[1],
                permitted: p[1],
                inheritable: i[1],
            },
        ];
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(fail("cannot set capabilities"));
        }
        for cap in 0..64u64 {
            if c.ambient & (1 << cap) != 0 {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                );
            }
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    Ok(())
}

/// The program to exec: as given if it has a slash, else the first executable
/// match in `$PATH` (Go's LookPath, as runc reports it).
fn find_program(plan: &ExecPlan) -> Result<CString, (i32, String)> {
    let arg0 = plan.args[0].as_bytes();
    let name = String::from_utf8_lossy(arg0).into_owned();
    if arg0.contains(&b'/') {
        return match std::fs::metadata(std::ffi::OsStr::from_bytes(arg0)) {
            Ok(_) => Ok(plan.args[0].clone()),
            Err(e) => Err((
                if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                },
                format!(
                    "exec failed: unable to start container process: exec: {name:?}: stat {name}: {}",
                    io_text(&e)
                ),
            )),
        };
    }
    for dir in &plan.path {
        let mut p = dir.clone();
        p.push(b'/');
        p.extend_from_slice(arg0);
        let Ok(c) = CString::new(p) else { continue };
        let is_file =
            std::fs::metadata(std::ffi::OsStr::from_bytes(c.as_bytes())).is_ok_and(|m| m.is_file());
        // SAFETY: access() on a valid C string.
        if is_file && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(c);
        }
    }
    Err((
        127,
        format!(
            "exec failed: unable to start container process: exec: {name:?}: executable file not found in $PATH"
        ),
    ))
}

/// Go's wording of an errno ("no such file or directory").
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s);
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn send_fd(sock: &std::os::unix::net::UnixStream, fd: RawFd) -> std::io::Result<()> {
    let iov = [std::io::IoSlice::new(b"t")];
    let fds = [fd];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map(|_| ())
    .map_err(std::io::Error::from)
}

/// Receives one fd passed over `sock` (SCM_RIGHTS), as runc and our exec
/// child send a terminal's master.
pub fn receive_fd(sock: &std::os::unix::net::UnixStream) -> Result<File, String> {
    // runc sends the terminal's name as the data part.
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the terminal: {e}"))?;
    for c in msg
        .cmsgs()
        .map_err(|e| format!("receiving the terminal: {e}"))?
    {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just gave us this fd; we own it.
            return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Err("the exec process sent no terminal".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plan_from_an_oci_process() {
        let p = json!({
            "terminal": true, "args": ["sh", "-c", "id"], "cwd": "/srv",
            "env": ["PATH=/usr/bin:/bin", "A=1"],
            "user": {"uid": 33, "gid": 44, "additionalGids": [1, 2]},
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
            "noNewPrivileges": true,
        });
        let plan = ExecPlan::from_process(&p).unwrap();
        assert_eq!(plan.args.len(), 3);
        assert_eq!(plan.cwd.as_bytes(), b"/srv");
        assert_eq!((plan.uid, plan.gid), (33, 44));
        assert_eq!(plan.groups, [1, 2]);
        assert_eq!(plan.caps.bounding, 1 | 1 << 5);
        assert_eq!(plan.caps.effective, 1 << 5);
        assert_eq!(plan.caps.ambient, 0);
        assert_eq!(plan.rlimits, [(libc::RLIMIT_NOFILE, 1024, 4096)]);
        assert!(plan.no_new_privs && plan.tty);
        assert_eq!(plan.path, [b"/usr/bin".to_vec(), b"/bin".to_vec()]);
    }

    #[test]
    fn plan_refuses_what_it_cannot_apply() {
        let base = json!({"args": ["true"]});
        assert!(ExecPlan::from_process(&base).is_ok());
        for bad in [
            json!({"args": []}),
            json!({"args": ["true"], "cwd": "rel"}),
            json!({"args": ["true"], "capabilities": {"bounding": ["CAP_BOGUS"]}}),
            json!({"args": ["true"], "rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}),
            json!({"args": ["true"], "apparmorProfile": "docker-default"}),
            json!({"args": ["a\u{0}b"]}),
            json!({"args": ["true"], "user": {"uid": -1}}),
        ] {
            assert!(ExecPlan::from_process(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cgroup_files_follow_the_hierarchies() {
        let base = tempfile::tempdir().unwrap();
        for d in ["cpu,cpuacct/a/b", "systemd/a/b", "unified/a/b"] {
            std::fs::create_dir_all(base.path().join(d)).unwrap();
            std::fs::write(base.path().join(d).join("cgroup.procs"), "").unwrap();
            if d != "unified/a/b" {
                std::fs::write(base.path().join(d).join("tasks"), "").unwrap();
            }
        }
        let lines = "3:cpu,cpuacct:/a/b\n2:name=systemd:/a/b\n1:memory:/a/b\n0::/a/b\n";
        let (files, unified) = cgroup_files(lines, base.path());
        assert_eq!(unified, Some(base.path().join("unified/a/b")));
        let rel: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(base.path()).unwrap().display().to_string())
            .collect();
        // memory is not mounted in this fake tree: skipped; v2 is entered at fork.
        assert_eq!(rel, ["cpu,cpuacct/a/b/tasks", "systemd/a/b/tasks"]);
    }

    #[test]
    fn errno_text_reads_like_go() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(io_text(&e), "no such file or directory");
    }
}
