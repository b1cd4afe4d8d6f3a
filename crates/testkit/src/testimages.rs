//! Test images built locally with the `tar` crate: there is no Docker daemon and no
//! Docker Hub here, so tests bring their own images.
//!
//! Every archive is built deterministically (fixed mtimes, owners and order), once per
//! machine, into `<target>/testimages/<key>/` where `<key>` hashes [`CONTENT_VERSION`],
//! the architecture and the busybox binary. Many test processes may race to build it:
//! each builds into a temporary directory beside it and renames it into place; the
//! loser of the race drops its copy and uses the winner's.
//!
//! The images:
//! - `busybox.tar` — `docker save` archive in the legacy layout (`manifest.json`,
//!   `repositories`, `<id>/layer.tar`), tagged `busybox:latest`: one layer with Debian's
//!   static `/bin/busybox`, applet symlinks in `/bin` (see [`BUSYBOX_APPLETS`]),
//!   `/etc/passwd` (root 0, `user` 1000, nobody 65534), `/etc/group`, `/tmp` (1777),
//!   `/root`, `/home/user`; `Env` PATH, `Cmd ["sh"]`.
//! - `busybox-oci.tar` — the same image (same config, so the same image id) as an OCI
//!   image layout: `oci-layout`, `index.json` (annotations
//!   `org.opencontainers.image.ref.name: latest` and
//!   `io.containerd.image.name: docker.io/library/busybox:latest`), gzip layer.
//! - `layers.tar` — `multilayer:latest`, legacy docker-save layout, three layers:
//!   1. the busybox rootfs plus `/data/keep` ("keep v1\n"), `/data/gone` ("gone\n"),
//!      `/opq/old` ("old\n") and `/opq/sub/deep` ("deep\n");
//!   2. `/data/.wh.gone` (deletes `/data/gone`), `/opq/.wh..wh..opq` (hides everything
//!      layer 1 put in `/opq`) and `/opq/new` ("new\n");
//!   3. `/data/keep` rewritten to "keep v3\n" and `/data/third` ("third\n").
//!
//!   The expected final filesystem: `/data` holds exactly `keep` ("keep v3\n") and
//!   `third` ("third\n"); `/data/gone` is missing; `/opq` holds only `new` ("new\n");
//!   `/bin/busybox` and the applets work as in `busybox:latest`. No whiteout file
//!   (`.wh.*`) is visible anywhere. See [`MULTILAYER_EXPECTED`].

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Bump when anything about the images changes, so old caches are not reused.
pub const CONTENT_VERSION: &str = "1";

/// The applets linked in `/bin` of the busybox image (besides `busybox` itself).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "env",
    "id",
    "hostname",
    "ps",
    "wget",
    "nc",
    "httpd",
    "sha256sum",
    "head",
    "tail",
    "wc",
    "date",
    "top",
    "kill",
    "mkdir",
    "rm",
    "touch",
    "grep",
    "sed",
    "seq",
    "yes",
    "dd",
    "ping",
    "ip",
    "ifconfig",
    "route",
    "nslookup",
    "test",
    "[",
    "printf",
    "uname",
    "whoami",
    "stat",
    "chmod",
    "chown",
    "ln",
    "cp",
    "mv",
    "find",
    "xargs",
    "tee",
    "tr",
    "cut",
    "sort",
    "uniq",
    "timeout",
    "pidof",
    "awk",
    "basename",
    "dirname",
    "du",
    "df",
    "free",
    "mount",
    "umount",
    "netstat",
    "nproc",
    "pwd",
    "readlink",
    "realpath",
    "rmdir",
    "tar",
    "gzip",
    "gunzip",
    "vi",
    "hexdump",
    "od",
    "md5sum",
    "base64",
    "mktemp",
    "sync",
    "usleep",
    "expr",
    "which",
];

/// The `PATH` in the images' config, Docker's default.
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Final state of `multilayer:latest`: `(path, Some(content))` must exist with that
/// content, `(path, None)` must not exist.
pub const MULTILAYER_EXPECTED: &[(&str, Option<&str>)] = &[
    ("/data/keep", Some("keep v3\n")),
    ("/data/third", Some("third\n")),
    ("/data/gone", None),
    ("/data/.wh.gone", None),
    ("/opq/new", Some("new\n")),
    ("/opq/old", None),
    ("/opq/sub", None),
    ("/opq/.wh..wh..opq", None),
];

