//! A connection that STARTTLS upgrades in place, for both ends of SMTP: our client session
//! (`smtp::session`) and the server session of `-bs` and `serve` (`bs`).
//!
//! Owns: [`Upgradable`], which reads and writes through whichever stream is current — the
//! plain one, then the TLS one — and is `Gone` while the handshake holds the plain stream or
//! after it failed: reads, writes and flushes then fail with "connection lost", shutting down
//! succeeds. Must not: do the handshake, know SMTP, or import anything from the crate (it is
//! a leaf, so that `bs`, which may not name `crate::smtp`, can share it).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A plain stream `P`, or the TLS stream `T` STARTTLS made of it, or neither.
pub enum Upgradable<P, T> {
    Plain(P),
    Tls(Box<T>),
    /// During the handshake (it owns the plain stream), or after it failed.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection lost")
}

impl<P, T> AsyncRead for Upgradable<P, T>
where
    P: AsyncRead + Unpin,
    T: AsyncRead + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgradable::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upgradable::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Upgradable::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<P, T> AsyncWrite for Upgradable<P, T>
where
    P: AsyncWrite + Unpin,
    T: AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upgradable::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upgradable::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Upgradable::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgradable::Plain(s) => Pin::new(s).poll_flush(cx),
            Upgradable::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Upgradable::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgradable::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upgradable::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Upgradable::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Conn = Upgradable<tokio::io::DuplexStream, tokio::io::DuplexStream>;

    #[tokio::test]
    async fn reads_and_writes_go_to_the_current_stream_and_fail_when_gone() {
        let (a, mut peer) = tokio::io::duplex(64);
        let mut c: Conn = Upgradable::Plain(a);
        c.write_all(b"plain").await.unwrap();
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"plain");

        let (b, mut peer) = tokio::io::duplex(64);
        c = Upgradable::Tls(Box::new(b));
        peer.write_all(b"tls").await.unwrap();
        let mut got = [0u8; 3];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"tls");

        c = Upgradable::Gone;
        let e = c.write_all(b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        let e = c.read(&mut got).await.unwrap_err();
        assert_eq!(e.to_string(), "connection lost");
        c.shutdown().await.unwrap();
    }
}
