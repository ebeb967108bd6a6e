//! Parking idle HTTP/1.1 connections: an idle kept-alive connection gives
//! back hyper's buffers and waits on the socket alone.
//!
//! hyper's HTTP/1.1 connection holds an 8 kB read buffer (reserved while it
//! waits for the next request head) and an 8 kB header write buffer for as
//! long as the connection lives. Federation peers keep connections open for
//! minutes between bursts, so most open connections are idle, and those
//! 16 kB were more than half of fedpin's memory per idle connection (nginx
//! frees its buffers on idle keep-alive connections for the same reason).
//!
//! The inbound edge therefore ends hyper's connection once it has been
//! idle for [`PARK_AFTER`] without shutting the TLS stream down
//! (`poll_without_shutdown` and `into_parts`), keeps the stream, and
//! starts a new hyper connection on it when the client sends again. Bytes
//! hyper had read but not yet parsed (a request head arriving just as the
//! connection was parked) come back from `into_parts` and are served first
//! by [`Prefixed`], so nothing the client sent is lost.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::rt::{Read, ReadBufCursor, Write};

/// How long an HTTP/1.1 connection must be quiet (no bytes either way, no
/// request waiting for the homeserver) before it is parked.
///
/// Short, because connections opened close together would otherwise all
/// hold hyper's buffers at once before the first of them parks, and the
/// allocator keeps that high-water mark. The price is paid only by requests
/// that arrive more than this apart on one connection: a park and a new
/// hyper connection, about 26k instructions (callgrind), a quarter of such a
/// request. Back-to-back requests never park.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// An IO object with bytes to serve before its own: what hyper had read
/// from it but not parsed when its connection was parked.
#[derive(Debug)]
pub struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Prefixed<I> {
    /// `inner`, nothing to serve first.
    pub fn new(inner: I) -> Self {
        Prefixed {
            prefix: Bytes::new(),
            inner,
        }
    }

    /// Serves `read` (hyper's unparsed bytes) before what was still
    /// waiting here, which hyper had not reached yet.
    pub fn unread(&mut self, read: Bytes) {
        if read.is_empty() {
            return;
        }
        self.prefix = if self.prefix.is_empty() {
            read
        } else {
            let mut both = Vec::with_capacity(read.len() + self.prefix.len());
            both.extend_from_slice(&read);
            both.extend_from_slice(&self.prefix);
            Bytes::from(both)
        };
    }

    /// Whether bytes wait here to be read before the inner object's.
    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The wrapped object.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }
}

impl<I: Read + Unpin> Read for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// Resolves when a parked TLS stream has something for hyper to read:
/// plaintext rustls already holds (decrypted from records read with the
/// last request), the peer's close_notify or a TLS error (hyper's next read
/// reports it), or new bytes on the socket. Reads nothing itself, so it
/// allocates no read buffer while it waits. Cancel-safe.
pub async fn readable(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> io::Result<()> {
    let (tcp, conn) = tls.get_mut();
    match conn.process_new_packets() {
        Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
        // Data, end of stream or an error: hyper's read takes it from here.
        _ => return Ok(()),
    }
    tcp.readable().await
}

/// Shuts `io` down (TLS close_notify, then FIN), giving up after `limit`.
pub async fn shutdown<I: Write + Unpin>(io: &mut I, limit: Duration) {
    let close = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx));
    let _ = tokio::time::timeout(limit, close).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn prefix_bytes_come_first_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(TokioIo::new(a));
        p.unread(Bytes::from_static(b"GET / HT"));
        p.unread(Bytes::new());
        assert!(p.has_prefix());
        tokio::io::AsyncWriteExt::write_all(&mut b, b"TP/1.1\r\n")
            .await
            .unwrap();
        drop(b);
        let mut out = Vec::new();
        TokioIo::new(p).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_second_unread_goes_before_what_was_left() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let mut p = Prefixed::new(TokioIo::new(a));
        p.unread(Bytes::from_static(b"world"));
        p.unread(Bytes::from_static(b"hello "));
        let mut out = Vec::new();
        TokioIo::new(p).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello world");
    }
}
