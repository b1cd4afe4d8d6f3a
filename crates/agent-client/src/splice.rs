//! Splicing a hijacked client connection (attach, exec) to the next hop, used by
//! the head (client ↔ agent) and the agent (head ↔ shim).
//!
//! `copy_bidirectional` cannot tell a client that half-closed (sent all of its
//! stdin, still reading output) from one that went away: both read as EOF. An
//! idle stream to a vanished client would then hold its task, its fds and the
//! connection to the next hop until the process wrote something. On unix
//! sockets the two differ: a full close raises POLLHUP. So after the client's
//! EOF we keep delivering output and check for the hang-up once a second.

use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// How often a half-closed client is checked for a hang-up.
const HANGUP_CHECK: Duration = Duration::from_secs(1);

/// Moves bytes both ways until the output side ends, either side fails, or the
/// client hangs up; then drops both, which closes the next hop too.
pub async fn splice<O>(client: hyper::upgrade::Upgraded, mut other: O)
where
    O: AsyncRead + AsyncWrite + Send + Unpin,
{
    match client.downcast::<TokioIo<UnixStream>>() {
        Ok(parts) => splice_unix(parts.io.into_inner(), parts.read_buf, other).await,
        Err(client) => {
            // Not a unix socket (TCP later): no hang-up detection.
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut other).await;
        }
    }
}

async fn splice_unix<O>(client: UnixStream, early: Bytes, other: O)
where
    O: AsyncRead + AsyncWrite + Send + Unpin,
{
    let fd = client.as_raw_fd();
    let (mut cr, mut cw) = client.into_split();
    let (mut or, mut ow) = tokio::io::split(other);
    let to_other = async {
        ow.write_all(&early).await?;
        tokio::io::copy(&mut cr, &mut ow).await?;
        ow.shutdown().await?;
        loop {
            if hung_up(fd) {
                return Err::<(), _>(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
            }
            tokio::time::sleep(HANGUP_CHECK).await;
        }
    };
    let to_client = async {
        tokio::io::copy(&mut or, &mut cw).await?;
        cw.shutdown().await
    };
    let r = tokio::select! {
        r = to_client => r,
        r = to_other => r,
    };
    if let Err(e) = r {
        tracing::debug!("stream ended: {e}");
    }
}

/// The peer closed its end completely (not just its writing side).
fn hung_up(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}
