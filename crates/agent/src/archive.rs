//! Files of a container for `docker cp`, `export` and `diff`, read and written
//! from the host side of its root filesystem — which its processes control. A
//! symlink in there may point anywhere ("/etc" is the *host's* /etc from out
//! here), so every lookup goes through `openat2(RESOLVE_IN_ROOT)` (symlinks
//! resolve as if the rootfs were `/`), every descent uses `O_NOFOLLOW`, and
//! every file is created relative to a directory fd. Nothing here follows a
//! path string through the container's tree.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use agent_client::{IdMap, container_id, host_id};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use crate::confined::{fstat, path_at, reopen_regular};
use serde::Serialize;

/// Errors a user can act on; the agent maps them to 404/400.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// A write to a read-only root filesystem.
    #[error("container rootfs is marked read-only")]
    RootReadOnly,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Docker's `X-Docker-Container-Path-Stat` (mode in Go's `os.FileMode` bits).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    pub mode: u32,
    pub mtime: String,
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_DEVICE: u32 = 1 << 26;
const GO_PIPE: u32 = 1 << 25;
const GO_SOCKET: u32 = 1 << 24;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_CHARDEV: u32 = 1 << 21;
const GO_STICKY: u32 = 1 << 20;

/// A unix mode as Go's FileMode.
pub fn go_mode(mode: u32) -> u32 {
    let mut m = mode & 0o777;
    match mode & libc::S_IFMT {
        libc::S_IFDIR => m |= GO_DIR,
        libc::S_IFLNK => m |= GO_SYMLINK,
        libc::S_IFIFO => m |= GO_PIPE,
        libc::S_IFSOCK => m |= GO_SOCKET,
        libc::S_IFCHR => m |= GO_DEVICE | GO_CHARDEV,
        libc::S_IFBLK => m |= GO_DEVICE,
        _ => {}
    }
    if mode & libc::S_ISUID != 0 {
        m |= GO_SETUID;
    }
    if mode & libc::S_ISGID != 0 {
        m |= GO_SETGID;
    }
    if mode & libc::S_ISVTX != 0 {
        m |= GO_STICKY;
    }
    m
}

/// Clean components as the absolute path the container sees.
fn container_path(comps: &[CString]) -> PathBuf {
    comps.iter().fold(PathBuf::from("/"), |p, c| {
        p.join(OsStr::from_bytes(c.as_bytes()))
    })
}

/// A container path as clean components: `..` may not climb above `/`.
fn components(path: &str) -> Result<Vec<CString>, ArchiveError> {
    let mut out: Vec<CString> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(
                CString::new(n.as_bytes())
                    .map_err(|_| ArchiveError::Invalid("path contains a NUL byte".into()))?,
            ),
        }
    }
    Ok(out)
}

