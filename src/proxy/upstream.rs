//! The inbound edge's client to the homeserver: HTTP/1.1 over TCP to the one
//! `inbound.upstream` address, its connections kept alive and reused.
//!
//! hyper-util's pooled client did this before. Under callgrind it was about
//! 30 % of the instructions of a kept-alive proxied request (issue 13): a
//! pool keyed by scheme and authority (hashed per request), its checkout
//! bookkeeping, and a task spawned per response to hand the connection back
//! once it was ready again. The edge has one upstream and HTTP/1.1 only, so
//! its pool is a stack of idle connections behind a mutex:
//!
//! * a request takes the most recently used idle connection that is ready
//!   (its last response was read to the end and hyper wants the next
//!   request), else dials a new one;
//! * a connection goes back when the response body that came over it is
//!   dropped after its end (hyper's server drops it once written). One whose
//!   body was not read to the end is dropped, and hyper closes it;
//! * a request that could not be sent because the reused connection had
//!   closed meanwhile (the homeserver's keep-alive timeout) is sent again
//!   on the next connection, as hyper-util did; one that was sent is never
//!   sent twice;
//! * at most `max_idle` connections wait (the oldest goes first), and none
//!   is reused after `idle_timeout`; a task runs while any wait, closing
//!   them once they are that old (hyper-util's pool, as the edge built it,
//!   had no such timer: a quiet edge kept its idle connections open);
//! * with the edge on lanes ([`crate::proxy::lanes`]), each lane has a pool
//!   of its own (`max_idle` each): a connection's task runs on the lane
//!   that dialled it, and a request on another lane would cross threads to
//!   reach it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// How long a connection whose response has ended may take to be ready for
/// the next request before it is closed instead of kept.
const READY_WAIT: Duration = Duration::from_secs(5);
/// The request body type the edge forwards.
pub type Body = BoxBody<Bytes, BoxError>;

/// Why a request got no response from the homeserver.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be made.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// `host:port` dialled.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TCP connection was not made within the connect timeout.
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout {
        /// `host:port` dialled.
        addr: String,
        /// The connect timeout.
        timeout: Duration,
    },
    /// HTTP/1.1 failed on the connection (handshake, send or response head).
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// Whether the request body was refused for its size (the edge's
    /// `max_body` limit, found while the body was being sent).
    pub fn is_length_limit(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return true;
            }
            source = s.source();
        }
        false
    }
}

/// Pool limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept at most.
    pub max_idle: usize,
    /// An idle connection older than this is closed, not reused.
    pub idle_timeout: Duration,
    /// Time allowed for a TCP connect.
    pub connect_timeout: Duration,
    /// Lanes the requests come from: one pool each, and one for requests
    /// from elsewhere (see [`crate::proxy::lanes::current`]).
    pub lanes: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_idle: 64,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            lanes: 0,
        }
    }
}

/// An idle connection and when it went idle.
struct IdleConn {
    sender: SendRequest<Body>,
    since: Instant,
}

/// The idle connections, oldest first.
struct Idle {
    conns: Mutex<Vec<IdleConn>>,
    max: usize,
    timeout: Duration,
    /// Whether a reaper task is running (read and written under `conns`'
    /// lock, so a connection put back is never left without one).
    reaping: AtomicBool,
}

