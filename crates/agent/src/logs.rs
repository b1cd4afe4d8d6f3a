//! `docker logs` from the shim's json-file logs: rotated files oldest to
//! newest, `tail` counted from the end by reading backwards, `since`/`until`
//! filters, and `follow` by polling the file until the container exits.
//! Files are streamed line by line, never loaded whole.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::Stream;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

/// How often a followed log is polled for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(75);
/// Output is sent in chunks of about this size.
const CHUNK: usize = 32 * 1024;
/// A line longer than this is not a json-file entry (the shim splits at 16 KiB).
const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub stdout: bool,
    pub stderr: bool,
    pub follow: bool,
    /// Only the last N lines (of the files, before stream filtering, as Docker).
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Prefix each line with its RFC 3339 time (nanoseconds) and a space.
    pub timestamps: bool,
}

#[derive(Deserialize)]
struct Entry {
    log: String,
    stream: String,
    time: DateTime<Utc>,
}

/// The log files of a container, oldest first: `log.N`, ..., `log.1`, `log`.
pub fn log_files(log: &Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    for i in 1.. {
        let mut s = log.as_os_str().to_os_string();
        s.push(format!(".{i}"));
        let p = PathBuf::from(s);
        if !p.exists() {
            break;
        }
        rotated.push(p);
    }
    rotated.reverse();
    rotated.push(log.to_path_buf());
    rotated
}

/// Where the last `n` complete lines of `files` begin: (file index, offset).
/// Reads backwards in blocks; a trailing incomplete line is not counted.
pub fn tail_start(files: &[PathBuf], n: usize) -> std::io::Result<(usize, u64)> {
    if files.is_empty() {
        return Ok((0, 0));
    }
    let last = files.len() - 1;
    let mut need = n;
    for (idx, path) in files.iter().enumerate().rev() {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if need == 0 {
            return Ok(if idx == last {
                (idx, len)
            } else {
                (idx + 1, 0)
            });
        }
        let mut pos = len;
        let mut block = vec![0u8; 64 * 1024];
        // The first newline seen from the end closes the last complete line.
        let mut seen_end = false;
        while pos > 0 {
            let start = pos.saturating_sub(block.len() as u64);
            let size = (pos - start) as usize;
            f.seek(SeekFrom::Start(start))?;
            f.read_exact(&mut block[..size])?;
            for i in (0..size).rev() {
                if block[i] != b'\n' {
                    continue;
                }
                if !seen_end {
                    seen_end = true;
                    continue;
                }
                need -= 1;
                if need == 0 {
                    return Ok((idx, start + i as u64 + 1));
                }
            }
            pos = start;
        }
        // Every line of this file counts (its first line has no newline before it).
        if seen_end {
            need -= 1;
            if need == 0 {
                return Ok((idx, 0));
            }
        }
    }
    Ok((0, 0))
}

