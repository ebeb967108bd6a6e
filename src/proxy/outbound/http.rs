//! Tunnels read as HTTP/1.1, so their pinned upstream connection can be kept
//! for the next tunnel to the same peer ([`crate::proxy::kept`]).
//!
//! The homeserver's requests are read by hyper's server and sent on over
//! the tunnel's upstream connection by hyper's client, one at a time, as
//! they came (method, target, headers, body), except the hop-by-hop headers
//! (RFC 9110 section 7.6.1): `Connection` is the homeserver's business with
//! fedpin, so a homeserver closing after each request does not make the
//! peer close too. When the upstream connection closes between requests
//! (its keep-alive timeout), the next request dials again, pin-checked, as
//! the first did; a request already sent is never sent twice.
//!
//! Whether a tunnel is HTTP is read from its first bytes, not assumed: a
//! homeserver offering h2, or sending anything but an HTTP/1.x request line
//! first (or letting the peer speak first), gets the byte relay as before.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderMap, HeaderName, CONNECTION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{text, Destination, OutboundProxy, PeerChain, Registered, UpTls, KEPT_READY_WAIT};
use crate::alert::Direction;
use crate::proxy::kept::{Key, Link};
use crate::proxy::parking::PARK_AFTER;
use crate::verify::PeerContext;

/// What a response to the homeserver carries: the peer's body, or fedpin's.
type Answer = Response<Either<GiveBack, Full<Bytes>>>;

/// How long a tunnel's vetted destination (its name resolved, the egress
/// policy applied) is used for requests that take a pooled connection,
/// while the settings stay the same. A changed setting vets again at once.
const VET_FRESH: Duration = Duration::from_secs(30);

/// A destination vetted under the settings it was vetted with (held, so
/// that a pointer comparison cannot mistake new settings for them).
struct Vetted {
    settings: Arc<super::OutboundSettings>,
    at: std::time::Instant,
    dest: Destination,
}

/// An HTTP tunnel ready to be served: the homeserver's TLS stream (bytes
/// read to tell HTTP handed back to it), and the tunnel.
///
/// Handed back up to the tunnel's task rather than served where it was
/// made: the futures that made it (the dial, both handshakes, the first
/// read) are then dropped, and a long-lived idle tunnel's task holds only
/// what serving needs. Served from inside them, a parked tunnel kept their
/// 4.5 kB of states (its task's future and the boxed `http_or_relay`), a
/// third of its memory (`-Zprint-type-sizes`).
pub(super) struct Serve<IO> {
    io: crate::proxy::io::Activity<TokioIo<Box<tokio_rustls::server::TlsStream<IO>>>>,
    last: crate::proxy::io::LastActivity,
    t: Arc<HttpTunnel>,
}

/// One HTTP tunnel: where its requests go and the connection they go over.
pub(super) struct HttpTunnel {
    proxy: Arc<OutboundProxy>,
    tls_name: String,
    dest: Destination,
    /// The ALPN offered upstream (`http/1.1` or nothing).
    offered: Vec<Vec<u8>>,
    client: std::net::SocketAddr,
    /// The upstream connection between requests, with its registration for
    /// re-checks on reload. `None` while a request is on it, or once it
    /// failed.
    link: Mutex<Option<(Link, Registered)>>,
    /// While parked: the registration of the last upstream connection
    /// used, so that a reload refusing what that peer presented still ends
    /// the tunnel (SPEC 4.13), as it would have with the connection held.
    standing: Mutex<Option<Registered>>,
    /// Fired by a reload that refuses what the upstream presented.
    revoke: Arc<tokio::sync::Notify>,
    /// Requests waiting for their response head (the tunnel is not idle).
    in_flight: AtomicUsize,
    /// Requests served so far.
    served: AtomicUsize,
    /// The destination as last vetted for a pooled or new connection.
    vetted: Mutex<Option<Vetted>>,
}

