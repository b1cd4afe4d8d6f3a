//! Unpacking a layer tarball into a directory usable as an overlayfs lower dir.
//!
//! Whiteouts are converted to overlayfs form (`.wh.NAME` → 0:0 char device `NAME`,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y`). The tar is hostile input: paths are
//! cleaned lexically and must stay inside the layer, nothing is ever written through
//! a symlink, and hardlinks must point inside the layer. Extraction goes to a temp
//! dir beside `dest` that is renamed into place only when the diff_id checks out.

use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::compress::{copy_entry, drain, read_error, tar_stream};
use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The diff_id of a (possibly compressed) layer: the sha256 of the uncompressed tar.
pub fn diff_id_of<R: Read>(reader: R) -> Result<Digest> {
    let mut hr = HashingReader::new(tar_stream(reader)?);
    drain(&mut hr)?;
    Ok(hr.finish().1)
}

/// Unpacks a gzip/zstd/plain layer tar into `dest` (which must not exist yet) and
/// returns its diff_id. With `expected_diff_id`, a different content is refused.
/// On any error nothing is left behind. If `dest` appeared meanwhile (a concurrent
/// unpack of the same content-addressed layer), that copy is kept.
pub fn unpack_layer<R: Read>(
    reader: R,
    dest: &Path,
    expected_diff_id: Option<&Digest>,
) -> Result<Digest> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent)?;
    let base = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "layer".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{base}.unpack-"))
        .tempdir_in(parent)?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;

    let mut archive = tar::Archive::new(HashingReader::new(tar_stream(reader)?));
    let mut u = Unpacker {
        root: tmp.path().to_path_buf(),
        dir_times: Vec::new(),
    };
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        u.entry(&mut entry)?;
    }
    let mut hr = archive.into_inner();
    drain(&mut hr)?;
    let (_, diff_id) = hr.finish();
    if let Some(exp) = expected_diff_id
        && *exp != diff_id
    {
        return Err(ImageError::DigestMismatch {
            expected: exp.clone(),
            actual: diff_id,
        });
    }
    u.finish()?;
    sync_fs(tmp.path())?;
    match fs::rename(tmp.path(), dest) {
        Ok(()) => {
            let _ = tmp.keep();
            Ok(diff_id)
        }
        Err(e) if expected_diff_id.is_some() && dest.is_dir() => {
            tracing::debug!("layer {diff_id} already unpacked concurrently ({e})");
            Ok(diff_id)
        }
        Err(e) => Err(e.into()),
    }
}

