//! The test images are what their docs promise: valid archives in each layout, stable
//! ids, working busybox, and the documented result of the multilayer whiteouts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use testkit::testimages::{
    BUSYBOX_APPLETS, IMAGE_PATH, MULTILAYER_EXPECTED, build_test_images, busybox_binary,
};
use testkit::{TestImages, test_images};

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// All regular files of a tar, by path (without a leading `./`).
fn tar_files(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if e.header().entry_type().is_file() {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            out.insert(path.trim_start_matches("./").to_string(), v);
        }
    }
    out
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut v).unwrap();
    v
}

/// Layer tars of a legacy docker-save archive, checked against its config; returns
/// (config, layers).
fn check_docker_save(path: &Path, id: &str, tag: &str) -> (Value, Vec<Vec<u8>>) {
    let files = tar_files(&std::fs::read(path).unwrap());
    let manifest = json(&files["manifest.json"]);
    let m = &manifest[0];
    assert_eq!(m["RepoTags"], serde_json::json!([tag]));
    let config_bytes = &files[m["Config"].as_str().unwrap()];
    assert_eq!(sha256(config_bytes), id, "image id is the config digest");
    let config = json(config_bytes);
    let layers: Vec<Vec<u8>> = m["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| files[l.as_str().unwrap()].clone())
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    assert_eq!(config["history"].as_array().unwrap().len(), layers.len());
    let (repo, t) = tag.split_once(':').unwrap();
    let repositories = json(&files["repositories"]);
    assert!(repositories[repo][t].is_string(), "{repositories}");
    (config, layers)
}

#[test]
fn busybox_archive_is_a_valid_docker_save() {
    let imgs = test_images();
    let (config, layers) =
        check_docker_save(&imgs.busybox.path, &imgs.busybox.id, "busybox:latest");
    assert_eq!(imgs.busybox.tag, "busybox:latest");
    assert_eq!(layers.len(), 1);
    assert_eq!(imgs.busybox.diff_ids, vec![sha256(&layers[0])]);
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!([format!("PATH={IMAGE_PATH}")])
    );

    // The rootfs: busybox, applets, users, /tmp sticky.
    let mut ar = tar::Archive::new(&layers[0][..]);
    let mut seen = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        seen.insert(
            e.path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string(),
            (
                h.entry_type(),
                h.mode().unwrap(),
                e.link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            ),
        );
    }
    let bb = std::fs::read(busybox_binary()).unwrap();
    let files = tar_files(&layers[0]);
    assert_eq!(files["bin/busybox"], bb);
    for a in BUSYBOX_APPLETS {
        let (kind, _, link) = &seen[&format!("bin/{a}")];
        assert!(kind.is_symlink(), "{a}");
        assert_eq!(link.as_deref(), Some("busybox"), "{a}");
    }
    assert_eq!(seen["tmp"].1, 0o1777);
    assert_eq!(seen["root"].1, 0o700);
    let passwd = String::from_utf8(files["etc/passwd"].clone()).unwrap();
    assert!(passwd.contains("root:x:0:0:"));
    assert!(passwd.contains("user:x:1000:1000:"));
    assert!(passwd.contains("nobody:x:65534:65534:"));
    assert!(files.contains_key("etc/group"));
}

#[test]
fn oci_archive_holds_the_same_image() {
    let imgs = test_images();
    let files = tar_files(&std::fs::read(&imgs.busybox_oci.path).unwrap());
    assert!(!files.contains_key("manifest.json"), "pure OCI layout");
    assert_eq!(json(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
    let blob = |digest: &str| -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let b = files[&format!("blobs/sha256/{hex}")].clone();
        assert_eq!(sha256(&b), digest, "blob content matches its name");
        b
    };
    let index = json(&files["index.json"]);
    let desc = &index["manifests"][0];
    assert_eq!(
        desc["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    assert_eq!(
        desc["annotations"]["io.containerd.image.name"],
        "docker.io/library/busybox:latest"
    );
    let manifest_digest = desc["digest"].as_str().unwrap();
    assert_eq!(
        Some(manifest_digest),
        imgs.busybox_oci.manifest_digest.as_deref()
    );
    let manifest_bytes = blob(manifest_digest);
    assert_eq!(desc["size"], manifest_bytes.len());
    let manifest = json(&manifest_bytes);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(
        config_digest, imgs.busybox.id,
        "same config as the docker-save archive"
    );
    assert_eq!(imgs.busybox_oci.id, imgs.busybox.id);
    blob(config_digest);
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let gz = blob(layer["digest"].as_str().unwrap());
    assert_eq!(layer["size"], gz.len());
    assert_eq!(sha256(&gunzip(&gz)), imgs.busybox.diff_ids[0]);
}

/// Applies layers as overlayfs would present them: `.wh.x` removes `x`,
/// `.wh..wh..opq` hides what lower layers put in its directory.
fn apply_layers(layers: &[Vec<u8>]) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut fs: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for layer in layers {
        let mut ar = tar::Archive::new(&layer[..]);
        let mut entries = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = format!(
                "/{}",
                e.path().unwrap().to_string_lossy().trim_end_matches('/')
            );
            let data = if e.header().entry_type().is_file() {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                Some(v)
            } else {
                None
            };
            entries.push((path, data));
        }
        let remove_under =
            |fs: &mut BTreeMap<String, Option<Vec<u8>>>, dir: &str, and_self: bool| {
                let prefix = format!("{dir}/");
                fs.retain(|k, _| !(k.starts_with(&prefix) || (and_self && k == dir)));
            };
        for (path, _) in &entries {
            if let Some(dir) = path.strip_suffix("/.wh..wh..opq") {
                remove_under(&mut fs, dir, false);
            }
        }
        for (path, data) in entries {
            let (dir, name) = path.rsplit_once('/').unwrap();
            if name == ".wh..wh..opq" {
                continue;
            }
            if let Some(victim) = name.strip_prefix(".wh.") {
                remove_under(&mut fs, &format!("{dir}/{victim}"), true);
                continue;
            }
            fs.insert(path, data);
        }
    }
    fs
}

