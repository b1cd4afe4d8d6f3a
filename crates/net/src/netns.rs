//! Named network namespaces: a file bind-mounted from a namespace, so the namespace lives
//! without any process in it and runc can join it by path (OCI `linux.namespaces[].path`).

use crate::error::NetError;
use std::path::{Path, PathBuf};

pub trait NetnsOps: Send + Sync {
    /// Creates a fresh namespace pinned at `path`; a no-op if `path` already is one.
    fn create(&self, path: &Path) -> Result<(), NetError>;
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

impl NetnsOps for RealNetns {
    fn create(&self, path: &Path) -> Result<(), NetError> {
        if self.exists(path) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create directory"))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("create file"))?;
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
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| NetError::Netns {
                op: "bind mount",
                source: e.into(),
            })
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
        // A file may carry more than one mount if create raced with itself; peel them all.
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
