//! User namespaces of tenants' containers, on the host side: the idmapped
//! mounts that let every account share one unpacked copy of each image layer
//! (the kernel shifts ids at the mount; nothing is copied or chowned), and the
//! user namespaces those mounts are made with.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use agent_client::IdMap;

/// The owner of network namespaces made for `ids` (the net crate's form).
pub fn owner(ids: &IdMap) -> net::netns::UserNs {
    net::netns::UserNs {
        host_base: ids.host_base,
        size: ids.size,
    }
}

/// A user namespace mapped as `ids`, to make idmapped mounts with. One per
/// mapping for the agent's life: an open fd keeps the namespace alive.
pub fn mapping_fd(ids: &IdMap) -> std::io::Result<Arc<OwnedFd>> {
    static CACHE: OnceLock<Mutex<HashMap<IdMap, Arc<OwnedFd>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(fd) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(ids) {
        return Ok(fd.clone());
    }
    let holder = net::netns::NsHolder::spawn(0, owner(ids))?;
    let fd = Arc::new(OwnedFd::from(std::fs::File::open(holder.ns("user"))?));
    drop(holder);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(*ids, fd.clone());
    Ok(fd)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("NUL in a path"))
}

fn check(rc: libc::c_long) -> std::io::Result<libc::c_long> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Mounts `src` at `dst` with its ids shifted into `userns` (open_tree,
/// mount_setattr(MOUNT_ATTR_IDMAP), move_mount; kernel ≥ 5.12).
pub fn mount_idmapped(src: &Path, dst: &Path, userns: &OwnedFd) -> std::io::Result<()> {
    let (src, dst) = (cpath(src)?, cpath(dst)?);
    // SAFETY: plain syscalls with valid C strings and a struct of the
    // kernel's layout; the returned fd is owned below.
    unsafe {
        let fd = check(libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        ))?;
        let tree = OwnedFd::from_raw_fd(fd as i32);
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        check(libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ))?;
        check(libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ))?;
    }
    Ok(())
}

/// Lets others (a container's root in its user namespace is "others" to the
/// host) search `dir`, without listing it: runc reaches the rootfs and the
/// bind-mounted files through host paths as that user.
pub fn allow_search(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o001 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))?;
    }
    Ok(())
}

/// Makes `dir` (a container's or a volume's) private to the container:
/// root's, searchable by the container's root alone (through the group of
/// its id range; runc reaches the rootfs and bind-mount sources as that
/// user) and by nobody else on the server, who must never reach a tenant's
/// setuid binaries, device nodes or data. Without `ids` (the operator's
/// containers, host ids) root alone.
pub fn make_private(dir: &Path, ids: Option<&IdMap>) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (gid, mode) = match ids {
        Some(ids) => (ids.host_base, 0o710),
        None => (0, 0o700),
    };
    let md = std::fs::metadata(dir)?;
    if md.uid() != 0 || md.gid() != gid {
        std::os::unix::fs::chown(dir, Some(0), Some(gid))?;
    }
    if md.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The directories at and above `dir` that others cannot search: tenants'
/// containers cannot start below them.
pub fn unsearchable_ancestors(dir: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .filter(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(Path::to_path_buf)
        .collect()
}
