//! The inbound federation edge: fedpin terminates TLS on 8448 and forwards
//! federation requests to the homeserver's plain-HTTP listener.
//!
//! Only `/_matrix/federation/` and `/_matrix/key/` are forwarded (others 404
//! without touching the homeserver). The request URI, `Host` and
//! `Authorization` pass through byte for byte (the X-Matrix signature covers
//! them); hop-by-hop headers are dropped; `X-Forwarded-For` and
//! `X-Forwarded-Proto` are set; bodies stream both ways. Edge rules (origin
//! deny/allow lists read from the X-Matrix `origin`, per-origin and per-IP
//! token buckets, size limits, timeouts) are swapped in atomically on reload.
//! With `client_auth`, peers' client certificates are checked by
//! [`PinnedClientVerifier`] under the current pin generation (one rustls
//! `ServerConfig`, ticketer and session cache per generation and per server
//! certificate, so a resumed session never skips a new set or outlives a
//! replaced certificate), and the X-Matrix origin must be one of the
//! certificate's names. Federation requests need an X-Matrix header except
//! the ones the Matrix spec serves unsigned (see [`unsigned_allowed`]).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::config::{ClientAuth, SignatureMode};
use crate::keys::{KeyError, KeyFetcher};
use crate::matrix::signing::SignedRequest;
use crate::metrics::{HandshakeCounters, HandshakeResult};
use crate::pin_store::PinStore;
use crate::proxy::lanes::Lanes;
use crate::proxy::parking::PARK_AFTER;
use crate::proxy::upstream::{PoolSettings, Upstream};
use crate::proxy::woken::WakeFlag;
use crate::proxy::xmatrix::XMatrix;
use crate::tls::certs::{CertStore, CurrentCert};
use crate::verify::{ConnState, PeerContext, PinnedClientVerifier, VerifierCore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Edge rules; hot-reloaded as a whole.
#[derive(Debug, Clone, Default)]
pub struct EdgeRules {
    /// Origins refused (lowercase server names; a bare host also matches it with any port).
    pub deny_origins: HashSet<String>,
    /// If not empty, only these origins are served.
    pub allow_origins: HashSet<String>,
    /// Requests per second per origin (burst = 2× unless set).
    pub per_origin: Option<RateLimit>,
    /// Requests per second per client IP.
    pub per_ip: Option<RateLimit>,
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate.
    pub per_second: u32,
    /// Bucket size.
    pub burst: u32,
}

/// Inbound listener settings.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    /// `http://host:port` of the homeserver's federation listener.
    pub upstream: hyper::Uri,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// Request body cap (bytes).
    pub max_body: u64,
    /// Request head cap (bytes).
    pub max_header_bytes: usize,
    /// Time to receive a request head.
    pub header_timeout: Duration,
    /// Time for the homeserver to answer.
    pub request_timeout: Duration,
    /// Close connections idle this long.
    pub idle_timeout: Duration,
    /// TLS handshake timeout.
    pub handshake_timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
    /// This homeserver's server name: the `destination` requests are signed for.
    pub server_name: Option<String>,
    /// Whether X-Matrix request signatures are verified here.
    pub verify_signatures: SignatureMode,
    /// Single-threaded runtimes ("lanes", [`crate::proxy::lanes`]) that
    /// carry the connections, handed out in turn; 0 runs them as tasks of
    /// the runtime [`InboundProxy::serve`] runs on. The daemon starts one
    /// per worker of its runtime.
    pub lanes: usize,
}

impl Default for InboundSettings {
    fn default() -> Self {
        InboundSettings {
            upstream: hyper::Uri::from_static("http://127.0.0.1:8008"),
            client_auth: ClientAuth::Off,
            max_body: 50 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            server_name: None,
            verify_signatures: SignatureMode::Off,
            lanes: 0,
        }
    }
}

/// The edge's counters and per-peer results (read by `/metrics` and the status page).
#[derive(Debug, Default)]
pub struct InboundStats {
    /// Time for the homeserver to answer (response head), seconds.
    pub upstream_seconds: crate::metrics::Seconds<16>,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Requests by status class 2xx..5xx (index 0..=3), others index 4,
    /// refused for a request signature that did not verify index 5.
    pub by_class: [AtomicU64; 6],
    /// TLS handshakes by result (refused client certificates by the pin
    /// rule that refused them).
    pub handshakes: HandshakeCounters,
    /// Connections ended because a reload revoked their client certificate.
    pub revoked: AtomicU64,
    /// Times an idle HTTP/1.1 connection was parked: hyper's buffers given
    /// back, the TLS stream kept ([`crate::proxy::parking`]).
    pub parked: AtomicU64,
    /// The last handshake result per peer that presented a client
    /// certificate (status page).
    pub peers: super::peer_results::PeerResults,
}

struct Compiled {
    rules: EdgeRules,
    per_origin: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn quota(l: RateLimit) -> Option<Quota> {
    let rate = NonZeroU32::new(l.per_second)?;
    let burst = NonZeroU32::new(l.burst.max(1))?;
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Compiled {
    fn new(rules: EdgeRules) -> Self {
        Compiled {
            per_origin: rules.per_origin.and_then(quota).map(RateLimiter::keyed),
            per_ip: rules.per_ip.and_then(quota).map(RateLimiter::keyed),
            rules,
        }
    }
}

struct GenConfig {
    /// Pin generation and server-certificate epoch (successful reloads) it was built for.
    generation: (u64, u64),
    /// The pin set of that generation (client certificates are checked against it).
    pins: Arc<crate::pins::PinSet>,
    /// The generation's config; with `client_auth`, each connection gets a
    /// copy whose verifier knows the client's address, sharing this one's
    /// ticketer and session cache.
    config: Arc<rustls::ServerConfig>,
}

/// The inbound proxy.
pub struct InboundProxy {
    settings: InboundSettings,
    rules: ArcSwap<Compiled>,
    certs: Arc<CertStore>,
    pins: Arc<PinStore>,
    core: Arc<VerifierCore>,
    configs: ArcSwapOption<GenConfig>,
    client: Upstream,
    slots: Arc<Semaphore>,
    stats: InboundStats,
    keys: Option<Arc<KeyFetcher>>,
    /// The lanes the connections run on, if any (see
    /// [`InboundSettings::lanes`]).
    lanes: Option<Lanes>,
}

/// Marks a response refused for its request signature (counted apart).
#[derive(Clone, Copy)]
struct BadSignature;

/// Why a request's signature was not accepted.
enum SigFailure {
    /// Did not verify, or could not be verified: 401.
    Refused(String),
    /// Too many key fetches in flight: 503, retry.
    Busy,
}

impl std::fmt::Debug for InboundProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundProxy").finish_non_exhaustive()
    }
}