#[test]
fn multilayer_whiteouts_give_the_documented_filesystem() {
    let imgs = test_images();
    let ml = &imgs.multilayer;
    assert_eq!(ml.tag, "multilayer:latest");
    let (_, layers) = check_docker_save(&ml.path, &ml.id, "multilayer:latest");
    assert_eq!(layers.len(), 3);
    let l2 = tar_files(&layers[1]);
    assert!(l2.contains_key("data/.wh.gone"));
    assert!(l2.contains_key("opq/.wh..wh..opq"));

    let fs = apply_layers(&layers);
    for (path, want) in MULTILAYER_EXPECTED {
        match want {
            Some(content) => assert_eq!(
                fs.get(*path).and_then(|d| d.as_deref()),
                Some(content.as_bytes()),
                "{path}"
            ),
            None => assert!(!fs.contains_key(*path), "{path} should be gone"),
        }
    }
    let in_dir = |d: &str| -> BTreeSet<&str> {
        fs.keys()
            .filter_map(|k| k.strip_prefix(d))
            .filter(|rest| !rest.contains('/'))
            .collect()
    };
    assert_eq!(in_dir("/opq/"), BTreeSet::from(["new"]));
    assert_eq!(in_dir("/data/"), BTreeSet::from(["keep", "third"]));
    assert!(fs.contains_key("/bin/busybox"));
    assert!(!fs.keys().any(|k| k.contains("/.wh.")));
}

#[test]
fn builds_are_reproducible_and_race_safe() {
    let base = tempfile::tempdir().unwrap();
    let bb = busybox_binary();
    // Many builders at once on an empty cache: all must agree on one complete copy.
    let results: Vec<TestImages> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| build_test_images(base.path(), &bb).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(r.dir, results[0].dir);
        assert_eq!(r.busybox.id, results[0].busybox.id);
    }
    let entries: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "no temporary dirs left behind: {entries:?}"
    );

    // Same inputs, same bytes: the shared cache and a fresh build agree.
    let shared = test_images();
    assert_eq!(results[0].busybox.id, shared.busybox.id);
    assert_eq!(results[0].multilayer.id, shared.multilayer.id);
    for (a, b) in [
        (&results[0].busybox.path, &shared.busybox.path),
        (&results[0].busybox_oci.path, &shared.busybox_oci.path),
        (&results[0].multilayer.path, &shared.multilayer.path),
    ] {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{a:?}"
        );
    }
    // A second call finds the finished copy.
    let again = build_test_images(base.path(), &bb).unwrap();
    assert_eq!(again.dir, results[0].dir);
}

#[test]
fn busybox_rootfs_runs_in_a_chroot() {
    let imgs = test_images();
    let (_, layers) = check_docker_save(&imgs.busybox.path, &imgs.busybox.id, "busybox:latest");
    let root = tempfile::tempdir().unwrap();
    let mut ar = tar::Archive::new(&layers[0][..]);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.unpack(root.path()).unwrap();
    let out = Command::new("chroot")
        .arg(root.path())
        .args([
            "/bin/sh",
            "-c",
            "echo hello; id user; stat -c %a /tmp; ls /bin | wc -l; /usr/bin/env true",
        ])
        .env_clear()
        .env("PATH", IMAGE_PATH)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "hello");
    assert!(
        lines[1].starts_with("uid=1000(user) gid=1000(user)"),
        "{stdout}"
    );
    assert_eq!(lines[2], "1777");
    assert_eq!(lines[3].trim(), (BUSYBOX_APPLETS.len() + 1).to_string());
}
