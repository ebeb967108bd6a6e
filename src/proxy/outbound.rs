//! The outbound proxy: Synapse's `https_proxy` points here.
//!
//! Per tunnel: accept `CONNECT host:port` (hyper), vet the destination
//! (deny list, allowed ports, egress IP policy on the resolved addresses),
//! answer 200, read the inner ClientHello (SNI, ALPN) with
//! `LazyConfigAcceptor`, dial the vetted address, run the upstream handshake
//! with the same SNI and ALPN through [`PinnedServerVerifier`], and only then
//! complete the inner handshake with a leaf minted for that name (and the
//! ALPN the peer chose). Then relay bytes until either side closes or the
//! tunnel is idle; or, when the homeserver's first bytes are an HTTP/1.x
//! request line, serve its requests over the upstream connection and keep
//! that connection for the next tunnel to the same peer (`outbound/http.rs`,
//! [`super::kept`]). A peer that fails the pin rules still gets an inner
//! handshake so that the homeserver receives an HTTP 502 whose body names the
//! failed check and the alert raised, instead of a bare reset.
//!
//! [`PinnedServerVerifier`]: crate::verify::PinnedServerVerifier

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;
use tracing::Instrument;

use crate::alert::Direction;
use crate::egress::EgressPolicy;
use crate::metrics::{HandshakeCounters, HandshakeResult};
use crate::tls::mint::LeafMinter;
use crate::tls::UpstreamTls;
use crate::verify::{PeerContext, Refusal};

use super::kept::{Kept, Key};
use http::HttpTunnel;

mod http;

/// Outbound listener settings (validated config).
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Static name → address overrides (like curl `--resolve`).
    pub resolve: BTreeMap<String, IpAddr>,
    /// Static `(host, port)` → socket address overrides (like curl
    /// `--connect-to`): the TLS name and pin checks stay those of the host.
    pub connect_to: BTreeMap<(String, u16), SocketAddr>,
    /// Egress IP policy.
    pub egress: EgressPolicy,
    /// Server names refused at CONNECT time (lowercase).
    pub deny_destinations: HashSet<String>,
    /// Ports that may be dialled (`None`: any).
    pub allowed_ports: Option<Vec<u16>>,
    /// Required `Proxy-Authorization: Basic` credentials, `user:password`.
    pub proxy_auth: Option<String>,
    /// Concurrent tunnels; more are answered 503.
    pub max_tunnels: usize,
    /// Cap on the CONNECT request head, bytes.
    pub max_header_bytes: usize,
    /// TCP connect timeout (upstream).
    pub connect_timeout: Duration,
    /// TLS handshake timeout (each side), and CONNECT head read timeout.
    pub handshake_timeout: Duration,
    /// Close a tunnel with no traffic for this long.
    pub idle_timeout: Duration,
    /// Keep a pinned upstream connection this long after its tunnel ended,
    /// for the next tunnel to the same peer (see [`super::kept`]). Zero:
    /// never, and tunnels relay bytes instead of reading HTTP/1.1.
    pub upstream_keepalive: Duration,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            resolve: BTreeMap::new(),
            connect_to: BTreeMap::new(),
            egress: EgressPolicy::new(Vec::new(), Vec::new()),
            deny_destinations: HashSet::new(),
            allowed_ports: None,
            proxy_auth: None,
            max_tunnels: 1024,
            max_header_bytes: 16 * 1024,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(300),
            upstream_keepalive: Duration::from_secs(30),
        }
    }
}

/// Counters for the admin listener and tests.
#[derive(Debug, Default)]
pub struct OutboundStats {
    /// Upstream connect + TLS handshake duration, seconds.
    pub upstream_handshake_seconds: crate::metrics::Seconds<14>,
    /// Tunnels open now.
    pub active_tunnels: AtomicUsize,
    /// Upstream TLS handshakes by result.
    pub handshakes: HandshakeCounters,
    /// Upstreams that could not be reached or dialled (no TCP connection,
    /// no usable TLS name): no handshake took place.
    pub upstream_errors: AtomicU64,
    /// CONNECTs refused by policy (403/407).
    pub refused: AtomicU64,
    /// Clients turned away because the tunnel cap was reached.
    pub over_capacity: AtomicU64,
    /// Open tunnels closed because a reload revoked what their upstream
    /// presented (SPEC 4.13).
    pub revoked: AtomicU64,
    /// Kept upstream connections taken, by a new tunnel or by a parked one
    /// that sent again (no upstream handshake).
    pub upstream_reused: AtomicU64,
    /// Tunnels read as HTTP/1.1 (their upstream connection can be kept).
    pub http_tunnels: AtomicU64,
    /// Times a quiet HTTP tunnel was parked (hyper's buffers released, the
    /// homeserver's TLS stream kept).
    pub parked_tunnels: AtomicU64,
    /// The last upstream handshake result per peer (status page).
    pub peers: super::peer_results::PeerResults,
}

/// The outbound proxy.
pub struct OutboundProxy {
    settings: arc_swap::ArcSwap<OutboundSettings>,
    upstream: Arc<UpstreamTls>,
    minter: Arc<LeafMinter>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    slots: Arc<Semaphore>,
    stats: OutboundStats,
    open: Arc<std::sync::Mutex<std::collections::HashMap<u64, OpenTunnel>>>,
    next_id: AtomicU64,
    /// Pinned upstream connections kept between tunnels.
    kept: Kept,
    /// The homeserver-facing TLS configs, per name and ALPN, with the leaf
    /// each was made for.
    inner_configs: std::sync::Mutex<lru::LruCache<InnerKey, InnerConfig>>,
}