fn stat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dir fd, NUL-terminated name, out-pointer to a stat.
    let rc = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: valid dir fd and name; the kernel returns a new fd we own.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a fresh fd from the kernel.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn readlink_at(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buffer of the given length.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn rfc3339(secs: i64, nanos: i64) -> String {
    chrono::DateTime::from_timestamp(secs, nanos as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// How a tar is extracted into a container.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractOptions {
    /// Docker's `noOverwriteDirNonDir`.
    pub no_overwrite_dir_non_dir: bool,
    /// Owners from the tar (`cp -a`), else root.
    pub copy_uid_gid: bool,
    /// One owner for everything (a build's `COPY --chown`), in container ids.
    pub owner: Option<(u32, u32)>,
    /// Create the destination and its missing parents first (a build's `COPY`).
    pub mkdir: bool,
}

/// A container's root directory, opened once.
pub struct Root {
    fd: OwnedFd,
    /// The container's user-namespace mapping: owners in tars are its ids,
    /// on disk the host's.
    ids: Option<IdMap>,
}

/// A volume or bind mount of the container, as its processes see it at
/// `dest`: another tree, entered wherever a walk or a lookup reaches `dest`.
pub struct Mounted {
    /// Where the container sees it (a clean absolute path).
    dest: PathBuf,
    root: Root,
    read_only: bool,
}

/// A container's files as its processes see them: its root filesystem with
/// its volumes and bind mounts over it (Docker's `cp` view; `export` and
/// layers see the root filesystem alone).
pub struct View {
    own: Root,
    own_read_only: bool,
    /// Deepest first, so the first match is the innermost mount.
    mounts: Vec<Mounted>,
}

/// How a tree is written: as an image layer (whiteouts translated), with
/// which id mapping, and with which mounts entered.
#[derive(Clone, Copy)]
struct Walk<'a> {
    layer: bool,
    ids: Option<IdMap>,
    /// Directories above the one being walked.
    depth: usize,
    /// Mounts to enter, and the container directory tar paths are relative to.
    mounts: &'a [Mounted],
    at: &'a Path,
}

/// How deep the walks of a container's tree go. A tenant can nest
/// directories thousands deep; walking them recursively would exhaust the
/// thread's stack (aborting the whole process) and the agent's descriptors.
pub const MAX_TREE_DEPTH: usize = 256;

fn too_deep() -> io::Error {
    io::Error::other(format!(
        "the container's directories are nested deeper than {MAX_TREE_DEPTH} levels"
    ))
}

impl Root {
    pub fn open(rootfs: &Path, ids: Option<IdMap>) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd, ids })
    }

    /// The directory `comps` inside the root (symlinks resolved inside it).
    fn dir(&self, comps: &[CString]) -> Result<OwnedFd, ArchiveError> {
        let mut rel = Vec::new();
        for (i, c) in comps.iter().enumerate() {
            if i > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(c.as_bytes());
        }
        if rel.is_empty() {
            rel.push(b'.');
        }
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.fd.as_fd(), OsStr::from_bytes(&rel), how).map_err(|e| match e {
            nix::Error::ENOENT => {
                ArchiveError::NotFound(String::from_utf8_lossy(&rel).into_owned())
            }
            nix::Error::ENOTDIR => ArchiveError::Invalid("not a directory".into()),
            e => ArchiveError::Io(e.into()),
        })
    }

    /// Creates the directories of `comps` that are missing (0755, owned by
    /// `owner` in the container's ids), each relative to its parent's fd.
    fn mkdir_all(&self, comps: &[CString], owner: (u32, u32)) -> Result<(), ArchiveError> {
        for i in 1..=comps.len() {
            match self.dir(&comps[..i]) {
                Ok(_) => continue,
                Err(ArchiveError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let parent = self.dir(&comps[..i - 1])?;
            let name = &comps[i - 1];
            // SAFETY: mkdirat relative to our dir fd.
            check(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) })?;
            let made = open_at(
                parent.as_raw_fd(),
                name,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            let ids = self.ids.as_ref();
            // SAFETY: fchownat on our own descriptor (AT_EMPTY_PATH).
            check(unsafe {
                libc::fchownat(
                    made.as_raw_fd(),
                    c"".as_ptr(),
                    host_id(ids, owner.0),
                    host_id(ids, owner.1),
                    libc::AT_EMPTY_PATH,
                )
            })?;
        }
        Ok(())
    }

    /// (parent dir fd, final name); the root itself is (root, ".").
    fn locate(&self, comps: &[CString]) -> Result<(OwnedFd, CString), ArchiveError> {
        match comps.split_last() {
            Some((name, parent)) => Ok((self.dir(parent)?, name.clone())),
            None => Ok((self.dir(&[])?, c".".to_owned())),
        }
    }

    /// `stat` of a path, the final component not followed (Docker's HEAD).
    pub fn stat(&self, path: &str) -> Result<PathStat, ArchiveError> {
        self.stat_in(&components(path)?, path)
    }

    /// `stat` of `comps` in this tree, which the container sees as `shown`.
    fn stat_in(&self, comps: &[CString], shown: &str) -> Result<PathStat, ArchiveError> {
        let (dir, name) = self.locate(comps)?;
        let st = stat_at(dir.as_raw_fd(), &name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => ArchiveError::NotFound(shown.to_string()),
            _ => ArchiveError::Io(e),
        })?;
        let link_target = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            let t = readlink_at(dir.as_raw_fd(), &name)?;
            let t = String::from_utf8_lossy(&t).into_owned();
            if t.starts_with('/') {
                t
            } else {
                let parent = Path::new(shown).parent().unwrap_or(Path::new("/"));
                parent.join(t).to_string_lossy().into_owned()
            }
        } else {
            String::new()
        };
        let base = components(shown)?
            .last()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        Ok(PathStat {
            name: base,
            size: st.st_size,
            mode: go_mode(st.st_mode),
            mtime: rfc3339(st.st_mtime, st.st_mtime_nsec),
            link_target,
        })
    }

    fn walk(&self) -> Walk<'static> {
        Walk {
            layer: false,
            ids: self.ids,
            depth: 0,
            mounts: &[],
            at: Path::new("/"),
        }
    }

    /// A tar of `path` (its basename as the top entry), or of the root's
    /// contents with `path` = "/" (export).
    pub fn write_tar<W: Write>(&self, path: &str, w: W) -> Result<(), ArchiveError> {
        let comps = components(path)?;
        self.write_tar_at(&comps, &comps, path, w, self.walk())
    }

    /// A tar of `comps` in this tree, which the container sees at `seen`
    /// (`shown` as the client wrote it): the whole tree's contents when
    /// `seen` is its root, else `seen`'s basename as the top entry.
    fn write_tar_at<W: Write>(
        &self,
        comps: &[CString],
        seen: &[CString],
        shown: &str,
        w: W,
        walk: Walk<'_>,
    ) -> Result<(), ArchiveError> {
        let mut b = tar::Builder::new(w);
        b.mode(tar::HeaderMode::Complete);
        if seen.is_empty() {
            let root = self.dir(&[])?;
            let dir = open_at(
                root.as_raw_fd(),
                c".",
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?;
            add_children(&mut b, &dir, Path::new(""), walk)?;
        } else {
            let (dir, name) = self.locate(comps)?;
            if let Err(e) = stat_at(dir.as_raw_fd(), &name) {
                return Err(if e.raw_os_error() == Some(libc::ENOENT) {
                    ArchiveError::NotFound(shown.to_string())
                } else {
                    e.into()
                });
            }
            let top = seen.last().map_or_else(PathBuf::new, |n| {
                PathBuf::from(OsStr::from_bytes(n.as_bytes()))
            });
            add_entry(&mut b, &dir, &name, &top, walk)?;
        }
        b.into_inner()?.flush()?;
        Ok(())
    }

    /// Extracts a tar into the directory `dest`. Entries may not leave it;
    /// ownership is root's unless `copy_uid_gid` (Docker's `cp` vs `cp -a`).
    pub fn extract<R: Read>(
        &self,
        dest: &str,
        r: R,
        opts: &ExtractOptions,
    ) -> Result<(), ArchiveError> {
        self.extract_at(components(dest)?, r, opts)
    }

    /// [`Root::extract`] into the directory `base` of this tree.
    fn extract_at<R: Read>(
        &self,
        base: Vec<CString>,
        r: R,
        opts: &ExtractOptions,
    ) -> Result<(), ArchiveError> {
        let ExtractOptions {
            no_overwrite_dir_non_dir,
            copy_uid_gid,
            owner,
            mkdir,
        } = *opts;
        if mkdir {
            self.mkdir_all(&base, owner.unwrap_or((0, 0)))?;
        }
        // The destination must be a directory.
        self.dir(&base).map_err(|e| match e {
            ArchiveError::Invalid(_) => {
                ArchiveError::Invalid("extraction point is not a directory".into())
            }
            e => e,
        })?;
        let bad_tar = |e: io::Error| ArchiveError::Invalid(format!("invalid tar archive: {e}"));
        let mut ar = tar::Archive::new(r);
        for entry in ar.entries().map_err(bad_tar)? {
            let mut entry = entry.map_err(bad_tar)?;
            let raw = entry.path_bytes().into_owned();
            let mut rel = Vec::new();
            for c in Path::new(OsStr::from_bytes(&raw)).components() {
                match c {
                    Component::Normal(n) => rel.push(
                        CString::new(n.as_bytes())
                            .map_err(|_| ArchiveError::Invalid("NUL in a path".into()))?,
                    ),
                    Component::CurDir | Component::RootDir => {}
                    _ => {
                        return Err(ArchiveError::Invalid(format!(
                            "invalid path in archive: {}",
                            String::from_utf8_lossy(&raw)
                        )));
                    }
                }
            }
            let Some(name) = rel.pop() else { continue };
            let mut parent_path = base.clone();
            parent_path.extend(rel);
            let parent = self.dir(&parent_path)?;
            let pfd = parent.as_raw_fd();
            let h = entry.header().clone();
            let mode = h.mode().unwrap_or(0o644) & 0o7777;
            let existing = stat_at(pfd, &name).ok().map(|s| s.st_mode & libc::S_IFMT);
            let kind = h.entry_type();
            let is_dir = kind.is_dir();
            if let Some(t) = existing {
                if t == libc::S_IFDIR && !is_dir {
                    return Err(ArchiveError::Invalid(format!(
                        "cannot overwrite directory {:?} with non-directory",
                        name
                    )));
                }
                if t != libc::S_IFDIR && is_dir && no_overwrite_dir_non_dir {
                    return Err(ArchiveError::Invalid(format!(
                        "cannot overwrite non-directory {:?} with directory",
                        name
                    )));
                }
                if t != libc::S_IFDIR || !is_dir {
                    // SAFETY: unlinkat relative to our dir fd.
                    check(unsafe { libc::unlinkat(pfd, name.as_ptr(), 0) })?;
                }
            }
            let mut created: Option<OwnedFd> = None;
            match kind {
                tar::EntryType::Directory => {
                    if existing != Some(libc::S_IFDIR) {
                        // SAFETY: mkdirat relative to our dir fd.
                        check(unsafe { libc::mkdirat(pfd, name.as_ptr(), 0o700) })?;
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let fd = open_at(
                        pfd,
                        &name,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                        0o600,
                    )?;
                    let mut f = File::from(fd);
                    io::copy(&mut entry, &mut f)?;
                    created = Some(OwnedFd::from(f));
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| ArchiveError::Invalid("symlink without a target".into()))?;
                    let target = CString::new(target.into_owned())
                        .map_err(|_| ArchiveError::Invalid("NUL in a link".into()))?;
                    // SAFETY: symlinkat relative to our dir fd.
                    check(unsafe { libc::symlinkat(target.as_ptr(), pfd, name.as_ptr()) })?;
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| ArchiveError::Invalid("hard link without a target".into()))?
                        .into_owned();
                    let mut tcomps = base.clone();
                    tcomps.extend(components(&String::from_utf8_lossy(&target))?);
                    let tname = tcomps
                        .pop()
                        .ok_or_else(|| ArchiveError::Invalid("bad hard link".into()))?;
                    let tdir = self.dir(&tcomps)?;
                    // SAFETY: linkat between our dir fds, no symlink following.
                    check(unsafe {
                        libc::linkat(tdir.as_raw_fd(), tname.as_ptr(), pfd, name.as_ptr(), 0)
                    })?;
                    continue;
                }
                tar::EntryType::Char | tar::EntryType::Block if self.ids.is_some() => {
                    // A tenant's root cannot make device nodes in its own
                    // container either (no CAP_MKNOD outside its namespace).
                    return Err(ArchiveError::Invalid(format!(
                        "device nodes cannot be copied into a container: {}",
                        String::from_utf8_lossy(&raw)
                    )));
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    let t = match kind {
                        tar::EntryType::Char => libc::S_IFCHR,
                        tar::EntryType::Block => libc::S_IFBLK,
                        _ => libc::S_IFIFO,
                    };
                    let dev = libc::makedev(
                        h.device_major().ok().flatten().unwrap_or(0),
                        h.device_minor().ok().flatten().unwrap_or(0),
                    );
                    // SAFETY: mknodat relative to our dir fd.
                    check(unsafe { libc::mknodat(pfd, name.as_ptr(), t | mode, dev) })?;
                }
                _ => continue,
            }
            let (uid, gid) = if let Some(o) = owner {
                o
            } else if copy_uid_gid {
                (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32)
            } else {
                (0, 0)
            };
            let ids = self.ids.as_ref();
            let (uid, gid) = (host_id(ids, uid), host_id(ids, gid));
            // Owner and mode go to what was just made, through a descriptor:
            // the container may have swapped the name for a symlink to a host
            // file meanwhile (a chmod by name would follow it).
            let made = match created {
                Some(fd) => fd,
                None => path_at(parent.as_fd(), &name)?,
            };
            let st = fstat(made.as_fd())?;
            let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
            if is_link != (kind == tar::EntryType::Symlink) {
                return Err(ArchiveError::Invalid(format!(
                    "{} changed while it was being copied",
                    String::from_utf8_lossy(&raw)
                )));
            }
            // SAFETY: fchownat on our own descriptor (AT_EMPTY_PATH: the
            // inode it names, a symlink itself included).
            check(unsafe {
                libc::fchownat(
                    made.as_raw_fd(),
                    c"".as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH,
                )
            })?;
            if !is_link {
                // chmod through the descriptor's /proc link reaches the very
                // inode it names (fchmod refuses O_PATH descriptors).
                let proc = CString::new(format!("/proc/self/fd/{}", made.as_raw_fd()))
                    .map_err(|_| ArchiveError::Invalid("NUL in a path".into()))?;
                // SAFETY: a NUL-terminated path.
                check(unsafe { libc::chmod(proc.as_ptr(), mode) })?;
            }
            let mtime = h.mtime().unwrap_or(0) as i64;
            let ts = [
                libc::timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                },
            ];
            // SAFETY: utimensat on our dir fd, not following a final symlink
            // (a swapped name only gets a time it could set itself).
            unsafe { libc::utimensat(pfd, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        }
        Ok(())
    }
}