impl HttpTunnel {
    pub(super) fn new(
        proxy: &Arc<OutboundProxy>,
        tls_name: String,
        dest: Destination,
        offered: Vec<Vec<u8>>,
        client: std::net::SocketAddr,
        revoke: Arc<tokio::sync::Notify>,
    ) -> Self {
        HttpTunnel {
            proxy: proxy.clone(),
            tls_name,
            dest,
            offered,
            client,
            link: Mutex::new(None),
            standing: Mutex::new(None),
            revoke,
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            // Not the CONNECT's vetting: the settings may have changed
            // during the handshakes, and which ones it met is not known.
            vetted: Mutex::new(None),
        }
    }

    fn key(&self) -> Key {
        Key {
            tls_name: self.tls_name.clone(),
            host: self.dest.host.clone(),
            port: self.dest.port,
        }
    }

    /// Starts HTTP/1.1 on a dialled, pin-checked upstream connection.
    async fn link_over(tls: Box<UpTls>, generation: u64) -> Result<Link, hyper::Error> {
        let chain = PeerChain::chain(&tls).into();
        let peer_addr = tls.peer_addr();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "fedpin::outbound", error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Link {
            sender,
            chain,
            peer_addr,
            generation,
            created: std::time::Instant::now(),
            task: Some(task.abort_handle()),
        })
    }

    /// Registers `link`'s chain for re-checks on reload (replacing the
    /// registration a parked tunnel kept).
    fn register(&self, link: &Link) -> Registered {
        *self.standing.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.proxy.register(
            &self.tls_name,
            link.chain.clone(),
            PeerContext {
                direction: Some(Direction::Outbound),
                server_name: None,
                port: Some(self.dest.port),
                peer_addr: link.peer_addr,
            },
            link.generation,
            self.revoke.clone(),
        )
    }

    /// Keeps the tunnel registered with what the peer it last used
    /// presented, while it holds no connection (SPEC 4.13).
    fn stand(&self, registered: Registered) {
        *self.standing.lock().unwrap_or_else(PoisonError::into_inner) = Some(registered);
    }

    /// The pin generation in force.
    fn generation(&self) -> u64 {
        self.proxy.upstream.store().current().generation
    }

    /// Vets the tunnel's destination again under the settings and pins in
    /// force, before a request takes or dials a connection the tunnel does
    /// not hold: deny lists, ports, addresses and the egress policy as a
    /// new CONNECT would meet them; and a name whose delegation the pins
    /// now watch gets the watched path (a new tunnel), not this one.
    async fn revet(&self) -> Result<Destination, Answer> {
        let name = crate::pins::normalize_lookup(&self.tls_name).into_owned();
        if self.proxy.settings.load().deny_destinations.contains(&name) {
            return Err(closing(text(
                StatusCode::FORBIDDEN,
                format!("fedpin: {} is in deny_destinations\n", self.tls_name),
            )));
        }
        if self
            .proxy
            .delegation_watch(&self.tls_name, self.dest.port)
            .is_some()
        {
            return Err(closing(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "fedpin: the pins now record a delegation for {}; reconnect\n",
                    self.tls_name
                ),
            )));
        }
        // The resolution and the egress policy: again when the settings
        // changed or [`VET_FRESH`] passed (names move), not per request.
        let settings = self.proxy.settings.load_full();
        if let Some(v) = &*self.vetted.lock().unwrap_or_else(PoisonError::into_inner) {
            if Arc::ptr_eq(&v.settings, &settings) && v.at.elapsed() < VET_FRESH {
                return Ok(v.dest.clone());
            }
        }
        let dest = Box::pin(
            self.proxy
                .destination(self.dest.host.clone(), self.dest.port),
        )
        .await
        .map_err(closing)?;
        *self.vetted.lock().unwrap_or_else(PoisonError::into_inner) = Some(Vetted {
            settings,
            at: std::time::Instant::now(),
            dest: dest.clone(),
        });
        Ok(dest)
    }

    /// A kept connection to the tunnel's peer at one of `addrs`, checked
    /// under the pin set in force, registered for re-checks on reload.
    fn take_kept(&self, addrs: &[std::net::SocketAddr]) -> Option<(Link, Registered)> {
        let keep = self.proxy.settings.load().upstream_keepalive;
        let link = self
            .proxy
            .kept
            .take(&self.key(), self.generation(), addrs, keep)?;
        let registered = self.register(&link);
        // A reload between the take and the registration: the re-check it
        // ran did not see this connection.
        if link.generation < self.generation() {
            return None;
        }
        self.proxy
            .stats
            .upstream_reused
            .fetch_add(1, Ordering::Relaxed);
        Some((link, registered))
    }

    /// A new upstream connection to `dest`, dialled and pin-checked like a
    /// tunnel's first.
    async fn redial(&self, dest: &Destination) -> Result<(Link, Registered), Answer> {
        let started = std::time::Instant::now();
        let dialled = Box::pin(self.proxy.dial(dest, &self.tls_name, self.offered.clone())).await;
        self.proxy
            .stats
            .upstream_handshake_seconds
            .observe(started.elapsed().as_secs_f64());
        match dialled {
            Ok(up) => {
                self.proxy
                    .count_ok(&self.tls_name, &PeerChain::chain(&up.0));
                match Self::link_over(up.0, up.2).await {
                    Ok(link) => {
                        let registered = self.register(&link);
                        Ok((link, registered))
                    }
                    Err(e) => Err(text(
                        StatusCode::BAD_GATEWAY,
                        format!("fedpin: HTTP/1.1 with {} failed: {e}\n", self.tls_name),
                    )
                    .map(Either::Right)),
                }
            }
            Err(failure) => {
                let status = self.proxy.count_failure(&self.tls_name, &failure);
                Err(super::refusal(&self.tls_name, status, &failure).map(Either::Right))
            }
        }
    }

    /// The connection for a request's `attempt`: the tunnel's own on the
    /// first, else (vetted again) a kept one on the first, else a new one.
    /// The flag says whether it was just dialled.
    async fn upstream(&self, attempt: usize) -> Result<(Link, Registered, bool), Answer> {
        let held = self
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((link, registered)) = held {
            return Ok((link, registered, false));
        }
        let dest = self.revet().await?;
        if attempt == 0 {
            if let Some((link, registered)) = self.take_kept(&dest.addrs) {
                return Ok((link, registered, false));
            }
        }
        let (link, registered) = self.redial(&dest).await?;
        Ok((link, registered, true))
    }

    /// Sends one request of the homeserver's on and gives the answer. The
    /// connection goes back to the pool when the answer's body has been
    /// read ([`GiveBack`]).
    async fn forward(self: &Arc<Self>, mut req: Request<Incoming>) -> Answer {
        if req.method() == Method::CONNECT {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "fedpin: CONNECT inside a tunnel is not proxied\n",
            )
            .map(Either::Right);
        }
        strip_hop_by_hop(req.headers_mut());
        let settings = self.proxy.settings.load();
        let (hs, idle) = (settings.handshake_timeout, settings.idle_timeout);
        drop(settings);
        // Bounded: the tunnel's (or a kept) connection, then new ones, while
        // the request could not be sent (the connection had closed) or the
        // connection was checked under pins no longer in force.
        for attempt in 0..3 {
            let (mut link, registered, fresh) = match self.upstream(attempt).await {
                Ok(l) => l,
                Err(answer) => return answer,
            };
            if link.generation < self.generation() {
                // Checked under an older set: not used; a new dial is
                // checked under the set in force.
                continue;
            }
            let ready = tokio::time::timeout(hs, link.sender.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                if fresh {
                    return self.failed("the new connection was not ready");
                }
                continue;
            }
            // Again, with no wait before the send: a reload may have been
            // published while the connection got ready.
            if link.generation < self.generation() {
                continue;
            }
            // A peer that takes the request and never answers gets the
            // idle timeout, as the byte relay gave it; the connection (and
            // its task) goes with it.
            match tokio::time::timeout(idle, link.sender.try_send_request(req)).await {
                Err(_) => {
                    return closing(text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("fedpin: {} did not answer within {idle:?}\n", self.tls_name),
                    ))
                }
                Ok(Ok(resp)) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = GiveBack {
                        inner: body,
                        ended: false,
                        link: Some((link, registered)),
                        tunnel: self.clone(),
                    };
                    return Response::from_parts(parts, Either::Left(body));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return self.failed(&e.into_error().to_string()),
                },
            }
        }
        self.failed("no connection to it could take the request")
    }

    /// fedpin's 502 for a request the peer did not answer; the tunnel stays
    /// (its next request dials again).
    fn failed(&self, why: &str) -> Answer {
        text(
            StatusCode::BAD_GATEWAY,
            format!("fedpin: the request to {} failed: {why}\n", self.tls_name),
        )
        .map(Either::Right)
    }
}