/// What a test may rely on about one archive.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageFacts {
    /// The archive file.
    pub path: PathBuf,
    /// `sha256:<hex>` of the config bytes: the image ID Docker shows.
    pub id: String,
    /// The tag the archive carries, e.g. `busybox:latest`.
    pub tag: String,
    /// `sha256:<hex>` of each uncompressed layer tar, base first (the config's
    /// `rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
    /// `sha256:<hex>` of the image manifest, for archives that contain one (OCI).
    pub manifest_digest: Option<String>,
}

/// The locally built test images.
#[derive(Clone, Debug)]
pub struct TestImages {
    /// The directory holding all archives (what `make-test-images` prints).
    pub dir: PathBuf,
    /// `busybox.tar`, legacy docker-save layout.
    pub busybox: ImageFacts,
    /// `busybox-oci.tar`, OCI image layout; same config as `busybox`.
    pub busybox_oci: ImageFacts,
    /// `layers.tar`, three layers with whiteouts (see the module docs).
    pub multilayer: ImageFacts,
}

/// Written last into a finished image dir; its presence means "complete".
const FACTS_FILE: &str = "facts.json";

#[derive(Serialize, Deserialize)]
struct StoredFacts {
    busybox: StoredImage,
    busybox_oci: StoredImage,
    multilayer: StoredImage,
}

#[derive(Serialize, Deserialize)]
struct StoredImage {
    file: String,
    id: String,
    tag: String,
    diff_ids: Vec<String>,
    manifest_digest: Option<String>,
}

impl StoredImage {
    fn resolve(&self, dir: &Path) -> ImageFacts {
        ImageFacts {
            path: dir.join(&self.file),
            id: self.id.clone(),
            tag: self.tag.clone(),
            diff_ids: self.diff_ids.clone(),
            manifest_digest: self.manifest_digest.clone(),
        }
    }
}

/// The workspace root, known at compile time.
pub fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The test images, built on first use and shared by every test process on the machine.
///
/// Panics (it is a test helper) when they cannot be built, e.g. without
/// `/bin/busybox` (`scripts/install-deps.sh` installs `busybox-static`).
pub fn test_images() -> &'static TestImages {
    static IMAGES: OnceLock<TestImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let base = target_dir().join("testimages");
        build_test_images(&base, &busybox_binary())
            .unwrap_or_else(|e| panic!("building test images in {}: {e}", base.display()))
    })
}

/// `$ATOLL_TEST_BUSYBOX` or `/bin/busybox`: must be a static binary.
pub fn busybox_binary() -> PathBuf {
    std::env::var_os("ATOLL_TEST_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// Builds the images under `base/<key>/` unless a complete copy is there already.
pub fn build_test_images(base: &Path, busybox: &Path) -> io::Result<TestImages> {
    let busybox_bytes = std::fs::read(busybox).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "reading {}: {e} (install busybox-static: scripts/install-deps.sh)",
                busybox.display()
            ),
        )
    })?;
    let mut h = Sha256::new();
    h.update(CONTENT_VERSION.as_bytes());
    h.update(b"\0");
    h.update(oci_arch().as_bytes());
    h.update(b"\0");
    h.update(&busybox_bytes);
    let key = hex::encode(&h.finalize()[..8]);
    let dir = base.join(format!("v{CONTENT_VERSION}-{key}"));
    if let Some(images) = load_facts(&dir)? {
        return Ok(images);
    }
    std::fs::create_dir_all(base)?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(base)?;
    write_all_images(tmp.path(), &busybox_bytes)?;
    let tmp_path = tmp.keep();
    match std::fs::rename(&tmp_path, &dir) {
        Ok(()) => {}
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_path);
            // Another process won the race: its copy is complete (facts are written
            // before the rename).
            if load_facts(&dir)?.is_none() {
                return Err(e);
            }
        }
    }
    load_facts(&dir)?.ok_or_else(|| io::Error::other("test images vanished after building"))
}

