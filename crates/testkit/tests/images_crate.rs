//! Cross-check with the `images` crate and the kernel: each archive loads with
//! `images::archive::load_archive` to the documented facts, and the multilayer image,
//! unpacked with `images::layer::unpack_layer` and mounted as overlayfs, shows the
//! documented final filesystem.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use images::BlobStore;
use images::archive::load_archive;
use images::layer::unpack_layer;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use testkit::testimages::MULTILAYER_EXPECTED;
use testkit::{ImageFacts, test_images};

fn load(facts: &ImageFacts, store: &BlobStore) -> images::archive::LoadedImage {
    let f = std::fs::File::open(&facts.path).unwrap();
    let mut loaded = load_archive(f, store).unwrap();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    loaded.remove(0)
}

#[test]
fn every_archive_loads_with_the_documented_facts() {
    let imgs = test_images();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
    for facts in [&imgs.busybox, &imgs.busybox_oci, &imgs.multilayer] {
        let img = load(facts, &store);
        assert_eq!(img.config.as_str(), facts.id, "{:?}", facts.path);
        let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
        assert_eq!(diff_ids, facts.diff_ids, "{:?}", facts.path);
        let (repo, tag) = facts.tag.split_once(':').unwrap();
        assert!(
            img.repo_tags
                .iter()
                .any(|t| t == &facts.tag || *t == format!("docker.io/library/{repo}:{tag}")),
            "{:?}: {:?}",
            facts.path,
            img.repo_tags
        );
    }
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

#[test]
fn multilayer_mounts_to_the_documented_filesystem() {
    let imgs = test_images();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
    let img = load(&imgs.multilayer, &store);
    let mut lowers = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        let dest = dir.path().join(format!("layer{i}"));
        let blob = store.open_blob(&l.blob).unwrap();
        unpack_layer(blob, &dest, Some(&l.diff_id)).unwrap();
        lowers.push(dest);
    }
    // overlayfs lists the top layer first.
    let lowerdir = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let target = dir.path().join("merged");
    std::fs::create_dir(&target).unwrap();
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .unwrap();
    let _guard = Mounted(target.clone());

    let at = |p: &str| target.join(p.trim_start_matches('/'));
    for (path, want) in MULTILAYER_EXPECTED {
        match want {
            Some(content) => {
                assert_eq!(
                    std::fs::read_to_string(at(path)).unwrap(),
                    *content,
                    "{path}"
                )
            }
            None => assert!(!at(path).exists(), "{path} should be gone"),
        }
    }
    let names = |d: &Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&at("/opq")), BTreeSet::from(["new".to_string()]));
    assert_eq!(
        names(&at("/data")),
        BTreeSet::from(["keep".to_string(), "third".to_string()])
    );
    assert!(at("/bin/busybox").is_file());
}