/// A peer's response body on its way to the homeserver. Once it has been
/// read to its end, its connection goes back to the pool for any tunnel to
/// that peer (the tunnel's next request takes one from there), as the
/// edge's homeserver pool does: concurrent tunnels to a peer then share a
/// few connections instead of each holding its own until it parks, and no
/// connection is dialled only to be closed when its tunnel parks (that
/// churn was 3.3 kB of memory per idle tunnel, `tests/load/memory_per_conn.sh`).
/// The tunnel stays registered with what that peer presented (SPEC 4.13).
pub(super) struct GiveBack {
    inner: Incoming,
    ended: bool,
    link: Option<(Link, Registered)>,
    tunnel: Arc<HttpTunnel>,
}

impl GiveBack {
    fn give_back(&mut self) {
        let Some((link, registered)) = self.link.take() else {
            return;
        };
        let t = &self.tunnel;
        t.stand(registered);
        if !t.proxy.keeps(&link) {
            return;
        }
        if link.sender.is_ready() {
            t.proxy.put_kept(t.key(), link);
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // The body ended here before the connection's task took up
            // the next request: wait for it there (briefly).
            let (proxy, key) = (t.proxy.clone(), t.key());
            rt.spawn(async move { proxy.keep(key, link).await });
        }
    }
}

