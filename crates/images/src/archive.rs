//! `docker load` and `docker save`.
//!
//! Load accepts the legacy docker-save layout (manifest.json + `<id>/layer.tar`), the
//! Docker 25+ layout (manifest.json plus an OCI layout) and plain OCI image layouts,
//! optionally gzip/zstd compressed as a whole. The tar is streamed: every regular
//! file goes into the blob store as it passes (manifest.json may come last), then
//! the manifests are interpreted. Blobs this load added that no loaded image uses are
//! removed again, and on failure every blob it added is removed.
//!
//! Save writes the Docker 25+ layout, which old and new `docker load` both read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Seek, Write};

use crate::blobstore::BlobStore;
use crate::compress::{self, Compression, copy_entry, drain, read_error, tar_stream};
use crate::config::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, DocumentKind, ImageConfig,
    ImageIndex, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_ZSTD,
    MEDIA_TYPE_OCI_MANIFEST, Manifest, OciLayout, SaveManifestEntry, document_kind,
    is_index_media_type,
};
use crate::digest::{Digest, HashingWriter};
use crate::error::{ImageError, Result};
use crate::layer::{clean_path, diff_id_of};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedLayer {
    /// The stored blob (compressed or not).
    pub blob: Digest,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the stored blob in bytes.
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// Digest of the config blob: the image ID.
    pub config: Digest,
    pub layers: Vec<LoadedLayer>,
    /// Names from the archive, as written there (e.g. `busybox:latest` or
    /// `docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
}

/// One image for [`save_archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveImage {
    pub config: Digest,
    /// `(blob, diff_id)` per layer, bottom first.
    pub layers: Vec<(Digest, Digest)>,
    pub repo_tags: Vec<String>,
}

/// The platform picked from multi-platform indexes.
const OS: &str = "linux";
const ARCH: &str = "amd64";
/// Index → index → manifest nesting deeper than this is refused.
const MAX_NESTING: usize = 4;
/// The most bytes of a manifest, an index or `manifest.json` (as a registry's).
const MANIFEST_MAX: u64 = crate::registry::MANIFEST_MAX as u64;

pub fn load_archive<R: Read>(reader: R, store: &BlobStore) -> Result<Vec<LoadedImage>> {
    let mut created: HashSet<Digest> = HashSet::new();
    let result = load_inner(reader, store, &mut created);
    let keep: HashSet<&Digest> = match &result {
        Ok(images) => images
            .iter()
            .flat_map(|i| std::iter::once(&i.config).chain(i.layers.iter().map(|l| &l.blob)))
            .collect(),
        Err(_) => HashSet::new(),
    };
    for d in created.iter().filter(|d| !keep.contains(d)) {
        if let Err(e) = store.delete(d) {
            tracing::warn!("removing blob {d} after load: {e}");
        }
    }
    result
}

/// What the archive held: regular files by (cleaned) path, and links by path.
#[derive(Default)]
struct Contents {
    files: HashMap<String, Digest>,
    links: HashMap<String, String>,
}

