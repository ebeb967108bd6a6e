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
//! connection was parked) come back from `into_parts` and are read again
//! first ([`crate::proxy::io::Activity::unread`]), so nothing the client
//! sent is lost.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use hyper::rt::Write;

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
    use crate::proxy::io::Activity;
    use bytes::Bytes;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn unread_bytes_come_first_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut io, _) = Activity::new(TokioIo::new(a));
        io.unread(Bytes::from_static(b"GET / HT"));
        io.unread(Bytes::new());
        assert!(io.has_unread());
        tokio::io::AsyncWriteExt::write_all(&mut b, b"TP/1.1\r\n")
            .await
            .unwrap();
        drop(b);
        let mut out = Vec::new();
        TokioIo::new(io).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_second_unread_goes_before_what_was_left() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let (mut io, _) = Activity::new(TokioIo::new(a));
        io.unread(Bytes::from_static(b"world"));
        io.unread(Bytes::from_static(b"hello "));
        let mut out = Vec::new();
        TokioIo::new(io).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello world");
    }
}