impl hyper::body::Body for GiveBack {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        // The end, or trailers (a body's last frame: hyper asks for
        // nothing after them). A body cut short by an error never ends,
        // and its connection is dropped with it.
        let end = match &polled {
            std::task::Poll::Ready(None) => true,
            std::task::Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            _ => false,
        };
        if end {
            self.ended = true;
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        // A body hyper never polls (HEAD, 204, 304) ends here; one dropped
        // before its end closes its connection, the registration kept.
        if self.ended || self.inner.is_end_stream() {
            self.give_back();
        } else if let Some((_closed, registered)) = self.link.take() {
            self.tunnel.stand(registered);
        }
    }
}

/// fedpin's answer `r`, after which the homeserver's connection is closed.
fn closing(mut r: Response<Full<Bytes>>) -> Answer {
    r.headers_mut()
        .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
    r.map(Either::Right)
}

/// Removes the headers that concern one connection only: `Connection` and
/// those it names, and the fixed hop-by-hop set. Message framing
/// (`Content-Length`, `Transfer-Encoding`) stays: hyper read the body by it
/// and writes it on by it.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name != hyper::header::TRANSFER_ENCODING
            && name != hyper::header::CONTENT_LENGTH
            && name != hyper::header::HOST
        {
            headers.remove(name);
        }
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