fn load_facts(dir: &Path) -> io::Result<Option<TestImages>> {
    let bytes = match std::fs::read(dir.join(FACTS_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let f: StoredFacts = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
    Ok(Some(TestImages {
        dir: dir.to_path_buf(),
        busybox: f.busybox.resolve(dir),
        busybox_oci: f.busybox_oci.resolve(dir),
        multilayer: f.multilayer.resolve(dir),
    }))
}

fn write_all_images(dir: &Path, busybox: &[u8]) -> io::Result<()> {
    let base = busybox_layer(busybox)?;

    let bb_config = image_config(&[&base], "busybox");
    let bb = docker_save(
        &dir.join("busybox.tar"),
        &bb_config,
        std::slice::from_ref(&base),
        "busybox:latest",
    )?;
    let bb_oci = oci_archive(
        &dir.join("busybox-oci.tar"),
        &bb_config,
        std::slice::from_ref(&base),
        "busybox",
        "latest",
    )?;

    let (l1, l2, l3) = multilayer_layers(busybox)?;
    let ml_config = image_config(&[&l1, &l2, &l3], "multilayer");
    let ml = docker_save(
        &dir.join("layers.tar"),
        &ml_config,
        &[l1, l2, l3],
        "multilayer:latest",
    )?;

    let facts = StoredFacts {
        busybox: StoredImage {
            file: "busybox.tar".into(),
            ..bb
        },
        busybox_oci: StoredImage {
            file: "busybox-oci.tar".into(),
            ..bb_oci
        },
        multilayer: StoredImage {
            file: "layers.tar".into(),
            ..ml
        },
    };
    let mut f = std::fs::File::create(dir.join(FACTS_FILE))?;
    f.write_all(&serde_json::to_vec_pretty(&facts).map_err(io::Error::other)?)?;
    f.sync_all()
}

/// Fixed mtime for every entry (2023-11-14), so archives are reproducible.
const MTIME: u64 = 1_700_000_000;

/// Builds one tar in memory with fixed metadata.
struct TarBuf {
    b: tar::Builder<Vec<u8>>,
}

impl TarBuf {
    fn new() -> TarBuf {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        TarBuf { b }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(MTIME);
        h.set_size(0);
        h
    }

    fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.dir_owned(path, mode, 0)
    }

    fn dir_owned(&mut self, path: &str, mode: u32, uid: u64) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, mode, uid);
        self.b.append_data(&mut h, path, io::empty())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, 0);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target)
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        self.b.into_inner()
    }
}

/// One uncompressed layer and its diff_id.
#[derive(Clone)]
struct Layer {
    tar: Vec<u8>,
    diff_id: String,
}

impl Layer {
    fn new(tar: Vec<u8>) -> Layer {
        let diff_id = sha256_digest(&tar);
        Layer { tar, diff_id }
    }
}

/// Lower-case hex sha256 of `b`.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

fn busybox_rootfs(t: &mut TarBuf, busybox: &[u8]) -> io::Result<()> {
    for d in [
        "bin/", "dev/", "etc/", "home/", "proc/", "sys/", "usr/", "usr/bin/", "var/",
    ] {
        t.dir(d, 0o755)?;
    }
    t.dir_owned("home/user/", 0o755, 1000)?;
    t.dir("root/", 0o700)?;
    t.dir("tmp/", 0o1777)?;
    t.file("bin/busybox", 0o755, busybox)?;
    for a in BUSYBOX_APPLETS {
        t.symlink(&format!("bin/{a}"), "busybox")?;
    }
    // Scripts with `#!/usr/bin/env sh` work too.
    t.symlink("usr/bin/env", "/bin/busybox")?;
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n\
          user:x:1000:1000:user:/home/user:/bin/sh\n\
          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    t.file(
        "etc/group",
        0o644,
        b"root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
    )?;
    Ok(())
}

fn busybox_layer(busybox: &[u8]) -> io::Result<Layer> {
    let mut t = TarBuf::new();
    busybox_rootfs(&mut t, busybox)?;
    Ok(Layer::new(t.finish()?))
}

fn multilayer_layers(busybox: &[u8]) -> io::Result<(Layer, Layer, Layer)> {
    let mut t = TarBuf::new();
    busybox_rootfs(&mut t, busybox)?;
    t.dir("data/", 0o755)?;
    t.file("data/keep", 0o644, b"keep v1\n")?;
    t.file("data/gone", 0o644, b"gone\n")?;
    t.dir("opq/", 0o755)?;
    t.file("opq/old", 0o644, b"old\n")?;
    t.dir("opq/sub/", 0o755)?;
    t.file("opq/sub/deep", 0o644, b"deep\n")?;
    let l1 = Layer::new(t.finish()?);

    let mut t = TarBuf::new();
    t.dir("data/", 0o755)?;
    t.file("data/.wh.gone", 0o644, b"")?;
    t.dir("opq/", 0o755)?;
    t.file("opq/.wh..wh..opq", 0o644, b"")?;
    t.file("opq/new", 0o644, b"new\n")?;
    let l2 = Layer::new(t.finish()?);

    let mut t = TarBuf::new();
    t.dir("data/", 0o755)?;
    t.file("data/keep", 0o644, b"keep v3\n")?;
    t.file("data/third", 0o644, b"third\n")?;
    let l3 = Layer::new(t.finish()?);
    Ok((l1, l2, l3))
}