/// A name and the ALPN protocols the homeserver offered.
type InnerKey = (String, Vec<Vec<u8>>);
/// A config and the minted leaf it presents.
type InnerConfig = (Arc<rustls::sign::CertifiedKey>, Arc<rustls::ServerConfig>);
/// Inner configs kept (as many as the minter keeps leaves).
const INNER_CONFIGS: usize = 1024;

/// An established tunnel, kept so a reload can re-check what its upstream
/// presented (no network needed) and end it when the new set refuses it.
struct OpenTunnel {
    tls_name: String,
    /// Shared with the tunnel's kept connection (not copied per tunnel).
    chain: Arc<[rustls::pki_types::CertificateDer<'static>]>,
    ctx: PeerContext,
    /// The pin generation it was last checked under.
    generation: u64,
    revoke: Arc<tokio::sync::Notify>,
}

/// Removes a tunnel from the registry when it ends.
struct Registered {
    open: Arc<std::sync::Mutex<std::collections::HashMap<u64, OpenTunnel>>>,
    id: u64,
    revoke: Arc<tokio::sync::Notify>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl std::fmt::Debug for OutboundProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundProxy").finish_non_exhaustive()
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Upstream connections kept per peer (TLS name, CONNECT host and port):
/// Synapse opens a few tunnels to a busy peer at once.
const KEPT_PER_PEER: usize = 8;
/// Upstream connections kept in all.
const KEPT_TOTAL: usize = 256;
/// How long an ended tunnel's upstream connection may take to be ready for
/// a request (its last response read to the end) before it is closed
/// instead of kept.
const KEPT_READY_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Destination {
    host: String,
    port: u16,
    addrs: Vec<SocketAddr>,
}

impl OutboundProxy {
    /// Builds the proxy.
    pub fn new(
        settings: OutboundSettings,
        upstream: Arc<UpstreamTls>,
        minter: Arc<LeafMinter>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_tunnels.max(1)));
        OutboundProxy {
            settings: arc_swap::ArcSwap::from_pointee(settings),
            upstream,
            minter,
            provider: crate::tls::provider(),
            slots,
            stats: OutboundStats::default(),
            open: Arc::new(std::sync::Mutex::new(std::collections::HashMap::new())),
            next_id: AtomicU64::new(1),
            kept: Kept::new(KEPT_PER_PEER, KEPT_TOTAL),
            inner_configs: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(INNER_CONFIGS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }

    fn register(
        &self,
        tls_name: &str,
        chain: Arc<[rustls::pki_types::CertificateDer<'static>]>,
        ctx: PeerContext,
        generation: u64,
        revoke: Arc<tokio::sync::Notify>,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            OpenTunnel {
                tls_name: tls_name.to_owned(),
                chain,
                ctx,
                generation,
                revoke: revoke.clone(),
            },
        );
        Registered {
            open: self.open.clone(),
            id,
            revoke,
        }
    }

    /// Re-checks every open tunnel's recorded upstream chain against the pin
    /// set now in force and ends those it refuses, with the refusal's alert.
    /// Returns how many were ended. Called on every pin-file publish.
    pub fn recheck_open_tunnels(&self) -> usize {
        let pins = self.upstream.store().current();
        let core = self.upstream.core();
        let now = rustls::pki_types::UnixTime::now();
        let mut ended = 0;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for t in open.values_mut() {
            if t.generation >= pins.generation {
                continue;
            }
            t.generation = pins.generation;
            let Some((ee, rest)) = t.chain.split_first() else {
                continue;
            };
            let name = ServerName::try_from(t.tls_name.clone()).ok();
            let verdict = core.evaluate(
                &pins,
                &crate::verify::Presented {
                    lookup: &t.tls_name,
                    name: name.as_ref(),
                    end_entity: ee,
                    intermediates: rest,
                    now,
                    usage: crate::verify::Usage::Server,
                },
            );
            core.count(&verdict);
            if !verdict.is_accept() {
                if let Some(mut a) = verdict.alert(&pins, ee, rest, &t.ctx) {
                    a.reason = format!(
                        "open tunnel closed after pin reload (generation {}): {}",
                        pins.generation, a.reason
                    );
                    core.alerts().raise(a);
                }
                tracing::warn!(
                    target: "fedpin::outbound",
                    tls_name = %t.tls_name,
                    generation = pins.generation,
                    reason = %verdict,
                    "open tunnel no longer passes the pin rules; closing it"
                );
                t.revoke.notify_one();
                ended += 1;
            }
        }
        drop(open);
        self.stats
            .revoked
            .fetch_add(ended as u64, Ordering::Relaxed);
        ended
    }

    /// Swaps in new settings (a config reload): new CONNECTs use them at
    /// once; open tunnels keep the timeouts they started with. `max_tunnels`
    /// is fixed at start (the slot count is not resized).
    pub fn set_settings(&self, settings: OutboundSettings) {
        self.settings.store(Arc::new(settings));
        // Kept connections were dialled under the old egress rules.
        self.kept.clear();
        tracing::info!(target: "fedpin::outbound", "outbound settings reloaded");
    }

    /// The proxy's counters and per-peer results (read by `/metrics` and the status page).
    pub fn stats(&self) -> &OutboundStats {
        &self.stats
    }

    /// Pinned upstream connections kept for later tunnels now.
    pub fn kept_connections(&self) -> usize {
        self.kept.len()
    }

    /// The verifier core applying the pin rules to upstreams.
    pub fn verifier(&self) -> &Arc<crate::verify::VerifierCore> {
        self.upstream.core()
    }

    /// Accepts clients until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut published = self.upstream.store().subscribe();
        let watcher = {
            let this = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        changed = published.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            // Checked under the old set: never reused
                            // (take() also refuses them by generation).
                            this.kept.clear();
                            this.recheck_open_tunnels();
                        }
                        _ = tick.tick() => {
                            let keep = this.settings.load().upstream_keepalive;
                            this.kept.reap(keep, this.upstream.store().current().generation);
                        }
                    }
                }
            })
        };
        let _watcher = AbortOnDrop(watcher);
        loop {
            let failed = |e: &std::io::Error| {
                tracing::warn!(target: "fedpin::outbound", error = %e, "accept failed; refusing new connections briefly");
            };
            let Some((tcp, client)) =
                super::io::accept_or_stop(&listener, &mut shutdown, failed).await
            else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                self.stats.over_capacity.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "fedpin::outbound", client_addr = %client, "tunnel limit reached; answering 503");
                tokio::spawn(async move {
                    let mut tcp = tcp;
                    let body = "fedpin: too many tunnels open; retry later\n";
                    let msg = format!(
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(msg.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
                continue;
            };
            let this = self.clone();
            let span =
                tracing::info_span!(target: "fedpin::outbound", "tunnel", client_addr = %client);
            tokio::spawn(
                // The permit moves into the tunnel task on a successful
                // CONNECT (hyper's connection future ends at the upgrade, long
                // before the tunnel does); otherwise it is freed here.
                this.handle_client(tcp, client, permit).instrument(span),
            );
        }
    }

    async fn handle_client(
        self: Arc<Self>,
        tcp: TcpStream,
        client: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        let slot = Arc::new(std::sync::Mutex::new(Some(permit)));
        let svc = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let slot = slot.clone();
            async move { Ok::<_, Infallible>(this.on_request(req, client, slot).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(self.settings.load().max_header_bytes.max(8192))
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.load().handshake_timeout)
            .keep_alive(false)
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(target: "fedpin::outbound", error = %e, "client connection ended with an error");
        }
    }

    fn check_auth(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = &self.settings.load().proxy_auth else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(hyper::header::PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(given.trim()) else {
            return false;
        };
        // Constant-time comparison (length leaks, content does not).
        bool::from(subtle::ConstantTimeEq::ct_eq(
            decoded.as_slice(),
            expected.as_bytes(),
        ))
    }

    async fn vet(&self, req: &Request<Incoming>) -> Result<Destination, Response<Body>> {
        if req.method() != Method::CONNECT {
            return Err(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "fedpin only proxies CONNECT tunnels (set Synapse's https_proxy, not http_proxy, to fedpin)\n",
            ));
        }
        if !self.check_auth(req) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let mut r = text(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "fedpin: proxy authentication required\n",
            );
            r.headers_mut().insert(
                hyper::header::PROXY_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"fedpin\""),
            );
            return Err(r);
        }
        let super::connect_target::ConnectTarget { host, port } =
            super::connect_target::connect_target(req.uri())
                .map_err(|e| text(StatusCode::BAD_REQUEST, format!("fedpin: {e}\n")))?;
        self.destination(host, port).await
    }

    /// Vets `host:port` against the settings in force (allowed ports, deny
    /// list, egress IP policy on the resolved addresses): for a CONNECT, and
    /// again before an HTTP tunnel's later request takes or dials an
    /// upstream connection.
    async fn destination(&self, host: String, port: u16) -> Result<Destination, Response<Body>> {
        if let Some(ports) = &self.settings.load().allowed_ports {
            if !ports.contains(&port) {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "fedpin::outbound", server_name = %host, server_port = port, "CONNECT refused: port not in allowed_ports");
                return Err(text(
                    StatusCode::FORBIDDEN,
                    format!("fedpin: port {port} is not in allowed_ports\n"),
                ));
            }
        }
        if self.settings.load().deny_destinations.contains(&host) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "fedpin::outbound", server_name = %host, "CONNECT refused: destination is in deny_destinations");
            return Err(text(
                StatusCode::FORBIDDEN,
                format!("fedpin: {host} is in deny_destinations\n"),
            ));
        }
        let fixed = self
            .settings
            .load()
            .connect_to
            .get(&(host.clone(), port))
            .copied();
        let dial_port = fixed.map_or(port, |a| a.port());
        let candidates: Vec<IpAddr> = if let Some(a) = fixed {
            vec![a.ip()]
        } else if let Some(ip) = self.settings.load().resolve.get(&host) {
            vec![*ip]
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            vec![ip]
        } else {
            match tokio::time::timeout(
                self.settings.load().connect_timeout,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            {
                Ok(Ok(it)) => it.map(|a| a.ip()).collect(),
                Ok(Err(e)) => {
                    return Err(text(
                        StatusCode::BAD_GATEWAY,
                        format!("fedpin: cannot resolve {host}: {e}\n"),
                    ));
                }
                Err(_) => {
                    return Err(text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("fedpin: resolving {host} timed out\n"),
                    ))
                }
            }
        };
        let mut addrs = Vec::new();
        let mut refusals = Vec::new();
        for ip in candidates {
            match self.settings.load().egress.check(ip) {
                Ok(()) => addrs.push(SocketAddr::new(ip, dial_port)),
                Err(r) => refusals.push(format!("{ip} {r}")),
            }
        }
        if addrs.is_empty() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let why = if refusals.is_empty() {
                "no addresses".to_string()
            } else {
                refusals.join("; ")
            };
            tracing::warn!(target: "fedpin::outbound", server_name = %host, server_port = port, reason = %why, "CONNECT refused by the egress IP policy");
            return Err(text(
                StatusCode::FORBIDDEN,
                format!("fedpin: refusing to dial {host}:{port}: {why}\n"),
            ));
        }
        Ok(Destination { host, port, addrs })
    }

    async fn on_request(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        client: SocketAddr,
        slot: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    ) -> Response<Body> {
        let dest = match self.vet(&req).await {
            Ok(d) => d,
            Err(resp) => return resp,
        };
        // The tunnel slot is held until the tunnel ends.
        let permit = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let upgrade = hyper::upgrade::on(&mut req);
        let this = self.clone();
        let span = tracing::info_span!(
            target: "fedpin::outbound",
            "connect",
            server_name = %dest.host,
            server_port = dest.port,
            pins_generation = tracing::field::Empty,
        );
        tokio::spawn(
            async move {
                match upgrade.await {
                    Ok(upgraded) => {
                        this.stats.active_tunnels.fetch_add(1, Ordering::Relaxed);
                        // Boxed, and freed before an HTTP tunnel is served:
                        // the handshake and dial states are not kept for
                        // the tunnel's life (see `http::Serve`).
                        let serve = Box::pin(this.tunnel(TokioIo::new(upgraded), dest, client)).await;
                        if let Some(serve) = serve {
                            this.serve_http(serve).await;
                        }
                        this.stats.active_tunnels.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(target: "fedpin::outbound", error = %e, "CONNECT upgrade failed"),
                }
                drop(permit);
            }
            .instrument(span),
        );
        Response::new(Full::new(Bytes::new()))
    }

    async fn tunnel<IO>(
        self: &Arc<Self>,
        io: IO,
        dest: Destination,
        client: SocketAddr,
    ) -> Option<http::Serve<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let hs = self.settings.load().handshake_timeout;
        // Boxed: rustls's Acceptor is a whole connection state, and inline it
        // would size the task for as long as the tunnel lives (issue 13 item 3).
        let start = Box::pin(client_hello(io, hs)).await?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        let alpn: Vec<Vec<u8>> = hello
            .alpn()
            .map(|it| it.map(|p| p.to_vec()).collect())
            .unwrap_or_default();
        let tls_name = sni.clone().unwrap_or_else(|| dest.host.clone());
        // The SNI may name a different server than the CONNECT host (SRV
        // targets, delegation): deny_destinations applies to both.
        let sni_key = crate::pins::normalize_lookup(&tls_name).into_owned();
        if self.settings.load().deny_destinations.contains(&sni_key) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "fedpin::outbound", tls_name = %tls_name, "tunnel refused: the TLS name is in deny_destinations");
            let failure = DialFailure {
                message: format!("{tls_name} is in deny_destinations"),
                handshake: None,
                alert: None,
            };
            Box::pin(self.explain(start, &tls_name, &alpn, StatusCode::FORBIDDEN, failure)).await;
            return None;
        }

        // A pinned peer's well-known front: this tunnel is read as HTTP so
        // the delegation it answers can be checked (SPEC 4.11).
        let watch = self.delegation_watch(&tls_name, dest.port);
        // Read as HTTP/1.1 when the homeserver speaks it (it offers no h2),
        // so that the upstream connection can be kept for the next tunnel
        // (super::kept).
        let http = watch.is_none()
            && !self.settings.load().upstream_keepalive.is_zero()
            && !alpn.iter().any(|p| p.as_slice() == b"h2")
            && (alpn.is_empty() || alpn.iter().any(|p| p.as_slice() == b"http/1.1"));
        let offered: Vec<Vec<u8>> = if watch.is_some() {
            alpn.iter()
                .filter(|p| p.as_slice() == b"http/1.1")
                .cloned()
                .collect()
        } else {
            alpn.clone()
        };
        if http {
            let key = Key {
                tls_name: tls_name.clone(),
                host: dest.host.clone(),
                port: dest.port,
            };
            let generation = self.upstream.store().current().generation;
            let keep = self.settings.load().upstream_keepalive;
            if let Some(link) = self.kept.take(&key, generation, &dest.addrs, keep) {
                self.stats.upstream_reused.fetch_add(1, Ordering::Relaxed);
                tracing::Span::current().record("pins_generation", generation);
                let revoke = Arc::new(tokio::sync::Notify::new());
                let t = HttpTunnel::new(self, tls_name, dest, offered, client, revoke);
                return Box::pin(self.http_established(start, link, t)).await;
            }
        }
        let dial_started = Instant::now();
        // The handshake-phase futures are boxed (here, the inner handshake
        // and the refusal below): the task's own future then only has to
        // hold the relay phase, and an idle tunnel keeps a smaller task
        // (14.7 kB of task per tunnel before; issue 13 item 3).
        let upstream = Box::pin(self.dial(&dest, &tls_name, offered.clone())).await;
        self.stats
            .upstream_handshake_seconds
            .observe(dial_started.elapsed().as_secs_f64());
        match upstream {
            Ok(up) => {
                let tunnel = Established {
                    start,
                    up,
                    tls_name: &tls_name,
                    dest: &dest,
                    client,
                    watch,
                    hs,
                    http: http.then_some(offered),
                };
                self.relay_established(tunnel).await
            }
            Err(failure) => {
                let status = self.count_failure(&tls_name, &failure);
                Box::pin(self.explain(start, &tls_name, &alpn, status, failure)).await;
                None
            }
        }
    }

    /// Counts a dial that passed the pin rules (metrics, status page).
    fn count_ok(&self, tls_name: &str, chain: &[rustls::pki_types::CertificateDer<'static>]) {
        self.stats.handshakes.add(HandshakeResult::Ok);
        self.stats.peers.record(
            &self.upstream.store().current(),
            tls_name,
            HandshakeResult::Ok,
            chain,
        );
    }

    /// Counts and logs a failed dial; gives the status the homeserver is
    /// answered with.
    fn count_failure(&self, tls_name: &str, failure: &DialFailure) -> StatusCode {
        match failure.handshake {
            Some(result) => {
                self.stats.handshakes.add(result);
                self.stats
                    .peers
                    .record(&self.upstream.store().current(), tls_name, result, &[]);
            }
            None => {
                self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let status = if failure.handshake == Some(HandshakeResult::Timeout) {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        tracing::warn!(
            target: "fedpin::outbound",
            tls_name = %tls_name,
            reason = %failure.message,
            "upstream refused; answering the homeserver with {status}"
        );
        status
    }

    /// A tunnel whose upstream passed the pin rules: registers it for
    /// revocation, completes the homeserver's handshake with a minted
    /// certificate, and relays until either side ends, the idle timeout, or
    /// a pin reload that no longer accepts the upstream.
    async fn relay_established<IO>(
        self: &Arc<Self>,
        t: Established<'_, IO>,
    ) -> Option<http::Serve<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Established {
            start,
            up: (up, negotiated, generation),
            tls_name,
            dest,
            client,
            watch,
            hs,
            http,
        } = t;
        tracing::Span::current().record("pins_generation", generation);
        let chain = up.chain();
        self.count_ok(tls_name, &chain);
        let registered = self.register(
            tls_name,
            chain.into(),
            PeerContext {
                direction: Some(Direction::Outbound),
                server_name: None,
                port: Some(dest.port),
                peer_addr: up.peer_addr(),
            },
            generation,
            Arc::new(tokio::sync::Notify::new()),
        );
        // A reload may have landed during the handshake.
        if generation < self.upstream.store().current().generation {
            self.recheck_open_tunnels();
        }
        let h2 = negotiated.as_deref() == Some(b"h2");
        let inner_alpn: Vec<Vec<u8>> = negotiated.into_iter().collect();
        let down = self
            .inner_handshake(start, tls_name, inner_alpn, hs)
            .await?;
        tracing::debug!(target: "fedpin::outbound", tls_name = %tls_name, client_addr = %client, "tunnel established");
        let revoked = registered.revoke.clone();
        if let (Some(offered), false, None) = (http, h2, &watch) {
            let t = HttpTunnel::new(
                self,
                tls_name.to_string(),
                dest.clone(),
                offered,
                client,
                revoked,
            );
            return Box::pin(self.http_or_relay(down, up, generation, registered, t)).await;
        }
        tokio::select! {
            _ = async {
                match watch {
                    Some(w) => Box::pin(self.relay_watching_delegation(down, up, w)).await,
                    None => relay(down, up, self.settings.load().idle_timeout).await,
                }
            } => {}
            _ = revoked.notified() => {
                tracing::info!(target: "fedpin::outbound", tls_name = %tls_name, "tunnel ended: its upstream no longer passes the pin rules");
            }
        }
        drop(registered);
        None
    }

    /// Completes the homeserver's handshake with a leaf minted for
    /// `tls_name`, offering `alpn`; `None`, logged, when it fails.
    async fn inner_handshake<IO>(
        &self,
        start: Box<tokio_rustls::StartHandshake<IO>>,
        tls_name: &str,
        alpn: Vec<Vec<u8>>,
        hs: Duration,
    ) -> Option<Box<tokio_rustls::server::TlsStream<IO>>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = match self.inner_config(tls_name, alpn) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target: "fedpin::outbound", error = %e, "cannot mint the inner certificate");
                return None;
            }
        };
        // The stream lives on the heap: the relay's futures move it, and
        // inline each move would keep a slot of its own in the task.
        match tokio::time::timeout(hs, Box::pin((*start).into_stream(config))).await {
            Ok(Ok(s)) => Some(Box::new(s)),
            Ok(Err(e)) if is_disconnect(&e) => {
                tracing::debug!(target: "fedpin::outbound", error = %e, "the homeserver left during the inner handshake");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(target: "fedpin::outbound", error = %e, "inner handshake with the homeserver failed (does it trust fedpin's CA?)");
                None
            }
            Err(_) => {
                tracing::warn!(target: "fedpin::outbound", "inner handshake timed out");
                None
            }
        }
    }

    /// The delegation a tunnel to `tls_name:port` must keep to, when that
    /// name is a pinned peer's well-known front: port 443, a peer entry with
    /// a recorded `delegation`, and not the delegated endpoint itself.
    fn delegation_watch(&self, tls_name: &str, port: u16) -> Option<DelegationWatch> {
        if port != 443 {
            return None;
        }
        let pins = self.upstream.store().current();
        let view = pins.lookup(tls_name)?;
        let delegation = view.delegation.clone()?;
        let peer = pins.by_server_name(&view.server_name)?;
        let name = crate::pins::normalize_lookup(tls_name).into_owned();
        let delegated: crate::discovery::ServerName = delegation.parse().ok()?;
        if delegated.host.to_string() == name && delegated.port == Some(443) {
            return None;
        }
        let mut names: Vec<String> = peer.hosts.clone();
        names.extend(peer.host_pins.iter().map(|(h, _)| h.clone()));
        Some(DelegationWatch {
            server_name: peer.server_name.clone(),
            delegation,
            mode: peer.mode,
            names,
            known_pins: view.pins.iter().map(|p| p.to_string()).collect(),
            pin_generation: pins.generation,
            host: name,
        })
    }

    /// Relays HTTP/1.1 between the homeserver and a pinned peer's well-known
    /// front, checking every `/.well-known/matrix/server` answer against the
    /// recorded delegation; everything else passes unchanged.
    async fn relay_watching_delegation<D, U>(&self, down: D, up: U, watch: DelegationWatch)
    where
        D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static + PeerChain,
    {
        let chain = up.chain();
        let peer_addr = up.peer_addr();
        let (sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(up)).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(target: "fedpin::outbound", error = %e, "HTTP handshake with the well-known front failed");
                return;
            }
        };
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "fedpin::outbound", error = %e, "well-known front connection ended with an error");
            }
        });
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        let watch = Arc::new(watch);
        let alerts = self.verifier().alerts().clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let sender = sender.clone();
            let watch = watch.clone();
            let alerts = alerts.clone();
            let chain = chain.clone();
            async move {
                let is_wk = req.method() == Method::GET
                    && req.uri().path() == crate::discovery::WELL_KNOWN_PATH;
                let resp = sender.lock().await.send_request(req).await;
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => {
                        let r = text(
                            StatusCode::BAD_GATEWAY,
                            format!("fedpin: the request to {} failed: {e}\n", watch.host),
                        );
                        return Ok::<_, Infallible>(r.map(boxed_full));
                    }
                };
                if !is_wk {
                    return Ok(resp.map(http_body_util::BodyExt::boxed));
                }
                let (parts, body) = resp.into_parts();
                let (verdict, body) = check_well_known(&watch, &parts, body).await;
                match verdict {
                    Ok(()) => Ok(Response::from_parts(parts, boxed_full(Full::new(body)))),
                    Err(reason) => {
                        let blocked = watch.mode == crate::pins::Mode::Enforce;
                        alerts.raise(watch.alert(&reason, blocked, peer_addr, &chain));
                        tracing::warn!(
                            target: "fedpin::outbound",
                            tls_name = %watch.host,
                            server_name = %watch.server_name,
                            reason = %reason,
                            blocked,
                            "well-known answer does not name the recorded delegation"
                        );
                        if blocked {
                            let mut r = text(
                                StatusCode::BAD_GATEWAY,
                                format!(
                                    "fedpin refused the well-known answer of {}: {reason} (alert: delegation_changed)\n",
                                    watch.host
                                ),
                            );
                            r.headers_mut().insert(
                                "x-fedpin-alert",
                                hyper::header::HeaderValue::from_static("delegation_changed"),
                            );
                            Ok(r.map(boxed_full))
                        } else {
                            Ok(Response::from_parts(parts, boxed_full(Full::new(body))))
                        }
                    }
                }
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(down), svc);
        if tokio::time::timeout(self.settings.load().idle_timeout, conn)
            .await
            .is_err()
        {
            tracing::debug!(target: "fedpin::outbound", "well-known front tunnel idle; closing");
        }
        driver.abort();
    }

    fn inner_config(
        &self,
        name: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        let ck = self.minter.leaf_for(name).map_err(|e| e.to_string())?;
        // One config per name and ALPN while its leaf is the minter's,
        // rather than one built per tunnel (no memory difference measured;
        // the build is saved). Only for the ALPN lists homeserver clients
        // send (none, http/1.1, h2): the list is the client's to choose,
        // and a cache keyed on any list would let one client fill it.
        let cached = alpn.len() <= 2 && alpn.iter().all(|p| p.len() <= 8);
        let key = (name.to_owned(), alpn);
        let mut cache = self.inner_configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((leaf, config)) = cache.get(&key) {
            if Arc::ptr_eq(leaf, &ck) {
                return Ok(config.clone());
            }
        }
        let alpn = key.1.clone();
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(ck.clone())));
        config.alpn_protocols = alpn;
        // Synapse's federation client does not resume sessions, and a
        // remint makes a new config: it stores and sends none. rustls'
        // default, a 256-entry session cache and two TLS 1.3 tickets per
        // handshake, cost memory and each new tunnel CPU for nothing.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let config = Arc::new(config);
        if cached {
            cache.put(key, (ck, config.clone()));
        }
        Ok(config)
    }

    async fn dial(
        &self,
        dest: &Destination,
        tls_name: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Upstream, DialFailure> {
        let mut last = String::from("no address to dial");
        let mut tcp = None;
        for addr in &dest.addrs {
            match tokio::time::timeout(
                self.settings.load().connect_timeout,
                TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(s)) => {
                    tcp = Some((s, *addr));
                    break;
                }
                Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
                Err(_) => {
                    last = format!(
                        "connecting to {addr}: timed out after {:?}",
                        self.settings.load().connect_timeout
                    )
                }
            }
        }
        let Some((tcp, addr)) = tcp else {
            return Err(DialFailure {
                message: last,
                handshake: None,
                alert: None,
            });
        };
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(tls_name.to_string()).map_err(|_| DialFailure {
            message: format!("\"{tls_name}\" is not a valid TLS name"),
            handshake: None,
            alert: None,
        })?;
        let ctx = PeerContext {
            direction: Some(Direction::Outbound),
            server_name: None,
            port: Some(dest.port),
            peer_addr: Some(addr),
        };
        let connector = self
            .upstream
            .connector(ctx, alpn)
            .map_err(|e| DialFailure {
                message: e.to_string(),
                handshake: None,
                alert: None,
            })?;
        let fut = connector.connect(server_name, tcp);
        match tokio::time::timeout(self.settings.load().handshake_timeout, fut).await {
            Ok(Ok(tls)) => {
                let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
                Ok((Box::new(tls), negotiated, connector.generation()))
            }
            Ok(Err(e)) => {
                let record = connector.record();
                let refusal = record.as_ref().and_then(|v| v.refusal());
                let result = refusal.map_or_else(
                    || crate::verify::handshake_result(&e),
                    Refusal::handshake_result,
                );
                let message = match (refusal, record.as_ref()) {
                    (Some(Refusal::SignatureInvalid { .. }), _) => format!("{tls_name} presented a certificate whose key it does not hold (handshake signature invalid)"),
                    (Some(_), Some(v)) => v.to_string(),
                    _ => format!("TLS handshake with {addr} failed: {e}"),
                };
                Err(DialFailure {
                    message,
                    handshake: Some(result),
                    alert: record
                        .as_ref()
                        .and_then(|v| v.alert_event())
                        .map(|a| a.as_str()),
                })
            }
            Err(_) => Err(DialFailure {
                message: format!("TLS handshake with {addr} timed out"),
                handshake: Some(HandshakeResult::Timeout),
                alert: None,
            }),
        }
    }

    /// Completes the inner handshake and answers every request with `status`
    /// and a body naming the failed check, so the homeserver logs the reason.
    async fn explain<IO>(
        &self,
        start: Box<tokio_rustls::StartHandshake<IO>>,
        tls_name: &str,
        offered: &[Vec<u8>],
        status: StatusCode,
        failure: DialFailure,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let h2 = !offered.iter().any(|p| p == b"http/1.1") && offered.iter().any(|p| p == b"h2");
        let alpn = if offered.is_empty() {
            vec![]
        } else if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let Ok(config) = self.inner_config(tls_name, alpn) else {
            return;
        };
        let Ok(Ok(stream)) = tokio::time::timeout(
            self.settings.load().handshake_timeout,
            (*start).into_stream(config),
        )
        .await
        else {
            return;
        };
        let tls_name = tls_name.to_string();
        let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
            let r = refusal(&tls_name, status, &failure);
            async move { Ok::<_, Infallible>(r) }
        });
        let io = TokioIo::new(stream);
        let limit = self.settings.load().handshake_timeout * 2;
        if h2 {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(limit, conn).await;
        } else {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(limit, conn).await;
        }
    }
}