impl View {
    /// The root filesystem alone (no mounts yet).
    pub fn new(own: Root, read_only: bool) -> View {
        View {
            own,
            own_read_only: read_only,
            mounts: Vec::new(),
        }
    }

    /// Adds a mount the container sees at `dest`; `source` is the server's
    /// directory behind it (a volume's data, an operator's bind), whose
    /// contents are the container's. A bind of a single file, or of a host
    /// path that has gone, is left out: only directories are entered.
    pub fn mount(&mut self, dest: &str, source: &Path, read_only: bool) -> io::Result<()> {
        let comps = components(dest).map_err(|e| io::Error::other(e.to_string()))?;
        if comps.is_empty() {
            return Ok(());
        }
        let root = match Root::open(source, self.own.ids) {
            Ok(r) => r,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENOENT)) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let dest = container_path(&comps);
        self.mounts.retain(|m| m.dest != dest);
        self.mounts.push(Mounted {
            dest,
            root,
            read_only,
        });
        self.mounts
            .sort_by_key(|m| std::cmp::Reverse(m.dest.components().count()));
        Ok(())
    }

    /// The tree that holds `comps`, how many of them lead to its root, and
    /// whether it is read-only.
    fn scope(&self, comps: &[CString]) -> (&Root, usize, bool) {
        let path = container_path(comps);
        for m in &self.mounts {
            if path.starts_with(&m.dest) {
                return (&m.root, m.dest.components().count() - 1, m.read_only);
            }
        }
        (&self.own, 0, self.own_read_only)
    }

    /// `stat` of a path as the container sees it.
    pub fn stat(&self, path: &str) -> Result<PathStat, ArchiveError> {
        let comps = components(path)?;
        let (root, skip, _) = self.scope(&comps);
        root.stat_in(&comps[skip..], path)
    }

    /// A tar of a path as the container sees it: what is mounted below it
    /// is entered (Docker's `cp` out of a container).
    pub fn write_tar<W: Write>(&self, path: &str, w: W) -> Result<(), ArchiveError> {
        let comps = components(path)?;
        let (root, skip, _) = self.scope(&comps);
        let parent = container_path(&comps[..comps.len().saturating_sub(1)]);
        let walk = Walk {
            mounts: &self.mounts,
            at: &parent,
            ..self.own.walk()
        };
        root.write_tar_at(&comps[skip..], &comps, path, w, walk)
    }

    /// Extracts a tar into the directory `dest` as the container sees it:
    /// into a volume or bind mount when `dest` is in one (Docker's `cp`
    /// into a container), refused where that is read-only.
    pub fn extract<R: Read>(
        &self,
        dest: &str,
        r: R,
        opts: &ExtractOptions,
    ) -> Result<(), ArchiveError> {
        let comps = components(dest)?;
        let (root, skip, read_only) = self.scope(&comps);
        if read_only {
            return Err(if skip == 0 {
                ArchiveError::RootReadOnly
            } else {
                ArchiveError::Invalid("mounted volume is marked read-only".into())
            });
        }
        root.extract_at(comps[skip..].to_vec(), r, opts)
    }
}

