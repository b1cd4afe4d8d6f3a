//! The shim zygote: a small single-threaded process, forked from the atoll
//! binary before its async runtime starts, that forks shims on request.
//!
//! Why: every `docker run` and `docker exec` starts a shim. Exec'ing the atoll
//! binary again (kernel exec, dynamic loader, relocations) costs ~1 ms of the
//! ~6 ms atoll spends on a `docker exec`; forking this tiny process costs ~0.1 ms.
//! The agent itself cannot fork shims: it is multi-threaded (tokio), and only
//! async-signal-safe code may run in the child of a multi-threaded fork.
//!
//! Protocol: one SOCK_SEQPACKET message per shim, the shim's argv (NUL
//! separated) with the write end of the readiness pipe attached (SCM_RIGHTS).
//! The zygote's child runs the shim ([`crate::shim::run_shim`]) as `atoll shim`
//! does, minus its detaching fork; the readiness line arrives on the pipe as before. When the zygote is
//! missing or gone, [`spawn`] says so and the caller execs the binary instead.

use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};

use crate::shim::ShimArgs;

static ZYGOTE: OnceLock<Mutex<OwnedFd>> = OnceLock::new();

/// Largest argv the protocol carries (paths are bounded by PATH_MAX each).
const MAX_MESSAGE: usize = 64 * 1024;

/// Forks the zygote. Call once, from `main`, while the process is still
/// single-threaded; afterwards [`spawn`] uses it. The zygote dies with its parent.
pub fn start() -> std::io::Result<()> {
    let (parent, child) = socketpair(
        nix::sys::socket::AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let parent_pid = std::process::id();
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            drop(parent);
            // SAFETY: plain prctl; the check below closes the race with an
            // early parent death.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::prctl(libc::PR_SET_NAME, c"atoll-zygote".as_ptr());
            }
            if nix::unistd::getppid().as_raw() as u32 != parent_pid {
                // SAFETY: exiting the forked child without running destructors.
                unsafe { libc::_exit(0) };
            }
            // `atoll zygote up --data-dir …`: tells it apart from its parent in `ps`.
            let mut argv: Vec<String> = std::env::args().collect();
            argv.insert(1.min(argv.len()), "zygote".into());
            let layout = MmLayout::read();
            set_cmdline(&argv, layout);
            serve(child, layout)
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(child);
            let _ = ZYGOTE.set(Mutex::new(parent));
            Ok(())
        }
    }
}

/// Asks the zygote for a shim running `argv` (argv[0] is what `ps` shows as the
/// program), its stdout being `ready`. `None`: there is no zygote (or it is
/// gone); the caller should exec the binary.
pub fn spawn(argv: &[String], ready: &OwnedFd) -> Option<std::io::Result<()>> {
    let sock = ZYGOTE.get()?;
    let msg = argv.join("\0");
    if msg.len() > MAX_MESSAGE {
        return Some(Err(std::io::Error::other("shim arguments too long")));
    }
    let guard = sock.lock().unwrap_or_else(|p| p.into_inner());
    let fds = [ready.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    match sendmsg::<()>(
        guard.as_raw_fd(),
        &[IoSlice::new(msg.as_bytes())],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    ) {
        Ok(_) => Some(Ok(())),
        // The zygote died (killed by an operator, say): exec from now on.
        Err(_) => None,
    }
}

/// The zygote's loop: one fork per request; children are reaped by the kernel.
fn serve(sock: OwnedFd, layout: Option<MmLayout>) -> ! {
    // SAFETY: signal dispositions of this single-threaded process.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut cmsg_space = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                // SAFETY: exiting without destructors, as a forked child must.
                Err(_) => unsafe { libc::_exit(0) },
            };
            let mut fd = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for f in fds {
                            // SAFETY: received with SCM_RIGHTS: a fresh fd we own.
                            let owned = unsafe { OwnedFd::from_raw_fd(f) };
                            if fd.is_none() {
                                fd = Some(owned);
                            }
                        }
                    }
                }
            }
            (msg.bytes, fd)
        };
        // The agent closed its end: it is gone.
        if len == 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        let Some(ready) = fd else { continue };
        let argv: Vec<String> = String::from_utf8_lossy(&buf[..len])
            .split('\0')
            .map(str::to_string)
            .collect();
        // SAFETY: this process is single-threaded.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(sock);
                let code = become_shim(&argv, ready, layout);
                // SAFETY: as above.
                unsafe { libc::_exit(code) };
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => drop(ready),
            Err(e) => {
                let mut f = std::fs::File::from(ready);
                let _ = writeln!(f, "err cannot fork the shim: {e}");
            }
        }
    }
}