/// Whether an I/O error is the other side going away (reset, EOF) rather
/// than a TLS failure worth a warning.
fn is_disconnect(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
    )
}

/// "fedpin refused NAME: REASON (alert: EVENT)" as an HTTP/1 reason phrase:
/// printable ASCII only, at most 300 bytes.
/// The answer to a request whose upstream was refused: `status`, a body
/// naming the failed check and the alert raised, the alert in
/// `x-fedpin-alert`, and the reason in the status line too (Synapse logs
/// the status line of a failed federation request, never its body).
fn refusal(tls_name: &str, status: StatusCode, failure: &DialFailure) -> Response<Body> {
    let body = format!(
        "fedpin refused the federation connection to {tls_name}: {}{}\n",
        failure.message,
        failure
            .alert
            .map(|a| format!(" (alert: {a})"))
            .unwrap_or_default()
    );
    let mut r = text(status, body);
    r.headers_mut().insert(
        "x-fedpin-alert",
        hyper::header::HeaderValue::from_static(failure.alert.unwrap_or("none")),
    );
    if let Some(p) = reason_phrase(tls_name, failure) {
        r.extensions_mut().insert(p);
    }
    r
}

fn reason_phrase(tls_name: &str, failure: &DialFailure) -> Option<hyper::ext::ReasonPhrase> {
    let mut s = format!("fedpin refused {tls_name}: {}", failure.message);
    if let Some(a) = failure.alert {
        s.push_str(&format!(" (alert: {a})"));
    }
    let mut clean: String = s
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    clean.truncate(300);
    hyper::ext::ReasonPhrase::try_from(clean).ok()
}