fn too_large() -> Response<Body> {
    matrix_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
        "request body too large",
    )
}

/// The request with its body streamed, capped at `max` bytes.
fn streamed(req: Request<Incoming>, max: u64) -> Request<Body> {
    req.map(|b| Limited::new(b, max as usize).boxed())
}

/// A Matrix-style JSON error response.
fn matrix_error(status: StatusCode, errcode: &str, error: &str) -> Response<Body> {
    let body = serde_json::json!({ "errcode": errcode, "error": error }).to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

const HOP_BY_HOP: [HeaderName; 9] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Most requests and answers carry none (Connection among them): one
    // look at the few names present is cheaper than nine removals, each of
    // which hashes its name (callgrind: 2k instructions per request).
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// The client certificate a connection presented (mutual TLS).
struct ClientIdentity {
    /// DNS names in the leaf (lowercased).
    names: Vec<String>,
    /// The chain, leaf first.
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The peer's address, for alerts.
    addr: SocketAddr,
}

/// What the request's origin is, for rules and logs.
enum Origin {
    /// An endpoint the spec serves unsigned ([`unsigned_allowed`]), without an X-Matrix header.
    None,
    /// The X-Matrix header.
    Named(XMatrix),
}

impl InboundProxy {
    /// Builds the proxy.
    pub fn new(
        settings: InboundSettings,
        rules: EdgeRules,
        certs: Arc<CertStore>,
        pins: Arc<PinStore>,
        core: Arc<VerifierCore>,
    ) -> Self {
        // Lanes that cannot start (no threads left): the connections run
        // on the caller's runtime, as with none configured.
        let lanes = (settings.lanes > 0)
            .then(|| Lanes::start(settings.lanes, "fedpin-edge"))
            .and_then(|started| {
                started
                    .map_err(|e| {
                        tracing::warn!(target: "fedpin::inbound", error = %e, "cannot start the edge's lanes; connections run on the main runtime");
                    })
                    .ok()
            });
        let pools = PoolSettings {
            lanes: lanes.as_ref().map_or(0, Lanes::len),
            ..PoolSettings::default()
        };
        let client = Upstream::new(&settings.upstream, pools);
        let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
        InboundProxy {
            settings,
            rules: ArcSwap::from_pointee(Compiled::new(rules)),
            certs,
            pins,
            core,
            configs: ArcSwapOption::empty(),
            client,
            slots,
            stats: InboundStats::default(),
            keys: None,
            lanes,
        }
    }

    /// Verifies request signatures with keys from `keys` (fetched over the
    /// pinned verifier); see [`InboundSettings::verify_signatures`].
    pub fn with_key_fetcher(mut self, keys: Arc<KeyFetcher>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The signing-key fetcher, when signatures are verified.
    pub fn key_fetcher(&self) -> Option<&Arc<KeyFetcher>> {
        self.keys.as_ref()
    }

    /// The edge's counters and per-peer results (read by `/metrics` and the status page).
    pub fn stats(&self) -> &InboundStats {
        &self.stats
    }

    /// The verifier core applying the pin rules to client certificates.
    pub fn verifier(&self) -> &Arc<VerifierCore> {
        &self.core
    }

    /// Swaps in new edge rules (rate-limit state starts afresh).
    pub fn set_rules(&self, rules: EdgeRules) {
        self.rules.store(Arc::new(Compiled::new(rules)));
        tracing::info!(target: "fedpin::inbound", "edge rules reloaded");
    }

    /// The certificate store (for reloads).
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// The TLS config for a new connection from `client`: one per pin
    /// generation and server certificate. A new pin set or a reloaded
    /// certificate gets a new ticketer and session cache, so no session
    /// resumed from before the change skips it (a resumed session would still
    /// stand for the replaced certificate). With `client_auth`, the
    /// connection gets its own client verifier, so that the alerts it raises
    /// name the client's address and port; it shares the generation's
    /// ticketer and session cache.
    fn server_config(
        &self,
        client: SocketAddr,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let generation_config = self.generation_config()?;
        if self.settings.client_auth == ClientAuth::Off {
            return Ok(generation_config.config.clone());
        }
        let mut config = self.tls_config(&generation_config.pins, Some(client))?;
        config.ticketer = generation_config.config.ticketer.clone();
        config.session_storage = generation_config.config.session_storage.clone();
        Ok(Arc::new(config))
    }

    /// The config of the current pin generation and server certificate,
    /// built (with a new ticketer and session cache) when either changed.
    fn generation_config(&self) -> Result<Arc<GenConfig>, rustls::Error> {
        let pins = self.pins.current();
        let generation = (pins.generation, self.certs.reload_counts().0);
        if let Some(g) = self.configs.load_full() {
            if g.generation == generation {
                return Ok(g);
            }
        }
        let mut config = self.tls_config(&pins, None)?;
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        let built = Arc::new(GenConfig {
            generation,
            pins,
            config: Arc::new(config),
        });
        self.configs.rcu(|cur| match cur {
            Some(c) if c.generation > generation => Some(c.clone()),
            _ => Some(built.clone()),
        });
        Ok(built)
    }

    /// A server config checking client certificates (per `client_auth`)
    /// against `pins`; alerts name `client` when it is given.
    fn tls_config(
        &self,
        pins: &Arc<crate::pins::PinSet>,
        client: Option<SocketAddr>,
    ) -> Result<rustls::ServerConfig, rustls::Error> {
        let builder = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?;
        let builder = match self.settings.client_auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            mode => {
                let mut verifier = PinnedClientVerifier::new(
                    self.core.clone(),
                    pins.clone(),
                    mode == ClientAuth::Require,
                );
                if let Some(addr) = client {
                    verifier.set_peer_addr(addr);
                }
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(CurrentCert(self.certs.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Records a handshake that presented a client certificate in the
    /// per-peer table: under the name the pin rules checked, or (a resumed
    /// session, which runs no check) the certificate's first name with a pin
    /// entry, else its first name. Anonymous clients are not recorded.
    fn record_peer(
        &self,
        record: Option<&crate::verify::Verdict>,
        chain: &[rustls::pki_types::CertificateDer<'_>],
        result: HandshakeResult,
    ) {
        let pins = self.pins.current();
        let host = match record {
            Some(r) if !r.host.is_empty() => r.host.clone(),
            _ => {
                let Some(leaf) = chain.first() else { return };
                let names = crate::verify::dns_sans(leaf.as_ref());
                match names
                    .iter()
                    .find(|n| pins.lookup(n).is_some())
                    .or(names.first())
                {
                    Some(n) => n.clone(),
                    None => return,
                }
            }
        };
        self.stats.peers.record(&pins, &host, result, chain);
    }

    /// Accepts connections until `shutdown` turns true.
    ///
    /// On lanes, each lane accepts its own connections from the listening
    /// socket ([`crate::proxy::lanes::listener_per_lane`]), so no
    /// connection is handed between threads.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let Some(lanes) = &self.lanes else {
            return self.accept_loop(listener, shutdown).await;
        };
        let listeners = match crate::proxy::lanes::listener_per_lane(listener, lanes.len()) {
            Ok(listeners) => listeners,
            Err(e) => {
                tracing::error!(target: "fedpin::inbound", error = %e, "cannot hand the listener to the lanes; not accepting");
                return;
            }
        };
        let mut loops = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let (this, stop) = (self.clone(), shutdown.clone());
            loops.push(lanes.spawn_on(i, async move {
                match TcpListener::from_std(l) {
                    Ok(l) => this.accept_loop(l, stop).await,
                    Err(e) => {
                        tracing::error!(target: "fedpin::inbound", error = %e, lane = i, "a lane cannot take the listener; the others accept its share");
                    }
                }
            }));
        }
        for l in loops {
            let _ = l.await;
        }
    }

    /// Accepts from `listener` until `shutdown`; each connection runs as a
    /// task of this runtime (a lane's, or the caller's without lanes).
    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut cleanup = tokio::time::interval(Duration::from_secs(60));
        loop {
            let failed = |e: &std::io::Error| {
                tracing::warn!(target: "fedpin::inbound", error = %e, "accept failed; refusing new connections briefly");
            };
            let accepted = tokio::select! {
                a = super::io::accept_or_stop(&listener, &mut shutdown, failed) => a,
                _ = cleanup.tick() => {
                    let rules = self.rules.load();
                    if let Some(l) = &rules.per_origin { l.retain_recent(); }
                    if let Some(l) = &rules.per_ip { l.retain_recent(); }
                    continue;
                }
            };
            let Some((tcp, client)) = accepted else {
                return;
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(target: "fedpin::inbound", client = %client, "connection limit reached; closing");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let this = self.clone();
            let stop = shutdown.clone();
            // One span per connection: every event of it (TLS, requests,
            // refusals) carries the client's address and the pin generation
            // it was accepted under. Entered for the handshake and around
            // each event after it, not on every poll of the connection's
            // task: entering and leaving it per poll was 3.5 % of a
            // kept-alive request's instructions (callgrind).
            let span = tracing::info_span!(
                target: "fedpin::inbound",
                "connection",
                client_addr = %client,
                pins_generation = self.pins.current().generation,
            );
            tokio::spawn(async move {
                this.stats.connections.fetch_add(1, Ordering::Relaxed);
                this.clone().connection(tcp, client, stop, span).await;
                this.stats.connections.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        client: SocketAddr,
        stop: watch::Receiver<bool>,
        span: tracing::Span,
    ) {
        // Boxed, like each hyper connection below: a task's future is as
        // large as its largest state, and the handshake's (rustls' state
        // machine, inline) would otherwise stay allocated for the life of
        // every idle connection.
        let Some(tls) = Box::pin(self.accept_tls(tcp, client))
            .instrument(span.clone())
            .await
        else {
            return;
        };
        let cert_names: Option<Arc<ClientIdentity>> =
            tls.get_ref().1.peer_certificates().and_then(|chain| {
                let leaf = chain.first()?;
                Some(Arc::new(ClientIdentity {
                    names: crate::verify::dns_sans(leaf.as_ref()),
                    chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
                    addr: client,
                }))
            });
        let this = self.clone();
        let waiting = Arc::new(Waiting::new());
        let w = waiting.clone();
        // The client's address as text, once per connection: it goes into
        // X-Forwarded-For and the access log of every request.
        let ip = HeaderValue::from_str(&client.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        let names = cert_names.clone();
        // Shared by the requests: each takes a reference, not a clone of
        // the span (which the subscriber counts).
        let req_span = Arc::new(span.clone());
        // The request future is boxed: hyper's HTTP/1.1 dispatcher keeps a
        // slot for it for the connection's whole life (boxed up front, even
        // when empty), and `handle`'s future is several kB. Boxed here, an
        // idle kept-alive connection holds a pointer, not that slot.
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let names = names.clone();
            let ip = ip.clone();
            let span = req_span.clone();
            let busy = Waiting::enter(&w);
            Box::pin(async move {
                let resp = this.handle(req, client, &ip, names, &span).await;
                drop(busy);
                Ok::<_, Infallible>(resp)
            })
        });
        // HTTP/2 over TLS is chosen by ALPN only (RFC 9113, section 3.3).
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        // The stream lives on the heap: the futures below move it between
        // states, and inline it would be copied into several of their slots.
        let (io, last) = crate::proxy::io::Activity::new(TokioIo::new(tls));
        let io = Box::new(io);
        let mut guard = Guard {
            client,
            stop,
            // A client certificate is re-checked at every pin publish (SPEC 4.13).
            published: self.pins.subscribe(),
            recheck: cert_names,
            waiting,
            last,
            idle: self.settings.idle_timeout,
            span,
        };
        if h2 {
            // Boxed: larger than the HTTP/1.1 path, it would size every task.
            Box::pin(self.serve_h2(io, svc, &mut guard)).await;
        } else {
            self.serve_h1(io, svc, &mut guard).await;
        }
    }

    /// HTTP/2: one hyper connection for the connection's life.
    async fn serve_h2<S>(&self, io: Io, svc: S, g: &mut Guard)
    where
        S: hyper::service::Service<
                Request<Incoming>,
                Response = Response<Body>,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let builder = self.h2_builder();
        let mut conn = Box::pin(builder.serve_connection(io, svc));
        let mut draining = false;
        // The watch is polled only when its own waker fired (see `woken`).
        let watch_wakes = WakeFlag::new();
        loop {
            let tick = g.tick(None);
            tokio::select! {
                biased;
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        g.span.in_scope(|| tracing::debug!(target: "fedpin::inbound", client = %g.client, error = %e, "connection ended with an error"));
                    }
                    return;
                }
                wake = watch_wakes.wrap(self.watch(g, draining, tick)) => match wake {
                    // Shutdown: finish the requests in flight, then close.
                    Wake::Stop => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Wake::Close => return,
                    Wake::Tick => {}
                },
            }
        }
    }

    /// HTTP/1.1, parked when idle ([`crate::proxy::parking`]): hyper's
    /// connection ends after [`PARK_AFTER`] of quiet, the TLS stream stays
    /// open, and a new hyper connection serves it when the client sends
    /// again.
    async fn serve_h1<S>(&self, mut io: Io, mut svc: S, g: &mut Guard)
    where
        S: hyper::service::Service<
                Request<Incoming>,
                Response = Response<Body>,
                Error = Infallible,
            > + Unpin,
        S::Future: Unpin,
    {
        let builder = self.h1_builder();
        // The watch is polled only when its own waker fired: the task wakes
        // two or three times per request for hyper (see `woken`).
        let watch_wakes = WakeFlag::new();
        loop {
            let mut conn = Box::new(builder.serve_connection(io, svc));
            // hyper ends a connection cleanly on graceful shutdown only
            // between requests: once one has been served on it. Before
            // that (a head still arriving) it would answer with
            // `Connection: close`, so such a connection is not parked.
            let first = g.waiting.started.load(Ordering::Relaxed);
            let mut parking = false;
            let mut draining = false;
            let ended = loop {
                let tick = g.tick(Some(PARK_AFTER));
                tokio::select! {
                    biased;
                    r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                    wake = watch_wakes.wrap(self.watch(g, draining, tick)) => match wake {
                        Wake::Stop => {
                            draining = true;
                            Pin::new(&mut *conn).graceful_shutdown();
                        }
                        Wake::Close => return,
                        Wake::Tick => {
                            let served = g.waiting.started.load(Ordering::Relaxed) > first;
                            if served && !parking && !draining && g.quiet_for(PARK_AFTER) {
                                parking = true;
                                Pin::new(&mut *conn).graceful_shutdown();
                            }
                        }
                    },
                }
            };
            let parts = (*conn).into_parts();
            (io, svc) = (parts.io, parts.service);
            match ended {
                Ok(()) if parking => {
                    self.stats.parked.fetch_add(1, Ordering::Relaxed);
                    io.unread(parts.read_buf);
                }
                // Finished by the client (`Connection: close`, end of
                // stream), by shutdown, or by an error: close for real.
                r => {
                    if let Err(e) = r {
                        g.span.in_scope(|| tracing::debug!(target: "fedpin::inbound", client = %g.client, error = %e, "connection ended with an error"));
                    }
                    crate::proxy::parking::shutdown(&mut io, Duration::from_secs(5)).await;
                    return;
                }
            }
            if !self.parked(&mut io, g).await {
                return;
            }
        }
    }

    /// Waits while a connection is parked; true when the client sent
    /// something (serve it), false when the connection is to close.
    async fn parked(&self, io: &mut Io, g: &mut Guard) -> bool {
        if io.has_unread() {
            return true;
        }
        loop {
            let tick = g.tick(None);
            let tls = io.get_mut().inner_mut();
            tokio::select! {
                r = crate::proxy::parking::readable(tls) => return r.is_ok(),
                wake = self.watch(g, false, tick) => match wake {
                    Wake::Stop => {
                        crate::proxy::parking::shutdown(io, Duration::from_secs(5)).await;
                        return false;
                    }
                    Wake::Close => return false,
                    Wake::Tick => {}
                },
            }
        }
    }

    /// What, besides its own traffic, wakes a connection: shutdown (unless
    /// it is already `draining`), a pin publish that refuses its client
    /// certificate or the idle timeout (`Close`), or `tick` passing. A
    /// publish that still accepts it is waited past. Cancel-safe.
    async fn watch(&self, g: &mut Guard, draining: bool, tick: Duration) -> Wake {
        let sleep = tokio::time::sleep(tick);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = crate::proxy::io::stopped(&mut g.stop), if !draining => return Wake::Stop,
                Ok(()) = g.published.changed(), if g.recheck.is_some() => {
                    if !g.span.in_scope(|| self.still_passes(g)) {
                        return Wake::Close;
                    }
                }
                _ = &mut sleep => {
                    return if g.idle_expired() { Wake::Close } else { Wake::Tick };
                }
            }
        }
    }

    /// After a pin publish: whether the connection's client certificate
    /// still passes (counted as revoked when not).
    fn still_passes(&self, g: &Guard) -> bool {
        let passes = g
            .recheck
            .as_ref()
            .is_none_or(|id| self.client_still_passes(id));
        if !passes {
            self.stats.revoked.fetch_add(1, Ordering::Relaxed);
        }
        passes
    }

    /// The TLS handshake, with client certificates checked inside a
    /// [`ConnState`] scope so the verifier can say which name it checked
    /// (the per-peer status); counted and recorded either way.
    async fn accept_tls(
        &self,
        tcp: TcpStream,
        client: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let config = match self.server_config(client) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target: "fedpin::inbound", error = %e, "cannot build the TLS config");
                return None;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        // With client certificates, the handshake runs in a ConnState scope
        // so the verifier can say which name it checked (per-peer status).
        let checked = (self.settings.client_auth != ClientAuth::Off).then(|| {
            ConnState::new(PeerContext {
                direction: Some(crate::alert::Direction::Inbound),
                peer_addr: Some(client),
                port: Some(client.port()),
                server_name: None,
            })
        });
        let accept = tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(tcp));
        let accepted = match &checked {
            Some(state) => state.scope(accept).await,
            None => accept.await,
        };
        let record = checked.as_ref().and_then(|s| s.record());
        let tls = match accepted {
            Ok(Ok(t)) => {
                self.stats.handshakes.add(HandshakeResult::Ok);
                if let Some(chain) = t.get_ref().1.peer_certificates() {
                    self.record_peer(record.as_ref(), chain, HandshakeResult::Ok);
                }
                t
            }
            Ok(Err(e)) => {
                let result = crate::verify::handshake_result(&e);
                self.stats.handshakes.add(result);
                self.record_peer(record.as_ref(), &[], result);
                tracing::info!(target: "fedpin::inbound", client = %client, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                self.stats.handshakes.add(HandshakeResult::Timeout);
                self.record_peer(record.as_ref(), &[], HandshakeResult::Timeout);
                tracing::info!(target: "fedpin::inbound", client = %client, "TLS handshake timed out");
                return None;
            }
        };
        Some(tls)
    }

    /// hyper's HTTP/1.1 server settings: header time and size limits.
    fn h1_builder(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .max_buf_size(self.settings.max_header_bytes.max(8192));
        builder
    }

    /// hyper's h2 server settings: header-list size and stream limits. No
    /// server PINGs: their acks are bytes on the wire and would keep an idle
    /// h2 connection alive forever; the connection's idle check covers dead
    /// and silent peers for both protocols.
    fn h2_builder(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(self.settings.max_header_bytes.min(u32::MAX as usize) as u32)
            .max_concurrent_streams(128);
        builder
    }

    /// Re-checks a connection's client certificate against the pin set now
    /// in force; raises the refusal's alert and returns false when the new
    /// set refuses it (the connection is then ended).
    fn client_still_passes(&self, id: &ClientIdentity) -> bool {
        let Some((leaf, rest)) = id.chain.split_first() else {
            return true;
        };
        let pins = self.pins.current();
        let mut verifier = PinnedClientVerifier::new(
            self.core.clone(),
            pins.clone(),
            self.settings.client_auth == ClientAuth::Require,
        );
        verifier.set_peer_addr(id.addr);
        let verdict = verifier.evaluate(leaf, rest, rustls::pki_types::UnixTime::now());
        if !verdict.is_accept() {
            if let Some(mut a) = verdict.alert(&pins, leaf, rest, verifier.context()) {
                a.reason = format!(
                    "open connection closed after pin reload (generation {}): {}",
                    pins.generation, a.reason
                );
                self.core.alerts().raise(a);
            }
            tracing::warn!(target: "fedpin::inbound", client = %id.addr, reason = %verdict, "client certificate no longer passes the pin rules; closing the connection");
            return false;
        }
        true
    }

    /// Whether a client certificate without DNS names is pinned for `host`
    /// (the origin's entry must accept it on a pin, not on a fallback policy).
    fn nameless_client_matches(&self, id: &ClientIdentity, host: &str) -> bool {
        let Some((leaf, rest)) = id.chain.split_first() else {
            return false;
        };
        let mut verifier = PinnedClientVerifier::new(self.core.clone(), self.pins.current(), false);
        verifier.set_peer_addr(id.addr);
        let verdict =
            verifier.check_for_origin(host, leaf, rest, rustls::pki_types::UnixTime::now());
        verdict.basis().is_some_and(crate::verify::Basis::is_pin)
    }

    // The refusal is the response itself; it is built once per refused request.
    #[allow(clippy::result_large_err)]
    fn origin_of(&self, req: &Request<Incoming>) -> Result<Origin, Response<Body>> {
        // One parse, exactly as Synapse reads the header or a refusal, before
        // any edge rule runs (see `proxy::xmatrix`).
        let origin = crate::proxy::xmatrix::from_headers(req.headers()).map_err(|e| {
            matrix_error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", &e.to_string())
        })?;
        match origin {
            Some(o) => Ok(Origin::Named(o)),
            None if unsigned_allowed(req.uri().path()) => Ok(Origin::None),
            None => Err(matrix_error(
                StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                "missing X-Matrix Authorization header",
            )),
        }
    }

    #[allow(clippy::result_large_err)]
    fn check_ip(&self, ip: IpAddr) -> Result<(), Response<Body>> {
        let rules = self.rules.load();
        if let Some(l) = &rules.per_ip {
            if let Err(not_until) = l.check_key(&ip) {
                return Err(limited(
                    not_until.wait_time_from(DefaultClock::default().now()),
                ));
            }
        }
        Ok(())
    }

    /// Origin rules, and the per-origin rate limit: a verified origin has
    /// one bucket; an unverified one is bucketed with the client address
    /// (`client_ip`, as text), so forged requests from elsewhere cannot
    /// spend a genuine origin's budget.
    #[allow(clippy::result_large_err)]
    fn check_origin(
        &self,
        origin: &str,
        verified: bool,
        client_ip: &str,
    ) -> Result<(), Response<Body>> {
        let rules = self.rules.load();
        let (deny, allow) = (&rules.rules.deny_origins, &rules.rules.allow_origins);
        // The lists name servers or their hosts; no lists, nothing to split.
        if !deny.is_empty() || !allow.is_empty() {
            let o = origin;
            let host = crate::pins::split_server_name(o).unwrap_or_default();
            let listed = |set: &HashSet<String>| set.contains(o) || set.contains(&host);
            if listed(deny) {
                return Err(matrix_error(
                    StatusCode::FORBIDDEN,
                    "M_FORBIDDEN",
                    "origin refused by this server's edge policy",
                ));
            }
            if !allow.is_empty() && !listed(allow) {
                return Err(matrix_error(
                    StatusCode::FORBIDDEN,
                    "M_FORBIDDEN",
                    "origin not allowed by this server's edge policy",
                ));
            }
        }
        if let Some(l) = &rules.per_origin {
            // Built only when there is a limit: formatting the address was
            // 1.2k instructions of every federation request (callgrind).
            let bucket = if verified {
                origin.to_owned()
            } else {
                format!("{origin} {client_ip}")
            };
            if let Err(not_until) = l.check_key(&bucket) {
                return Err(limited(
                    not_until.wait_time_from(DefaultClock::default().now()),
                ));
            }
        }
        Ok(())
    }

    /// Verifies the request's X-Matrix signature: with a key pinned in the
    /// origin's `signing_keys` when the entry has them, else with the key
    /// fetched over pinned TLS.
    async fn verify_signature(
        &self,
        x: &XMatrix,
        method: &str,
        uri: &str,
        body: &[u8],
    ) -> Result<(), SigFailure> {
        let Some(own) = self.settings.server_name.as_deref() else {
            return Err(SigFailure::Refused(
                "this edge has no server_name to check the destination".into(),
            ));
        };
        if let Some(d) = &x.destination {
            if d != own {
                return Err(SigFailure::Refused(format!(
                    "the request is addressed to {d}, not to this server"
                )));
            }
        }
        let req = SignedRequest {
            method,
            uri,
            origin: &x.origin,
            destination: own,
            body,
        };
        let pins = self.pins.current();
        if let Some(peer) = pins.by_server_name(&x.origin) {
            if !peer.signing_keys.is_empty() {
                match peer.signing_keys.iter().find(|k| k.id == x.key) {
                    Some(k) => {
                        return req
                            .verify(k, &x.sig)
                            .map_err(|e| SigFailure::Refused(e.to_string()));
                    }
                    None => {
                        let mut a = crate::alert::Alert::local(
                            crate::alert::AlertEvent::SigningKeyMismatch,
                            crate::alert::Direction::Inbound,
                            pins.generation,
                            format!(
                                "{} signed a request with {}, which is not one of its pinned signing keys",
                                x.origin, x.key
                            ),
                        );
                        a.severity = crate::alert::Severity::Critical;
                        a.server_name = Some(peer.server_name.clone());
                        a.mode = Some(peer.mode);
                        a.known_pins = peer
                            .signing_keys
                            .iter()
                            .map(|k| format!("{}={}", k.id, k.base64()))
                            .collect();
                        let enforce = peer.mode == crate::pins::Mode::Enforce;
                        a.action = if enforce {
                            crate::alert::Action::Blocked
                        } else {
                            crate::alert::Action::Allowed
                        };
                        self.core.alerts().raise(a);
                        if enforce {
                            return Err(SigFailure::Refused(format!(
                                "{} is not a pinned signing key of {} (alert: signing_key_mismatch)",
                                x.key, x.origin
                            )));
                        }
                    }
                }
            }
        }
        let Some(keys) = &self.keys else {
            return Err(SigFailure::Refused("no key fetcher configured".into()));
        };
        let key = match keys.key(&x.origin, &x.key).await {
            Ok(k) => k,
            Err(KeyError::Busy) => return Err(SigFailure::Busy),
            Err(e) => return Err(SigFailure::Refused(e.to_string())),
        };
        req.verify(&key, &x.sig)
            .map_err(|e| SigFailure::Refused(e.to_string()))
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        ip: &HeaderValue,
        cert_names: Option<Arc<ClientIdentity>>,
        span: &tracing::Span,
    ) -> Response<Body> {
        let start = Instant::now();
        let method = req.method().clone();
        let template = crate::proxy::access_log::template(req.uri().path());
        let (resp, origin) = self.route(req, client, ip, cert_names, span).await;
        let status = resp.status();
        let class = match status.as_u16() {
            _ if resp.extensions().get::<BadSignature>().is_some() => 5,
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            500..=599 => 3,
            _ => 4,
        };
        self.stats.by_class[class].fetch_add(1, Ordering::Relaxed);
        let bytes = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // No parent span: the line already names the client.
        crate::proxy::access_log::Line {
            direction: "inbound",
            method: method.as_str(),
            path: &template,
            origin: origin.as_deref().unwrap_or("-"),
            status: status.as_u16(),
            bytes,
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
            client: ip.to_str().unwrap_or("-"),
        }
        .log();
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        ip: &HeaderValue,
        cert_names: Option<Arc<ClientIdentity>>,
        span: &tracing::Span,
    ) -> (Response<Body>, Option<String>) {
        let x = match self.screen(&req, client) {
            Ok(Origin::Named(x)) => x,
            Ok(Origin::None) => {
                let req = streamed(req, self.settings.max_body);
                return (self.forward(req, ip, span).await, None);
            }
            Err(refused) => return refused,
        };
        let origin_name = Some(x.origin.clone());
        // The request signature, verified before any origin rule (SPEC 4.12).
        // Its future (body buffering, key fetches over TLS) is many kB and
        // boxed: unboxed, every request's future would carry it, and hyper
        // moves that whole future into place once per request (callgrind:
        // ~10 % of a kept-alive request's instructions were that memcpy).
        let (req, verified) = if self.settings.verify_signatures == SignatureMode::Off {
            (streamed(req, self.settings.max_body), false)
        } else {
            match Box::pin(self.authenticate(req, &x, client))
                .instrument(span.clone())
                .await
            {
                Ok(r) => r,
                Err(r) => return (r, origin_name),
            }
        };
        if let Some(id) = &cert_names {
            if let Err(r) = self.bind_client_certificate(id, &x) {
                return (r, origin_name);
            }
        }
        let client_ip = ip.to_str().unwrap_or("-");
        if let Err(r) = self.check_origin(&x.origin, verified, client_ip) {
            return (r, origin_name);
        }
        (self.forward(req, ip, span).await, origin_name)
    }

    /// The checks that need only the request head: an unambiguous federation
    /// or key path, a well-formed X-Matrix origin (or an endpoint served
    /// unsigned), the client address, and the declared body size. A refusal
    /// carries the origin it named, for the access log.
    #[allow(clippy::result_large_err)] // the refusal is the response itself
    fn screen(
        &self,
        req: &Request<Incoming>,
        client: SocketAddr,
    ) -> Result<Origin, (Response<Body>, Option<String>)> {
        let path = req.uri().path();
        if let Some(why) = ambiguous_path(path) {
            return Err((
                matrix_error(StatusCode::BAD_REQUEST, "M_UNRECOGNIZED", why),
                None,
            ));
        }
        if !(path.starts_with("/_matrix/federation/") || path.starts_with("/_matrix/key/")) {
            return Err((
                matrix_error(
                    StatusCode::NOT_FOUND,
                    "M_UNRECOGNIZED",
                    "fedpin forwards only federation and key requests",
                ),
                None,
            ));
        }
        let origin = self.origin_of(req).map_err(|r| (r, None))?;
        let origin_name = match &origin {
            Origin::Named(x) => Some(x.origin.clone()),
            Origin::None => None,
        };
        if let Err(r) = self.check_ip(client.ip()) {
            return Err((r, origin_name));
        }
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.settings.max_body) {
            return Err((too_large(), origin_name));
        }
        Ok(origin)
    }

    /// Verifies the request signature (`verify_signatures` is `report` or
    /// `enforce`; the body is buffered, up to `max_body`, for it). Returns the request to forward
    /// and whether its origin proved who it is; in enforce mode a bad
    /// signature is refused here.
    async fn authenticate(
        &self,
        req: Request<Incoming>,
        x: &XMatrix,
        client: SocketAddr,
    ) -> Result<(Request<Body>, bool), Response<Body>> {
        let mode = self.settings.verify_signatures;
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.settings.max_body as usize)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(_) => {
                return Err(matrix_error(
                    StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "the request body could not be read",
                ))
            }
        };
        let uri = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let verified = match self
            .verify_signature(x, parts.method.as_str(), uri, &body)
            .await
        {
            Ok(()) => true,
            Err(SigFailure::Busy) => {
                let mut r = matrix_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "M_UNKNOWN",
                    "signing-key fetches are busy; retry shortly",
                );
                r.headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
                return Err(r);
            }
            Err(SigFailure::Refused(why)) => {
                tracing::warn!(
                    target: "fedpin::inbound",
                    origin = %x.origin,
                    client_addr = %client,
                    reason = %why,
                    enforced = mode == SignatureMode::Enforce,
                    "request signature not accepted"
                );
                if mode == SignatureMode::Enforce {
                    let mut r = matrix_error(
                        StatusCode::UNAUTHORIZED,
                        "M_UNAUTHORIZED",
                        &format!("request signature: {why}"),
                    );
                    r.extensions_mut().insert(BadSignature);
                    return Err(r);
                }
                false
            }
        };
        Ok((Request::from_parts(parts, full(body)), verified))
    }

    /// Mutual pinned TLS: the certificate that passed the pin rules must
    /// name the origin; a certificate without names must pass the pin entry
    /// of the origin itself (its key matched some entry at the handshake).
    #[allow(clippy::result_large_err)] // the refusal is the response itself
    fn bind_client_certificate(
        &self,
        id: &ClientIdentity,
        x: &XMatrix,
    ) -> Result<(), Response<Body>> {
        let host = crate::pins::split_server_name(&x.origin).unwrap_or_default();
        let bound = if id.names.is_empty() {
            self.nameless_client_matches(id, &host)
        } else {
            id.names.contains(&host)
        };
        if bound {
            return Ok(());
        }
        Err(matrix_error(
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
            "the client certificate does not name the X-Matrix origin",
        ))
    }

    /// Sends the request to the homeserver; `ip` is the client's address
    /// (X-Forwarded-For), `span` the connection's.
    async fn forward(
        &self,
        req: Request<Body>,
        ip: &HeaderValue,
        span: &tracing::Span,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        // Origin form: the connection is to the homeserver already.
        let uri = hyper::Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/")),
        );
        // HTTP/2 carries the host in :authority; the homeserver gets it as Host.
        if !parts.headers.contains_key(hyper::header::HOST) {
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(hyper::header::HOST, v);
                }
            }
        }
        strip_hop_by_hop(&mut parts.headers);
        // fedpin is the internet edge: whatever X-Forwarded-For a peer sent is
        // replaced, because Synapse believes the leftmost entry and a peer
        // must not choose the address the homeserver logs and rate-limits.
        parts.headers.insert(X_FORWARDED_FOR, ip.clone());
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        parts.uri = uri;
        parts.version = hyper::Version::HTTP_11;
        let req = Request::from_parts(parts, body);
        let asked = Instant::now();
        let answer =
            tokio::time::timeout(self.settings.request_timeout, self.client.send(req)).await;
        self.stats
            .upstream_seconds
            .observe(asked.elapsed().as_secs_f64());
        match answer {
            Err(_) => matrix_error(
                StatusCode::GATEWAY_TIMEOUT,
                "M_UNKNOWN",
                "the homeserver did not answer in time",
            ),
            Ok(Err(e)) => {
                if e.is_length_limit() {
                    return matrix_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "M_TOO_LARGE",
                        "request body too large",
                    );
                }
                span.in_scope(|| tracing::warn!(target: "fedpin::inbound", error = %e, "homeserver unreachable"));
                matrix_error(
                    StatusCode::BAD_GATEWAY,
                    "M_UNKNOWN",
                    "the homeserver is unreachable",
                )
            }
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed())
            }
        }
    }
}