/// The OCI/Docker name of this machine's architecture.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn image_config(layers: &[&Layer], name: &str) -> Vec<u8> {
    let created = "2023-11-14T22:13:20Z";
    let history: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, _)| json!({"created": created, "created_by": format!("testkit {name} layer {}", i + 1)}))
        .collect();
    let cfg = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": created,
        "config": {
            "Env": [format!("PATH={IMAGE_PATH}")],
            "Cmd": ["sh"],
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": history,
    });
    // serde_json's Map is ordered by key (no preserve_order), so this is stable.
    serde_json::to_vec(&cfg).unwrap_or_default()
}

/// Writes a tar of `(name, bytes)` files (dirs are implied by `name/` entries).
fn write_outer_tar(path: &Path, entries: &[(String, Vec<u8>)]) -> io::Result<()> {
    let mut t = TarBuf::new();
    for (name, data) in entries {
        if name.ends_with('/') {
            t.dir(name, 0o755)?;
        } else {
            t.file(name, 0o644, data)?;
        }
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&t.finish()?)?;
    f.sync_all()
}

/// `docker save`'s legacy layout.
fn docker_save(path: &Path, config: &[u8], layers: &[Layer], tag: &str) -> io::Result<StoredImage> {
    let config_hex = sha256_hex(config);
    let mut entries = Vec::new();
    let mut parent: Option<String> = None;
    let mut layer_paths = Vec::new();
    for l in layers {
        // v1-style layer id: a chain over the diff_ids, so it is unique per position.
        let id =
            sha256_hex(format!("{}\n{}", parent.as_deref().unwrap_or(""), l.diff_id).as_bytes());
        let mut v1 = json!({"id": id, "created": "2023-11-14T22:13:20Z", "os": "linux"});
        if let Some(p) = &parent {
            v1["parent"] = json!(p);
        }
        entries.push((format!("{id}/"), Vec::new()));
        entries.push((format!("{id}/VERSION"), b"1.0".to_vec()));
        entries.push((
            format!("{id}/json"),
            serde_json::to_vec(&v1).unwrap_or_default(),
        ));
        entries.push((format!("{id}/layer.tar"), l.tar.clone()));
        layer_paths.push(format!("{id}/layer.tar"));
        parent = Some(id);
    }
    entries.push((format!("{config_hex}.json"), config.to_vec()));
    let manifest = json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [tag],
        "Layers": layer_paths,
    }]);
    entries.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap_or_default(),
    ));
    let (repo, t) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    let repositories = json!({ repo: { t: parent.unwrap_or_default() } });
    entries.push((
        "repositories".into(),
        serde_json::to_vec(&repositories).unwrap_or_default(),
    ));
    write_outer_tar(path, &entries)?;
    Ok(StoredImage {
        file: String::new(),
        id: format!("sha256:{config_hex}"),
        tag: tag.to_string(),
        diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        manifest_digest: None,
    })
}

/// An OCI image layout with gzip layers.
fn oci_archive(
    path: &Path,
    config: &[u8],
    layers: &[Layer],
    repo: &str,
    tag: &str,
) -> io::Result<StoredImage> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layer_descs = Vec::new();
    for l in layers {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&l.tar)?;
        let gz = gz.finish()?;
        layer_descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256_digest(&gz),
            "size": gz.len(),
        }));
        blobs.push((sha256_hex(&gz), gz));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(config),
            "size": config.len(),
        },
        "layers": layer_descs,
    }))
    .unwrap_or_default();
    let manifest_digest = sha256_digest(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": format!("docker.io/library/{repo}:{tag}"),
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    blobs.push((sha256_hex(config), config.to_vec()));
    blobs.push((sha256_hex(&manifest), manifest.clone()));

    let mut entries = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".to_string(),
            serde_json::to_vec(&index).unwrap_or_default(),
        ),
        ("blobs/".to_string(), Vec::new()),
        ("blobs/sha256/".to_string(), Vec::new()),
    ];
    for (hex, data) in blobs {
        entries.push((format!("blobs/sha256/{hex}"), data));
    }
    write_outer_tar(path, &entries)?;
    Ok(StoredImage {
        file: String::new(),
        id: sha256_digest(config),
        tag: format!("{repo}:{tag}"),
        diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        manifest_digest: Some(manifest_digest),
    })
}
