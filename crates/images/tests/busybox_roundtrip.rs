//! End to end through the public API with a real binary: import a busybox rootfs,
//! save it, load it back into another store, unpack the layer and run it; the saved
//! archive is also checked with skopeo, an independent reader of both formats.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use images::archive::{SaveImage, load_archive, save_archive};
use images::config::ImageConfig;
use images::import::import_rootfs;
use images::layer::unpack_layer;
use images::{BlobStore, Digest};

fn busybox_rootfs_gz() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "bin/", std::io::empty()).unwrap();
    let bin = fs::read("/bin/busybox").expect("/bin/busybox is needed for this test");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(bin.len() as u64);
    b.append_data(&mut h, "bin/busybox", &bin[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, "bin/sh", "/bin/busybox").unwrap();
    let tar = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&tar).unwrap();
    e.finish().unwrap()
}

#[test]
fn import_save_load_unpack_run() {
    let tmp = tempfile::tempdir().unwrap();
    let s1 = BlobStore::open(&tmp.path().join("store1")).unwrap();
    let changes = vec!["CMD [\"sh\"]".to_string(), "ENV PATH=/bin".to_string()];
    let imported = import_rootfs(
        &busybox_rootfs_gz()[..],
        &s1,
        &changes,
        "busybox test",
        ("linux", "amd64"),
    )
    .unwrap();

    let archive = tmp.path().join("saved.tar");
    let img = SaveImage {
        config: imported.config.clone(),
        layers: vec![(imported.layer_blob.clone(), imported.diff_id.clone())],
        repo_tags: vec!["busybox:rt".into()],
    };
    save_archive(
        std::slice::from_ref(&img),
        &s1,
        fs::File::create(&archive).unwrap(),
    )
    .unwrap();

    let s2 = BlobStore::open(&tmp.path().join("store2")).unwrap();
    let loaded = load_archive(fs::File::open(&archive).unwrap(), &s2).unwrap();
    assert_eq!(loaded.len(), 1);
    let l = &loaded[0];
    assert_eq!(l.config, imported.config);
    assert_eq!(l.repo_tags, vec!["busybox:rt"]);
    assert_eq!(l.layers.len(), 1);
    assert_eq!(l.layers[0].diff_id, imported.diff_id);
    let cfg: ImageConfig = serde_json::from_slice(&s2.read(&l.config).unwrap()).unwrap();
    assert_eq!(
        cfg.config.unwrap().cmd,
        Some(vec!["sh".to_string()]),
        "config survives byte for byte"
    );

    let rootfs = tmp.path().join("layers").join(imported.diff_id.hex());
    let got = unpack_layer(
        s2.open_blob(&l.layers[0].blob).unwrap(),
        &rootfs,
        Some(&l.layers[0].diff_id),
    )
    .unwrap();
    assert_eq!(got, imported.diff_id);
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    let out = Command::new("chroot")
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            "echo hello from $(busybox basename /x/busybox)",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from busybox\n");

    // skopeo reads the archive both as docker-archive (manifest.json) and as an OCI
    // layout, and finds the same config.
    if Path::new("/usr/bin/skopeo").exists() {
        for transport in ["docker-archive", "oci-archive"] {
            let out = Command::new("skopeo")
                .args(["--insecure-policy", "inspect", "--config", "--raw"])
                .arg(format!("{transport}:{}", archive.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{transport}: {out:?}");
            assert_eq!(Digest::of(&out.stdout), imported.config, "{transport}");
        }

        // And archives written by skopeo load here: docker-archive (legacy layout)
        // and a gzip-compressed OCI layout.
        for (dest, extra) in [
            ("docker-archive", &[][..]),
            (
                "oci-archive",
                &["--dest-compress", "--dest-compress-format", "gzip"][..],
            ),
        ] {
            let path = tmp.path().join(format!("{dest}.tar"));
            let out = Command::new("skopeo")
                .args(["--insecure-policy", "copy"])
                .args(extra)
                .arg(format!("oci-archive:{}", archive.display()))
                .arg(format!("{dest}:{}:busybox:skopeo", path.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{dest}: {out:?}");
            let s3 = BlobStore::open(&tmp.path().join(format!("store-{dest}"))).unwrap();
            let loaded = load_archive(fs::File::open(&path).unwrap(), &s3).unwrap();
            assert_eq!(loaded.len(), 1, "{dest}");
            assert_eq!(loaded[0].layers[0].diff_id, imported.diff_id, "{dest}");
            assert!(!loaded[0].repo_tags.is_empty(), "{dest}: {loaded:?}");
            let rootfs = tmp.path().join(format!("rootfs-{dest}"));
            unpack_layer(
                s3.open_blob(&loaded[0].layers[0].blob).unwrap(),
                &rootfs,
                Some(&imported.diff_id),
            )
            .unwrap();
            assert!(rootfs.join("bin/busybox").is_file());
        }
    }
}
