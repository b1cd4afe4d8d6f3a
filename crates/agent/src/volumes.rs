//! Volumes on this server: `<agent>/volumes/<volume-id>/_data`, created on the
//! first start of a container that mounts them. A new volume is filled with what
//! the image has at the mount point ("copy-up", as Docker does), so `VOLUME
//! /var/lib/x` keeps the image's files there.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use agent_client::{ContainerSpec, MountKind};
use nix::fcntl::OFlag;

use crate::archive::MAX_TREE_DEPTH;
use crate::confined;
use crate::error::AgentError;
use crate::quota::DiskQuota;

/// Volume ids are the head's: 64 hex characters.
pub fn check_volume_id(id: &str) -> Result<(), AgentError> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AgentError::BadRequest(format!("invalid volume id: {id}")))
    }
}

/// The data directory of a volume.
pub fn volume_data(volumes_dir: &Path, id: &str) -> PathBuf {
    volumes_dir.join(id).join("_data")
}

/// `spec` with volume mounts pointing at their directories, creating (and
/// copying up into) new ones. `rootfs` is the container's mounted root.
pub fn prepare_volumes(
    spec: &ContainerSpec,
    volumes_dir: &Path,
    rootfs: &Path,
    quota: &dyn DiskQuota,
) -> Result<ContainerSpec, AgentError> {
    let mut out = spec.clone();
    // An operator's `-v /host/path`: Docker makes a missing one.
    for m in out
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::Bind && m.fresh.is_some())
    {
        let p = Path::new(&m.source);
        if m.source.starts_with('/') && std::fs::symlink_metadata(p).is_err() {
            std::fs::create_dir_all(p)?;
            if let Some(f) = m.fresh {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(f.mode & 0o7777))?;
            }
        }
    }
    for m in out
        .mounts
        .iter_mut()
        .filter(|m| m.kind == MountKind::Volume)
    {
        check_volume_id(&m.source)?;
        let data = volume_data(volumes_dir, &m.source);
        let parent = data.parent().unwrap_or(volumes_dir);
        std::fs::create_dir_all(parent)?;
        crate::userns::make_private(parent, spec.userns.as_ref())?;
        if !data.exists() {
            // Filled beside, then renamed: a crash never leaves half a copy-up.
            let tmp = parent.join("_data.new");
            let _ = std::fs::remove_dir_all(&tmp);
            // Limited to its size where the disk can: a volume that fills
            // gets "Disk quota exceeded", not the server's disk.
            quota.create_limited(&tmp, m.size_bytes)?;
            if let Some(f) = m.fresh {
                let host = |id| spec.userns.map_or(id, |u| u.to_host(id));
                std::os::unix::fs::chown(&tmp, Some(host(f.uid)), Some(host(f.gid)))?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode & 0o7777))?;
            } else if let Some(src) =
                confined::path_in_root(rootfs, &m.destination, OFlag::O_DIRECTORY)?
            {
                copy_tree_at(&src, &tmp, 0)?;
                copy_owner_and_mode(&confined::fstat(src.as_fd())?, &tmp)?;
            } else if let Some(ids) = &spec.userns {
                // Nothing to copy: the container's root owns it (the rootfs
                // shows copied files with shifted owners already).
                std::os::unix::fs::chown(&tmp, Some(ids.host_base), Some(ids.host_base))?;
            }
            std::fs::rename(&tmp, &data)?;
        }
        m.source = data.to_string_lossy().into_owned();
    }
    Ok(out)
}

/// Gives `to` the owner and mode of what `st` describes.
fn copy_owner_and_mode(st: &libc::stat, to: &Path) -> std::io::Result<()> {
    std::os::unix::fs::lchown(to, Some(st.st_uid), Some(st.st_gid))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(st.st_mode & 0o7777))?;
    }
    Ok(())
}

/// Copies what directory `dir` (an `O_PATH` or open descriptor in a
/// container's root) holds into the existing directory `to`: files,
/// directories and symlinks with owners and modes; device nodes, sockets
/// and fifos are skipped (images rarely carry them under a VOLUME). The
/// container's root is hostile and may change meanwhile (a `docker cp`
/// into it): every entry is opened without following it, judged by `fstat`
/// of its descriptor, and read or walked through that descriptor. `to` is
/// the agent's own (a new volume nobody sees yet). `depth` counts the
/// directories above: a tenant's tree nested past [`MAX_TREE_DEPTH`] is refused
/// rather than walked until the agent's stack or descriptors run out.
fn copy_tree_at(dir: &OwnedFd, to: &Path, depth: usize) -> std::io::Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(std::io::Error::other(format!(
            "the image's directories under the volume's mount point are nested deeper than {MAX_TREE_DEPTH}"
        )));
    }
    let listing = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(listing)?;
    let names: Vec<std::ffi::CString> = d
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    drop(d); // one descriptor per level, not two
    for name in names {
        let fd = confined::path_at(dir.as_fd(), &name)?;
        let st = confined::fstat(fd.as_fd())?;
        let dst = to.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(&fd, "")?;
                std::os::unix::fs::symlink(target, &dst)?;
            }
            libc::S_IFDIR => {
                std::fs::create_dir(&dst)?;
                copy_tree_at(&fd, &dst, depth + 1)?;
            }
            libc::S_IFREG => {
                let mut from = confined::reopen_regular(&fd, &st, &dst.to_string_lossy())
                    .map_err(std::io::Error::other)?;
                let mut into = std::fs::File::create_new(&dst)?;
                std::io::copy(&mut from, &mut into)?;
            }
            _ => continue,
        }
        copy_owner_and_mode(&st, &dst)?;
    }
    Ok(())
}

