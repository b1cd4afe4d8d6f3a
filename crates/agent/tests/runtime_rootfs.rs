//! Real overlay mounts (as root) and a real bundle written against them.

mod runtime_common;

use std::path::Path;

use agent::bundle::{ContainerPaths, write_bundle};
use agent::rootfs::{Mounter, RealMounter};
use runtime_common::*;

/// Unmounts on drop, even when an assertion fails.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = RealMounter.unmount(self.0);
    }
}

#[test]
fn overlay_top_layer_wins_and_writes_go_to_upper() {
    let d = tempfile::tempdir().expect("tempdir");
    let bottom = d.path().join("bottom");
    let top = d.path().join("top");
    std::fs::create_dir_all(&bottom).expect("bottom");
    std::fs::create_dir_all(&top).expect("top");
    std::fs::write(bottom.join("f"), "bottom").expect("f");
    std::fs::write(bottom.join("only-bottom"), "b").expect("ob");
    std::fs::write(top.join("f"), "top").expect("f");
    let paths = ContainerPaths::new(&d.path().join("containers"), "c1");
    let m = RealMounter;
    assert!(!m.is_mounted(&paths.rootfs));
    m.mount_overlay(
        &[top, bottom.clone()],
        &paths.upper,
        &paths.work,
        &paths.rootfs,
        None,
    )
    .expect("mount");
    let _g = Mounted(&paths.rootfs);
    assert!(m.is_mounted(&paths.rootfs));
    assert_eq!(
        std::fs::read_to_string(paths.rootfs.join("f")).expect("read"),
        "top"
    );
    assert_eq!(
        std::fs::read_to_string(paths.rootfs.join("only-bottom")).expect("read"),
        "b"
    );
    std::fs::write(paths.rootfs.join("new"), "x").expect("write");
    assert!(paths.upper.join("new").exists());
    assert!(!bottom.join("new").exists());
    // Busy (a process has its cwd there): unmount detaches lazily.
    let busy = std::fs::File::open(paths.rootfs.join("f")).expect("hold open");
    m.unmount(&paths.rootfs).expect("unmount");
    drop(busy);
    assert!(!m.is_mounted(&paths.rootfs));
    // Unmounting what is not mounted is fine.
    m.unmount(&paths.rootfs).expect("second unmount");
}

#[test]
fn image_without_layers_mounts_an_empty_lower() {
    let d = tempfile::tempdir().expect("tempdir");
    let paths = ContainerPaths::new(&d.path().join("containers"), "c2");
    RealMounter
        .mount_overlay(&[], &paths.upper, &paths.work, &paths.rootfs, None)
        .expect("mount");
    let _g = Mounted(&paths.rootfs);
    assert!(RealMounter.is_mounted(&paths.rootfs));
    assert_eq!(std::fs::read_dir(&paths.rootfs).expect("ls").count(), 0);
}

#[test]
fn idmapped_layers_show_shifted_owners_and_stay_untouched() {
    use std::os::unix::fs::{MetadataExt, chown};
    let d = tempfile::tempdir().expect("tempdir");
    let layer = d.path().join("layer");
    std::fs::create_dir_all(layer.join("etc")).expect("layer");
    std::fs::write(layer.join("etc/owned"), "x").expect("file");
    chown(layer.join("etc/owned"), Some(33), Some(44)).expect("chown");
    let paths = ContainerPaths::new(&d.path().join("containers"), "c3");
    let ids = agent_client::IdMap {
        host_base: 1_500_000_000,
        size: 65536,
    };
    RealMounter
        .mount_overlay(
            std::slice::from_ref(&layer),
            &paths.upper,
            &paths.work,
            &paths.rootfs,
            Some(&ids),
        )
        .expect("mount");
    let _g = Mounted(&paths.rootfs);
    let md = |p: &Path| std::fs::symlink_metadata(p).expect("stat");
    // Through the mount: root's files are the range's root, others shifted.
    assert_eq!(md(&paths.rootfs.join("etc")).uid(), ids.host_base);
    let owned = md(&paths.rootfs.join("etc/owned"));
    assert_eq!(
        (owned.uid(), owned.gid()),
        (ids.host_base + 33, ids.host_base + 44)
    );
    assert_eq!(md(&paths.rootfs).uid(), ids.host_base, "the upper root");
    // The shared layer itself is unchanged, and no staging mounts are left.
    assert_eq!(md(&layer.join("etc")).uid(), 0);
    assert_eq!(md(&layer.join("etc/owned")).uid(), 33);
    assert!(!paths.work.with_file_name("idmapped").exists());
    let staged = paths.work.with_file_name("idmapped").join("0");
    assert!(!agent::rootfs::mount_points().contains(&staged));
    // A copied-up change keeps the shifted owner in the upper dir.
    std::fs::write(paths.rootfs.join("etc/owned"), "y").expect("write");
    assert_eq!(md(&paths.upper.join("etc/owned")).uid(), ids.host_base + 33);
}

#[test]
fn bundle_files_are_written() {
    let c = Ctr::new();
    let mut spec = c.spec(&["sh"]);
    spec.process.cwd = "/work/dir".into();
    spec.process.user = "nobody".into();
    spec.extra_hosts = vec!["db:10.9.8.7".into()];
    spec.dns = vec!["9.9.9.9".into()];
    write_bundle(&spec, &c.paths, Some(Path::new("/run/netns/x")), "atoll-t").expect("bundle");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&c.paths.config).expect("config")).expect("json");
    assert_eq!(config["process"]["user"]["uid"], 65534);
    assert_eq!(config["process"]["cwd"], "/work/dir");
    assert_eq!(
        config["root"]["path"],
        c.paths.rootfs.to_string_lossy().as_ref()
    );
    assert_eq!(config["linux"]["namespaces"][4]["path"], "/run/netns/x");
    // The working directory was created, owned by the user.
    let meta = std::fs::metadata(c.paths.rootfs.join("work/dir")).expect("cwd");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    let hosts = std::fs::read_to_string(&c.paths.hosts).expect("hosts");
    assert!(hosts.contains("10.9.8.7\tdb\n"));
    let resolv = std::fs::read_to_string(&c.paths.resolv_conf).expect("resolv");
    assert!(resolv.starts_with("nameserver 9.9.9.9\n"), "{resolv}");
    assert_eq!(resolv.matches("nameserver").count(), 1, "{resolv}");
    assert_eq!(
        std::fs::read_to_string(&c.paths.hostname).expect("hostname"),
        "testhost\n"
    );
}