/// One entry (and, for a directory, what is below it), never following links.
fn add_entry<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    name: &CStr,
    path: &Path,
    walk: Walk<'_>,
) -> io::Result<()> {
    let layer = walk.layer;
    // One O_PATH descriptor for the entry, judged by its own fstat: the name
    // may be swapped for anything meanwhile (the container is running), but
    // the descriptor keeps naming what was judged.
    let fd = match path_at(dir.as_fd(), name) {
        Ok(fd) => fd,
        // Gone meanwhile (the container is running): skip it.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let st = fstat(fd.as_fd())?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(container_id(walk.ids.as_ref(), st.st_uid) as u64);
    h.set_gid(container_id(walk.ids.as_ref(), st.st_gid) as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    if layer {
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFCHR && st.st_rdev == 0 {
            // An overlay whiteout becomes the layer format's `.wh.NAME`.
            let mut wh = OsStr::from_bytes(b".wh.").to_os_string();
            wh.push(OsStr::from_bytes(name.to_bytes()));
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(0);
            h.set_mode(0o600);
            return b.append_data(&mut h, path.with_file_name(wh), io::empty());
        }
        if kind == libc::S_IFREG
            && st.st_size == 0
            && MOUNT_TARGETS.contains(&format!("/{}", path.display()).as_str())
        {
            return Ok(());
        }
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, path, io::empty())?;
            let sub = open_at(fd.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            if layer && is_opaque(&sub) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(0);
                h.set_mode(0o600);
                b.append_data(&mut h, path.join(".wh..wh..opq"), io::empty())?;
            }
            add_children(
                b,
                &sub,
                path,
                Walk {
                    depth: walk.depth + 1,
                    ..walk
                },
            )?;
        }
        libc::S_IFREG => {
            let what = path.display().to_string();
            let f = reopen_regular(&fd, &st, &what).map_err(io::Error::other)?;
            let size = st.st_size.max(0) as u64;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            // A file that changes size meanwhile still fills its declared
            // size, and no more.
            let data = f.take(size).chain(io::repeat(0)).take(size);
            b.append_data(&mut h, path, data)?;
        }
        libc::S_IFLNK => {
            // The link the descriptor names, not whatever the name is now.
            let target = readlink_at(fd.as_raw_fd(), c"")?;
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, path, Path::new(OsStr::from_bytes(&target)))?;
        }
        t @ (libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO) => {
            // Described, never opened.
            h.set_entry_type(match t {
                libc::S_IFCHR => tar::EntryType::Char,
                libc::S_IFBLK => tar::EntryType::Block,
                _ => tar::EntryType::Fifo,
            });
            h.set_device_major(libc::major(st.st_rdev))?;
            h.set_device_minor(libc::minor(st.st_rdev))?;
            b.append_data(&mut h, path, io::empty())?;
        }
        // Sockets are not archived (as in Docker).
        _ => {}
    }
    Ok(())
}