/// Deletes a volume's directory (idempotent).
pub fn remove_volume(volumes_dir: &Path, id: &str) -> Result<(), AgentError> {
    check_volume_id(id)?;
    match std::fs::remove_dir_all(volumes_dir.join(id)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_client::MountSpec;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn new_volumes_are_filled_from_the_image_once() {
        let root = tempfile::tempdir().unwrap();
        let vols = tempfile::tempdir().unwrap();
        let data = root.path().join("var/lib/app");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("seed.txt"), "from image").unwrap();
        std::fs::set_permissions(
            data.join("seed.txt"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("seed.txt", data.join("link")).unwrap();
        let id = "a".repeat(64);
        let spec = ContainerSpec {
            mounts: vec![MountSpec {
                kind: MountKind::Volume,
                source: id.clone(),
                destination: "/var/lib/app".into(),
                read_only: false,
                size_bytes: 0,
                fresh: None,
            }],
            ..Default::default()
        };
        let out =
            prepare_volumes(&spec, vols.path(), root.path(), &crate::quota::Unlimited).unwrap();
        let dir = volume_data(vols.path(), &id);
        assert_eq!(out.mounts[0].source, dir.to_string_lossy());
        assert_eq!(
            std::fs::read_to_string(dir.join("seed.txt")).unwrap(),
            "from image"
        );
        assert_eq!(
            std::fs::metadata(dir.join("seed.txt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read_link(dir.join("link")).unwrap(),
            Path::new("seed.txt")
        );
        assert!(dir.join("sub").is_dir());
        // Used again: what the container wrote stays, nothing is copied over it.
        std::fs::write(dir.join("seed.txt"), "changed").unwrap();
        prepare_volumes(&spec, vols.path(), root.path(), &crate::quota::Unlimited).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("seed.txt")).unwrap(),
            "changed"
        );
        remove_volume(vols.path(), &id).unwrap();
        assert!(!dir.exists());
        remove_volume(vols.path(), &id).unwrap();
        assert!(remove_volume(vols.path(), "../x").is_err());
    }

    /// The image's side is hostile: the mount point's path and the entries
    /// under it are never followed out of the root, and FIFOs and devices
    /// are neither opened nor copied.
    #[test]
    fn copy_up_stays_inside_the_root_and_copies_only_files() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("key"), "host secret").unwrap();
        let root = host.path().join("rootfs");
        let vols = host.path().join("volumes");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir(&vols).unwrap();
        // The mount point is a link to the host's directory (absolute), and an
        // entry links to the host's file: the first resolves in the root
        // (missing there), the second is copied as a link.
        std::os::unix::fs::symlink(&secret, root.join("escape")).unwrap();
        std::os::unix::fs::symlink(secret.join("key"), root.join("data/key")).unwrap();
        let fifo =
            std::ffi::CString::new(root.join("data/fifo").into_os_string().into_vec()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let dev =
            std::ffi::CString::new(root.join("data/zero").into_os_string().into_vec()).unwrap();
        // SAFETY: mknod with a valid path (/dev/zero's numbers; we are root).
        assert_eq!(
            unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) },
            0
        );
        std::fs::write(root.join("data/plain"), "inside").unwrap();
        let volume = |id: &str, at: &str| ContainerSpec {
            mounts: vec![MountSpec {
                kind: MountKind::Volume,
                source: id.repeat(64),
                destination: at.into(),
                read_only: false,
                size_bytes: 0,
                fresh: None,
            }],
            ..Default::default()
        };
        prepare_volumes(
            &volume("b", "/escape"),
            &vols,
            &root,
            &crate::quota::Unlimited,
        )
        .unwrap();
        let escaped = volume_data(&vols, &"b".repeat(64));
        // Positive control: the host's directory really has a file.
        assert!(secret.join("key").exists());
        assert_eq!(std::fs::read_dir(&escaped).unwrap().count(), 0);
        prepare_volumes(
            &volume("c", "/data"),
            &vols,
            &root,
            &crate::quota::Unlimited,
        )
        .unwrap();
        let data = volume_data(&vols, &"c".repeat(64));
        assert_eq!(
            std::fs::read_link(data.join("key")).unwrap(),
            secret.join("key")
        );
        assert_eq!(
            std::fs::read_to_string(data.join("plain")).unwrap(),
            "inside"
        );
        assert!(!data.join("fifo").exists() && !data.join("zero").exists());

        // A tree nested past the bound is refused, not walked (positive
        // control: one level less is copied).
        let mut deep = root.join("deep");
        for _ in 0..=MAX_TREE_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let e = prepare_volumes(
            &volume("d", "/deep"),
            &vols,
            &root,
            &crate::quota::Unlimited,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nested deeper than 256"), "{e}");
        std::fs::remove_dir(&deep).unwrap();
        prepare_volumes(
            &volume("e", "/deep"),
            &vols,
            &root,
            &crate::quota::Unlimited,
        )
        .unwrap();
    }
}