/// What a pinned peer's well-known front must answer.
struct DelegationWatch {
    server_name: String,
    /// The recorded `m.server`, canonical.
    delegation: String,
    mode: crate::pins::Mode,
    /// Every TLS name of the peer (a redirect may stay among them).
    names: Vec<String>,
    known_pins: Vec<String>,
    pin_generation: u64,
    /// This tunnel's TLS name.
    host: String,
}

impl DelegationWatch {
    fn alert(
        &self,
        reason: &str,
        blocked: bool,
        peer_addr: Option<SocketAddr>,
        chain: &[rustls::pki_types::CertificateDer<'static>],
    ) -> crate::alert::Alert {
        let mut a = crate::alert::Alert::local(
            crate::alert::AlertEvent::DelegationChanged,
            Direction::Outbound,
            self.pin_generation,
            format!(
                "the well-known answer of {} for {} {reason}; recorded delegation {}",
                self.host, self.server_name, self.delegation
            ),
        );
        a.severity = crate::alert::Severity::Critical;
        a.server_name = Some(self.server_name.clone());
        a.host = Some(self.host.clone());
        a.port = Some(443);
        a.peer_addr = peer_addr.map(|p| p.to_string());
        a.mode = Some(self.mode);
        a.action = if blocked {
            crate::alert::Action::Blocked
        } else {
            crate::alert::Action::Allowed
        };
        a.webpki = "valid".into();
        a.served_chain = chain
            .iter()
            .map(|c| crate::alert::ServedCert::describe(c.as_ref()))
            .collect();
        a.known_pins = self.known_pins.clone();
        a
    }
}

type WatchBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn boxed_full(b: Full<Bytes>) -> WatchBody {
    use http_body_util::BodyExt;
    b.map_err(|never: Infallible| match never {}).boxed()
}

/// The upstream connection's served chain and address, for alerts.
trait PeerChain {
    fn chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>>;
    fn peer_addr(&self) -> Option<SocketAddr>;
}

impl<T: PeerChain> PeerChain for Box<T> {
    fn chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        (**self).chain()
    }
    fn peer_addr(&self) -> Option<SocketAddr> {
        (**self).peer_addr()
    }
}