/// An overlay dir marked opaque (its lower contents hidden).
fn is_opaque(dir: &OwnedFd) -> bool {
    let mut v = [0u8; 4];
    // SAFETY: fgetxattr on our fd into a small buffer.
    let n = unsafe {
        libc::fgetxattr(
            dir.as_raw_fd(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

fn add_children<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    path: &Path,
    walk: Walk<'_>,
) -> io::Result<()> {
    if walk.depth > MAX_TREE_DEPTH {
        return Err(too_deep());
    }
    let dup = dir.try_clone()?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
    let mut names: Vec<CString> = d
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    // Mount points show even where the directory under them is missing (a
    // container that never ran has not had them made).
    let here = walk.at.join(path);
    for m in walk.mounts {
        if m.dest.parent() == Some(here.as_path())
            && let Some(n) = m.dest.file_name()
            && let Ok(n) = CString::new(n.as_bytes())
            && !names.contains(&n)
        {
            names.push(n);
        }
    }
    names.sort();
    for n in names {
        let child = path.join(OsStr::from_bytes(n.as_bytes()));
        let seen = walk.at.join(&child);
        match walk.mounts.iter().find(|m| m.dest == seen) {
            // The mount's own tree, under the mount point's name.
            Some(m) => add_entry(b, &m.root.fd, c".", &child, walk)?,
            None => add_entry(b, dir, &n, &child, walk)?,
        }
    }
    Ok(())
}

/// The container's changes (its overlay upper dir) as an image layer tar:
/// whiteouts and opaque dirs in the layer format, our bind-mount points left out.
pub fn write_layer<W: Write>(upper: &Path, w: W, ids: Option<IdMap>) -> io::Result<()> {
    let mut b = tar::Builder::new(w);
    b.mode(tar::HeaderMode::Complete);
    let root = OwnedFd::from(File::open(upper)?);
    let walk = Walk {
        layer: true,
        ids,
        depth: 0,
        mounts: &[],
        at: Path::new("/"),
    };
    add_children(&mut b, &root, Path::new(""), walk)?;
    b.into_inner()?.flush()
}

/// Docker's `diff` from a container's upper dir: whiteouts (0:0 char devices)
/// and opaque dirs are deletions, paths that exist in a lower layer are
/// modifications, the rest additions. Kinds: 0 modified, 1 added, 2 deleted.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> io::Result<Vec<(String, u8)>> {
    let mut out = Vec::new();
    let root = File::open(upper)?;
    walk_upper(&OwnedFd::from(root), Path::new("/"), lowers, &mut out, 0)?;
    // The mount points of the files we bind in are ours, not the container's;
    // a directory "changed" only because of them is not a change either.
    out.retain(|(p, _)| !MOUNT_TARGETS.contains(&p.as_str()));
    let all: Vec<String> = out.iter().map(|(p, _)| p.clone()).collect();
    out.retain(|(p, k)| {
        *k != 0
            || !MOUNT_TARGETS
                .iter()
                .any(|t| t.starts_with(&format!("{p}/")))
            || all.iter().any(|q| q.starts_with(&format!("{p}/")))
    });
    out.sort();
    Ok(out)
}

/// What a tree holds (a container's upper dir, a volume), as Docker's `SizeRw` counts it: the
/// sizes of everything but directories, a hard-linked file once. Bounded in
/// depth like every walk, and in entries (a tenant's million empty files
/// must not hold a server's thread): past [`MAX_SIZE_ENTRIES`] the count so
/// far is the answer.
pub fn tree_size(upper: &Path) -> io::Result<u64> {
    let root = OwnedFd::from(File::open(upper)?);
    let mut seen = std::collections::HashSet::new();
    let mut entries = 0usize;
    let mut total = 0u64;
    size_walk(&root, 0, &mut seen, &mut entries, &mut total)?;
    Ok(total)
}

/// The most entries [`tree_size`] looks at.
pub const MAX_SIZE_ENTRIES: usize = 1_000_000;

fn size_walk(
    dir: &OwnedFd,
    depth: usize,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    entries: &mut usize,
    total: &mut u64,
) -> io::Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(too_deep());
    }
    let mut d = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(io::Error::from)?;
    let names: Vec<CString> = d
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    drop(d);
    for n in names {
        *entries += 1;
        if *entries > MAX_SIZE_ENTRIES {
            return Ok(());
        }
        let Ok(st) = stat_at(dir.as_raw_fd(), &n) else {
            continue; // gone meanwhile
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let sub = open_at(
                dir.as_raw_fd(),
                &n,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            size_walk(&sub, depth + 1, seen, entries, total)?;
        } else if st.st_nlink <= 1 || seen.insert((st.st_dev, st.st_ino)) {
            *total += st.st_size.max(0) as u64;
        }
    }
    Ok(())
}

/// Files bind-mounted into every container (runc creates their mount points).
const MOUNT_TARGETS: &[&str] = &["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"];

fn in_lower(lowers: &[PathBuf], path: &Path) -> bool {
    let rel = path.strip_prefix("/").unwrap_or(path);
    lowers
        .iter()
        .any(|l| std::fs::symlink_metadata(l.join(rel)).is_ok())
}

fn walk_upper(
    dir: &OwnedFd,
    path: &Path,
    lowers: &[PathBuf],
    out: &mut Vec<(String, u8)>,
    depth: usize,
) -> io::Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(too_deep());
    }
    let dup = dir.try_clone()?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
    let names: Vec<CString> = d
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    for n in names {
        let child = path.join(OsStr::from_bytes(n.as_bytes()));
        let st = stat_at(dir.as_raw_fd(), &n)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFCHR && st.st_rdev == 0 {
            out.push((child.to_string_lossy().into_owned(), 2));
            continue;
        }
        let existed = in_lower(lowers, &child);
        out.push((
            child.to_string_lossy().into_owned(),
            if existed { 0 } else { 1 },
        ));
        if kind == libc::S_IFDIR {
            let sub = open_at(
                dir.as_raw_fd(),
                &n,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            walk_upper(&sub, &child, lowers, out, depth + 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_root_even_through_hostile_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/secret"), "container").unwrap();
        // Links that would escape if followed on the host.
        std::os::unix::fs::symlink(outside.path(), root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.path().join("up")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("etclink")).unwrap();
        let r = Root::open(root.path(), None).unwrap();
        // "/up/etc/secret" is the container's /etc/secret, not the host's.
        let mut tar = Vec::new();
        r.write_tar("/up/etc/secret", &mut tar).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "container");
        assert!(matches!(
            r.stat("/abs/secret"),
            Err(ArchiveError::NotFound(_))
        ));
        // Extracting through a link lands inside the root.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o640);
        b.append_data(&mut h, "new.txt", &b"abc"[..]).unwrap();
        let data = b.into_inner().unwrap();
        r.extract("/etclink", &data[..], &ExtractOptions::default())
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/new.txt")).unwrap(),
            "abc"
        );
        r.extract("/abs", &data[..], &ExtractOptions::default())
            .unwrap_err();
        assert!(!outside.path().join("new.txt").exists());
        // Entries climbing out are refused.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_path("x").unwrap();
        h.as_old_mut().name[..5].copy_from_slice(b"../zz");
        h.set_cksum();
        b.append(&h, &b"z"[..]).unwrap();
        let evil = b.into_inner().unwrap();
        assert!(matches!(
            r.extract("/etc", &evil[..], &ExtractOptions::default()),
            Err(ArchiveError::Invalid(_))
        ));
    }

    #[test]
    fn stat_reports_go_modes_and_link_targets() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::os::unix::fs::symlink("d", root.path().join("l")).unwrap();
        let r = Root::open(root.path(), None).unwrap();
        let d = r.stat("/d").unwrap();
        assert_eq!(d.mode & GO_DIR, GO_DIR);
        assert_eq!(d.name, "d");
        let l = r.stat("/l").unwrap();
        assert_eq!(l.mode & GO_SYMLINK, GO_SYMLINK);
        assert_eq!(l.link_target, "/d");
        assert!(matches!(r.stat("/nope"), Err(ArchiveError::NotFound(_))));
    }

    #[test]
    fn tree_size_counts_files_once_and_not_directories() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/f"), vec![0u8; 1000]).unwrap();
        std::fs::write(d.path().join("a/b/g"), vec![0u8; 24]).unwrap();
        std::fs::hard_link(d.path().join("a/f"), d.path().join("a/b/f2")).unwrap();
        std::os::unix::fs::symlink("f", d.path().join("a/l")).unwrap();
        assert_eq!(tree_size(d.path()).unwrap(), 1000 + 24 + 1);
    }

    #[test]
    fn changes_classify_upper_entries() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir(lower.path().join("etc")).unwrap();
        std::fs::write(lower.path().join("etc/passwd"), "x").unwrap();
        std::fs::write(lower.path().join("gone"), "x").unwrap();
        std::fs::create_dir(upper.path().join("etc")).unwrap();
        std::fs::write(upper.path().join("etc/passwd"), "y").unwrap();
        std::fs::write(upper.path().join("etc/new"), "y").unwrap();
        // A whiteout: a 0:0 character device.
        let c = CString::new(upper.path().join("gone").as_os_str().as_bytes()).unwrap();
        // SAFETY: mknod of a whiteout in a temp dir (we are root in tests).
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
        let got = changes(upper.path(), &[lower.path().to_path_buf()]).unwrap();
        assert_eq!(
            got,
            [
                ("/etc".to_string(), 0),
                ("/etc/new".to_string(), 1),
                ("/etc/passwd".to_string(), 0),
                ("/gone".to_string(), 2),
            ]
        );
    }
}
