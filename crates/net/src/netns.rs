//! Named network namespaces: a file bind-mounted from a namespace, so the namespace lives
//! without any process in it and runc can join it by path (OCI `linux.namespaces[].path`).

use crate::error::NetError;
use std::path::{Path, PathBuf};

/// A user namespace's id mapping (uids and gids alike): ids `0..size` inside
/// are host ids `host_base..host_base + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserNs {
    pub host_base: u32,
    pub size: u32,
}

/// Where the user namespace that owns the network namespace at `netns` is
/// pinned (beside it), for the container to join.
pub fn userns_pin(netns: &Path) -> PathBuf {
    let mut p = netns.as_os_str().to_os_string();
    p.push(".user");
    PathBuf::from(p)
}

pub trait NetnsOps: Send + Sync {
    /// Creates a fresh namespace pinned at `path`; a no-op if `path` already is one.
    /// With `owner`, the namespace belongs to a new user namespace mapped so,
    /// pinned at [`userns_pin`]: root in that user namespace (the container's)
    /// may then mount its own sysfs, which a host-owned one forbids.
    fn create(&self, path: &Path, owner: Option<UserNs>) -> Result<(), NetError>;
    /// Whether `path` is a pinned network namespace.
    fn exists(&self, path: &Path) -> bool;
    /// Unpins (unmounts) and deletes `path`; a no-op if it is gone.
    fn remove(&self, path: &Path) -> Result<(), NetError>;
    /// Every file in `dir` (the namespace files teardown must remove).
    fn list(&self, dir: &Path) -> Result<Vec<PathBuf>, NetError>;
}

pub struct RealNetns;

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
    move |source| NetError::Netns { op, source }
}

fn create_file(path: &Path) -> Result<(), NetError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create directory"))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io("create file"))?;
    Ok(())
}

fn bind(source: &Path, target: &Path) -> Result<(), NetError> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| NetError::Netns {
        op: "bind mount",
        source: e.into(),
    })
}

/// A child process in fresh namespaces (`flags`, a user namespace among them,
/// mapped as `map`), alive until dropped, so that its namespaces can be
/// opened or pinned through `/proc/<pid>/ns/`. Costs one fork (≈ 1 ms).
pub struct NsHolder {
    pid: libc::pid_t,
    /// Closing it lets the child exit.
    release: Option<std::fs::File>,
}

impl NsHolder {
    pub fn spawn(flags: libc::c_int, map: UserNs) -> std::io::Result<NsHolder> {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let pipe = || -> std::io::Result<(std::fs::File, std::fs::File)> {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            Ok((r.into(), w.into()))
        };
        let (mut ready_r, ready_w) = pipe()?;
        let (release_r, release_w) = pipe()?;
        // SAFETY: the child only makes async-signal-safe calls (unshare, write,
        // read, _exit), as required after fork in a multi-threaded process.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above; the fds are ours.
            unsafe {
                if libc::unshare(flags | libc::CLONE_NEWUSER) != 0 {
                    libc::_exit(1);
                }
                libc::write(ready_w.as_raw_fd(), b"r".as_ptr().cast(), 1);
                let mut b = 0u8;
                libc::close(release_w.as_raw_fd());
                libc::read(release_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        drop(ready_w);
        drop(release_r);
        let holder = NsHolder {
            pid,
            release: Some(release_w),
        };
        let mut b = [0u8; 1];
        if ready_r.read(&mut b)? != 1 {
            return Err(std::io::Error::other(
                "cannot create a user namespace (unshare failed)",
            ));
        }
        let line = format!("0 {} {}", map.host_base, map.size);
        for file in ["uid_map", "gid_map"] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/{file}"))?
                .write_all(line.as_bytes())?;
        }
        Ok(holder)
    }

    /// `/proc/<pid>/ns/<name>` of the holder.
    pub fn ns(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{name}", self.pid))
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        drop(self.release.take());
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
    }
}

impl RealNetns {
    /// A network namespace owned by a new user namespace, both pinned.
    fn create_owned(&self, path: &Path, owner: UserNs) -> Result<(), NetError> {
        let user = userns_pin(path);
        create_file(path)?;
        create_file(&user)?;
        let res = NsHolder::spawn(libc::CLONE_NEWNET, owner)
            .map_err(io("create user namespace"))
            .and_then(|h| {
                bind(&h.ns("user"), &user)?;
                bind(&h.ns("net"), path)
            });
        if res.is_err() {
            let _ = self.remove(path);
        }
        res
    }
}

/// Unmounts (every mount: create may have raced with itself) and deletes a pin.
fn unpin(path: &Path) -> Result<(), NetError> {
    for _ in 0..8 {
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                return Err(NetError::Netns {
                    op: "unmount",
                    source: e.into(),
                });
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::Netns {
            op: "remove file",
            source: e,
        }),
    }
}

impl NetnsOps for RealNetns {
    fn create(&self, path: &Path, owner: Option<UserNs>) -> Result<(), NetError> {
        if self.exists(path) {
            // Kept from an earlier run; it must be owned as asked.
            match owner {
                None => return Ok(()),
                Some(_) if self.exists(&userns_pin(path)) => return Ok(()),
                Some(_) => self.remove(path)?,
            }
        }
        if let Some(owner) = owner {
            return self.create_owned(path, owner);
        }
        create_file(path)?;
        let target = path.to_path_buf();
        // unshare(CLONE_NEWNET) moves only the calling thread, so do it in a thread of its
        // own that ends right after pinning the namespace; no runtime thread ever changes
        // namespace.
        let res = std::thread::spawn(move || -> Result<(), NetError> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetError::Netns {
                    op: "unshare",
                    source: e.into(),
                }
            })?;
            bind(Path::new("/proc/thread-self/ns/net"), &target)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Netns {
                op: "create",
                source: std::io::Error::other("namespace thread panicked"),
            })
        });
        if res.is_err() {
            let _ = std::fs::remove_file(path);
        }
        res
    }

    fn exists(&self, path: &Path) -> bool {
        nix::sys::statfs::statfs(path)
            .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
            .unwrap_or(false)
    }

    fn remove(&self, path: &Path) -> Result<(), NetError> {
        let user = userns_pin(path);
        if user.exists() {
            unpin(&user)?;
        }
        unpin(path)
    }

    fn list(&self, dir: &Path) -> Result<Vec<PathBuf>, NetError> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list")(e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io("list"))?;
            if ent.file_type().map(|t| !t.is_dir()).unwrap_or(false) {
                out.push(ent.path());
            }
        }
        out.sort();
        Ok(out)
    }
}