impl Contents {
    /// The blob of a path, following symlinks and hardlinks within the archive.
    fn resolve(&self, path: &str) -> Option<&Digest> {
        let mut p = clean_archive_path(path.as_bytes()).ok()?;
        for _ in 0..40 {
            if let Some(d) = self.files.get(&p) {
                return Some(d);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    fn require(&self, path: &str) -> Result<&Digest> {
        self.resolve(path)
            .ok_or_else(|| ImageError::archive(format!("archive is missing {path}")))
    }

    fn blob(&self, d: &Digest) -> Result<&Digest> {
        let path = format!("blobs/sha256/{}", d.hex());
        let got = self
            .resolve(&path)
            .ok_or_else(|| ImageError::archive(format!("archive is missing blob {d}")))?;
        if got != d {
            return Err(ImageError::DigestMismatch {
                expected: d.clone(),
                actual: got.clone(),
            });
        }
        Ok(got)
    }
}

fn clean_archive_path(raw: &[u8]) -> std::result::Result<String, &'static str> {
    let p = clean_path(raw)?;
    Ok(p.to_string_lossy().into_owned())
}

fn load_inner<R: Read>(
    reader: R,
    store: &BlobStore,
    created: &mut HashSet<Digest>,
) -> Result<Vec<LoadedImage>> {
    let contents = ingest(reader, store, created)?;
    if contents.resolve("manifest.json").is_some() {
        load_docker(&contents, store)
    } else if contents.resolve("index.json").is_some() {
        load_oci(&contents, store)
    } else {
        Err(ImageError::archive(
            "archive contains no manifest.json or index.json",
        ))
    }
}

/// Streams the tar into the blob store.
fn ingest<R: Read>(
    reader: R,
    store: &BlobStore,
    created: &mut HashSet<Digest>,
) -> Result<Contents> {
    let mut c = Contents::default();
    let mut ar = tar::Archive::new(tar_stream(reader)?);
    for entry in ar.entries().map_err(read_error)? {
        let mut e = entry.map_err(read_error)?;
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let path = clean_archive_path(&raw)
            .map_err(|r| ImageError::archive(format!("invalid path {shown:?} in archive: {r}")))?;
        use tar::EntryType as T;
        match e.header().entry_type() {
            T::Regular | T::Continuous => {
                let size = e.size();
                let mut w = store.writer()?;
                copy_entry(&mut e, size, &mut w)?;
                let (d, new) = w.commit_created(None)?;
                if new {
                    created.insert(d.clone());
                }
                c.links.remove(&path);
                c.files.insert(path, d);
            }
            T::Symlink | T::Link => {
                let Some(target) = e.link_name_bytes().map(|l| l.into_owned()) else {
                    continue;
                };
                let joined = if e.header().entry_type() == T::Symlink && !target.starts_with(b"/") {
                    // Relative to the link's directory.
                    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    let mut j = dir.as_bytes().to_vec();
                    j.push(b'/');
                    j.extend_from_slice(&target);
                    j
                } else {
                    target.iter().skip_while(|b| **b == b'/').copied().collect()
                };
                // Links leading out of the archive simply do not resolve.
                if let Ok(t) = clean_archive_path(&joined) {
                    c.files.remove(&path);
                    c.links.insert(path, t);
                }
            }
            _ => {}
        }
    }
    let mut rest = ar.into_inner();
    drain(&mut rest)?;
    Ok(c)
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::json(what, e))
}

/// The media type a stored layer blob should be recorded with.
fn sniff_layer(store: &BlobStore, blob: &Digest) -> Result<Compression> {
    let f = store.open_blob(blob)?;
    Ok(compress::sniff(f)?.0)
}

/// Checks a layer blob against the diff_id the config gives it.
fn verify_layer(store: &BlobStore, blob: &Digest, diff_id: &Digest, index: usize) -> Result<()> {
    let actual = match sniff_layer(store, blob)? {
        Compression::None => blob.clone(),
        _ => diff_id_of(store.open_blob(blob)?)?,
    };
    if actual != *diff_id {
        return Err(ImageError::archive(format!(
            "invalid diffID for layer {index}: expected {diff_id}, got {actual}"
        )));
    }
    Ok(())
}

fn read_config(store: &BlobStore, config: &Digest) -> Result<ImageConfig> {
    parse_json(
        "invalid image config",
        &store.read_document(config, crate::registry::CONFIG_MAX, "an image config")?,
    )
}

fn check_layer_count(cfg: &ImageConfig, layers: usize) -> Result<()> {
    if cfg.rootfs.diff_ids.len() != layers {
        return Err(ImageError::archive(format!(
            "invalid manifest, layers length mismatch: expected {}, got {}",
            cfg.rootfs.diff_ids.len(),
            layers
        )));
    }
    Ok(())
}

/// Legacy and Docker 25+ saves: driven by manifest.json.
fn load_docker(c: &Contents, store: &BlobStore) -> Result<Vec<LoadedImage>> {
    let manifest: Vec<SaveManifestEntry> = parse_json(
        "invalid manifest.json",
        &store.read_document(c.require("manifest.json")?, MANIFEST_MAX, "manifest.json")?,
    )?;
    let mut out = Vec::new();
    for entry in manifest {
        let config = c.require(&entry.config)?.clone();
        let cfg = read_config(store, &config)?;
        check_layer_count(&cfg, entry.layers.len())?;
        let mut layers = Vec::new();
        for (i, (path, diff_id)) in entry.layers.iter().zip(&cfg.rootfs.diff_ids).enumerate() {
            let blob = c.require(path)?.clone();
            verify_layer(store, &blob, diff_id, i)?;
            let media_type = match sniff_layer(store, &blob)? {
                Compression::None => MEDIA_TYPE_DOCKER_LAYER,
                Compression::Gzip => MEDIA_TYPE_DOCKER_LAYER_GZIP,
                Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
            };
            layers.push(LoadedLayer {
                size: store.size(&blob)?,
                blob,
                diff_id: diff_id.clone(),
                media_type: media_type.to_string(),
            });
        }
        out.push(LoadedImage {
            config,
            layers,
            repo_tags: entry.repo_tags,
        });
    }
    Ok(out)
}

/// Plain OCI layouts: driven by index.json.
fn load_oci(c: &Contents, store: &BlobStore) -> Result<Vec<LoadedImage>> {
    let index: ImageIndex = parse_json(
        "invalid index.json",
        &store.read_document(c.require("index.json")?, MANIFEST_MAX, "index.json")?,
    )?;
    let mut out: Vec<LoadedImage> = Vec::new();
    for desc in &index.manifests {
        let Some((config, layers)) = resolve_image(c, store, desc, 0)? else {
            continue;
        };
        let tags = tags_of(desc);
        // One image named by several descriptors: merge the names.
        if let Some(existing) = out
            .iter_mut()
            .find(|i| i.config == config && i.layers == layers)
        {
            for t in tags {
                if !existing.repo_tags.contains(&t) {
                    existing.repo_tags.push(t);
                }
            }
            continue;
        }
        out.push(LoadedImage {
            config,
            layers,
            repo_tags: tags,
        });
    }
    Ok(out)
}

/// Image names carried by an index.json entry.
fn tags_of(desc: &Descriptor) -> Vec<String> {
    if let Some(n) = desc.annotation(ANNOTATION_CONTAINERD_NAME) {
        return vec![n.to_string()];
    }
    match desc.annotation(ANNOTATION_REF_NAME) {
        // OCI allows a bare tag here, which names nothing without a repository.
        Some(r) if r.contains(':') || r.contains('/') => vec![r.to_string()],
        _ => Vec::new(),
    }
}

/// Follows a descriptor down to one image (picking linux/amd64 from indexes).
/// `None` for artifacts that are not container images.
fn resolve_image(
    c: &Contents,
    store: &BlobStore,
    desc: &Descriptor,
    depth: usize,
) -> Result<Option<(Digest, Vec<LoadedLayer>)>> {
    if depth > MAX_NESTING {
        return Err(ImageError::archive("image index nesting is too deep"));
    }
    let blob = c.blob(&desc.digest)?;
    let bytes = store.read_document(blob, MANIFEST_MAX, "an image manifest or index")?;
    let kind = if is_index_media_type(&desc.media_type) {
        DocumentKind::Index
    } else if desc.media_type.is_empty() {
        document_kind(&bytes)
    } else if crate::config::is_manifest_media_type(&desc.media_type) {
        DocumentKind::Manifest
    } else {
        DocumentKind::Unknown
    };
    match kind {
        DocumentKind::Index => {
            let idx: ImageIndex = parse_json("invalid image index", &bytes)?;
            let Some(sub) = idx.select(OS, ARCH, None) else {
                return Err(ImageError::NotFound(format!(
                    "no image for {OS}/{ARCH} in the archive's index {}",
                    desc.digest
                )));
            };
            resolve_image(c, store, sub, depth + 1)
        }
        DocumentKind::Manifest => {
            let m: Manifest = parse_json("invalid image manifest", &bytes)?;
            let cmt = m.config.media_type.as_str();
            if !(cmt.is_empty() || cmt == MEDIA_TYPE_OCI_CONFIG || cmt == MEDIA_TYPE_DOCKER_CONFIG)
            {
                tracing::debug!("skipping non-image manifest {} ({cmt})", desc.digest);
                return Ok(None);
            }
            let config = c.blob(&m.config.digest)?.clone();
            let cfg = read_config(store, &config)?;
            check_layer_count(&cfg, m.layers.len())?;
            let mut layers = Vec::new();
            for (i, (l, diff_id)) in m.layers.iter().zip(&cfg.rootfs.diff_ids).enumerate() {
                let blob = c.blob(&l.digest)?.clone();
                verify_layer(store, &blob, diff_id, i)?;
                let media_type = if l.media_type.is_empty() {
                    MEDIA_TYPE_OCI_LAYER.to_string()
                } else {
                    l.media_type.clone()
                };
                layers.push(LoadedLayer {
                    size: store.size(&blob)?,
                    blob,
                    diff_id: diff_id.clone(),
                    media_type,
                });
            }
            Ok(Some((config, layers)))
        }
        DocumentKind::Unknown => {
            tracing::debug!("skipping unknown index entry {}", desc.digest);
            Ok(None)
        }
    }
}

/// A name as containerd writes it: `docker.io/library/busybox:latest`.
fn full_name(tag: &str) -> String {
    let (first, _) = tag.split_once('/').unwrap_or(("", tag));
    let mut s = if first.contains('.') || first.contains(':') || first == "localhost" {
        tag.to_string()
    } else if tag.contains('/') {
        format!("docker.io/{tag}")
    } else {
        format!("docker.io/library/{tag}")
    };
    let last = s.rsplit('/').next().unwrap_or("");
    if !last.contains(':') && !last.contains('@') {
        s.push_str(":latest");
    }
    s
}

/// The tag part of a name, for the OCI ref.name annotation.
fn tag_part(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, t)) => t.split('@').next().unwrap_or(t).to_string(),
        None => "latest".to_string(),
    }
}

