//! Content-addressed blob storage on the local filesystem: `root/sha256/<hex>`.
//! Every write is hashed and verified; files appear only complete (fsync + rename),
//! so a crash can leave at most stale files in `root/tmp`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::NamedTempFile;

use crate::digest::{Digest, HashingWriter};
use crate::error::{ImageError, Result};

/// Temp files older than this when the store is opened are leftovers of a crash.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// At most this much of a blob's origins file is read.
const ORIGINS_MAX: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<BlobStore> {
        fs::create_dir_all(root.join("sha256"))?;
        fs::create_dir_all(root.join("tmp"))?;
        fs::create_dir_all(root.join("origins"))?;
        let store = BlobStore {
            root: root.to_path_buf(),
        };
        store.remove_stale_tmp();
        Ok(store)
    }

    fn remove_stale_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        let now = SystemTime::now();
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Scratch space on the same filesystem as the blobs.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// An anonymous temp file in the store's scratch space, removed on drop.
    pub fn temp_file(&self) -> Result<NamedTempFile> {
        Ok(tempfile::Builder::new()
            .prefix("spool-")
            .tempfile_in(self.tmp_dir())?)
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("sha256").join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    fn not_found(d: &Digest) -> ImageError {
        ImageError::NotFound(format!("blob {d} not found"))
    }

    fn map_nf(d: &Digest, e: io::Error) -> ImageError {
        if e.kind() == io::ErrorKind::NotFound {
            Self::not_found(d)
        } else {
            ImageError::Io(e)
        }
    }

    pub fn size(&self, d: &Digest) -> Result<u64> {
        fs::metadata(self.path(d))
            .map(|m| m.len())
            .map_err(|e| Self::map_nf(d, e))
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        if self.has(&d) {
            return Ok(d);
        }
        let mut w = self.writer()?;
        w.write_all(bytes)?;
        w.commit(Some(&d))
    }

    /// A streaming writer for a new blob; see [`BlobWriter::commit`].
    pub fn writer(&self) -> Result<BlobWriter> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())?;
        Ok(BlobWriter {
            store: self.clone(),
            inner: HashingWriter::new(BufWriter::with_capacity(256 * 1024, tmp)),
        })
    }

    /// Opens a blob for reading (`open` is taken by the constructor).
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        File::open(self.path(d)).map_err(|e| Self::map_nf(d, e))
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        fs::read(self.path(d)).map_err(|e| Self::map_nf(d, e))
    }

    /// A blob that is a document (a manifest, an index, a config), refused
    /// past `cap` bytes before any of it is read: a tenant's archive may
    /// hold a multi-GB "config" that would otherwise be read whole.
    pub fn read_document(&self, d: &Digest, cap: u64, what: &str) -> Result<Vec<u8>> {
        let f = fs::File::open(self.path(d)).map_err(|e| Self::map_nf(d, e))?;
        let size = f.metadata()?.len();
        if size > cap {
            return Err(crate::error::ImageError::InvalidArchive(format!(
                "{what} is {size} bytes, more than the {cap} allowed"
            )));
        }
        let mut out = Vec::with_capacity(size as usize);
        f.take(cap).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Removes a blob (and its origins); removing one that is not there is
    /// not an error.
    pub fn delete(&self, d: &Digest) -> Result<()> {
        for p in [self.path(d), self.origins_path(d)] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Where a blob came from or went to, one per line: a registry host
    /// (`host[:port]`), or a repository on it (`host[:port]/path`). A blob is
    /// reused for another account's pull only from a registry that served it
    /// (which then confirms this account may read it); a push mounts it from
    /// a repository that holds it.
    fn origins_path(&self, d: &Digest) -> PathBuf {
        self.root.join("origins").join(d.hex())
    }

    /// Records that `registry` served blob `d`.
    pub fn add_origin(&self, d: &Digest, registry: &str) -> Result<()> {
        if self.has_origin(d, registry) {
            return Ok(());
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.origins_path(d))?;
        // One write per line: appends never interleave.
        f.write_all(format!("{registry}\n").as_bytes())?;
        Ok(())
    }

    /// Records that repository `path` of `registry` holds blob `d`.
    pub fn add_origin_repository(&self, d: &Digest, registry: &str, path: &str) -> Result<()> {
        self.add_origin(d, &format!("{registry}/{path}"))
    }

    /// Whether `registry` served blob `d` before.
    pub fn has_origin(&self, d: &Digest, registry: &str) -> bool {
        self.origins(d).iter().any(|l| l == registry)
    }

    /// The repositories of `registry` known to hold blob `d`.
    pub fn origin_repositories(&self, d: &Digest, registry: &str) -> Vec<String> {
        let prefix = format!("{registry}/");
        self.origins(d)
            .into_iter()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    fn origins(&self, d: &Digest) -> Vec<String> {
        let Ok(f) = fs::File::open(self.origins_path(d)) else {
            return Vec::new();
        };
        let mut text = String::new();
        // A few lines per blob; the cap only guards a damaged file.
        if f.take(ORIGINS_MAX).read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        text.lines().map(str::to_string).collect()
    }

    /// Every stored blob, sorted.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.root.join("sha256"))? {
            let e = e?;
            if let Some(name) = e.file_name().to_str()
                && let Ok(d) = Digest::from_hex(name)
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Writes a blob into a temp file while hashing it. Nothing is visible in the store
/// until [`commit`](BlobWriter::commit); dropping the writer removes the temp file.
pub struct BlobWriter {
    store: BlobStore,
    inner: HashingWriter<BufWriter<NamedTempFile>>,
}

impl BlobWriter {
    pub fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }

    /// Verifies the content against `expected` (if given) and moves it into place.
    pub fn commit(self, expected: Option<&Digest>) -> Result<Digest> {
        self.commit_created(expected).map(|(d, _)| d)
    }

    /// Like [`commit`](BlobWriter::commit), also saying whether the blob is new
    /// (false: identical content was already stored). Lets callers undo only their
    /// own additions.
    pub fn commit_created(self, expected: Option<&Digest>) -> Result<(Digest, bool)> {
        let (buf, actual) = self.inner.finish();
        if let Some(exp) = expected
            && *exp != actual
        {
            // `buf` is dropped here, removing the temp file.
            return Err(ImageError::DigestMismatch {
                expected: exp.clone(),
                actual,
            });
        }
        let dest = self.store.path(&actual);
        if dest.is_file() {
            return Ok((actual, false));
        }
        let tmp = buf.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))?;
        tmp.persist(&dest).map_err(|e| ImageError::Io(e.error))?;
        if let Some(dir) = dest.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok((actual, true))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_count(s: &BlobStore) -> usize {
        fs::read_dir(s.tmp_dir()).unwrap().count()
    }

    #[test]
    fn put_read_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let d = s.put_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert!(s.has(&d));
        assert_eq!(s.size(&d).unwrap(), 5);
        assert_eq!(s.read(&d).unwrap(), b"hello");
        assert_eq!(s.path(&d), dir.path().join("sha256").join(d.hex()));
        // Idempotent.
        assert_eq!(s.put_bytes(b"hello").unwrap(), d);
        let d2 = s.put_bytes(b"world").unwrap();
        let mut want = vec![d.clone(), d2.clone()];
        want.sort();
        assert_eq!(s.list().unwrap(), want);
        s.delete(&d).unwrap();
        s.delete(&d).unwrap();
        assert!(!s.has(&d));
        assert!(matches!(s.read(&d), Err(ImageError::NotFound(_))));
        assert!(matches!(s.size(&d), Err(ImageError::NotFound(_))));
        assert!(matches!(s.open_blob(&d), Err(ImageError::NotFound(_))));
        assert_eq!(tmp_count(&s), 0);
    }

    #[test]
    fn writer_verifies_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();

        let mut w = s.writer().unwrap();
        w.write_all(b"abc").unwrap();
        assert_eq!(w.bytes_written(), 3);
        let err = w.commit(Some(&Digest::of(b"abd"))).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(!s.has(&Digest::of(b"abc")));
        assert_eq!(tmp_count(&s), 0);

        let mut w = s.writer().unwrap();
        w.write_all(b"abc").unwrap();
        drop(w);
        assert_eq!(tmp_count(&s), 0);
        assert!(s.list().unwrap().is_empty());

        let mut w = s.writer().unwrap();
        w.write_all(b"abc").unwrap();
        let (d, created) = w.commit_created(Some(&Digest::of(b"abc"))).unwrap();
        assert!(created);
        let mut w = s.writer().unwrap();
        w.write_all(b"abc").unwrap();
        let (d2, created) = w.commit_created(None).unwrap();
        assert!(!created);
        assert_eq!(d, d2);
        assert_eq!(tmp_count(&s), 0);
        let mode = fs::metadata(s.path(&d)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