/// What woke a connection ([`InboundProxy::watch`]).
enum Wake {
    /// Shutdown: finish what is in flight, then close.
    Stop,
    /// Close now.
    Close,
    /// Time for the connection's own idle checks.
    Tick,
}

/// The TLS stream of an inbound connection, as hyper sees it.
type Io = Box<crate::proxy::io::Activity<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>>;

/// What ends a connection besides its own traffic: shutdown, a pin publish
/// that refuses its client certificate, and the idle timeout.
struct Guard {
    client: SocketAddr,
    stop: watch::Receiver<bool>,
    published: watch::Receiver<u64>,
    recheck: Option<Arc<ClientIdentity>>,
    waiting: Arc<Waiting>,
    last: crate::proxy::io::LastActivity,
    idle: Duration,
    /// The connection's span, entered around each of its events.
    span: tracing::Span,
}

impl Guard {
    /// Quiet on the wire for `d`, and no request waiting for the homeserver
    /// (that wait is bounded by request_timeout).
    fn quiet_for(&self, d: Duration) -> bool {
        let settled = self.waiting.settled_for().is_some_and(|s| s >= d);
        settled && self.last.quiet_for() >= d
    }

    /// Idle for the idle timeout: the connection is closed.
    fn idle_expired(&self) -> bool {
        let expired = self.quiet_for(self.idle);
        if expired {
            tracing::debug!(target: "fedpin::inbound", client = %self.client, "idle connection closed");
        }
        expired
    }