/// In the zygote's child: becomes `argv[0] shim <args>` and runs the shim.
fn become_shim(argv: &[String], ready: OwnedFd, layout: Option<MmLayout>) -> i32 {
    // SAFETY: dispositions and fd plumbing of this single-threaded child; the
    // shim waits for its own children, so SIGCHLD must not stay ignored.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::dup2(ready.as_raw_fd(), 1);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    drop(ready);
    // SAFETY: plain prctl. The name an exec'd shim has.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"atoll".as_ptr()) };
    set_cmdline(argv, layout);
    // No second fork (as `atoll shim` does): this process is the zygote's
    // child, which ignores SIGCHLD, so nobody has to reap it.
    match argv.get(2..).map(ShimArgs::parse) {
        Some(Ok(a)) => crate::shim::run_shim(a),
        Some(Err(e)) => {
            let _ = writeln!(std::io::stdout(), "err {e}");
            2
        }
        None => {
            let _ = writeln!(std::io::stdout(), "err shim arguments missing");
            2
        }
    }
}

/// The memory layout fields of `prctl_mm_map` that a cmdline change passes back
/// unchanged, read from /proc/self/stat once by the zygote: its children
/// inherit the same layout, so no shim start pays for reading it again.
#[derive(Clone, Copy)]
struct MmLayout {
    start_code: u64,
    end_code: u64,
    start_stack: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    env_start: u64,
    env_end: u64,
}

impl MmLayout {
    fn read() -> Option<MmLayout> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; field n is at index n - 3.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
        let l = MmLayout {
            start_code: field(26),
            end_code: field(27),
            start_stack: field(28),
            start_data: field(45),
            end_data: field(46),
            start_brk: field(47),
            env_start: field(50),
            env_end: field(51),
        };
        (l.start_code != 0 && l.env_end != 0).then_some(l)
    }
}

/// Points /proc/self/cmdline at `argv` so that `ps` and `pgrep -f` show
/// `atoll shim id=…` like an exec'd shim. PR_SET_MM_MAP (unlike the single-field
/// PR_SET_MM options) needs no CAP_SYS_RESOURCE; every other field is passed
/// back unchanged. Cosmetic: failure is ignored.
fn set_cmdline(argv: &[String], layout: Option<MmLayout>) {
    /// The kernel's `struct prctl_mm_map`.
    #[repr(C)]
    struct PrctlMmMap {
        start_code: u64,
        end_code: u64,
        start_data: u64,
        end_data: u64,
        start_brk: u64,
        brk: u64,
        start_stack: u64,
        arg_start: u64,
        arg_end: u64,
        env_start: u64,
        env_end: u64,
        auxv: u64,
        auxv_size: u32,
        exe_fd: u32,
    }
    let Some(l) = layout else {
        return;
    };
    let mut v = Vec::new();
    for a in argv {
        v.extend_from_slice(a.as_bytes());
        v.push(0);
    }
    let buf: &'static mut [u8] = v.leak();
    let start = buf.as_ptr() as u64;
    let map = PrctlMmMap {
        start_code: l.start_code,
        end_code: l.end_code,
        start_stack: l.start_stack,
        start_data: l.start_data,
        end_data: l.end_data,
        start_brk: l.start_brk,
        // SAFETY: sbrk(0) only reads the current program break.
        brk: unsafe { libc::sbrk(0) } as u64,
        arg_start: start,
        arg_end: start + buf.len() as u64,
        env_start: l.env_start,
        env_end: l.env_end,
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
    };
    // SAFETY: a complete prctl_mm_map of this process's own values; the new
    // argv buffer is leaked, so it stays valid for the process's life.
    unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP as libc::c_ulong,
            &map as *const PrctlMmMap as libc::c_ulong,
            std::mem::size_of::<PrctlMmMap>() as libc::c_ulong,
            0,
        );
    }
}
