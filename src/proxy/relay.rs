//! A two-way copy that holds no buffer while the tunnel is idle.
//!
//! tokio's `copy_bidirectional` gives each direction a heap buffer for the
//! whole life of the copy. An outbound tunnel spends most of its life idle,
//! so those buffers were a quarter of its memory. Here each direction
//! reads into a buffer on the stack of the poll that read, writes straight
//! on, and copies to the heap only what the writer would not take yet
//! (backpressure); that copy is freed once written. An idle tunnel holds
//! no relay buffer at all.
//!
//! Semantics follow tokio's copy: an end of stream on one side is passed
//! on as a shutdown of the other (half-close), a writer is flushed before
//! the copy waits for more to read, and the first error ends both
//! directions.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes, bytes (one page, as an nginx proxy buffer).
pub const CHUNK: usize = 4096;

/// One direction of the copy.
#[derive(Debug, Default)]
struct Direction {
    /// What the writer has not taken yet; `None` whenever nothing waits.
    spill: Option<Box<[u8]>>,
    /// How much of `spill` has been written.
    pos: usize,
    read_done: bool,
    need_flush: bool,
    copied: u64,
}

impl Direction {
    /// Copies until the reader ends and the writer is shut down; the bytes
    /// copied.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if let Some(spill) = &self.spill {
                while self.pos < spill.len() {
                    let n = took(ready!(writer.as_mut().poll_write(cx, &spill[self.pos..]))?)?;
                    self.pos += n;
                    self.copied += n as u64;
                    self.need_flush = true;
                }
                self.spill = None;
                self.pos = 0;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.copied));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut read = ReadBuf::uninit(&mut stack);
            if reader.as_mut().poll_read(cx, &mut read)?.is_pending() {
                if self.need_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
            let got = read.filled();
            if got.is_empty() {
                self.read_done = true;
                continue;
            }
            let mut off = 0;
            while off < got.len() {
                match writer.as_mut().poll_write(cx, &got[off..]) {
                    Poll::Ready(r) => {
                        let n = took(r?)?;
                        off += n;
                        self.copied += n as u64;
                        self.need_flush = true;
                    }
                    Poll::Pending => {
                        self.spill = Some(got[off..].into());
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// A write's count, or an error if the writer took nothing (a writer that
/// can never take more must not spin the relay).
fn took(n: usize) -> io::Result<usize> {
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the other side of the relay took no bytes",
        ));
    }
    Ok(n)
}

/// Copies `a` to `b` and `b` to `a` until both have ended; the bytes copied
/// each way (a to b, b to a). The first error of either direction ends the
/// copy.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    let mut done: (Option<u64>, Option<u64>) = (None, None);
    poll_fn(|cx| {
        if done.0.is_none() {
            if let Poll::Ready(n) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
                done.0 = Some(n?);
            }
        }
        if done.1.is_none() {
            if let Poll::Ready(n) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
                done.1 = Some(n?);
            }
        }
        match done {
            (Some(ab), Some(ba)) => Poll::Ready(Ok((ab, ba))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Large transfers both ways at once through pipes far smaller than a
    /// chunk, so nearly every write is partial or pending and the spill
    /// path carries most bytes; then half-close each way in turn.
    #[tokio::test]
    async fn copies_both_ways_under_backpressure_and_passes_half_close() {
        let (left, relay_left) = tokio::io::duplex(61);
        let (relay_right, right) = tokio::io::duplex(37);
        let relay = tokio::spawn(async move {
            let (mut a, mut b) = (relay_left, relay_right);
            copy_bidirectional(&mut a, &mut b).await
        });
        let up = pattern(300_000, 1);
        let down = pattern(200_000, 7);
        let (lr, mut lw) = tokio::io::split(left);
        let (rr, mut rw) = tokio::io::split(right);
        let (up2, down2) = (up.clone(), down.clone());
        let send_up = tokio::spawn(async move {
            lw.write_all(&up2).await.unwrap();
            lw.shutdown().await.unwrap();
            lw
        });
        let send_down = tokio::spawn(async move {
            rw.write_all(&down2).await.unwrap();
            rw
        });
        let read_up = tokio::spawn(async move {
            let mut rr = rr;
            let mut got = Vec::new();
            rr.read_to_end(&mut got).await.unwrap();
            (rr, got)
        });
        let mut lr = lr;
        let mut got_down = vec![0; down.len()];
        lr.read_exact(&mut got_down).await.unwrap();
        assert_eq!(got_down, down, "right to left arrived intact");
        let (rr, got_up) = read_up.await.unwrap();
        assert_eq!(got_up, up, "left to right arrived intact, then its end");
        // Right still writes after left half-closed; then it ends too.
        let mut rw = send_down.await.unwrap();
        rw.write_all(b"after").await.unwrap();
        rw.shutdown().await.unwrap();
        let mut tail = Vec::new();
        lr.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, b"after");
        let (ab, ba) = relay.await.unwrap().unwrap();
        assert_eq!((ab, ba), (up.len() as u64, down.len() as u64 + 5));
        drop((rr, send_up.await.unwrap()));
    }

    /// A writer that takes nothing yet keeps the rest on the heap; once it
    /// has taken all, the direction holds no buffer.
    #[test]
    fn holds_a_buffer_only_while_the_writer_lags() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut src, mut feed) = tokio::io::duplex(CHUNK);
        let (mut dst, mut sink) = tokio::io::duplex(100);
        let mut dir = Direction::default();
        let data = pattern(1000, 3);
        assert!(Pin::new(&mut feed).poll_write(&mut cx, &data).is_ready());
        assert!(dir
            .poll_copy(&mut cx, Pin::new(&mut src), Pin::new(&mut dst))
            .is_pending());
        assert_eq!(dir.spill.as_ref().map(|s| s.len()), Some(900));
        let mut out = Vec::new();
        while out.len() < data.len() {
            let mut buf = [0u8; 64];
            let mut rb = ReadBuf::new(&mut buf);
            assert!(Pin::new(&mut sink).poll_read(&mut cx, &mut rb).is_ready());
            out.extend_from_slice(rb.filled());
            let _ = dir.poll_copy(&mut cx, Pin::new(&mut src), Pin::new(&mut dst));
        }
        assert_eq!(out, data);
        assert!(dir.spill.is_none(), "nothing waits, so nothing is held");
        assert_eq!(dir.copied, 1000);
    }

    /// A writer that takes zero bytes is an error, not a busy loop.
    #[test]
    fn a_writer_that_takes_nothing_is_an_error() {
        struct Zero;
        impl AsyncWrite for Zero {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(0))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut src: &[u8] = b"bytes";
        let mut dir = Direction::default();
        match dir.poll_copy(&mut cx, Pin::new(&mut src), Pin::new(&mut Zero)) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::WriteZero),
            other => panic!("expected WriteZero, got {other:?}"),
        }
    }
}
