//! The build context: the client's tar, spooled once to a file on the head
//! and indexed (path → header and data offset). Nothing is unpacked on the
//! head, so the tenant's symlinks, devices and odd names never meet the
//! head's file system; `COPY` reads file data by offset from the spool.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use crate::error::{BuildError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(String),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: u64,
    pub size: u64,
    offset: u64,
}

/// One file of a `COPY`: a context path and where it lands, relative to the
/// extraction directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub src: String,
    pub dest: String,
}

/// A plain tar being written to an unnamed file, bounded; chunks go
/// straight in as they arrive (the client's stream, or a decompressor's).
pub struct Spool {
    file: File,
    written: u64,
    limit: u64,
}

impl Spool {
    pub fn new(dir: &Path, limit: u64) -> Result<Spool> {
        Ok(Spool {
            file: tempfile::tempfile_in(dir)?,
            written: 0,
            limit,
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(BuildError::ContextTooLarge(self.limit));
        }
        self.file.write_all(chunk)?;
        Ok(())
    }

    /// Indexes what was written.
    pub fn finish(self) -> Result<Context> {
        Context::index(self.file, self.written)
    }
}

pub struct Context {
    spool: File,
    entries: BTreeMap<String, Entry>,
    hashes: Mutex<HashMap<String, [u8; 32]>>,
    /// Bytes of the (decompressed) tar.
    pub size: u64,
}

/// A context path as clean relative components; `..` is refused.
fn clean(raw: &[u8]) -> Result<String> {
    let s = String::from_utf8_lossy(raw);
    let mut parts = Vec::new();
    for c in Path::new(s.as_ref()).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            _ => {
                return Err(BuildError::Context(format!(
                    "invalid path in the build context: {s}"
                )));
            }
        }
    }
    Ok(parts.join("/"))
}

/// A Dockerfile path (`COPY` source, `-f`) relative to the context root.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn parent(path: &str) -> &str {
    path.rfind('/').map(|i| &path[..i]).unwrap_or("")
}

/// Go's `filepath.Match`: `*` and `?` never match `/`; `[a-z]`, `[^x]`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, chars consumed incl. ']').
        let mut i = 0;
        let negate = matches!(p.first(), Some('^' | '!'));
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        while i < p.len() {
            if p[i] == ']' && !first {
                return Some((matched != negate, i + 1));
            }
            first = false;
            let mut lo = p[i];
            if lo == '\\' {
                i += 1;
                lo = *p.get(i)?;
            }
            let mut hi = lo;
            if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
                hi = p[i + 2];
                if hi == '\\' {
                    hi = *p.get(i + 3)?;
                    i += 1;
                }
                i += 2;
            }
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 1;
        }
        None
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => {
                let rest = &p[1..];
                for k in 0..=n.len() {
                    if go(rest, &n[k..]) {
                        return true;
                    }
                    if k < n.len() && n[k] == '/' {
                        break;
                    }
                }
                false
            }
            Some('?') => !n.is_empty() && n[0] != '/' && go(&p[1..], &n[1..]),
            Some('[') => match n.first() {
                Some(&c) if c != '/' => match class(&p[1..], c) {
                    Some((true, used)) => go(&p[1 + used..], &n[1..]),
                    _ => false,
                },
                _ => false,
            },
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

