//! Detects gzip/zstd by magic number, like `docker load` and layer handling do, so
//! callers accept compressed and plain tars alike.

use std::io::{self, Cursor, Read};

use crate::error::ImageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const BZIP2: &[u8] = b"BZh";
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// The compression of a stream whose first bytes are `head`.
pub fn detect(head: &[u8]) -> Result<Compression, ImageError> {
    if head.starts_with(GZIP) {
        Ok(Compression::Gzip)
    } else if head.starts_with(ZSTD) {
        Ok(Compression::Zstd)
    } else if head.starts_with(BZIP2) {
        Err(ImageError::Unsupported(
            "bzip2 compressed archives are not supported".into(),
        ))
    } else if head.starts_with(XZ) {
        Err(ImageError::Unsupported(
            "xz compressed archives are not supported".into(),
        ))
    } else {
        Ok(Compression::None)
    }
}

/// Reads the first bytes of `r`, returns the detected compression and a reader that
/// yields the whole (still compressed) stream again.
pub fn sniff<'a, R: Read + 'a>(mut r: R) -> Result<(Compression, impl Read + 'a), ImageError> {
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::Io(e)),
        }
    }
    let c = detect(&head[..n])?;
    Ok((c, Cursor::new(head[..n].to_vec()).chain(r)))
}

/// A reader of the decompressed stream, whatever the input's compression.
pub fn decompressed<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>, ImageError> {
    let (c, r) = sniff(r)?;
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(c: Compression, data: &[u8]) -> Vec<u8> {
        let packed = match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
        };
        let (got, _) = sniff(&packed[..]).unwrap();
        assert_eq!(got, c);
        let mut out = Vec::new();
        decompressed(&packed[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn detects_and_decompresses() {
        let data = b"hello world, this is some tar-ish data".repeat(100);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(roundtrip(c, &data), data);
        }
        // Shorter than any magic: plain.
        assert_eq!(roundtrip(Compression::None, b"ab"), b"ab");
        assert_eq!(roundtrip(Compression::None, b""), b"");
    }

    #[test]
    fn refuses_unsupported() {
        assert!(matches!(
            decompressed(&b"BZh91AY&SY"[..]).err(),
            Some(ImageError::Unsupported(_))
        ));
    }
}

/// Marks an I/O error as coming from the raw input (the client's upload).
#[derive(Debug)]
struct SourceError(io::Error);

/// Marks an I/O error as coming from the decompressor.
#[derive(Debug)]
struct DecodeError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for SourceError {}
impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for DecodeError {}

fn is_tagged<T: std::error::Error + 'static>(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<T>())
}

struct TagSource<R>(R);
impl<R: Read> Read for TagSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))
    }
}

struct TagDecode<R>(R);
impl<R: Read> Read for TagDecode<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if is_tagged::<SourceError>(&e) {
                e
            } else {
                io::Error::new(e.kind(), DecodeError(e))
            }
        })
    }
}

/// The decompressed stream of a tarball whose read errors can later be told apart by
/// [`read_error`]: input failures, decompression failures and tar format errors.
pub(crate) fn tar_stream<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>, ImageError> {
    Ok(Box::new(TagDecode(decompressed(TagSource(r))?)))
}

/// Turns an error from reading a [`tar_stream`] (directly or through the `tar` crate)
/// into a message for the user, like Docker's.
pub(crate) fn read_error(e: io::Error) -> ImageError {
    let eof = e.kind() == io::ErrorKind::UnexpectedEof;
    if is_tagged::<SourceError>(&e) {
        return if eof {
            ImageError::InvalidArchive("unexpected EOF".into())
        } else {
            ImageError::Io(e)
        };
    }
    if is_tagged::<DecodeError>(&e) {
        return if eof {
            ImageError::InvalidArchive("unexpected EOF".into())
        } else {
            ImageError::InvalidArchive(format!("invalid compressed data: {e}"))
        };
    }
    let msg = e.to_string();
    if eof || msg.contains("entire block") || msg.contains("EOF") {
        ImageError::InvalidArchive("unexpected EOF".into())
    } else {
        // The tar crate's details quote raw header bytes; keep them out of user messages.
        tracing::debug!("tar read error: {msg}");
        ImageError::InvalidArchive("invalid tar header".into())
    }
}

/// Reads the rest of a tar stream (end-of-archive blocks and padding) so a hash over
/// the whole stream is complete.
pub(crate) fn drain<R: Read>(r: &mut R) -> Result<(), ImageError> {
    io::copy(r, &mut io::sink()).map_err(read_error)?;
    Ok(())
}

/// Copies one tar entry's content to `w`, insisting on all of it; write errors are
/// storage errors, read errors are archive errors.
pub(crate) fn copy_entry<R: Read, W: io::Write>(
    entry: &mut R,
    expected: u64,
    w: &mut W,
) -> Result<u64, ImageError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut n = 0u64;
    loop {
        let k = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
    if n < expected {
        return Err(ImageError::InvalidArchive("unexpected EOF".into()));
    }
    Ok(n)
}