/// A tar path, cleaned lexically into components relative to the layer root.
/// `Err` carries the reason it is refused.
pub(crate) fn clean_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path not allowed in a layer");
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("path escapes the layer root");
                }
            }
            other => parts.push(other),
        }
    }
    let mut p = PathBuf::new();
    for c in parts {
        p.push(OsStr::from_bytes(c));
    }
    Ok(p)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn mknod(p: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c = cstr(p)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lsetxattr(p: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cstr(p)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Time {
    sec: i64,
    nsec: i64,
}

/// Sets atime and mtime without following a symlink.
fn set_times(p: &Path, atime: Time, mtime: Time) -> io::Result<()> {
    let c = cstr(p)?;
    let ts = [
        libc::timespec {
            tv_sec: atime.sec as libc::time_t,
            tv_nsec: atime.nsec as _,
        },
        libc::timespec {
            tv_sec: mtime.sec as libc::time_t,
            tv_nsec: mtime.nsec as _,
        },
    ];
    // SAFETY: `c` is NUL-terminated and `ts` points to two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Flushes the filesystem holding `p`, so a renamed layer is complete after a crash.
fn sync_fs(p: &Path) -> io::Result<()> {
    let f = fs::File::open(p)?;
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is valid while `f` lives.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Parses a PAX time ("1700000000" or "1700000000.5").
fn parse_pax_time(v: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: i64 = digits.parse().ok()?;
    Some(Time { sec, nsec })
}

/// Metadata of one entry, merged from the header and its PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Time,
    atime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker {
    root: PathBuf,
    /// Directory times are set last: creating children changes them.
    dir_times: Vec<(PathBuf, Time, Time)>,
}

fn io_ctx(shown: &str, what: &str, e: io::Error) -> ImageError {
    ImageError::Io(io::Error::new(
        e.kind(),
        format!("extracting {shown}: {what}: {e}"),
    ))
}

impl Unpacker {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = clean_path(&raw).map_err(|r| ImageError::unsafe_path(&shown, r))?;
        let kind = e.header().entry_type();
        let meta = self.meta(e, &shown)?;

        if rel.as_os_str().is_empty() {
            // The layer root itself ("./"): only its metadata matters.
            if kind.is_dir() {
                let root = self.root.clone();
                self.apply_meta(&root, &meta, true, &shown)?;
            }
            return Ok(());
        }

        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = self.ensure_parent(parent_rel, &shown)?;
            return self.whiteout(&parent, name, hidden, &shown);
        }

        let parent = self.ensure_parent(parent_rel, &shown)?;
        let target = parent.join(OsStr::from_bytes(name));
        // Replace whatever is there, except a directory by a directory.
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() && kind.is_dir() => {}
            Ok(m) => {
                let r = if m.is_dir() {
                    fs::remove_dir_all(&target)
                } else {
                    fs::remove_file(&target)
                };
                r.map_err(|e| io_ctx(&shown, "replacing existing entry", e))?;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_ctx(&shown, "inspecting", err)),
        }

        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|err| io_ctx(&shown, "creating file", err))?;
                let mut w = BufWriter::with_capacity(128 * 1024, f);
                let size = e.size();
                copy_entry(e, size, &mut w)?;
                w.flush().map_err(|err| io_ctx(&shown, "writing", err))?;
                self.apply_meta(&target, &meta, false, &shown)?;
            }
            T::Directory => {
                if !target.is_dir() {
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&target)
                        .map_err(|err| io_ctx(&shown, "creating directory", err))?;
                }
                self.apply_meta(&target, &meta, true, &shown)?;
            }
            T::Symlink => {
                let link = e
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| ImageError::unsafe_path(&shown, "symlink without a target"))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(|err| io_ctx(&shown, "creating symlink", err))?;
                self.apply_meta(&target, &meta, false, &shown)?;
            }
            T::Link => {
                let link = e
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let src = self.hardlink_source(&link, &shown)?;
                fs::hard_link(&src, &target)
                    .map_err(|err| io_ctx(&shown, "creating hardlink", err))?;
            }
            T::Char | T::Block | T::Fifo => {
                let fmt = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = e.header().device_major().ok().flatten().unwrap_or(0);
                let minor = e.header().device_minor().ok().flatten().unwrap_or(0);
                mknod(&target, fmt | (meta.mode & 0o7777), major, minor)
                    .map_err(|err| io_ctx(&shown, "creating device node", err))?;
                self.apply_meta(&target, &meta, false, &shown)?;
            }
            other => {
                tracing::debug!("skipping tar entry {shown} of type {other:?}");
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, e: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta> {
        let h = e.header();
        let bad =
            |what: &str| ImageError::archive(format!("invalid tar header: bad {what} for {shown}"));
        // Like Go's archive/tar, an unparsable (typically empty) numeric field reads
        // as 0; values that do not fit are errors.
        let mut m = Meta {
            mode: h.mode().unwrap_or(0) & 0o7777,
            uid: u32::try_from(h.uid().unwrap_or(0)).map_err(|_| bad("uid"))?,
            gid: u32::try_from(h.gid().unwrap_or(0)).map_err(|_| bad("gid"))?,
            mtime: Time {
                sec: i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(0),
                nsec: 0,
            },
            atime: None,
            xattrs: Vec::new(),
        };
        if let Some(exts) = e.pax_extensions().map_err(read_error)? {
            for ext in exts {
                let ext = ext.map_err(|_| bad("PAX record"))?;
                let key = ext.key_bytes();
                let val = ext.value_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    m.xattrs.push((name.to_vec(), val.to_vec()));
                    continue;
                }
                let num = || {
                    std::str::from_utf8(val)
                        .ok()
                        .and_then(|s| s.parse::<u32>().ok())
                };
                match key {
                    b"uid" => m.uid = num().ok_or_else(|| bad("uid"))?,
                    b"gid" => m.gid = num().ok_or_else(|| bad("gid"))?,
                    b"mtime" => m.mtime = parse_pax_time(val).ok_or_else(|| bad("mtime"))?,
                    b"atime" => m.atime = parse_pax_time(val),
                    _ => {}
                }
            }
        }
        Ok(m)
    }

    /// Makes sure every directory above an entry exists (creating missing ones 0755,
    /// as Docker does) and that none of them is a symlink. Returns the parent path.
    fn ensure_parent(&self, parent_rel: &Path, shown: &str) -> Result<PathBuf> {
        let mut cur = self.root.clone();
        for c in parent_rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ImageError::unsafe_path(
                        shown,
                        "refusing to write through symlink",
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(ImageError::unsafe_path(
                        shown,
                        "a parent of this entry is not a directory",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .map_err(|err| io_ctx(shown, "creating parent directory", err))?;
                }
                Err(e) => return Err(io_ctx(shown, "inspecting parent", e)),
            }
        }
        Ok(cur)
    }

    /// The existing file a hardlink entry points at, which must be inside the layer
    /// and reached without passing through a symlink.
    fn hardlink_source(&self, link: &[u8], shown: &str) -> Result<PathBuf> {
        let rel = clean_path(link)
            .map_err(|_| ImageError::unsafe_path(shown, "hardlink target is outside the layer"))?;
        if rel.as_os_str().is_empty() {
            return Err(ImageError::unsafe_path(shown, "hardlink without a target"));
        }
        let mut cur = self.root.clone();
        let n = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            cur.push(c);
            let m = fs::symlink_metadata(&cur).map_err(|_| {
                ImageError::unsafe_path(shown, "hardlink target does not exist in the layer")
            })?;
            let last = i + 1 == n;
            if !last && m.file_type().is_symlink() {
                return Err(ImageError::unsafe_path(
                    shown,
                    "refusing to link through symlink",
                ));
            }
            if !last && !m.is_dir() {
                return Err(ImageError::unsafe_path(
                    shown,
                    "hardlink target does not exist in the layer",
                ));
            }
            if last && m.is_dir() {
                return Err(ImageError::unsafe_path(
                    shown,
                    "hardlink target is a directory",
                ));
            }
        }
        Ok(cur)
    }

    fn whiteout(&self, parent: &Path, name: &[u8], hidden: &[u8], shown: &str) -> Result<()> {
        if name == OPAQUE_MARKER {
            return lsetxattr(parent, OVERLAY_OPAQUE_XATTR.as_bytes(), b"y")
                .map_err(|e| io_ctx(shown, "marking directory opaque", e));
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless here.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ImageError::unsafe_path(shown, "invalid whiteout name"));
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&target),
            Ok(_) => fs::remove_file(&target),
            Err(_) => Ok(()),
        }
        .map_err(|e| io_ctx(shown, "replacing existing entry", e))?;
        mknod(&target, libc::S_IFCHR, 0, 0).map_err(|e| io_ctx(shown, "creating whiteout", e))?;
        std::os::unix::fs::lchown(&target, Some(0), Some(0))
            .map_err(|e| io_ctx(shown, "chown of whiteout", e))?;
        Ok(())
    }

    /// Owner, mode, xattrs, times — in that order, since chown clears setuid bits and
    /// file capabilities.
    fn apply_meta(&mut self, p: &Path, m: &Meta, is_dir: bool, shown: &str) -> Result<()> {
        let is_link = fs::symlink_metadata(p)
            .map(|md| md.file_type().is_symlink())
            .unwrap_or(false);
        std::os::unix::fs::lchown(p, Some(m.uid), Some(m.gid))
            .map_err(|e| io_ctx(shown, "chown", e))?;
        if !is_link {
            fs::set_permissions(p, fs::Permissions::from_mode(m.mode))
                .map_err(|e| io_ctx(shown, "chmod", e))?;
        }
        for (name, value) in &m.xattrs {
            if name.starts_with(b"trusted.overlay.") {
                // Only whiteout files may steer overlayfs.
                continue;
            }
            if let Err(e) = lsetxattr(p, name, value) {
                let ignorable = matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM));
                if !ignorable {
                    return Err(io_ctx(shown, "setting xattr", e));
                }
                tracing::warn!(
                    "ignoring xattr {} on {shown}: {e}",
                    String::from_utf8_lossy(name)
                );
            }
        }
        let atime = m.atime.unwrap_or(m.mtime);
        if is_dir {
            self.dir_times.push((p.to_path_buf(), atime, m.mtime));
        } else {
            set_times(p, atime, m.mtime).map_err(|e| io_ctx(shown, "setting times", e))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dir_times);
        // Deepest first, so setting a child's time does not disturb its parent.
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (p, a, m) in dirs {
            set_times(&p, a, m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::{EntryType, Header};

    /// Appends an entry with exactly these bytes as name/link name (the tar crate's
    /// own setters refuse the hostile names these tests need).
    pub(crate) fn raw(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: EntryType,
        data: &[u8],
        link: Option<&str>,
    ) {
        let mut h = Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name.fill(0);
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                old.linkname.fill(0);
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    pub(crate) fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let c = cstr(p).unwrap();
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: valid strings and a buffer of the given length.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            return None;
        }
        buf.truncate(r as usize);
        Some(buf)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn rich_layer() -> Vec<u8> {
        tar_of(|b| {
            raw(b, "./", EntryType::Directory, b"", None);
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Directory);
            h.set_mode(0o750);
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_500_000_000);
            h.set_size(0);
            b.append_data(&mut h, "etc/", &b""[..]).unwrap();

            b.append_pax_extensions([("SCHILY.xattr.user.note", &b"hi"[..])])
                .unwrap();
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_400_000_000);
            h.set_size(5);
            b.append_data(&mut h, "etc/tool", &b"hello"[..]).unwrap();

            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Symlink);
            h.set_size(0);
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_300_000_000);
            b.append_link(&mut h, "bin/sh", "/bin/busybox").unwrap();
            raw(b, "etc/hard", EntryType::Link, b"", Some("etc/tool"));
            raw(b, "dev/fifo", EntryType::Fifo, b"", None);
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Char);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            h.set_mode(0o666);
            h.set_size(0);
            b.append_data(&mut h, "dev/null", &b""[..]).unwrap();
            // Long names go through GNU long-name records.
            let long = format!("deep/{}/f", "x".repeat(150));
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(1);
            b.append_data(&mut h, &long, &b"z"[..]).unwrap();
        })
    }

    #[test]
    fn unpacks_everything_with_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("layers").join("l1");
        let tar = rich_layer();
        let want = Digest::of(&tar);
        let got = unpack_layer(&tar[..], &dest, Some(&want)).unwrap();
        assert_eq!(got, want);

        let md = fs::metadata(dest.join("etc")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o750, 1000, 1001)
        );
        assert_eq!(md.mtime(), 1_500_000_000);
        let md = fs::metadata(dest.join("etc/tool")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o4755, 1000, 1001)
        );
        assert_eq!(md.mtime(), 1_400_000_000);
        assert_eq!(md.nlink(), 2);
        assert_eq!(fs::read(dest.join("etc/hard")).unwrap(), b"hello");
        assert_eq!(
            getxattr(&dest.join("etc/tool"), "user.note").as_deref(),
            Some(&b"hi"[..])
        );
        let l = fs::symlink_metadata(dest.join("bin/sh")).unwrap();
        assert!(l.file_type().is_symlink());
        assert_eq!((l.uid(), l.gid(), l.mtime()), (1000, 1001, 1_300_000_000));
        assert_eq!(
            fs::read_link(dest.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(
            fs::symlink_metadata(dest.join("dev/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let n = fs::symlink_metadata(dest.join("dev/null")).unwrap();
        assert!(n.file_type().is_char_device());
        assert_eq!(n.rdev(), libc::makedev(1, 3));
        // Missing parents are created 0755.
        assert_eq!(
            fs::metadata(dest.join("dev")).unwrap().mode() & 0o7777,
            0o755
        );
        let long = dest.join("deep").join("x".repeat(150)).join("f");
        assert_eq!(fs::read(long).unwrap(), b"z");
        // Only the layer dir is left beside it.
        assert_eq!(entries(&tmp.path().join("layers")), vec!["l1"]);

        // Compressed forms have the same diff_id.
        let d2 = tmp.path().join("l2");
        assert_eq!(unpack_layer(&gz(&tar)[..], &d2, Some(&want)).unwrap(), want);
        let d3 = tmp.path().join("l3");
        let z = zstd::encode_all(&tar[..], 3).unwrap();
        assert_eq!(unpack_layer(&z[..], &d3, None).unwrap(), want);
        assert_eq!(diff_id_of(&z[..]).unwrap(), want);
        assert_eq!(diff_id_of(&gz(&tar)[..]).unwrap(), want);
    }

    #[test]
    fn diff_id_mismatch_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("l");
        let tar = rich_layer();
        let err = unpack_layer(&tar[..], &dest, Some(&Digest::of(b"other"))).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(entries(tmp.path()).is_empty());
    }

    #[test]
    fn truncated_and_corrupt_input_fail_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = rich_layer();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("cut in a file", tar[..512 * 5 + 100].to_vec()),
            ("cut in a header", tar[..512 * 3 + 17].to_vec()),
            ("cut gzip", gz(&tar)[..200].to_vec()),
            ("garbage", b"this is not a tar file at all".repeat(40)),
        ];
        for (what, data) in cases {
            let dest = tmp.path().join("l");
            let err = unpack_layer(&data[..], &dest, None).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidArchive(_)),
                "{what}: {err:?}"
            );
            assert!(entries(tmp.path()).is_empty(), "{what}: leftovers");
        }
        let err = unpack_layer(&tar[..512 * 3 + 17], &tmp.path().join("l"), None).unwrap_err();
        assert_eq!(err.to_string(), "unexpected EOF");
        let garbage = b"not a tar".repeat(100);
        let err = unpack_layer(&garbage[..], &tmp.path().join("l"), None).unwrap_err();
        assert_eq!(err.to_string(), "invalid tar header");
    }

    #[test]
    fn escapes_are_refused_and_leave_nothing() {
        type Case = (&'static str, Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>);
        let cases: Vec<Case> = vec![
            (
                "../evil",
                Box::new(|b| raw(b, "../evil", EntryType::Regular, b"x", None)),
            ),
            (
                "a/../../evil",
                Box::new(|b| raw(b, "a/../../evil", EntryType::Regular, b"x", None)),
            ),
            (
                "/etc/evil",
                Box::new(|b| raw(b, "/etc/evil", EntryType::Regular, b"x", None)),
            ),
            (
                "link/evil",
                Box::new(|b| {
                    raw(b, "link", EntryType::Symlink, b"", Some("/tmp"));
                    raw(b, "link/evil", EntryType::Regular, b"x", None);
                }),
            ),
            (
                "rel/evil",
                Box::new(|b| {
                    raw(b, "sub/", EntryType::Directory, b"", None);
                    raw(b, "rel", EntryType::Symlink, b"", Some("sub"));
                    raw(b, "rel/evil", EntryType::Regular, b"x", None);
                }),
            ),
            (
                "up/.wh.x",
                Box::new(|b| {
                    raw(b, "up", EntryType::Symlink, b"", Some(".."));
                    raw(b, "up/.wh.x", EntryType::Regular, b"", None);
                }),
            ),
            (
                "h",
                Box::new(|b| raw(b, "h", EntryType::Link, b"", Some("../../etc/passwd"))),
            ),
            (
                "h2",
                Box::new(|b| raw(b, "h2", EntryType::Link, b"", Some("/etc/passwd"))),
            ),
            (
                "h3",
                Box::new(|b| {
                    raw(b, "l", EntryType::Symlink, b"", Some("/etc"));
                    raw(b, "h3", EntryType::Link, b"", Some("l/passwd"));
                }),
            ),
        ];
        for (bad, build) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let tar = tar_of(|b| {
                raw(b, "ok", EntryType::Regular, b"fine", None);
                build(b);
            });
            let dest = tmp.path().join("layer");
            let err = unpack_layer(&tar[..], &dest, None).unwrap_err();
            match &err {
                ImageError::UnsafePath { path, .. } => assert_eq!(path, bad, "{err}"),
                other => panic!("{bad}: unexpected {other:?}"),
            }
            assert!(err.to_string().starts_with(&format!("{bad}: ")), "{err}");
            assert!(entries(tmp.path()).is_empty(), "{bad}: leftovers");
        }
        assert!(!Path::new("/tmp/evil").exists());
    }

    #[test]
    fn write_through_symlink_message() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = tar_of(|b| {
            raw(b, "a", EntryType::Symlink, b"", Some("/"));
            raw(b, "a/b", EntryType::Regular, b"x", None);
        });
        let err = unpack_layer(&tar[..], &tmp.path().join("l"), None).unwrap_err();
        assert_eq!(err.to_string(), "a/b: refusing to write through symlink");
    }

    #[test]
    fn replacing_a_symlink_is_not_writing_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, "keep").unwrap();
        let target = outside.to_string_lossy().into_owned();
        let tar = tar_of(|b| {
            raw(b, "f", EntryType::Symlink, b"", Some(&target));
            raw(b, "f", EntryType::Regular, b"new", None);
        });
        let dest = tmp.path().join("l");
        unpack_layer(&tar[..], &dest, None).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"new");
    }

    #[test]
    fn clean_path_rules() {
        assert_eq!(clean_path(b"./a/./b/").unwrap(), Path::new("a/b"));
        assert_eq!(clean_path(b"a/../b").unwrap(), Path::new("b"));
        assert_eq!(clean_path(b"./").unwrap(), Path::new(""));
        assert!(clean_path(b"..").is_err());
        assert!(clean_path(b"/x").is_err());
        assert!(clean_path(b"a/../../x").is_err());
    }

    /// Unmounts on drop, so a failing assertion does not leave a mount behind.
    struct Mount(PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let c = cstr(&self.0).unwrap();
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }

    fn mount_overlay(lowers: &[&Path], target: &Path) -> Mount {
        let lower = lowers
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let opts = CString::new(format!("lowerdir={lower}")).unwrap();
        let t = cstr(target).unwrap();
        let fstype = CString::new("overlay").unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                fstype.as_ptr(),
                t.as_ptr(),
                fstype.as_ptr(),
                libc::MS_RDONLY,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount: {}", io::Error::last_os_error());
        Mount(target.to_path_buf())
    }

    #[test]
    fn whiteouts_work_in_a_real_overlay_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tar_of(|b| {
            raw(b, "a/", EntryType::Directory, b"", None);
            raw(b, "a/gone", EntryType::Regular, b"1", None);
            raw(b, "a/stays", EntryType::Regular, b"2", None);
            raw(b, "opq/", EntryType::Directory, b"", None);
            raw(b, "opq/old1", EntryType::Regular, b"3", None);
            raw(b, "opq/old2", EntryType::Regular, b"4", None);
            raw(b, "dir-gone/", EntryType::Directory, b"", None);
            raw(b, "dir-gone/x", EntryType::Regular, b"5", None);
        });
        let upper = tar_of(|b| {
            raw(b, "a/.wh.gone", EntryType::Regular, b"", None);
            raw(b, ".wh.dir-gone", EntryType::Regular, b"", None);
            raw(b, "opq/", EntryType::Directory, b"", None);
            raw(b, "opq/.wh..wh..opq", EntryType::Regular, b"", None);
            raw(b, "opq/new", EntryType::Regular, b"6", None);
            raw(b, ".wh..wh.plnk/", EntryType::Directory, b"", None);
        });
        let l1 = tmp.path().join("l1");
        let l2 = tmp.path().join("l2");
        unpack_layer(&lower[..], &l1, None).unwrap();
        unpack_layer(&upper[..], &l2, None).unwrap();

        let wh = fs::symlink_metadata(l2.join("a/gone")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!((wh.rdev(), wh.uid(), wh.gid()), (0, 0, 0));
        assert!(
            fs::symlink_metadata(l2.join("dir-gone"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
        assert_eq!(
            getxattr(&l2.join("opq"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(entries(&l2.join("opq")), vec!["new"]);
        assert!(!l2.join(".wh..wh.plnk").exists());

        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let m = mount_overlay(&[&l2, &l1], &mnt);
        assert_eq!(entries(&mnt.join("a")), vec!["stays"]);
        assert_eq!(entries(&mnt.join("opq")), vec!["new"]);
        assert!(!mnt.join("dir-gone").exists());
        assert_eq!(fs::read(mnt.join("a/stays")).unwrap(), b"2");
        drop(m);
    }
}