pub fn has_wildcards(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Context {
    /// Reads the client's tar (plain, gzip or zstd: the first bytes say),
    /// spooling at most `limit` bytes into a file under `dir`.
    pub fn receive<R: Read>(r: R, dir: &Path, limit: u64) -> Result<Context> {
        let mut spool = Spool::new(dir, limit)?;
        let mut r = images::compress::decompressed(r)
            .map_err(|e| BuildError::Context(format!("reading the build context: {e}")))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| BuildError::Context(format!("reading the build context: {e}")))?;
            if n == 0 {
                break;
            }
            spool.write(&buf[..n])?;
        }
        spool.finish()
    }

    /// Indexes a tar already spooled (plain) in `spool`, `size` bytes.
    fn index(mut spool: File, size: u64) -> Result<Context> {
        spool.rewind()?;
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let bad = |e: io::Error| BuildError::Context(format!("invalid build context tar: {e}"));
        {
            let mut ar = tar::Archive::new(&spool);
            for e in ar.entries_with_seek().map_err(bad)? {
                let e = e.map_err(bad)?;
                let path = clean(&e.path_bytes())?;
                let h = e.header();
                let mode = h.mode().unwrap_or(0o644) & 0o7777;
                let mtime = h.mtime().unwrap_or(0);
                let entry = match h.entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => Entry {
                        kind: EntryKind::File,
                        mode,
                        mtime,
                        size: e.size(),
                        offset: e.raw_file_position(),
                    },
                    tar::EntryType::Directory => Entry {
                        kind: EntryKind::Dir,
                        mode,
                        mtime,
                        size: 0,
                        offset: 0,
                    },
                    tar::EntryType::Symlink => Entry {
                        kind: EntryKind::Symlink(
                            String::from_utf8_lossy(&e.link_name_bytes().unwrap_or_default())
                                .into_owned(),
                        ),
                        mode,
                        mtime,
                        size: 0,
                        offset: 0,
                    },
                    tar::EntryType::Link => {
                        let target = clean(&e.link_name_bytes().unwrap_or_default())?;
                        match entries.get(&target) {
                            Some(t) if t.kind == EntryKind::File => Entry {
                                mode,
                                mtime,
                                ..t.clone()
                            },
                            _ => {
                                return Err(BuildError::Context(format!(
                                    "invalid build context tar: hard link {path} to a missing file {target}"
                                )));
                            }
                        }
                    }
                    // Devices and FIFOs are not copied into images.
                    _ => continue,
                };
                if path.is_empty() {
                    continue;
                }
                entries.insert(path, entry);
            }
        }
        // Directories the tar implies but does not list.
        let implied: Vec<String> = entries
            .keys()
            .flat_map(|p| {
                let mut out = Vec::new();
                let mut cur = parent(p);
                while !cur.is_empty() {
                    out.push(cur.to_string());
                    cur = parent(cur);
                }
                out
            })
            .collect();
        for d in implied {
            entries.entry(d).or_insert(Entry {
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime: 0,
                size: 0,
                offset: 0,
            });
        }
        Ok(Context {
            spool,
            entries,
            hashes: Mutex::new(HashMap::new()),
            size,
        })
    }

    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// A regular file's bytes (the Dockerfile, `.dockerignore`), at most `max`.
    pub fn read_file(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let Some(resolved) = self.resolve(path) else {
            return Ok(None);
        };
        match self.entries.get(&resolved) {
            Some(e) if e.kind == EntryKind::File => {
                if e.size > max {
                    return Err(BuildError::Context(format!(
                        "{path} is larger than {max} bytes"
                    )));
                }
                let mut buf = vec![0u8; e.size as usize];
                self.spool.read_exact_at(&mut buf, e.offset)?;
                Ok(Some(buf))
            }
            _ => Ok(None),
        }
    }

    /// `path` with symlinks resolved inside the context (absolute targets
    /// are relative to its root, `..` stops there); None if it is not there.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut pending: Vec<String> = normalize(path)
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .rev()
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            cur.push(c);
            let joined = cur.join("/");
            if let EntryKind::Symlink(target) = &self.entries.get(&joined)?.kind {
                hops += 1;
                if hops > 255 {
                    return None;
                }
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                for part in target
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .rev()
                {
                    pending.push(part.to_string());
                }
            }
        }
        Some(cur.join("/"))
    }

    /// Context paths a wildcard source matches, in order.
    pub fn matches(&self, pattern: &str) -> Vec<String> {
        let p = normalize(pattern);
        self.entries
            .keys()
            .filter(|k| glob_match(&p, k))
            .cloned()
            .collect()
    }

    /// What copying the context path `src` to `dest` copies: a directory's
    /// contents (not itself) below `dest`, anything else as `dest`.
    pub fn items(&self, src: &str, dest: &str) -> Vec<Item> {
        match self.entries.get(src).map(|e| &e.kind) {
            Some(EntryKind::Dir) => {
                let prefix = if src.is_empty() {
                    String::new()
                } else {
                    format!("{src}/")
                };
                self.entries
                    .keys()
                    .filter(|k| k.starts_with(&prefix) && k.len() > prefix.len())
                    .map(|k| Item {
                        src: k.clone(),
                        dest: join(dest, &k[prefix.len()..]),
                    })
                    .collect()
            }
            Some(_) => vec![Item {
                src: src.to_string(),
                dest: dest.to_string(),
            }],
            None if src.is_empty() => self
                .entries
                .keys()
                .map(|k| Item {
                    src: k.clone(),
                    dest: join(dest, k),
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// A regular file's data as a reader.
    pub fn reader(&self, path: &str) -> Option<impl Read + '_> {
        let e = self
            .entries
            .get(path)
            .filter(|e| e.kind == EntryKind::File)?;
        Some(FileRange::new(&self.spool, e.offset, e.size))
    }

    /// Whether a file is a tar archive (plain, gzip or zstd), which `ADD`
    /// unpacks.
    pub fn is_archive(&self, path: &str) -> bool {
        let Some(r) = self.reader(path) else {
            return false;
        };
        let Ok(mut r) = images::compress::decompressed(r) else {
            return false;
        };
        let mut head = [0u8; 512];
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got == head.len() && &head[257..262] == b"ustar"
    }

    pub fn is_dir(&self, path: &str) -> bool {
        path.is_empty()
            || matches!(
                self.entries.get(path).map(|e| &e.kind),
                Some(EntryKind::Dir)
            )
    }

    fn content_hash(&self, path: &str, e: &Entry) -> io::Result<[u8; 32]> {
        if let Some(h) = self.hashes.lock().expect("hash cache").get(path) {
            return Ok(*h);
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut done = 0u64;
        while done < e.size {
            let n = buf.len().min((e.size - done) as usize);
            self.spool.read_exact_at(&mut buf[..n], e.offset + done)?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        let h: [u8; 32] = hasher.finalize().into();
        self.hashes
            .lock()
            .expect("hash cache")
            .insert(path.to_string(), h);
        Ok(h)
    }

    /// The checksum of what a `COPY` copies: names, kinds, modes, link
    /// targets and contents (not times: a fresh checkout hits the cache).
    pub fn checksum(&self, items: &[Item], chmod: Option<u32>) -> io::Result<String> {
        let mut h = Sha256::new();
        for it in items {
            let Some(e) = self.entries.get(&it.src) else {
                continue;
            };
            h.update(it.dest.as_bytes());
            h.update([0]);
            let mode = chmod.unwrap_or(e.mode);
            match &e.kind {
                EntryKind::File => {
                    h.update(format!("f{mode:o}:{}:", e.size));
                    h.update(self.content_hash(&it.src, e)?);
                }
                EntryKind::Dir => h.update(format!("d{mode:o}")),
                EntryKind::Symlink(t) => h.update(format!("l{t}")),
            }
            h.update([0]);
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Appends the items to a tar; owners are the extraction's business.
    pub fn write_tar<W: Write>(
        &self,
        b: &mut tar::Builder<W>,
        items: &[Item],
        chmod: Option<u32>,
    ) -> io::Result<()> {
        for it in items {
            let Some(e) = self.entries.get(&it.src) else {
                continue;
            };
            let mut h = tar::Header::new_gnu();
            h.set_mode(chmod.unwrap_or(e.mode));
            h.set_mtime(e.mtime);
            h.set_uid(0);
            h.set_gid(0);
            match &e.kind {
                EntryKind::File => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(e.size);
                    let reader = FileRange::new(&self.spool, e.offset, e.size);
                    b.append_data(&mut h, &it.dest, reader)?;
                }
                EntryKind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, &it.dest, io::empty())?;
                }
                EntryKind::Symlink(t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &it.dest, t)?;
                }
            }
        }
        Ok(())
    }
}

fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    }
}

