//! Stream helpers shared by the proxies.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Read, ReadBufCursor, Write};

/// When a stream last carried bytes in either direction.
#[derive(Debug, Clone)]
pub struct LastActivity {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for LastActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl LastActivity {
    /// A clock that starts now (counts as activity).
    pub fn new() -> Self {
        LastActivity {
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the stream has been quiet.
    pub fn quiet_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A hyper IO wrapper that records activity (for idle timeouts), and can
/// hand back bytes a reader took but did not use: what hyper had read but
/// not parsed when its connection was parked ([`crate::proxy::parking`]),
/// read again before the stream's own.
#[derive(Debug)]
pub struct Activity<S> {
    inner: S,
    last: LastActivity,
    unread: bytes::Bytes,
}

impl<S> Activity<S> {
    /// Wraps `inner`; returns the wrapper and a handle to its activity clock.
    pub fn new(inner: S) -> (Self, LastActivity) {
        let last = LastActivity::new();
        (Self::sharing(inner, &last), last)
    }

    /// The wrapped object.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Wraps `inner`, recording into an existing clock (both sides of a relay).
    pub fn sharing(inner: S, last: &LastActivity) -> Self {
        Activity {
            inner,
            last: last.clone(),
            unread: bytes::Bytes::new(),
        }
    }

    /// Serves `read` before what was still waiting to be read again, then
    /// the stream (hyper read a prefix of those bytes, then stopped).
    pub fn unread(&mut self, read: bytes::Bytes) {
        if read.is_empty() {
            return;
        }
        self.unread = if self.unread.is_empty() {
            read
        } else {
            [read, std::mem::take(&mut self.unread)].concat().into()
        };
    }

    /// Whether bytes wait to be read again before the stream's own.
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }
}

/// Reads the stream only: bytes handed back with [`Activity::unread`] are
/// served by hyper's [`Read`] (for tokio, read through `TokioIo<&mut
/// Activity<_>>`).
impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.touch();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Activity<S> {
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
}

impl<S: Read + Unpin> Read for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            bytes::Buf::advance(&mut self.unread, n);
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.last.touch();
        }
        r
    }
}

impl<S: Write + Unpin> Write for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
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
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.touch();
        }
        r
    }
}

/// The next accepted connection, or `None` once `shutdown` says stop. An
/// accept error (EMFILE and friends) goes to `failed`, which logs it under
/// the caller's target; after a 100 ms pause serving goes on. Cancel-safe.
pub async fn accept_or_stop(
    listener: &tokio::net::TcpListener,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    failed: impl Fn(&io::Error),
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(shutdown) => return None,
        };
        match accepted {
            Ok(a) => return Some(a),
            Err(e) => {
                failed(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Resolves once `rx` says "stop" (true). A dropped sender means "never
/// stop": the future then stays pending instead of resolving at once.
/// Cancel-safe, so it can sit in a `select!` loop.
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
