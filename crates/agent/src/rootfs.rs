//! The container's root filesystem: an overlayfs of the image layers (read-only
//! lower dirs from the layer cache) plus the container's own upper dir.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agent_client::IdMap;
use nix::mount::{MntFlags, MsFlags};

use crate::runc::RuntimeError;

/// The kernel takes mount data of at most one page.
const MAX_MOUNT_DATA: usize = 4095;

pub trait Mounter: Send + Sync {
    /// Mounts an overlay at `target`. `lowers` is top layer first (overlayfs's
    /// order); an image without layers gets an empty lower dir next to `work`.
    /// With `ids` (a tenant's user namespace), the shared lower layers are seen
    /// through idmapped mounts, so their root-owned files belong to the
    /// container's root, and the upper dir's root is owned by it too.
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
        ids: Option<&IdMap>,
    ) -> Result<(), RuntimeError>;
    /// Unmounts `target`, detaching lazily if it is busy. Not mounted is fine.
    fn unmount(&self, target: &Path) -> Result<(), RuntimeError>;
    fn is_mounted(&self, target: &Path) -> bool;
}

/// Where an image without layers gets its (empty) lower dir: overlayfs needs one.
pub fn empty_lower_dir(work: &Path) -> PathBuf {
    work.parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("empty-lower")
}

/// The lower dirs actually mounted: the given ones, or the empty dir.
pub fn effective_lowers(lowers: &[PathBuf], work: &Path) -> Vec<PathBuf> {
    if lowers.is_empty() {
        vec![empty_lower_dir(work)]
    } else {
        lowers.to_vec()
    }
}

/// The overlay mount data. Commas, colons and backslashes in paths would be
/// read as separators by overlayfs, so they are refused rather than mis-parsed.
pub fn overlay_options(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String, RuntimeError> {
    let check = |p: &Path| -> Result<String, RuntimeError> {
        let s = p.to_str().ok_or_else(|| {
            RuntimeError::Invalid(format!("overlay path is not UTF-8: {}", p.display()))
        })?;
        if s.contains([',', ':', '\\']) {
            return Err(RuntimeError::Invalid(format!(
                "overlay path contains a separator character: {s}"
            )));
        }
        Ok(s.to_string())
    };
    let lower: Vec<String> = lowers.iter().map(|p| check(p)).collect::<Result<_, _>>()?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        check(upper)?,
        check(work)?
    );
    if opts.len() > MAX_MOUNT_DATA {
        return Err(RuntimeError::Invalid(format!(
            "too many image layers for one overlay mount ({} layers)",
            lowers.len()
        )));
    }
    Ok(opts)
}

/// Mount points listed in /proc/self/mountinfo (field 5, octal-unescaped).
pub fn mount_points() -> BTreeSet<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_octal(m)))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(n) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|t| u8::from_str_radix(t, 8).ok())
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_overlay_at(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    let opts = overlay_options(lowers, upper, work)?;
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        // A device node in an image or planted by `docker cp` opens nothing,
        // inside the container or from the host side (the agent's reads).
        MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| RuntimeError::io("mounting the container's root filesystem", e.into()))
}

/// Mounts with mount(2)/umount2(2) directly.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealMounter;

impl Mounter for RealMounter {
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
        ids: Option<&IdMap>,
    ) -> Result<(), RuntimeError> {
        let lowers = effective_lowers(lowers, work);
        for d in [upper, work, target]
            .into_iter()
            .chain(lowers.iter().map(|p| p.as_path()))
        {
            std::fs::create_dir_all(d)
                .map_err(|e| RuntimeError::io("creating overlay directory", e))?;
        }
        let Some(ids) = ids else {
            return mount_overlay_at(&lowers, upper, work, target);
        };
        let io = |what: &'static str| move |e: std::io::Error| RuntimeError::io(what, e);
        // A fresh upper dir is host root's: give it to the container's root.
        let md = std::fs::metadata(upper).map_err(io("reading the upper dir"))?;
        if md.uid() == 0 {
            std::os::unix::fs::chown(upper, Some(ids.host_base), Some(ids.host_base))
                .map_err(io("changing the owner of the upper dir"))?;
        }
        // Each layer idmapped at a temporary mount point beside `work`;
        // overlayfs keeps its own private clones, so these are detached after.
        let staging = work.with_file_name("idmapped");
        let mut mapped = Vec::new();
        let res = (|| {
            let userns = crate::userns::mapping_fd(ids).map_err(io("creating a user namespace"))?;
            for (i, lower) in lowers.iter().enumerate() {
                let at = staging.join(i.to_string());
                std::fs::create_dir_all(&at).map_err(io("creating a mount point"))?;
                crate::userns::mount_idmapped(lower, &at, &userns)
                    .map_err(io("idmapping an image layer"))?;
                mapped.push(at);
            }
            mount_overlay_at(&mapped, upper, work, target)
        })();
        for at in &mapped {
            let _ = nix::mount::umount2(at, MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&staging);
        res
    }

    fn unmount(&self, target: &Path) -> Result<(), RuntimeError> {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(target, MntFlags::MNT_DETACH)
                .map_err(|e| {
                    RuntimeError::io("unmounting the container's root filesystem", e.into())
                }),
            // Not a mount point (or gone): nothing to undo.
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(RuntimeError::io(
                "unmounting the container's root filesystem",
                e.into(),
            )),
        }
    }

    fn is_mounted(&self, target: &Path) -> bool {
        let t = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
        mount_points().contains(&t)
    }
}