/// A range of a file as a reader (positioned reads: no shared offset).
pub struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> FileRange<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> FileRange<'a> {
        FileRange {
            file,
            pos: start,
            end: start + len,
        }
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(left);
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended early",
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("Dockerfile", b"FROM x\n", 0o644);
        add("./src/a.txt", b"alpha", 0o644);
        add("src/b.txt", b"beta", 0o600);
        add("src/sub/c.rs", b"gamma", 0o755);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "/src/sub").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "escape", "../../../etc").unwrap();
        let bytes = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        Context::receive(&bytes[..], dir.path(), 1 << 20).unwrap()
    }

    #[test]
    fn index_resolve_and_match() {
        let c = ctx();
        assert_eq!(
            c.read_file("Dockerfile", 100).unwrap().unwrap(),
            b"FROM x\n"
        );
        assert!(c.is_dir("src") && c.is_dir("src/sub"));
        assert_eq!(c.resolve("link/c.rs").as_deref(), Some("src/sub/c.rs"));
        // `..` stops at the context root.
        assert_eq!(c.resolve("escape").as_deref(), None);
        assert_eq!(c.matches("src/*.txt"), vec!["src/a.txt", "src/b.txt"]);
        assert!(c.matches("*.txt").is_empty());
        let items = c.items("src", "app");
        assert_eq!(
            items.iter().map(|i| i.dest.as_str()).collect::<Vec<_>>(),
            ["app/a.txt", "app/b.txt", "app/sub", "app/sub/c.rs"]
        );
    }

    #[test]
    fn checksums_follow_content_and_mode_not_time() {
        let c = ctx();
        let items = c.items("src", "app");
        let a = c.checksum(&items, None).unwrap();
        assert_eq!(a, c.checksum(&items, None).unwrap());
        assert_ne!(a, c.checksum(&items, Some(0o700)).unwrap());
        assert_ne!(a, c.checksum(&c.items("src", "other"), None).unwrap());
        let mut out = tar::Builder::new(Vec::new());
        c.write_tar(&mut out, &items, None).unwrap();
        let bytes = out.into_inner().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            seen.push((e.path().unwrap().display().to_string(), s));
        }
        assert!(
            seen.contains(&("app/b.txt".into(), "beta".into())),
            "{seen:?}"
        );
    }

    #[test]
    fn limits_and_bad_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4096);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "big", &[0u8; 4096][..]).unwrap();
        let bytes = b.into_inner().unwrap();
        assert!(matches!(
            Context::receive(&bytes[..], dir.path(), 1024),
            Err(BuildError::ContextTooLarge(1024))
        ));
        assert!(glob_match("a/[b-d]?.t*", "a/cx.txt"));
        assert!(!glob_match("a/*", "a/b/c"));
    }
}