impl PeerChain for tokio_rustls::client::TlsStream<TcpStream> {
    fn chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    }
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.get_ref().0.peer_addr().ok()
    }
}

/// Checks one well-known response against the watch: `Ok` when it names the
/// recorded delegation (or redirects to another of the peer's pinned names,
/// whose own answer is checked in its tunnel); the body read (at most
/// [`crate::discovery::WELL_KNOWN_MAX_BODY`]) is returned to pass on.
async fn check_well_known(
    watch: &DelegationWatch,
    parts: &hyper::http::response::Parts,
    body: Incoming,
) -> (Result<(), String>, Bytes) {
    use http_body_util::BodyExt;
    let status = parts.status;
    if status.is_redirection() {
        let location = parts
            .headers
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let https = location
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("https://"))
            .map(|_| &location[8..]);
        let target = match https {
            Some(rest) => {
                let authority = rest.split('/').next().unwrap_or("");
                crate::pins::split_server_name(authority).ok()
            }
            None if location.starts_with('/') && !location.starts_with("//") => {
                Some(watch.host.clone())
            }
            None => None,
        };
        let bytes = http_body_util::Limited::new(body, crate::discovery::WELL_KNOWN_MAX_BODY)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return match target {
            Some(h) if watch.names.contains(&h) => (Ok(()), bytes),
            _ => (
                Err(format!(
                    "redirects ({status}) to {location:?}, outside the peer's pinned names"
                )),
                bytes,
            ),
        };
    }
    let collected = http_body_util::Limited::new(body, crate::discovery::WELL_KNOWN_MAX_BODY)
        .collect()
        .await;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) => return (Err(format!("could not be read ({e})")), Bytes::new()),
    };
    if status != StatusCode::OK {
        return (Err(format!("is HTTP {status}, not a delegation")), bytes);
    }
    match crate::discovery::parse_well_known(&bytes) {
        Ok(name) if name.to_string() == watch.delegation => (Ok(()), bytes),
        Ok(name) => (Err(format!("names {name}")), bytes),
        Err(e) => (Err(format!("is unusable ({e})")), bytes),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// fedpin's TLS connection to a peer.
type UpTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A dialled upstream: the TLS stream, the ALPN protocol it chose, and the
/// pin generation that checked it.
type Upstream = (Box<UpTls>, Option<Vec<u8>>, u64);

/// A tunnel whose upstream passed the pin rules, waiting for the
/// homeserver's side of the handshake.
struct Established<'a, IO> {
    start: Box<tokio_rustls::StartHandshake<IO>>,
    up: Upstream,
    tls_name: &'a str,
    dest: &'a Destination,
    client: SocketAddr,
    watch: Option<DelegationWatch>,
    /// The handshake timeout the tunnel started with.
    hs: Duration,
    /// When the tunnel may be read as HTTP/1.1: the ALPN offered upstream.
    http: Option<Vec<Vec<u8>>>,
}