/// One recorded call of the fake mounter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    Overlay {
        /// As the real mounter would mount them (empty dir filled in).
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
        options: String,
        ids: Option<IdMap>,
    },
    Unmount(PathBuf),
}

/// A recording fake that keeps a set of "mounted" targets.
#[derive(Debug, Default)]
pub struct FakeMounter {
    pub calls: Mutex<Vec<MountCall>>,
    pub mounted: Mutex<BTreeSet<PathBuf>>,
}

impl FakeMounter {
    pub fn new() -> FakeMounter {
        FakeMounter::default()
    }

    pub fn calls(&self) -> Vec<MountCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Mounter for FakeMounter {
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
        ids: Option<&IdMap>,
    ) -> Result<(), RuntimeError> {
        let lowers = effective_lowers(lowers, work);
        let options = overlay_options(&lowers, upper, work)?;
        let mut m = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        if !m.insert(target.to_path_buf()) {
            return Err(RuntimeError::io(
                "mounting the container's root filesystem",
                std::io::Error::from_raw_os_error(libc::EBUSY),
            ));
        }
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(MountCall::Overlay {
                lowers,
                upper: upper.to_path_buf(),
                work: work.to_path_buf(),
                target: target.to_path_buf(),
                options,
                ids: ids.copied(),
            });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), RuntimeError> {
        self.mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(target);
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(MountCall::Unmount(target.to_path_buf()));
        Ok(())
    }

    fn is_mounted(&self, target: &Path) -> bool {
        self.mounted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_top_layer_first() {
        let lowers = vec![PathBuf::from("/l/top"), PathBuf::from("/l/bottom")];
        let o =
            overlay_options(&lowers, Path::new("/c/upper"), Path::new("/c/work")).expect("options");
        assert_eq!(
            o,
            "lowerdir=/l/top:/l/bottom,upperdir=/c/upper,workdir=/c/work"
        );
    }

    #[test]
    fn separators_and_huge_lists_are_refused() {
        let bad = vec![PathBuf::from("/l/a:b")];
        assert!(overlay_options(&bad, Path::new("/u"), Path::new("/w")).is_err());
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/atoll/layers/{i:064}")))
            .collect();
        let e = overlay_options(&many, Path::new("/u"), Path::new("/w")).expect_err("too long");
        assert!(e.to_string().contains("too many image layers"));
    }

    #[test]
    fn empty_image_gets_empty_lower() {
        let f = FakeMounter::new();
        f.mount_overlay(
            &[],
            Path::new("/c/upper"),
            Path::new("/c/work"),
            Path::new("/c/rootfs"),
            None,
        )
        .expect("mount");
        assert!(f.is_mounted(Path::new("/c/rootfs")));
        assert!(
            f.mount_overlay(
                &[],
                Path::new("/c/upper"),
                Path::new("/c/work"),
                Path::new("/c/rootfs"),
                None
            )
            .is_err()
        );
        f.unmount(Path::new("/c/rootfs")).expect("unmount");
        assert!(!f.is_mounted(Path::new("/c/rootfs")));
        match &f.calls()[0] {
            MountCall::Overlay {
                lowers, options, ..
            } => {
                assert_eq!(lowers, &vec![PathBuf::from("/c/empty-lower")]);
                assert!(options.starts_with("lowerdir=/c/empty-lower,"));
            }
            c => panic!("unexpected call {c:?}"),
        }
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/x\\"), "/x\\");
    }
}
