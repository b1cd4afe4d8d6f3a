//! Reads of files a container controls (its rootfs, its upper dir), done by
//! the agent as host root. Everything in there is hostile: a name may be
//! swapped for a symlink, a FIFO (an open blocks forever) or a device node
//! (an open has side effects, a read streams the server's disk) between two
//! system calls. So a file is opened once as `O_PATH` (no open of the object
//! itself happens), judged by `fstat` of that descriptor, and only a regular
//! file is re-opened for reading — through the descriptor (`/proc/self/fd`),
//! which names the same inode, never by its name again — and read no further
//! than a cap.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// Why a file of the container was not read.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    #[error("{0} is not a regular file")]
    NotRegular(String),
    #[error("{path} is larger than {cap} bytes")]
    TooLarge { path: String, cap: u64 },
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

/// `fstat` of a descriptor (an `O_PATH` one too).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and an out-pointer to a stat.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `name` in `dir`, not followed if it is a symlink, as an `O_PATH`
/// descriptor: nothing of the object is opened yet.
pub fn path_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid dir fd and NUL-terminated name; the kernel returns a new
    // fd we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens for reading the regular file an `O_PATH` descriptor names (the same
/// inode: a rename or swap of its name meanwhile changes nothing). `st` is
/// that descriptor's `fstat`; anything but a regular file is refused.
pub fn reopen_regular(fd: &OwnedFd, st: &libc::stat, what: &str) -> Result<File, ConfinedError> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(ConfinedError::NotRegular(what.to_string()));
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = nix::fcntl::open(
        Path::new(&path),
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ConfinedError::Io(format!("opening {what}"), e.into()))?;
    Ok(File::from(file))
}

/// The contents of `path` (absolute, as the container sees it) in `root`,
/// resolved inside it (`RESOLVE_IN_ROOT`: symlinks and `..` never leave it),
/// if it is a regular file of at most `cap` bytes. A missing file (or a
/// missing directory on the way) is `None`.
pub fn read_file_in_root(
    root: &Path,
    path: &str,
    cap: u64,
) -> Result<Option<Vec<u8>>, ConfinedError> {
    let io_err = |e: io::Error| ConfinedError::Io(format!("reading {path}"), e);
    let Some(fd) = path_in_root(root, path, OFlag::empty()).map_err(io_err)? else {
        return Ok(None);
    };
    let st = fstat(fd.as_fd()).map_err(io_err)?;
    let file = reopen_regular(&fd, &st, path)?;
    if st.st_size as u64 > cap {
        return Err(ConfinedError::TooLarge {
            path: path.to_string(),
            cap,
        });
    }
    let mut out = Vec::with_capacity(st.st_size.max(0) as usize);
    // The file may grow meanwhile: never past the cap.
    file.take(cap + 1).read_to_end(&mut out).map_err(io_err)?;
    if out.len() as u64 > cap {
        return Err(ConfinedError::TooLarge {
            path: path.to_string(),
            cap,
        });
    }
    Ok(Some(out))
}

/// `path` (absolute, as the container sees it) in `root`, resolved inside
/// it (`RESOLVE_IN_ROOT`: symlinks and `..` never leave it), as an `O_PATH`
/// descriptor (with `O_DIRECTORY` in `flags`: only a directory). None when
/// it (or a directory on the way) is missing.
pub fn path_in_root(root: &Path, path: &str, flags: OFlag) -> io::Result<Option<OwnedFd>> {
    let root_fd = open_root(root)?;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root_fd.as_fd(), OsStr::new(rel), how) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The directory `path` (absolute, as the container sees it) in `root`,