impl Idle {
    /// The most recently used ready connection, closing the ones that
    /// closed, are not ready or are too old on the way.
    fn take(&self) -> Option<SendRequest<Body>> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(c) = conns.pop() {
            if c.sender.is_ready() && c.since.elapsed() < self.timeout {
                return Some(c.sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request, if it can take one.
    fn put(self: &Arc<Self>, sender: SendRequest<Body>) {
        if self.max == 0 || !sender.is_ready() {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken under the lock, so the stack stays oldest first and the
        // expired ones are a prefix.
        let now = Instant::now();
        let expired = conns.partition_point(|c| now.duration_since(c.since) >= self.timeout);
        conns.drain(..expired);
        if conns.len() >= self.max {
            conns.retain(|c| !c.sender.is_closed());
            let extra = (conns.len() + 1).saturating_sub(self.max).min(conns.len());
            conns.drain(..extra);
        }
        conns.push(IdleConn { sender, since: now });
        if !self.reaping.swap(true, Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// Closes idle connections once they are too old, while there are any,
    /// so that a quiet edge does not hold its homeserver's sockets open.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Relaxed);
            return;
        };
        let idle = Arc::downgrade(self);
        let every = self.timeout.max(Duration::from_millis(10));
        rt.spawn(async move {
            // Clears the flag however the task ends (also when its runtime
            // shuts down mid-sleep), so a later put starts a new reaper.
            let mut running = Reaping(idle.clone());
            loop {
                tokio::time::sleep(every).await;
                let Some(idle) = idle.upgrade() else { return };
                let now = Instant::now();
                let mut conns = idle.conns.lock().unwrap_or_else(PoisonError::into_inner);
                let expired =
                    conns.partition_point(|c| now.duration_since(c.since) >= idle.timeout);
                conns.drain(..expired);
                conns.retain(|c| !c.sender.is_closed());
                if conns.is_empty() {
                    // Cleared under the same lock a put takes: a connection
                    // put back after this starts a new reaper.
                    idle.reaping.store(false, Ordering::Relaxed);
                    running.0 = std::sync::Weak::new();
                    return;
                }
            }
        });
    }

    fn len(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Held by the reaper task: clears [`Idle::reaping`] (under the lock) if
/// the task is dropped before it ends by itself (its runtime shut down).
struct Reaping(std::sync::Weak<Idle>);

impl Drop for Reaping {
    fn drop(&mut self) {
        if let Some(idle) = self.0.upgrade() {
            let _conns = idle.conns.lock().unwrap_or_else(PoisonError::into_inner);
            idle.reaping.store(false, Ordering::Relaxed);
        }
    }
}

/// The homeserver's federation listener, as the edge reaches it.
pub struct Upstream {
    /// `host:port` to dial (host without IPv6 brackets, port defaulted).
    host: String,
    port: u16,
    /// The Host header for a request that came without one.
    authority: HeaderValue,
    /// The idle connections: index 0 for requests off the lanes, `i + 1`
    /// for lane `i`'s.
    idle: Vec<Arc<Idle>>,
    connect_timeout: Duration,
}

impl Upstream {
    /// A client for `uri` (`http://host[:port]`; port 80 when left out).
    pub fn new(uri: &hyper::Uri, settings: PoolSettings) -> Self {
        let written = uri.host().unwrap_or("127.0.0.1");
        let host = written
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(written);
        let port = uri.port_u16().unwrap_or(80);
        // As hyper-util wrote it: the host, and the port unless it is 80;
        // never user information from the URL.
        let authority = match port {
            80 => written.to_string(),
            p => format!("{written}:{p}"),
        };
        Upstream {
            host: host.to_string(),
            port,
            authority: HeaderValue::from_str(&authority)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            idle: (0..=settings.lanes)
                .map(|_| {
                    Arc::new(Idle {
                        conns: Mutex::new(Vec::with_capacity(settings.max_idle.min(1024))),
                        max: settings.max_idle,
                        timeout: settings.idle_timeout,
                        reaping: AtomicBool::new(false),
                    })
                })
                .collect(),
            connect_timeout: settings.connect_timeout,
        }
    }

    /// Idle connections waiting now (in all the lanes' pools).
    pub fn idle_connections(&self) -> usize {
        self.idle.iter().map(|i| i.len()).sum()
    }

    /// The pool of the lane this runs on; the off-lane pool for a lane
    /// beyond those this client was made for.
    fn pool(&self) -> &Arc<Idle> {
        self.idle
            .get(crate::proxy::lanes::current())
            .unwrap_or(&self.idle[0])
    }

    /// Sends `req` (origin-form URI; a Host header is added when it has
    /// none) and gives the response head, its body still streaming.
    pub async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.authority.clone());
        }
        let idle = self.pool();
        loop {
            let (mut sender, reused) = match idle.take() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            if !reused {
                sender.ready().await?;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = UpstreamBody {
                        inner: body,
                        ended: false,
                        back: Some((sender, idle.clone())),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the idle connection closed meanwhile.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// A new connection, its HTTP/1.1 task running.
    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let addr = || format!("{}:{}", self.host, self.port);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr: addr(),
                    timeout: self.connect_timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: addr(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        // Small requests and responses go out whole; no Nagle delay.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "fedpin::inbound", error = %e, "homeserver connection ended");
            }
        });
        Ok(sender)
    }
}

/// A response body from the homeserver. Dropped after its end, it gives
/// its connection back to the pool.
pub struct UpstreamBody {
    inner: Incoming,
    ended: bool,
    back: Option<(SendRequest<Body>, Arc<Idle>)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("ended", &self.ended)
            .field("reusable", &self.back.is_some())
            .finish_non_exhaustive()
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            // An error ends the body but not well: the connection is not reused.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Some((mut sender, idle)) = self.back.take() else {
            return;
        };
        if !(self.ended || self.inner.is_end_stream()) || sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            idle.put(sender);
            return;
        }
        // The body ended on this thread before the connection's task, on
        // another, took up the next request: wait for it there (briefly).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                    idle.put(sender);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A homeserver stand-in: answers `/chunked` with a chunked body,
    /// `/big` with 1 MiB, `/close` with `Connection: close`, and anything
    /// else with `ok`. Counts the connections it accepted.
    async fn homeserver() -> (hyper::Uri, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, ended) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let ended = ended.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body: BoxBody<Bytes, Infallible> = match req.uri().path() {
                            "/chunked" => Chunks(vec!["three", "two ", "one "]).boxed(),
                            "/big" => Full::new(Bytes::from(vec![b'x'; 1 << 20])).boxed(),
                            _ => Full::new(Bytes::from_static(b"ok")).boxed(),
                        };
                        let mut resp = Response::new(body);
                        if req.uri().path() == "/close" {
                            resp.headers_mut()
                                .insert("connection", HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let uri = format!("http://{addr}").parse().expect("uri");
        (uri, accepted, closed)
    }

    /// A body of unknown length (sent chunked), popped from the end.
    struct Chunks(Vec<&'static str>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop().map(|s| Ok(Frame::data(Bytes::from(s)))))
        }
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path)
            .header(HOST, "bench.fedpin.test")
            .body(Empty::new().map_err(|e| match e {}).boxed())
            .expect("request")
    }

    /// Sends `GET path`, reads the body to its end, and waits (bounded)
    /// until the connection is back in the pool when `back` is set.
    async fn fetch(up: &Upstream, path: &str, back: bool) -> Bytes {
        let idle_before = up.idle_connections();
        let resp = up.send(get(path)).await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        if back {
            for _ in 0..400 {
                if up.idle_connections() > idle_before.saturating_sub(1) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        body
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_in_turn_reuse_one_connection_fixed_length_or_chunked() {
        let (uri, accepted, _) = homeserver().await;
        let up = Upstream::new(&uri, PoolSettings::default());
        for i in 0..6 {
            let (path, want): (&str, &[u8]) = if i % 2 == 0 {
                ("/a", b"ok")
            } else {
                ("/chunked", b"one two three")
            };
            assert_eq!(fetch(&up, path, true).await.as_ref(), want);
            assert_eq!(up.idle_connections(), 1, "request {i}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// On lanes, each lane keeps the connections its requests dialled: a
    /// request on another lane dials its own, and each lane's next request
    /// takes its lane's connection again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_lane_reuses_its_own_connections() {
        let (uri, accepted, _) = homeserver().await;
        let up = Arc::new(Upstream::new(
            &uri,
            PoolSettings {
                lanes: 2,
                ..PoolSettings::default()
            },
        ));
        let lanes = crate::proxy::lanes::Lanes::start(2, "pool-test").expect("lanes");
        // In turn: lane 1, lane 2, lane 1, lane 2, each request after the
        // one before it has ended and given its connection back.
        for round in 0..4 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let up = up.clone();
            lanes.spawn_on(round, async move {
                let lane = crate::proxy::lanes::current();
                let body = fetch(&up, "/a", true).await;
                let _ = tx.send((lane, body));
            });
            let (lane, body) = tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .expect("in time")
                .expect("the lane answered");
            assert_eq!(lane, round % 2 + 1);
            assert_eq!(body.as_ref(), b"ok");
            // One connection per lane used so far, never more.
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                (round + 1).min(2),
                "round {round}"
            );
        }
        assert_eq!(up.idle_connections(), 2);
        assert_eq!(up.idle[0].len(), 0, "nothing went to the off-lane pool");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_not_read_to_its_end_closes_its_connection() {
        let (uri, accepted, _) = homeserver().await;
        let up = Upstream::new(&uri, PoolSettings::default());
        let resp = up.send(get("/big")).await.expect("response");
        let mut body = resp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        drop(body);
        assert_eq!(up.idle_connections(), 0);
        assert_eq!(fetch(&up, "/a", true).await.as_ref(), b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_close_and_the_idle_timeout_are_kept() {
        let (uri, accepted, _) = homeserver().await;
        let settings = PoolSettings {
            idle_timeout: Duration::from_millis(150),
            ..PoolSettings::default()
        };
        let up = Upstream::new(&uri, settings);
        assert_eq!(fetch(&up, "/close", false).await.as_ref(), b"ok");
        assert_eq!(fetch(&up, "/a", true).await.as_ref(), b"ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "Connection: close ends the first"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fetch(&up, "/a", true).await.as_ref(), b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "too old to reuse");
        assert_eq!(up.idle_connections(), 1, "the expired one was dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_pool_closes_its_connections_after_the_idle_timeout() {
        let (uri, accepted, closed) = homeserver().await;
        let settings = PoolSettings {
            idle_timeout: Duration::from_millis(100),
            ..PoolSettings::default()
        };
        let up = Upstream::new(&uri, settings);
        assert_eq!(fetch(&up, "/a", true).await.as_ref(), b"ok");
        assert_eq!(up.idle_connections(), 1);
        for _ in 0..300 {
            if closed.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(up.idle_connections(), 0, "reaped");
        assert_eq!(
            closed.load(Ordering::SeqCst),
            1,
            "the homeserver saw it close"
        );
        // And the pool still works, with a reaper again.
        assert_eq!(fetch(&up, "/a", true).await.as_ref(), b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        for _ in 0..300 {
            if closed.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(closed.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_max_idle_wait() {
        let (uri, accepted, _) = homeserver().await;
        let settings = PoolSettings {
            max_idle: 2,
            ..PoolSettings::default()
        };
        let up = Upstream::new(&uri, settings);
        // Four at once: four connections; afterwards two stay.
        let heads = tokio::join!(
            up.send(get("/a")),
            up.send(get("/a")),
            up.send(get("/a")),
            up.send(get("/a"))
        );
        let heads = [heads.0, heads.1, heads.2, heads.3];
        // All four heads are in before any body is read: four connections.
        let mut bodies = Vec::new();
        for h in heads {
            bodies.push(h.expect("response").into_body());
        }
        for b in bodies {
            assert_eq!(b.collect().await.expect("body").to_bytes().as_ref(), b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert_eq!(idle_reaches(&up, 2).await, 2);
    }

    /// Waits (bounded) until `n` connections are idle.
    async fn idle_reaches(up: &Upstream, n: usize) -> usize {
        for _ in 0..400 {
            if up.idle_connections() == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        up.idle_connections()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_dropped_at_its_end_without_the_final_poll_goes_back() {
        // As hyper's server does: it writes frames until is_end_stream()
        // and drops the body without polling for the closing None.
        let (uri, accepted, _) = homeserver().await;
        let up = Upstream::new(&uri, PoolSettings::default());
        for path in ["/a", "/chunked"] {
            let mut body = up.send(get(path)).await.expect("response").into_body();
            let mut got = Vec::new();
            let mut none_read = false;
            for _ in 0..10 {
                if body.is_end_stream() {
                    break;
                }
                match body.frame().await {
                    Some(f) => got.extend_from_slice(&f.expect("frame").into_data().expect("data")),
                    None => {
                        none_read = true;
                        break;
                    }
                }
            }
            assert!(!got.is_empty(), "{path}");
            if path == "/a" {
                // The case under test: a fixed-length body is at its end
                // with its last data frame, before any closing None.
                assert!(!none_read, "ended by is_end_stream()");
            }
            drop(body);
            assert_eq!(idle_reaches(&up, 1).await, 1, "{path} went back");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A raw homeserver on one connection: answers each request head with
    /// `answers` in turn (then closes), and returns the heads it read.
    async fn scripted(
        answers: Vec<&'static [u8]>,
    ) -> (hyper::Uri, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut heads = Vec::new();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            for answer in answers {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.expect("read");
                    if n == 0 {
                        return heads;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("end") + 4;
                heads.push(String::from_utf8_lossy(&buf[..end]).into_owned());
                buf.drain(..end);
                s.write_all(answer).await.expect("write");
            }
            heads
        });
        let uri = format!("http://{addr}").parse().expect("uri");
        (uri, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn head_and_no_content_responses_give_their_connection_back_unread() {
        let (uri, task) = scripted(vec![
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let up = Upstream::new(&uri, PoolSettings::default());
        let resp = up.send(get("/a")).await.expect("204");
        assert_eq!(resp.status(), 204);
        drop(resp);
        assert_eq!(idle_reaches(&up, 1).await, 1, "back after 204");
        let head = Request::head("/a")
            .body(Empty::new().map_err(|e| match e {}).boxed())
            .expect("request");
        let resp = up.send(head).await.expect("HEAD");
        assert_eq!(resp.status(), 200);
        drop(resp);
        assert_eq!(idle_reaches(&up, 1).await, 1, "back after HEAD");
        assert_eq!(fetch(&up, "/a", false).await.as_ref(), b"ok");
        let heads = task.await.expect("server task");
        assert_eq!(heads.len(), 3, "all three on one connection: {heads:?}");
        assert!(heads[1].starts_with("HEAD /a "), "{heads:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_was_sent_is_never_sent_again() {
        // The homeserver answers one request, reads the second and closes
        // without answering: the second fails; it is not retried.
        let (uri, task) =
            scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b""]).await;
        let up = Upstream::new(&uri, PoolSettings::default());
        assert_eq!(fetch(&up, "/a", true).await.as_ref(), b"ok");
        assert_eq!(up.idle_connections(), 1);
        let err = up.send(get("/b")).await.expect_err("closed unanswered");
        assert!(matches!(err, UpstreamError::Http(_)), "{err:?}");
        let heads = task.await.expect("server task");
        assert_eq!(heads.len(), 2, "{heads:?}");
        // Only one listener accept ever happened (the task accepted once
        // and has ended), and the pool holds nothing broken.
        assert_eq!(up.idle_connections(), 0);
    }

    /// The homeserver closes a kept connection while it waits in the pool
    /// (its keep-alive timeout): the next request is not sent on it, and
    /// no request fails for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_the_homeserver_closed_while_idle_is_not_used() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            // Each connection: one answer, then closed from this side.
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        let uri: hyper::Uri = format!("http://{addr}").parse().expect("uri");
        let up = Upstream::new(&uri, PoolSettings::default());
        for round in 1..=3 {
            assert_eq!(
                fetch(&up, "/a", true).await.as_ref(),
                b"ok",
                "round {round}"
            );
            // Kept, then closed by the homeserver while it waits.
            assert_eq!(up.idle_connections(), 1, "round {round}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_cut_short_is_an_error_and_its_connection_is_not_kept() {
        let (uri, task) = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"]).await;
        let up = Upstream::new(&uri, PoolSettings::default());
        let resp = up.send(get("/a")).await.expect("head");
        assert_eq!(resp.status(), 200);
        let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("ends within 10 s");
        assert!(collected.is_err(), "3 of 10 bytes then close is an error");
        assert_eq!(task.await.expect("server task").len(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(up.idle_connections(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_idle_zero_keeps_no_connection() {
        let (uri, accepted, _) = homeserver().await;
        let settings = PoolSettings {
            max_idle: 0,
            ..PoolSettings::default()
        };
        let up = Upstream::new(&uri, settings);
        for _ in 0..3 {
            assert_eq!(fetch(&up, "/a", false).await.as_ref(), b"ok");
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(up.idle_connections(), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn origin_form_and_a_host_header_reach_the_homeserver() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before the head ended");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8(head).expect("utf-8 head")
        });
        let uri: hyper::Uri = format!("http://{addr}").parse().expect("uri");
        let up = Upstream::new(&uri, PoolSettings::default());
        let req = Request::get("/_matrix/key/v2/server?x=1")
            .body(Empty::new().map_err(|e| match e {}).boxed())
            .expect("request");
        let resp = up.send(req).await.expect("response");
        assert_eq!(resp.status(), 204);
        let head = seen.await.expect("server task").to_ascii_lowercase();
        assert!(
            head.starts_with("get /_matrix/key/v2/server?x=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let uri: hyper::Uri = format!("http://{addr}").parse().expect("uri");
        let up = Upstream::new(&uri, PoolSettings::default());
        let err = up.send(get("/a")).await.expect_err("nothing listens");
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(!err.is_length_limit());
    }
}