    /// How long to sleep before the next idle check: a quarter of the idle
    /// timeout, or until `park` of quiet would have passed.
    fn tick(&self, park: Option<Duration>) -> Duration {
        let mut tick = self.idle / 4;
        if let Some(p) = park {
            tick = tick.min(p.saturating_sub(self.last.quiet_for()));
        }
        tick.max(Duration::from_millis(50))
    }
}

/// Requests of one connection that are waiting for their response head (the
/// homeserver is working on them): the connection is busy, not idle, however
/// quiet the wire is. Response bodies are not counted (a peer that stops
/// reading one is idle).
struct Waiting {
    count: AtomicUsize,
    /// Requests started on the connection, ever.
    started: AtomicU64,
    last_done: std::sync::Mutex<Instant>,
}

/// One waiting request; dropping it (answered or cancelled) ends the wait.
struct WaitGuard(Arc<Waiting>);

impl Waiting {
    fn new() -> Self {
        Waiting {
            count: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            last_done: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn enter(this: &Arc<Waiting>) -> WaitGuard {
        this.count.fetch_add(1, Ordering::SeqCst);
        this.started.fetch_add(1, Ordering::Relaxed);
        WaitGuard(this.clone())
    }

    /// None while a request waits; else how long since the last one was answered.
    fn settled_for(&self) -> Option<Duration> {
        if self.count.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let done = *self.last_done.lock().unwrap_or_else(|e| e.into_inner());
        Some(done.elapsed())
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        *self.0.last_done.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Federation endpoints the Matrix server-server spec serves without an
/// X-Matrix signature: the key APIs, the version probe (federation testers,
/// operators), and OpenID userinfo (authorised by its `access_token` query
/// parameter; used by integration managers and widgets). Every other
/// federation request must be signed.
fn unsigned_allowed(path: &str) -> bool {
    path.starts_with("/_matrix/key/")
        || path == "/_matrix/federation/v1/version"
        || path == "/_matrix/federation/v1/openid/userinfo"
}

/// Why a request path is refused before routing, if it is: a `.` or `..`
/// segment, also one that appears only once `%2F` is read as `/`
/// (`..%2f..%2f_synapse`); a percent-encoded `\` or `.` (`%5c`, `%2e`, any
/// case); a literal `\`. fedpin matches the path as sent; a hop behind it
/// that normalises or decodes paths (a reverse proxy, a framework router)
/// could otherwise turn `/_matrix/federation/../client/v3/login` or
/// `/_matrix/federation/v1/..%2f..%2f_synapse/admin/…` into a path fedpin
/// never forwards. Federation paths need none of these. Matrix IDs in paths
/// are percent-encoded (`%24event%3Aexample.org`, `%21room%3Aexample.org`)
/// and pass, and so does a lone `%2F`: room version 3 event IDs are standard
/// base64 and carry `/` (as `%2F` in a path), and without a dot segment a
/// decoded `%2F` cannot lead out of `/_matrix/federation/`. The query string
/// is not examined.
fn ambiguous_path(path: &str) -> Option<&'static str> {
    if path.contains('\\') {
        return Some("a backslash in the request path is not allowed");
    }
    let bytes = path.as_bytes();
    let encoded = |w: &[u8], code: [u8; 2]| {
        w[0] == b'%' && [w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase()] == code
    };
    if bytes
        .windows(3)
        .any(|w| encoded(w, *b"5c") || encoded(w, *b"2e"))
    {
        return Some("an encoded '\\' or '.' in the request path is not allowed");
    }
    // A dot segment needs a '.': most federation paths have none, and the
    // split below (a substring search per segment) was about 5 % of a
    // kept-alive request's instructions (callgrind).
    let dot_segment = path.contains('.')
        && path
            .split('/')
            .flat_map(|seg| seg.split("%2F").flat_map(|s| s.split("%2f")))
            .any(|seg| seg == "." || seg == "..");
    if dot_segment {
        return Some("'.' and '..' segments in the request path are not allowed");
    }
    None
}

fn limited(wait: Duration) -> Response<Body> {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let body = serde_json::json!({
        "errcode": "M_LIMIT_EXCEEDED",
        "error": "too many requests",
        "retry_after_ms": wait.as_millis() as u64,
    })
    .to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::{ambiguous_path, unsigned_allowed};

    #[test]
    fn dot_segments_and_encoded_separators_are_ambiguous() {
        for p in [
            "/_matrix/federation/../client/v3/login",
            "/_matrix/federation/./v1/version",
            "/_matrix/federation/v1/..",
            "/_matrix/federation/v1/.",
            "/_matrix/federation/v1/..%2f..%2f_synapse",
            "/_matrix/federation/v1/..%2F..%2F_synapse",
            "/_matrix/federation/v1/x%2F.%2Fy",
            "/_matrix/federation/v1/x%2F..",
            "/_matrix/federation/v1/%5c",
            "/_matrix/federation/v1/%5C",
            "/_matrix/federation/v1/%2e%2e/x",
            "/_matrix/federation/v1/%2Ex",
            "/_matrix/federation/v1/a\\b",
        ] {
            assert!(ambiguous_path(p).is_some(), "{p}");
        }
        for p in [
            "/_matrix/federation/v1/event/%24event%3Aexample.org",
            "/_matrix/federation/v1/state/%21room%3Aexample.org",
            "/_matrix/federation/v1/user/devices/%40alice%3Aexample.org",
            "/_matrix/federation/v1/send/1700000000.123",
            "/_matrix/federation/v1/make_join/%21r%3Ax.org/%40u%3Ax.org",
            "/_matrix/key/v2/server",
            "/_matrix/federation/v1/...",
            "/_matrix/federation/v1/.well-known",
            "/_matrix/federation/v1/%2",
            // A room version 3 event ID: standard base64, '/' encoded.
            "/_matrix/federation/v1/event/%24acR1l0raoZnm60CBwAVgqbZqoO%2FmYU81xysh1u7XcJk",
            "/_matrix/federation/v1/send/txn%2F1",
            "/_matrix/federation/v1/x%2F...%2Fy",
            "/_matrix/federation/v1/%",
        ] {
            assert_eq!(ambiguous_path(p), None, "{p}");
        }
    }

    #[test]
    fn only_the_specs_unsigned_endpoints_skip_x_matrix() {
        for p in [
            "/_matrix/key/v2/server",
            "/_matrix/key/v2/query/hs.example",
            "/_matrix/federation/v1/version",
            "/_matrix/federation/v1/openid/userinfo",
        ] {
            assert!(unsigned_allowed(p), "{p}");
        }
        for p in [
            "/_matrix/federation/v1/send/1",
            "/_matrix/federation/v1/query/profile",
            "/_matrix/federation/v1/versionx",
            "/_matrix/federation/v1/version/x",
            "/_matrix/federation/v1/openid/userinfo/x",
            "/_matrix/federation/v2/version",
        ] {
            assert!(!unsigned_allowed(p), "{p}");
        }
    }
}