/// made where missing (mode 0755, like `mkdir -p`), as an `O_PATH`
/// descriptor, and whether its last component was made here. Every step is
/// resolved inside the root, and a directory made here is opened by its
/// name in the descriptor of its parent without following a symlink: a name
/// the container swaps meanwhile is refused, never followed out of the root.
pub fn mkdir_all_in_root(root: &Path, path: &str) -> io::Result<(OwnedFd, bool)> {
    let root_fd = open_root(root)?;
    let mut cur = root_fd.try_clone()?;
    let mut made = false;
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let prefix = parts[..=i].join("/");
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match openat2(root_fd.as_fd(), OsStr::new(&prefix), how) {
            Ok(fd) => {
                cur = fd;
                made = false;
            }
            Err(nix::Error::ENOENT) => {
                let name = std::ffi::CString::new(*part)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                // SAFETY: a valid dir fd and a NUL-terminated name.
                if unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: as above; the kernel returns a new fd we own.
                let fd = unsafe {
                    libc::openat(
                        cur.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh fd from the kernel.
                cur = unsafe { OwnedFd::from_raw_fd(fd) };
                made = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((cur, made))
}

/// `fchownat(fd, "", AT_EMPTY_PATH)`: the owner of what an (`O_PATH`)
/// descriptor names, never of whatever bears its name now.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a valid fd and an empty NUL-terminated path with AT_EMPTY_PATH.
    let r = unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_regular_files_inside_the_root_are_read() {
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::write(host.path().join("secret"), "host secret\n").expect("secret");
        let root = host.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::write(root.join("etc/ok"), "inside\n").expect("ok");
        assert_eq!(
            read_file_in_root(&root, "/etc/ok", 100).expect("read"),
            Some(b"inside\n".to_vec())
        );
        // Positive control: the secret is readable from the host side.
        assert!(std::fs::read(host.path().join("secret")).is_ok());
        std::os::unix::fs::symlink("../../secret", root.join("etc/up")).expect("link");
        std::os::unix::fs::symlink(host.path().join("secret"), root.join("etc/abs")).expect("link");
        // Both resolve inside the root, where there is no secret.
        assert!(
            read_file_in_root(&root, "/etc/up", 100)
                .expect("up")
                .is_none()
        );
        assert!(
            read_file_in_root(&root, "/etc/abs", 100)
                .expect("abs")
                .is_none()
        );
        assert!(
            read_file_in_root(&root, "/etc/missing", 100)
                .expect("missing")
                .is_none()
        );
        assert!(
            read_file_in_root(&root, "/etc/ok/below", 100)
                .expect("notdir")
                .is_none()
        );

        let fifo = std::ffi::CString::new(root.join("etc/fifo").as_os_str().as_encoded_bytes())
            .expect("path");
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            read_file_in_root(&root, "/etc/fifo", 100),
            Err(ConfinedError::NotRegular(p)) if p == "/etc/fifo"
        ));
        let zero = std::ffi::CString::new(root.join("etc/zero").as_os_str().as_encoded_bytes())
            .expect("path");
        // SAFETY: mknod with a valid path (/dev/zero's numbers; we are root).
        assert_eq!(
            unsafe { libc::mknod(zero.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) },
            0
        );
        assert!(matches!(
            read_file_in_root(&root, "/etc/zero", 100),
            Err(ConfinedError::NotRegular(_))
        ));
        assert!(matches!(
            read_file_in_root(&root, "/etc/ok", 3),
            Err(ConfinedError::TooLarge { cap: 3, .. })
        ));
    }

    #[test]
    fn directories_are_made_inside_the_root() {
        let host = tempfile::tempdir().expect("tempdir");
        let root = host.path().join("rootfs");
        std::fs::create_dir_all(root.join("srv")).expect("srv");
        let (_, made) = mkdir_all_in_root(&root, "/srv/app/./data").expect("mkdir");
        assert!(made);
        assert!(root.join("srv/app/data").is_dir());
        let (_, made) = mkdir_all_in_root(&root, "/srv/app").expect("again");
        assert!(!made);
        // Links lead inside the root, whatever they say.
        std::os::unix::fs::symlink(host.path(), root.join("up")).expect("link");
        std::os::unix::fs::symlink("../../..", root.join("srv/dotdot")).expect("link");
        // Dangling inside the root: refused, and nothing is made outside.
        let e = mkdir_all_in_root(&root, "/up/escaped").expect_err("dangling");
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
        assert!(!host.path().join("escaped").exists());
        let inside = root.join(host.path().strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(&inside).expect("target inside");
        let (fd, made) = mkdir_all_in_root(&root, "/up/escaped").expect("abs link");
        assert!(made);
        assert!(!host.path().join("escaped").exists());
        let st = fstat(fd.as_fd()).expect("fstat");
        let md = std::fs::metadata(inside.join("escaped")).expect("made inside");
        assert_eq!(st.st_ino, md.ino());
        mkdir_all_in_root(&root, "/srv/dotdot/top").expect("dotdot");
        assert!(root.join("top").is_dir() && !host.path().join("top").exists());
        // A file on the way is not a directory.
        std::fs::write(root.join("file"), "").expect("file");
        let e = mkdir_all_in_root(&root, "/file/x").expect_err("file");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "{e}");
        // The owner changes through the descriptor.
        chown_fd(fd.as_fd(), 1234, 5678).expect("chown");
        let md = std::fs::metadata(inside.join("escaped")).expect("made inside");
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    }
}