impl OutboundProxy {
    /// A tunnel that took a kept upstream connection: registers it for
    /// re-checks on reload, completes the homeserver's handshake, and
    /// serves its requests if it speaks HTTP/1.1 (a kept connection can
    /// carry nothing else; the tunnel is closed otherwise).
    pub(super) async fn http_established<IO>(
        self: &Arc<Self>,
        start: Box<tokio_rustls::StartHandshake<IO>>,
        link: Link,
        t: HttpTunnel,
    ) -> Option<Serve<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let generation = link.generation;
        let registered = t.register(&link);
        *t.link.lock().unwrap_or_else(PoisonError::into_inner) = Some((link, registered));
        // A reload may have landed since the upstream was checked.
        if generation < self.upstream.store().current().generation {
            self.recheck_open_tunnels();
        }
        // The homeserver's ALPN: HTTP/1.1 when it offered it.
        let alpn = t.offered.clone();
        let hs = self.settings.load().handshake_timeout;
        let mut down = self.inner_handshake(start, &t.tls_name, alpn, hs).await?;
        tracing::debug!(target: "fedpin::outbound", tls_name = %t.tls_name, client_addr = %t.client, "tunnel established on a kept upstream connection");
        let mut first = [0u8; FIRST_READ];
        let idle = self.settings.load().idle_timeout;
        let mut n = 0;
        tokio::select! {
            _ = read_method(&mut down, &mut first, &mut n) => {}
            _ = t.revoke.notified() => return None,
            _ = tokio::time::sleep(idle) => return None,
        }
        if !looks_like_http(&first[..n]) {
            tracing::info!(target: "fedpin::outbound", tls_name = %t.tls_name, "the homeserver did not send an HTTP/1.x request on a tunnel with a kept upstream connection; closing it");
            return None;
        }
        let last = crate::proxy::io::LastActivity::new();
        let mut io = crate::proxy::io::Activity::sharing(TokioIo::new(down), &last);
        io.unread(Bytes::copy_from_slice(&first[..n]));
        Some(Serve {
            io,
            last,
            t: Arc::new(t),
        })
    }

    /// A tunnel with a just-dialled, pin-checked upstream and the
    /// homeserver's handshake done: read as HTTP/1.1 if the homeserver's
    /// first bytes are a request line, relayed as bytes otherwise.
    pub(super) async fn http_or_relay<IO>(
        self: &Arc<Self>,
        mut down: Box<tokio_rustls::server::TlsStream<IO>>,
        mut up: Box<UpTls>,
        generation: u64,
        registered: Registered,
        t: HttpTunnel,
    ) -> Option<Serve<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let revoked = t.revoke.clone();
        let idle = self.settings.load().idle_timeout;
        let (mut from_down, mut from_up) = ([0u8; FIRST_READ], [0u8; FIRST_READ]);
        let first = tokio::select! {
            r = down.read(&mut from_down) => First::Down(r.unwrap_or(0)),
            r = up.read(&mut from_up) => First::Up(r.unwrap_or(0)),
            _ = revoked.notified() => {
                tracing::info!(target: "fedpin::outbound", tls_name = %t.tls_name, "tunnel ended: its upstream no longer passes the pin rules");
                return None;
            }
            _ = tokio::time::sleep(idle) => {
                tracing::debug!(target: "fedpin::outbound", "tunnel idle; closing");
                return None;
            }
        };
        // A method split over several reads is read whole before deciding.
        let first = match first {
            First::Down(mut n) if n > 0 => {
                let more = read_method(&mut down, &mut from_down, &mut n);
                let _ = tokio::time::timeout(self.settings.load().handshake_timeout, more).await;
                First::Down(n)
            }
            other => other,
        };
        let prefix = match first {
            First::Down(n) if looks_like_http(&from_down[..n]) => {
                let link = match HttpTunnel::link_over(up, generation).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(target: "fedpin::outbound", error = %e, "HTTP/1.1 with the upstream failed");
                        return None;
                    }
                };
                *t.link.lock().unwrap_or_else(PoisonError::into_inner) = Some((link, registered));
                let last = crate::proxy::io::LastActivity::new();
                let mut io = crate::proxy::io::Activity::sharing(TokioIo::new(down), &last);
                io.unread(Bytes::copy_from_slice(&from_down[..n]));
                return Some(Serve {
                    io,
                    last,
                    t: Arc::new(t),
                });
            }
            First::Down(n) => up.write_all(&from_down[..n]).await,
            First::Up(n) => down.write_all(&from_up[..n]).await,
        };
        if prefix.is_err() {
            return None;
        }
        tokio::select! {
            _ = super::relay(down, up, idle) => {}
            _ = revoked.notified() => {
                tracing::info!(target: "fedpin::outbound", tls_name = %t.tls_name, "tunnel ended: its upstream no longer passes the pin rules");
            }
        }
        drop(registered);
        None
    }

    /// Serves the homeserver's requests until it closes, the tunnel idles
    /// out, or a reload refuses the upstream in use. Parked when quiet
    /// ([`crate::proxy::parking`]): after [`PARK_AFTER`] without traffic
    /// hyper's connection ends (its buffers freed), the upstream connection
    /// goes back to the pool for any tunnel to that peer (if it still holds
    /// the one it started with: an answered request gives its connection
    /// back at once, [`GiveBack`]), and the tunnel holds only the
    /// homeserver's TLS stream until it sends again. An ended tunnel's
    /// upstream connection is kept the same way.
    pub(super) async fn serve_http<IO>(self: &Arc<Self>, serve: Serve<IO>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Serve { mut io, last, t } = serve;
        self.stats.http_tunnels.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "fedpin::outbound", tls_name = %t.tls_name, "tunnel read as HTTP/1.1");
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_buf_size(self.settings.load().max_header_bytes.max(8192))
            // A homeserver may end its side after its request and still
            // read the answer, as through the byte relay.
            .half_close(true);
        let idle = self.settings.load().idle_timeout;
        loop {
            let svc = {
                let t = t.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let t = t.clone();
                    // Boxed: hyper takes a connection apart (to park it)
                    // only when its service's futures are Unpin.
                    Box::pin(async move {
                        t.in_flight.fetch_add(1, Ordering::Relaxed);
                        t.served.fetch_add(1, Ordering::Relaxed);
                        let answer = t.forward(req).await;
                        t.in_flight.fetch_sub(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(answer)
                    })
                })
            };
            let served_before = t.served.load(Ordering::Relaxed);
            // Boxed: dropped or taken apart before the next one starts.
            let mut conn = Box::new(builder.serve_connection(io, svc));
            let mut parking = false;
            let tick = PARK_AFTER.min(idle / 4).max(Duration::from_millis(10));
            let ended = loop {
                tokio::select! {
                    // A revocation already waiting is seen before anything
                    // more is served.
                    biased;
                    _ = t.revoke.notified() => {
                        tracing::info!(target: "fedpin::outbound", tls_name = %t.tls_name, "tunnel ended: its upstream no longer passes the pin rules");
                        return;
                    }
                    r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                    _ = tokio::time::sleep(tick) => {
                        let busy = t.in_flight.load(Ordering::Relaxed) > 0;
                        if !busy && last.quiet_for() >= idle {
                            tracing::debug!(target: "fedpin::outbound", "tunnel idle; closing");
                            self.keep_held(&t).await;
                            return;
                        }
                        // Only once a request was served on this hyper
                        // connection: before that, a graceful end would
                        // answer a head still arriving with a close.
                        let served = t.served.load(Ordering::Relaxed) > served_before;
                        if served && !busy && !parking && last.quiet_for() >= PARK_AFTER {
                            parking = true;
                            std::pin::Pin::new(&mut *conn).graceful_shutdown();
                        }
                    }
                }
            };
            let parts = (*conn).into_parts();
            io = parts.io;
            self.keep_held(&t).await;
            match ended {
                Ok(()) if parking => {
                    self.stats.parked_tunnels.fetch_add(1, Ordering::Relaxed);
                    io.unread(parts.read_buf);
                }
                // Ended by the homeserver (`Connection: close`, end of
                // stream) or by an error: close.
                r => {
                    if let Err(e) = r {
                        tracing::debug!(target: "fedpin::outbound", error = %e, "tunnel closed with an error");
                    }
                    crate::proxy::parking::shutdown(&mut io, Duration::from_secs(5)).await;
                    return;
                }
            }
            // Parked: wait for the homeserver's next bytes.
            let mut first = [0u8; FIRST_READ];
            let mut n = 0;
            let left = idle.saturating_sub(last.quiet_for());
            let mut reader = TokioIo::new(&mut io);
            let woke = tokio::select! {
                _ = read_method(&mut reader, &mut first, &mut n) => n > 0,
                _ = tokio::time::sleep(left) => false,
                _ = t.revoke.notified() => {
                    tracing::info!(target: "fedpin::outbound", tls_name = %t.tls_name, "parked tunnel ended: the upstream it last used no longer passes the pin rules");
                    false
                }
            };
            if !woke {
                return;
            }
            io.unread(Bytes::copy_from_slice(&first[..n]));
        }
    }

    /// Keeps the tunnel's upstream connection, if it holds one that is not
    /// busy, for any tunnel to that peer; the tunnel stays registered with
    /// what that peer presented.
    async fn keep_held(&self, t: &HttpTunnel) {
        let held = t.link.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((link, registered)) = held {
            t.stand(registered);
            self.keep(t.key(), link).await;
        }
    }

    /// Keeps `link` for a later tunnel, once it is ready for a request (its
    /// last response read to the end), if its pin generation is still the
    /// one in force.
    async fn keep(&self, key: Key, mut link: Link) {
        if !self.keeps(&link) {
            return;
        }
        if !link.sender.is_ready() {
            match tokio::time::timeout(KEPT_READY_WAIT, link.sender.ready()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        self.put_kept(key, link);
    }

    /// Whether connections are kept at all, and `link` is still open.
    fn keeps(&self, link: &Link) -> bool {
        !self.settings.load().upstream_keepalive.is_zero() && !link.sender.is_closed()
    }

    /// Pools `link` (ready for a request) if its pin generation is the one
    /// in force.
    fn put_kept(&self, key: Key, link: Link) {
        let generation = self.upstream.store().current().generation;
        self.kept.put(key, link, generation);
    }
}

/// Bytes read to tell HTTP from anything else: enough for any method.
const FIRST_READ: usize = 32;

/// Reads into `buf` (holding `*n` bytes already) until what it holds tells
/// an HTTP/1.x method from anything else: a byte that is not an upper-case
/// letter, a full buffer, or the end of the stream. `*n` counts the bytes
/// held after every read, so a caller that gives up waiting loses none.
async fn read_method<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8; FIRST_READ], n: &mut usize) {
    while *n < buf.len() && buf[..*n].iter().all(u8::is_ascii_uppercase) {
        match r.read(&mut buf[*n..]).await {
            Ok(0) | Err(_) => break,
            Ok(got) => *n += got,
        }
    }
}

