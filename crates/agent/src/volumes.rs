//! Volumes on this server: `<agent>/volumes/<volume-id>/_data`, created on the
//! first start of a container that mounts them. A new volume is filled with what
//! the image has at the mount point ("copy-up", as Docker does), so `VOLUME
//! /var/lib/x` keeps the image's files there.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent_client::{ContainerSpec, MountKind};

use crate::error::AgentError;
use crate::user::resolve_in_root;

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
) -> Result<ContainerSpec, AgentError> {
    let mut out = spec.clone();
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
            std::fs::create_dir(&tmp)?;
            if let Ok(src) = resolve_in_root(rootfs, Path::new(&m.destination))
                && src.is_dir()
            {
                copy_tree(&src, &tmp)?;
                copy_owner_and_mode(&src, &tmp)?;
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

fn copy_owner_and_mode(from: &Path, to: &Path) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(from)?;
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))?;
    if !md.file_type().is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    Ok(())
}

/// Copies the contents of `from` into the existing directory `to`: files,
/// directories and symlinks with owners and modes. Device nodes, sockets and
/// fifos are skipped (images rarely carry them under a VOLUME).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
        } else {
            continue;
        }
        copy_owner_and_mode(&src, &dst)?;
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
            }],
            ..Default::default()
        };
        let out = prepare_volumes(&spec, vols.path(), root.path()).unwrap();
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
        prepare_volumes(&spec, vols.path(), root.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("seed.txt")).unwrap(),
            "changed"
        );
        remove_volume(vols.path(), &id).unwrap();
        assert!(!dir.exists());
        remove_volume(vols.path(), &id).unwrap();
        assert!(remove_volume(vols.path(), "../x").is_err());
    }
}