struct Saver<W: Write> {
    tar: tar::Builder<W>,
    written: HashSet<Digest>,
}

impl<W: Write> Saver<W> {
    fn header(path: &str, size: u64, kind: tar::EntryType) -> Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_path(path)?;
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        Ok(h)
    }

    fn file<R: Read>(&mut self, path: &str, size: u64, data: R) -> Result<()> {
        let h = Self::header(path, size, tar::EntryType::Regular)?;
        self.tar.append(&h, data)?;
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let h = Self::header(path, 0, tar::EntryType::Directory)?;
        self.tar.append(&h, io::empty())?;
        Ok(())
    }

    fn bytes_blob(&mut self, d: &Digest, bytes: &[u8]) -> Result<()> {
        if self.written.insert(d.clone()) {
            self.file(&blob_path(d), bytes.len() as u64, bytes)?;
        }
        Ok(())
    }

    /// Writes a layer uncompressed (its digest is then the diff_id); returns its size.
    fn layer(&mut self, store: &BlobStore, blob: &Digest, diff_id: &Digest) -> Result<u64> {
        if store.has(diff_id) {
            // The uncompressed tar is itself stored.
            let size = store.size(diff_id)?;
            if self.written.insert(diff_id.clone()) {
                self.file(&blob_path(diff_id), size, store.open_blob(diff_id)?)?;
            }
            return Ok(size);
        }
        let (comp, _) = compress::sniff(store.open_blob(blob)?)?;
        if comp == Compression::None {
            return Err(ImageError::DigestMismatch {
                expected: diff_id.clone(),
                actual: blob.clone(),
            });
        }
        // The tar header needs the size first: spool the decompressed layer.
        let mut spool = store.temp_file()?;
        let mut hw = HashingWriter::new(io::BufWriter::new(spool.as_file_mut()));
        let mut src = tar_stream(store.open_blob(blob)?)?;
        io::copy(&mut src, &mut hw).map_err(read_error)?;
        let size = hw.bytes_written();
        let (mut w, actual) = hw.finish();
        w.flush()?;
        drop(w);
        if actual != *diff_id {
            return Err(ImageError::DigestMismatch {
                expected: diff_id.clone(),
                actual,
            });
        }
        if self.written.insert(diff_id.clone()) {
            let f = spool.as_file_mut();
            f.rewind()?;
            self.file(&blob_path(diff_id), size, io::BufReader::new(f))?;
        }
        Ok(size)
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Writes `images` as a Docker 25+ save archive (OCI layout + manifest.json).
pub fn save_archive<W: Write>(images: &[SaveImage], store: &BlobStore, out: W) -> Result<()> {
    let mut s = Saver {
        tar: tar::Builder::new(out),
        written: HashSet::new(),
    };
    s.dir("blobs/")?;
    s.dir("blobs/sha256/")?;
    let mut index = Vec::new();
    let mut docker_manifest = Vec::new();
    for img in images {
        let cfg = store.read(&img.config)?;
        let actual = Digest::of(&cfg);
        if actual != img.config {
            return Err(ImageError::DigestMismatch {
                expected: img.config.clone(),
                actual,
            });
        }
        s.bytes_blob(&img.config, &cfg)?;
        let mut layer_descs = Vec::new();
        let mut layer_paths = Vec::new();
        for (blob, diff_id) in &img.layers {
            let size = s.layer(store, blob, diff_id)?;
            layer_descs.push(Descriptor::new(MEDIA_TYPE_OCI_LAYER, diff_id.clone(), size));
            layer_paths.push(blob_path(diff_id));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(MEDIA_TYPE_OCI_CONFIG, img.config.clone(), cfg.len() as u64),
            layers: layer_descs,
            subject: None,
            annotations: None,
            extra: Default::default(),
        };
        let mbytes = to_json(&manifest)?;
        let mdigest = Digest::of(&mbytes);
        s.bytes_blob(&mdigest, &mbytes)?;
        let desc = Descriptor::new(MEDIA_TYPE_OCI_MANIFEST, mdigest, mbytes.len() as u64);
        if img.repo_tags.is_empty() {
            index.push(desc.clone());
        }
        for t in &img.repo_tags {
            let mut d = desc.clone();
            let full = full_name(t);
            d.annotations = Some(BTreeMap::from([
                (ANNOTATION_REF_NAME.to_string(), tag_part(&full)),
                (ANNOTATION_CONTAINERD_NAME.to_string(), full),
            ]));
            index.push(d);
        }
        docker_manifest.push(SaveManifestEntry {
            config: blob_path(&img.config),
            repo_tags: img.repo_tags.clone(),
            layers: layer_paths,
            layer_sources: None,
            extra: Default::default(),
        });
    }
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_OCI_INDEX.into()),
        artifact_type: None,
        manifests: index,
        subject: None,
        annotations: None,
        extra: Default::default(),
    };
    let layout = to_json(&OciLayout::default())?;
    let index = to_json(&index)?;
    let manifest = to_json(&docker_manifest)?;
    s.file("oci-layout", layout.len() as u64, &layout[..])?;
    s.file("index.json", index.len() as u64, &index[..])?;
    s.file("manifest.json", manifest.len() as u64, &manifest[..])?;
    let mut out = s.tar.into_inner()?;
    out.flush()?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| io::Error::other(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::tests::{raw, tar_of};
    use serde_json::json;
    use tar::EntryType;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        (dir, s)
    }

    fn layer(name: &str, content: &[u8]) -> Vec<u8> {
        tar_of(|b| raw(b, name, EntryType::Regular, content, None))
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn config_for(diff_ids: &[Digest]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "unknown_future_field": true,
        }))
        .unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        raw(b, name, EntryType::Regular, data, None);
    }

    /// A legacy `docker save` (Docker < 25): manifest.json last, a duplicate layer
    /// stored as a symlink, per-layer `json`/`VERSION` files.
    fn legacy_archive() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let l1 = layer("a", b"first");
        let l2 = layer("b", b"second");
        let d1 = Digest::of(&l1);
        let d2 = Digest::of(&l2);
        let cfg = config_for(&[d1.clone(), d2.clone(), d1.clone()]);
        let cfg_name = format!("{}.json", Digest::of(&cfg).hex());
        let manifest = json!([{
            "Config": cfg_name,
            "RepoTags": ["busybox:latest", "example.com/x/y:1"],
            "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
        }]);
        let tar = tar_of(|b| {
            raw(b, "aaa/", EntryType::Directory, b"", None);
            file(b, "aaa/VERSION", b"1.0");
            file(b, "aaa/json", b"{\"id\":\"aaa\"}");
            file(b, "aaa/layer.tar", &l1);
            raw(b, "bbb/", EntryType::Directory, b"", None);
            file(b, "bbb/layer.tar", &l2);
            raw(b, "ccc/", EntryType::Directory, b"", None);
            raw(
                b,
                "ccc/layer.tar",
                EntryType::Symlink,
                b"",
                Some("../aaa/layer.tar"),
            );
            file(b, &cfg_name, &cfg);
            file(b, "repositories", b"{}");
            file(b, "manifest.json", manifest.to_string().as_bytes());
        });
        (tar, l1, cfg)
    }

    #[test]
    fn loads_legacy_save_and_removes_unused_blobs() {
        let (_d, s) = store();
        let (tar, l1, cfg) = legacy_archive();
        let imgs = load_archive(&tar[..], &s).unwrap();
        assert_eq!(imgs.len(), 1);
        let img = &imgs[0];
        assert_eq!(img.config, Digest::of(&cfg));
        assert_eq!(img.repo_tags, vec!["busybox:latest", "example.com/x/y:1"]);
        assert_eq!(img.layers.len(), 3);
        assert_eq!(img.layers[0].blob, Digest::of(&l1));
        assert_eq!(img.layers[2].blob, Digest::of(&l1));
        assert_eq!(img.layers[0].diff_id, img.layers[0].blob);
        assert_eq!(img.layers[0].size, l1.len() as u64);
        assert_eq!(img.layers[0].media_type, MEDIA_TYPE_DOCKER_LAYER);
        // Only the config and the two distinct layers remain.
        let mut want = vec![
            img.config.clone(),
            img.layers[0].blob.clone(),
            img.layers[1].blob.clone(),
        ];
        want.sort();
        assert_eq!(s.list().unwrap(), want);
        // The config bytes are kept exactly (the image ID is their digest).
        assert_eq!(s.read(&img.config).unwrap(), cfg);
    }

    #[test]
    fn documents_past_their_size_are_refused_unread() {
        let (_d, s) = store();
        // A small compressed archive holding a huge "config" (whitespace
        // that would parse): refused by its size, and nothing is kept.
        let l1 = layer("a", b"first");
        let mut cfg = config_for(&[Digest::of(&l1)]);
        cfg.extend(std::iter::repeat_n(b' ', 33 << 20));
        let cfg_name = format!("{}.json", Digest::of(&cfg).hex());
        let manifest = json!([{"Config": cfg_name, "RepoTags": ["big:1"], "Layers": ["l.tar"]}]);
        let tar = gz(&tar_of(|b| {
            file(b, "l.tar", &l1);
            file(b, &cfg_name, &cfg);
            file(b, "manifest.json", manifest.to_string().as_bytes());
        }));
        assert!(tar.len() < 1 << 20, "{}", tar.len());
        let err = load_archive(&tar[..], &s).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "an image config is {} bytes, more than the 33554432 allowed",
                cfg.len()
            )),
            "{err}"
        );
        assert!(s.list().unwrap().is_empty());
        // The same for manifest.json itself.
        let mut big = manifest.to_string().into_bytes();
        big.extend(std::iter::repeat_n(b' ', 5 << 20));
        let tar = tar_of(|b| file(b, "manifest.json", &big));
        let err = load_archive(&tar[..], &s).unwrap_err().to_string();
        assert!(err.contains("manifest.json is"), "{err}");
        // Positive control: the same archive with a normal config loads.
        let (tar, _, _) = legacy_archive();
        assert_eq!(load_archive(&tar[..], &s).unwrap().len(), 1);
    }

    #[test]
    fn whole_archive_compression_is_detected() {
        let (tar, _, cfg) = legacy_archive();
        for packed in [gz(&tar), zstd::encode_all(&tar[..], 3).unwrap()] {
            let (_d, s) = store();
            let imgs = load_archive(&packed[..], &s).unwrap();
            assert_eq!(imgs[0].config, Digest::of(&cfg));
        }
    }

    /// A plain OCI layout with a multi-platform index and gzip layers.
    fn oci_archive() -> (Vec<u8>, Digest, Digest) {
        let amd = layer("amd", b"amd64 bits");
        let arm = layer("arm", b"arm64 bits");
        let amd_gz = gz(&amd);
        let arm_gz = gz(&arm);
        let amd_cfg = config_for(&[Digest::of(&amd)]);
        let arm_cfg = config_for(&[Digest::of(&arm)]);
        let manifest = |cfg: &[u8], l: &[u8]| {
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": Digest::of(cfg), "size": cfg.len()},
                "layers": [{"mediaType": crate::config::MEDIA_TYPE_OCI_LAYER_GZIP, "digest": Digest::of(l), "size": l.len()}],
            }))
            .unwrap()
        };
        let m_amd = manifest(&amd_cfg, &amd_gz);
        let m_arm = manifest(&arm_cfg, &arm_gz);
        let nested = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": Digest::of(&m_arm), "size": m_arm.len(),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": Digest::of(&m_amd), "size": m_amd.len(),
                 "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }))
        .unwrap();
        let index = json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": MEDIA_TYPE_OCI_INDEX, "digest": Digest::of(&nested), "size": nested.len(),
                 "annotations": {ANNOTATION_REF_NAME: "3.19"}},
                {"mediaType": MEDIA_TYPE_OCI_INDEX, "digest": Digest::of(&nested), "size": nested.len(),
                 "annotations": {ANNOTATION_CONTAINERD_NAME: "docker.io/library/alpine:3.19", ANNOTATION_REF_NAME: "3.19"}},
                {"mediaType": MEDIA_TYPE_OCI_INDEX, "digest": Digest::of(&nested), "size": nested.len(),
                 "annotations": {ANNOTATION_REF_NAME: "example.com/alpine:latest"}},
            ],
        });
        let tar = tar_of(|b| {
            file(b, "index.json", index.to_string().as_bytes());
            file(b, "oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}");
            for blob in [
                &amd_gz, &arm_gz, &amd_cfg, &arm_cfg, &m_amd, &m_arm, &nested,
            ] {
                file(b, &format!("blobs/sha256/{}", Digest::of(blob).hex()), blob);
            }
        });
        (tar, Digest::of(&amd_cfg), Digest::of(&amd_gz))
    }

    #[test]
    fn loads_oci_layout_picking_amd64() {
        let (_d, s) = store();
        let (tar, cfg, layer_gz) = oci_archive();
        let imgs = load_archive(&tar[..], &s).unwrap();
        assert_eq!(imgs.len(), 1, "{imgs:?}");
        let img = &imgs[0];
        assert_eq!(img.config, cfg);
        assert_eq!(
            img.repo_tags,
            vec!["docker.io/library/alpine:3.19", "example.com/alpine:latest"]
        );
        assert_eq!(img.layers[0].blob, layer_gz);
        assert_eq!(
            img.layers[0].media_type,
            crate::config::MEDIA_TYPE_OCI_LAYER_GZIP
        );
        assert_ne!(img.layers[0].diff_id, img.layers[0].blob);
        // arm64 blobs, manifests, index.json, oci-layout: all gone.
        let mut want = vec![cfg, layer_gz];
        want.sort();
        assert_eq!(s.list().unwrap(), want);
    }

    #[test]
    fn save_then_load_round_trip_decompresses_layers() {
        let (_d, s) = store();
        let l1 = layer("one", b"1111");
        let l2 = layer("two", b"2222");
        let b1 = s.put_bytes(&gz(&l1)).unwrap();
        let b2 = s.put_bytes(&zstd::encode_all(&l2[..], 3).unwrap()).unwrap();
        let d1 = Digest::of(&l1);
        let d2 = Digest::of(&l2);
        let cfg = s.put_bytes(&config_for(&[d1.clone(), d2.clone()])).unwrap();
        let plain = s.put_bytes(&l1).unwrap();
        let cfg2 = s.put_bytes(&config_for(std::slice::from_ref(&d1))).unwrap();
        let images = vec![
            SaveImage {
                config: cfg.clone(),
                layers: vec![(b1.clone(), d1.clone()), (b2.clone(), d2.clone())],
                repo_tags: vec!["busybox:latest".into(), "me/app:v1".into()],
            },
            SaveImage {
                config: cfg2.clone(),
                layers: vec![(plain.clone(), d1.clone())],
                repo_tags: vec![],
            },
        ];
        let mut out = Vec::new();
        save_archive(&images, &s, &mut out).unwrap();

        // The archive holds exactly the expected files; layers uncompressed.
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&out[..]);
        let mut index = None;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            if p == "index.json" {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                index = Some(v);
            }
            names.push(p);
        }
        for d in [&d1, &d2, &cfg, &cfg2] {
            assert!(names.contains(&blob_path(d)), "{names:?}");
        }
        assert!(!names.contains(&blob_path(&b1)));
        for f in ["oci-layout", "index.json", "manifest.json"] {
            assert!(names.contains(&f.to_string()));
        }
        let index: ImageIndex = serde_json::from_slice(&index.unwrap()).unwrap();
        assert_eq!(index.manifests.len(), 3);
        assert_eq!(
            index.manifests[0].annotation(ANNOTATION_CONTAINERD_NAME),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            index.manifests[1].annotation(ANNOTATION_REF_NAME),
            Some("v1")
        );
        assert_eq!(
            index.manifests[1].annotation(ANNOTATION_CONTAINERD_NAME),
            Some("docker.io/me/app:v1")
        );

        // Load into a fresh store.
        let (_d2, s2) = store();
        let loaded = load_archive(&out[..], &s2).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].config, cfg);
        assert_eq!(loaded[0].repo_tags, vec!["busybox:latest", "me/app:v1"]);
        let blobs: Vec<_> = loaded[0].layers.iter().map(|l| l.blob.clone()).collect();
        assert_eq!(blobs, vec![d1.clone(), d2.clone()]);
        assert_eq!(loaded[1].config, cfg2);
        assert!(loaded[1].repo_tags.is_empty());
        assert_eq!(s2.read(&cfg).unwrap(), s.read(&cfg).unwrap());
        let mut want = vec![d1, d2, cfg, cfg2];
        want.sort();
        assert_eq!(s2.list().unwrap(), want);
    }

    #[test]
    fn save_refuses_inconsistent_layers() {
        let (_d, s) = store();
        let l1 = layer("one", b"1111");
        let b1 = s.put_bytes(&gz(&l1)).unwrap();
        let cfg = s.put_bytes(&config_for(&[Digest::of(b"x")])).unwrap();
        let img = SaveImage {
            config: cfg,
            layers: vec![(b1, Digest::of(b"x"))],
            repo_tags: vec![],
        };
        let err = save_archive(&[img], &s, Vec::new()).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
        assert_eq!(std::fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn failures_remove_only_what_the_load_added() {
        let (tar, l1, _) = legacy_archive();
        let bad_count = {
            let l = layer("a", b"first");
            let cfg = config_for(&[Digest::of(&l), Digest::of(&l)]);
            let name = format!("{}.json", Digest::of(&cfg).hex());
            tar_of(|b| {
                file(b, "x/layer.tar", &l);
                file(b, &name, &cfg);
                file(
                    b,
                    "manifest.json",
                    json!([{"Config": name, "Layers": ["x/layer.tar"]}])
                        .to_string()
                        .as_bytes(),
                );
            })
        };
        let bad_diff = {
            let l = layer("a", b"first");
            let cfg = config_for(&[Digest::of(b"something else")]);
            let name = format!("{}.json", Digest::of(&cfg).hex());
            tar_of(|b| {
                file(b, "x/layer.tar", &l);
                file(b, &name, &cfg);
                file(
                    b,
                    "manifest.json",
                    json!([{"Config": name, "Layers": ["x/layer.tar"]}])
                        .to_string()
                        .as_bytes(),
                );
            })
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "truncated",
                tar[..tar.len() / 2 + 100].to_vec(),
                "unexpected EOF",
            ),
            ("truncated gzip", gz(&tar)[..300].to_vec(), "unexpected EOF"),
            ("garbage", b"garbage!".repeat(200), "invalid tar header"),
            (
                "no manifest",
                tar_of(|b| file(b, "x/layer.tar", &l1)),
                "archive contains no manifest.json or index.json",
            ),
            (
                "bad json",
                tar_of(|b| {
                    file(b, "x/layer.tar", &l1);
                    file(b, "manifest.json", b"{\"Config\": 1}");
                }),
                "invalid manifest.json: json: cannot unmarshal",
            ),
            (
                "missing layer",
                tar_of(|b| {
                    file(b, "manifest.json", br#"[{"Config":"c.json","Layers":[]}]"#);
                }),
                "archive is missing c.json",
            ),
            (
                "count mismatch",
                bad_count,
                "invalid manifest, layers length mismatch: expected 2, got 1",
            ),
            ("diff mismatch", bad_diff, "invalid diffID for layer 0"),
        ];
        for (what, data, want) in cases {
            let (_d, s) = store();
            // A blob that was there before must survive a failed load that also has it.
            let pre = s.put_bytes(&l1).unwrap();
            let err = load_archive(&data[..], &s).unwrap_err();
            assert!(err.to_string().contains(want), "{what}: {err}");
            assert_eq!(s.list().unwrap(), vec![pre], "{what}: leftovers");
            assert_eq!(std::fs::read_dir(s.tmp_dir()).unwrap().count(), 0, "{what}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(full_name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full_name("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(full_name("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(full_name("ghcr.io/a/b:c"), "ghcr.io/a/b:c");
        assert_eq!(tag_part("localhost:5000/app:latest"), "latest");
        assert_eq!(tag_part("docker.io/me/app:v1"), "v1");
    }
}