/// Which side spoke first in a new tunnel, and how many bytes.
enum First {
    Down(usize),
    Up(usize),
}

/// Whether `bytes` start like an HTTP/1.x request line: a method token
/// (upper-case letters) and a space, other than the HTTP/2 preface's `PRI`.
/// Anything else, including a start too short to tell, is relayed as bytes.
fn looks_like_http(bytes: &[u8]) -> bool {
    let Some(space) = bytes.iter().position(|b| *b == b' ') else {
        return false;
    };
    // `PRI` opens the HTTP/2 connection preface (h2 without ALPN): relayed.
    (1..=16).contains(&space)
        && bytes[..space].iter().all(u8::is_ascii_uppercase)
        && &bytes[..space] != b"PRI"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_is_told_from_anything_else() {
        for yes in [
            &b"GET / HTTP/1.1"[..],
            b"PUT /x",
            b"OPTIONS * HTTP/1.1",
            b"PROPFIND /",
        ] {
            assert!(looks_like_http(yes), "{:?}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b""[..],
            b"GET",                              // too short to tell: relayed
            b" GET /",                           // no method
            b"get / HTTP/1.1",                   // methods are case-sensitive
            b"\x16\x03\x01\x02",                 // a TLS record
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", // h2 prior knowledge
            b"SSH-2.0-OpenSSH",
            b"ABCDEFGHIJKLMNOPQ /", // longer than any method
        ] {
            assert!(!looks_like_http(no), "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[tokio::test]
    async fn a_method_is_read_across_short_reads() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; FIRST_READ];
            let mut n = 0;
            read_method(&mut b, &mut buf, &mut n).await;
            buf[..n].to_vec()
        });
        for part in [&b"P"[..], b"U", b"T /send HTTP/1.1\r\n"] {
            tokio::io::AsyncWriteExt::write_all(&mut a, part)
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        let got = reader.await.unwrap();
        assert!(looks_like_http(&got), "{:?}", String::from_utf8_lossy(&got));
        // A stream that ends first gives what it had.
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let mut buf = [0u8; FIRST_READ];
        let mut n = 0;
        read_method(&mut b, &mut buf, &mut n).await;
        assert_eq!(n, 0);
    }
}