/// Docker's multiplexed frame: stream byte, three zeros, big-endian length.
pub fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.push(stream);
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Streams the logs at `log` (the current json-file; rotated ones beside it)
/// as Docker-framed chunks (raw bytes when `tty`). With `follow`, keeps
/// reading new lines until `exited` resolves, then drains and ends.
pub fn log_stream<F>(
    log: PathBuf,
    opts: LogOptions,
    tty: bool,
    exited: F,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut r = Reader {
            opts,
            tty,
            tx,
            out: BytesMut::new(),
            done: false,
        };
        if let Err(e) = r.run(log, exited).await {
            let _ = r.tx.send(Err(e)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

struct Reader {
    opts: LogOptions,
    tty: bool,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    out: BytesMut,
    /// Set by `until` (or a gone receiver): stop everything.
    done: bool,
}

/// An open log file being read line by line; `pending` holds an incomplete
/// last line until the writer finishes it.
struct Open {
    reader: BufReader<tokio::fs::File>,
    ino: u64,
    /// Bytes consumed so far: a file shorter than this was truncated.
    pos: u64,
    pending: Vec<u8>,
}

impl Open {
    async fn open(path: &Path, offset: u64) -> std::io::Result<Option<Open>> {
        let mut f = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let ino = f.metadata().await?.ino();
        if offset > 0 {
            f.seek(SeekFrom::Start(offset)).await?;
        }
        Ok(Some(Open {
            reader: BufReader::new(f),
            ino,
            pos: offset,
            pending: Vec::new(),
        }))
    }
}

impl Reader {
    async fn run<F>(&mut self, log: PathBuf, exited: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let files = log_files(&log);
        let (first, offset) = match self.opts.tail {
            Some(n) => {
                let f = files.clone();
                tokio::task::spawn_blocking(move || tail_start(&f, n))
                    .await
                    .map_err(std::io::Error::other)??
            }
            None => (0, 0),
        };
        let last = files.len() - 1;
        let mut current = None;
        for (idx, path) in files.iter().enumerate().skip(first) {
            let off = if idx == first { offset } else { 0 };
            let Some(mut o) = Open::open(path, off).await? else {
                continue;
            };
            self.drain(&mut o).await?;
            if self.done {
                return self.flush().await;
            }
            if idx == last {
                current = Some(o);
            }
        }
        self.flush().await?;
        if !self.opts.follow {
            return Ok(());
        }
        let mut exited = std::pin::pin!(exited);
        let mut finished = false;
        loop {
            tokio::select! {
                _ = &mut exited, if !finished => finished = true,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            if self.tx.is_closed() {
                return Ok(());
            }
            if let Some(o) = &mut current {
                self.drain(o).await?;
            }
            // Rotated (or created late): the name now holds a new file. With
            // one file, rotation truncates it in place.
            let rotated = match tokio::fs::metadata(&log).await {
                Ok(m) => current
                    .as_ref()
                    .is_none_or(|o| o.ino != m.ino() || m.len() < o.pos),
                Err(_) => false,
            };
            if rotated && !self.done {
                current = Open::open(&log, 0).await?;
                if let Some(o) = &mut current {
                    self.drain(o).await?;
                }
            }
            self.flush().await?;
            if finished || self.done {
                return Ok(());
            }
        }
    }

    /// Reads every complete line available now.
    async fn drain(&mut self, o: &mut Open) -> std::io::Result<()> {
        loop {
            if self.done {
                return Ok(());
            }
            let n = o.reader.read_until(b'\n', &mut o.pending).await?;
            if n == 0 {
                return Ok(());
            }
            o.pos += n as u64;
            if o.pending.last() != Some(&b'\n') {
                if o.pending.len() > MAX_LINE {
                    o.pending.clear();
                }
                // Incomplete: the writer is mid-line; wait for the rest.
                continue;
            }
            let line = std::mem::take(&mut o.pending);
            self.line(&line).await?;
        }
    }

    async fn line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let Ok(e) = serde_json::from_slice::<Entry>(line) else {
            return Ok(());
        };
        if let Some(until) = self.opts.until
            && e.time > until
        {
            self.done = true;
            return Ok(());
        }
        if let Some(since) = self.opts.since
            && e.time < since
        {
            return Ok(());
        }
        let stream = match e.stream.as_str() {
            "stdout" if self.opts.stdout => 1u8,
            "stderr" if self.opts.stderr => 2u8,
            _ => return Ok(()),
        };
        let mut payload = Vec::with_capacity(e.log.len() + 32);
        if self.opts.timestamps {
            payload.extend_from_slice(
                e.time
                    .to_rfc3339_opts(SecondsFormat::Nanos, true)
                    .as_bytes(),
            );
            payload.push(b' ');
        }
        payload.extend_from_slice(e.log.as_bytes());
        if self.tty {
            self.out.extend_from_slice(&payload);
        } else {
            self.out.extend_from_slice(&frame(stream, &payload));
        }
        if self.out.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let chunk = self.out.split().freeze();
        if self.tx.send(Ok(chunk)).await.is_err() {
            // The client went away.
            self.done = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_across_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let log = d.path().join("c.log");
        std::fs::write(d.path().join("c.log.1"), "a\nb\n").expect("write");
        std::fs::write(&log, "c\nd\npartial").expect("write");
        let files = log_files(&log);
        assert_eq!(files.len(), 2);
        assert_eq!(tail_start(&files, 1).expect("tail"), (1, 2));
        assert_eq!(tail_start(&files, 2).expect("tail"), (1, 0));
        assert_eq!(tail_start(&files, 3).expect("tail"), (0, 2));
        assert_eq!(tail_start(&files, 10).expect("tail"), (0, 0));
        assert_eq!(tail_start(&files, 0).expect("tail"), (1, 11));
    }

    #[test]
    fn frames() {
        assert_eq!(frame(2, b"hi"), vec![2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }
}