/// Reads the homeserver's ClientHello inside the tunnel (it names the peer
/// and the protocols offered); `None`, logged, when none came in time.
async fn client_hello<IO>(io: IO, within: Duration) -> Option<Box<tokio_rustls::StartHandshake<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(within, LazyConfigAcceptor::new(Acceptor::default(), io)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) if is_disconnect(&e) => {
            tracing::debug!(target: "fedpin::outbound", error = %e, "the client left the tunnel before its ClientHello");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "fedpin::outbound", error = %e, "the client did not start TLS inside the tunnel");
            None
        }
        Err(_) => {
            tracing::warn!(target: "fedpin::outbound", "no ClientHello inside the tunnel in time");
            None
        }
    }
}

struct DialFailure {
    message: String,
    /// How the TLS handshake ended; `None` when none took place.
    handshake: Option<HandshakeResult>,
    alert: Option<&'static str>,
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Relays both ways until both sides have closed (half-close propagated) or
/// nothing was read for `idle`.
async fn relay<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = super::io::LastActivity::new();
    let mut a = super::io::Activity::sharing(a, &last);
    let mut b = super::io::Activity::sharing(b, &last);
    // No buffer is held while the tunnel is idle (see super::relay).
    let copy = super::relay::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let tick = (idle / 4).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(target: "fedpin::outbound", error = %e, "tunnel closed with an error");
                }
                return;
            }
            _ = tokio::time::sleep(tick) => {
                if last.quiet_for() >= idle {
                    tracing::debug!(target: "fedpin::outbound", "tunnel idle; closing");
                    return;
                }
            }
        }
    }
}
