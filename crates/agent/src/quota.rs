//! Disk limits of containers' writable layers. Where the agent's containers dir
//! is on btrfs, each container's `rw` dir (its overlay upper and work dirs) is
//! a subvolume with a quota-group limit of its package's disk: a container that
//! fills it gets EDQUOT ("Disk quota exceeded"), not the server's disk. Elsewhere
//! `rw` is a plain directory and the limit is not enforced (the agent says so
//! at start). Through ioctls, not the `btrfs` command.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub trait DiskQuota: Send + Sync {
    /// Creates `dir` (a new container's writable area) limited to `bytes`
    /// (0: no limit).
    fn create_limited(&self, dir: &Path, bytes: u64) -> std::io::Result<()>;
    /// Whether limits are enforced.
    fn enforced(&self) -> bool;
}

/// No enforcement: plain directories.
pub struct Unlimited;

impl DiskQuota for Unlimited {
    fn create_limited(&self, dir: &Path, _bytes: u64) -> std::io::Result<()> {
        std::fs::create_dir(dir)
    }
    fn enforced(&self) -> bool {
        false
    }
}

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940E;
const BTRFS_IOC_QUOTA_CTL: libc::c_ulong = 0xC010_9428;
const BTRFS_IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942B;
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

fn open_dir(p: &Path) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open(p)?))
}

fn ioctl<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is the struct of the kernel's layout for `req`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Quota groups on btrfs.
pub struct Btrfs;

impl Btrfs {
    /// Btrfs quotas for `dir` (turned on for its filesystem), or None when
    /// `dir` is not on btrfs or quotas cannot be turned on.
    pub fn for_dir(dir: &Path) -> std::io::Result<Option<Btrfs>> {
        let c = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: statfs into a zeroed struct.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if st.f_type as i64 != BTRFS_SUPER_MAGIC {
            return Ok(None);
        }
        let mut args = QuotaCtlArgs {
            cmd: BTRFS_QUOTA_CTL_ENABLE,
            status: 0,
        };
        // Enabling again when on is a no-op.
        match ioctl(&open_dir(dir)?, BTRFS_IOC_QUOTA_CTL, &mut args) {
            Ok(()) => Ok(Some(Btrfs)),
            Err(e) => {
                tracing::warn!("cannot turn on btrfs quotas for {}: {e}", dir.display());
                Ok(None)
            }
        }
    }
}

impl DiskQuota for Btrfs {
    fn create_limited(&self, dir: &Path, bytes: u64) -> std::io::Result<()> {
        let (parent, name) = match (dir.parent(), dir.file_name()) {
            (Some(p), Some(n)) if n.len() < 4088 => (p, n),
            _ => return Err(std::io::Error::other("bad subvolume path")),
        };
        let mut args = VolArgs {
            fd: 0,
            name: [0; 4088],
        };
        args.name[..name.len()].copy_from_slice(name.as_bytes());
        ioctl(&open_dir(parent)?, BTRFS_IOC_SUBVOL_CREATE, &mut args)?;
        if bytes > 0 {
            // qgroupid 0: the subvolume of the fd.
            let mut lim = QgroupLimitArgs {
                qgroupid: 0,
                flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
                max_rfer: bytes,
                max_excl: 0,
                rsv_rfer: 0,
                rsv_excl: 0,
            };
            if let Err(e) = ioctl(&open_dir(dir)?, BTRFS_IOC_QGROUP_LIMIT, &mut lim) {
                let _ = std::fs::remove_dir(dir);
                return Err(e);
            }
        }
        Ok(())
    }
    fn enforced(&self) -> bool {
        true
    }
}

/// The quota of the filesystem holding `dir`.
pub fn for_dir(dir: &Path) -> std::io::Result<Box<dyn DiskQuota>> {
    Ok(match Btrfs::for_dir(dir)? {
        Some(b) => Box::new(b),
        None => Box::new(Unlimited),
    })
}
