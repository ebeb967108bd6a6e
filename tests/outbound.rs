//! SPEC 2 (outbound), 5 (alerts), 7 (config): the outbound proxy end to end.
//!
//! Every test plays Synapse against a real [`OutboundProxy`] on 127.0.0.1:
//! raw TCP to the proxy, `CONNECT host:port`, then TLS inside the tunnel
//! trusting ONLY the interception CA (the minter's CA), then HTTP/1.1 or h2.
//! Upstream stand-ins are real TLS HTTP servers on 127.0.0.1 with chains
//! minted per test by rcgen under a per-test "public" CA. Every wait is
//! bounded; nothing leaves loopback.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::connect::{connect, send_raw};
use common::{bounded, interception_ca, leaf, net, root, wait_until, Ca, InterceptionCa, Leaf};
use fedpin::alert::{Action, AlertEvent, AlertHub, Direction, Severity};
use fedpin::egress::EgressPolicy;
use fedpin::metrics::{CheckMode, CheckResult, HandshakeResult};
use fedpin::pin_store::{PinStore, ReloadOutcome};
use fedpin::pins::PinSet;
use fedpin::proxy::outbound::{OutboundProxy, OutboundSettings};
use fedpin::tls::mint::LeafMinter;
use fedpin::tls::UpstreamTls;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

/// The pinned peer every test talks to (resolved to 127.0.0.1 by `resolve`).
const HOST: &str = "hs.fedpin.test";
/// Upper bound for any single network step of a test.
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A pin file with one `[[peer]]` per (server name, pinned certificate).
fn pins_toml(peers: &[(&str, &CertificateDer<'static>)]) -> String {
    let mut s = String::from("version = 1\n");
    for (name, cert) in peers {
        s.push_str(&format!(
            "\n[[peer]]\nserver_name = \"{name}\"\npins = [\"{}\"]\n",
            common::pin(cert)
        ));
    }
    s
}

/// Settings as the tests use them: loopback allowed, test names resolved to 127.0.0.1.
fn test_settings() -> OutboundSettings {
    OutboundSettings {
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        ..common::connect::loopback_settings(&[HOST, "down.fedpin.test", "blocked.fedpin.test"])
    }
}

/// A running proxy and what the tests need to talk to it.
struct Env {
    proxy: Arc<OutboundProxy>,
    addr: SocketAddr,
    hub: AlertHub,
    ica: InterceptionCa,
    _shutdown: watch::Sender<bool>,
}

async fn start_proxy(public: &Ca, pins: &str, settings: OutboundSettings) -> Env {
    let hub = AlertHub::new();
    let set = PinSet::parse(pins).unwrap_or_else(|e| panic!("test pin file invalid: {e}\n{pins}"));
    let store = Arc::new(PinStore::fixed(set, hub.clone()));
    start_proxy_with(public, store, hub, settings).await
}

async fn start_proxy_with(
    public: &Ca,
    store: Arc<PinStore>,
    hub: AlertHub,
    settings: OutboundSettings,
) -> Env {
    let core = net::only_anchor(&public.cert, &hub);
    let upstream = Arc::new(UpstreamTls::new(core, store, fedpin::tls::provider()));
    let ica = interception_ca();
    let minter = Arc::new(LeafMinter::from_pem(&ica.cert_pem, &ica.key_pem, 64).unwrap());
    let proxy = Arc::new(OutboundProxy::new(settings, upstream, minter));
    let (addr, tx) = net::spawn_server(|l, rx| proxy.clone().serve(l, rx)).await;
    Env {
        proxy,
        addr,
        hub,
        ica,
        _shutdown: tx,
    }
}

/// What an upstream server saw per completed handshake.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    kind: Option<HandshakeKind>,
}

/// A TLS HTTP server on 127.0.0.1 standing in for a remote homeserver.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    requests: Arc<AtomicUsize>,
}

impl Upstream {
    fn port(&self) -> u16 {
        self.addr.port()
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves HTTP/1.1 or h2 (by ALPN) with `cert`; every response body is
/// `"{label}: {method} {path} over {version}\n"`.
async fn upstream(cert: &Leaf, label: &'static str, alpn: &[&[u8]]) -> Upstream {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let (seen2, requests2) = (seen.clone(), requests.clone());
    let addr = net::serve_tls(net::acceptor(cert, alpn), move |tls| {
        let seen = seen2.clone();
        let requests = requests2.clone();
        async move {
            let conn = tls.get_ref().1;
            let s = Seen {
                sni: conn.server_name().map(str::to_string),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                kind: conn.handshake_kind(),
            };
            seen.lock().unwrap().push(s);
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                requests.fetch_add(1, Ordering::SeqCst);
                let body = format!(
                    "{label}: {} {} over {:?}\n",
                    req.method(),
                    req.uri().path(),
                    req.version()
                );
                async move {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            net::serve_http_by_alpn(tls, svc).await;
        }
    })
    .await;
    Upstream {
        addr,
        seen,
        requests,
    }
}

/// The homeserver's inner TLS: trusts only the interception CA.
async fn inner_tls(
    tcp: TcpStream,
    ica: &CertificateDer<'static>,
    name: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(net::client_config(&[ica], alpn));
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    bounded("inner TLS handshake", connector.connect(server_name, tcp)).await
}

/// CONNECT + 200 + inner TLS, as Synapse does.
async fn tunnel(env: &Env, target: &str, name: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let (reply, tcp) = connect(env.addr, target, "").await;
    assert_eq!(reply.status, 200, "CONNECT {target}: {reply:?}");
    inner_tls(tcp, &env.ica.der, name, alpn)
        .await
        .unwrap_or_else(|e| panic!("inner TLS to {name} through the proxy failed: {e}"))
}

/// [`tunnel`] to HOST on `port`.
async fn tunnel_to(env: &Env, port: u16, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tunnel(env, &format!("{HOST}:{port}"), HOST, alpn).await
}

/// GET `path` of HOST over HTTP/1.1 in the inner TLS on the tunnel `tcp`
/// (the proxy's interception CA `ica`).
async fn get_inside(tcp: TcpStream, ica: &CertificateDer<'static>, path: &str) -> HttpReply {
    let tls = inner_tls(tcp, ica, HOST, &[b"http/1.1"]).await.unwrap();
    get(tls, HOST, path).await
}

/// A bare CONNECT request head for `target`.
fn connect_head(target: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
}

/// Waits (up to STEP) until no tunnel is open; whether that happened.
/// Waits (bounded) until `n` upstream connections are kept.
async fn kept_reaches(env: &Env, n: usize) -> bool {
    wait_until(STEP, || env.proxy.kept_connections() == n).await
}

async fn tunnels_drain(env: &Env) -> bool {
    let open = || env.proxy.stats().active_tunnels.load(Ordering::SeqCst);
    wait_until(STEP, || open() == 0).await
}

/// One HTTP response as the homeserver saw it.
#[derive(Debug)]
struct HttpReply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    version: hyper::Version,
    body: String,
}

/// Sends one GET over the tunnel's TLS (h2 if negotiated, else HTTP/1.1).
async fn get(tls: TlsStream<TcpStream>, host: &str, path: &str) -> HttpReply {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake through the tunnel");
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        bounded("h2 request", send.send_request(req))
            .await
            .expect("h2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 client through the tunnel");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        bounded("HTTP/1.1 request", send.send_request(req))
            .await
            .expect("HTTP/1.1 response")
    };
    let (parts, body) = resp.into_parts();
    let body = bounded("response body", body.collect())
        .await
        .expect("response body")
        .to_bytes();
    HttpReply {
        status: parts.status,
        headers: parts.headers,
        version: parts.version,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A full genuine round trip through `env`: proves the proxy still serves.
async fn assert_serves(env: &Env, up: &Upstream) {
    let tls = tunnel(env, &format!("{HOST}:{}", up.port()), HOST, &[b"http/1.1"]).await;
    let r = get(tls, HOST, "/_matrix/key/v2/server").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(
        r.body.starts_with("genuine: GET /_matrix/key/v2/server"),
        "{r:?}"
    );
}

/// A public CA, a genuine leaf for HOST (pinned) and a CA-valid impostor leaf.
struct World {
    public: Ca,
    genuine: Leaf,
    impostor: Leaf,
}

fn world() -> World {
    let public = root("fedpin test public root");
    let genuine = leaf(&public, &[HOST]);
    let impostor = leaf(&public, &[HOST]);
    World {
        public,
        genuine,
        impostor,
    }
}

impl World {
    fn pins(&self) -> String {
        pins_toml(&[(HOST, &self.genuine.cert)])
    }

    /// An HTTP/1.1 upstream serving the genuine leaf ("genuine").
    async fn genuine_http1(&self) -> Upstream {
        upstream(&self.genuine, "genuine", &[b"http/1.1"]).await
    }

    /// An HTTP/1.1 upstream serving the impostor leaf ("impostor").
    async fn impostor_http1(&self) -> Upstream {
        upstream(&self.impostor, "impostor", &[b"http/1.1"]).await
    }
}

/// A fresh [`world`] and a proxy pinning HOST to its genuine key, with the
/// test settings.
async fn proxy_for_world() -> (World, Env) {
    let w = world();
    let env = start_proxy(&w.public, &w.pins(), test_settings()).await;
    (w, env)
}

// ---------------------------------------------------------------------------
// 1. Genuine pinned peer
// ---------------------------------------------------------------------------

#[tokio::test]
async fn genuine_pinned_peer_passes_with_a_minted_leaf_for_the_sni_name() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;

    let tls = tunnel_to(&env, up.port(), &[b"http/1.1"]).await;

    // The leaf the homeserver sees: minted for the SNI name, issued by the
    // interception CA (the handshake already proved the chain: the client
    // trusts nothing else).
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let (_, minted) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(env.ica.der.as_ref()).unwrap();
    let sans: Vec<String> = minted
        .subject_alternative_name()
        .unwrap()
        .expect("minted leaf has a SAN")
        .value
        .general_names
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(sans, vec![format!("DNSName({HOST})")]);
    assert_eq!(minted.issuer(), ca.subject());
    assert_ne!(
        chain[0].as_ref(),
        w.genuine.cert.as_ref(),
        "the homeserver must see the minted leaf, not the peer's"
    );
    assert!(!minted.is_ca());

    let r = get(tls, HOST, "/_matrix/federation/v1/version").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        r.body,
        "genuine: GET /_matrix/federation/v1/version over HTTP/1.1\n"
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some(HOST), "same SNI upstream");
    assert_eq!(
        seen[0].alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "same ALPN upstream"
    );
    let stats = env.proxy.stats();
    assert_eq!(stats.handshakes.get(HandshakeResult::Ok), 1);
    assert_eq!(stats.handshakes.get(HandshakeResult::PinMismatch), 0);
    assert!(env.hub.recent().is_empty(), "{:?}", env.hub.recent());
}

// ---------------------------------------------------------------------------
// 2. CA-valid impostor
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ca_valid_impostor_gets_502_naming_the_pin_failure_and_a_critical_alert() {
    let (w, env) = proxy_for_world().await;
    let bad = w.impostor_http1().await;

    let tls = tunnel_to(&env, bad.port(), &[b"http/1.1"]).await;
    let r = get(tls, HOST, "/_matrix/federation/v1/send/1").await;

    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert_eq!(
        r.headers.get("x-fedpin-alert").map(|v| v.to_str().unwrap()),
        Some("pin_mismatch")
    );
    assert!(r.body.contains(HOST), "{}", r.body);
    assert!(r.body.contains("pin check failed"), "{}", r.body);
    assert!(
        r.body.contains("no pinned key is on a validated path"),
        "{}",
        r.body
    );
    assert!(r.body.contains("(alert: pin_mismatch)"), "{}", r.body);
    assert_eq!(
        bad.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the impostor"
    );

    let alerts = env.hub.recent();
    let a = alerts
        .iter()
        .find(|a| a.event == AlertEvent::PinMismatch)
        .unwrap_or_else(|| panic!("no pin_mismatch alert: {alerts:?}"));
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.direction, Direction::Outbound);
    assert_eq!(a.action, Action::Blocked);
    assert_eq!(a.host.as_deref(), Some(HOST));
    assert_eq!(a.server_name.as_deref(), Some(HOST));
    assert_eq!(a.port, Some(bad.port()));
    assert_eq!(a.peer_addr, Some(bad.addr.to_string()));
    assert_eq!(a.webpki, "valid");

    let stats = env.proxy.stats();
    assert_eq!(stats.handshakes.get(HandshakeResult::PinMismatch), 1);
    assert_eq!(stats.handshakes.get(HandshakeResult::Ok), 0);
}

// ---------------------------------------------------------------------------
// 3. ALPN
// ---------------------------------------------------------------------------

#[tokio::test]
async fn alpn_h2_is_negotiated_on_both_legs() {
    let (w, env) = proxy_for_world().await;
    let up = upstream(&w.genuine, "genuine", &[b"h2", b"http/1.1"]).await;

    let tls = tunnel_to(&env, up.port(), &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "client leg"
    );
    let r = get(tls, HOST, "/_matrix/federation/v1/version").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.version, hyper::Version::HTTP_2);
    assert_eq!(
        r.body,
        "genuine: GET /_matrix/federation/v1/version over HTTP/2.0\n"
    );
    let seen = up.seen();
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"h2"[..]), "upstream leg");
}

#[tokio::test]
async fn alpn_follows_the_peer_when_it_only_speaks_http1() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;

    let tls = tunnel_to(&env, up.port(), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = get(tls, HOST, "/").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(up.seen()[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn impostor_502_comes_back_over_h2_to_an_h2_only_client() {
    let (w, env) = proxy_for_world().await;
    let bad = upstream(&w.impostor, "impostor", &[b"h2", b"http/1.1"]).await;

    let tls = tunnel_to(&env, bad.port(), &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let r = get(tls, HOST, "/_matrix/federation/v1/version").await;
    assert_eq!(r.version, hyper::Version::HTTP_2);
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert_eq!(
        r.headers.get("x-fedpin-alert").map(|v| v.to_str().unwrap()),
        Some("pin_mismatch")
    );
    assert!(r.body.contains("pin check failed"), "{}", r.body);
}

// ---------------------------------------------------------------------------
// 4. IP-literal CONNECT
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ip_literal_connect_is_pinned_by_ip_and_sends_no_sni() {
    let public = root("fedpin test public root");
    let genuine = leaf(&public, &["127.0.0.1"]);
    let impostor = leaf(&public, &["127.0.0.1"]);
    let pins = pins_toml(&[("127.0.0.1", &genuine.cert)]);
    let env = start_proxy(&public, &pins, test_settings()).await;
    let up = upstream(&genuine, "genuine", &[b"http/1.1"]).await;
    let bad = upstream(&impostor, "impostor", &[b"http/1.1"]).await;

    // Genuine: passes; the homeserver sent no SNI, nor does fedpin upstream.
    let tls = tunnel(&env, &up.addr.to_string(), "127.0.0.1", &[b"http/1.1"]).await;
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let (_, minted) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    let san = minted.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![x509_parser::extensions::GeneralName::IPAddress(&[
            127, 0, 0, 1
        ])]
    );
    let r = get(tls, "127.0.0.1", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(up.seen()[0].sni, None);

    // The entry keyed "127.0.0.1" is what decided: another CA-valid key is blocked.
    let tls = tunnel(&env, &bad.addr.to_string(), "127.0.0.1", &[b"http/1.1"]).await;
    let r = get(tls, "127.0.0.1", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert!(
        r.body.contains("pin check failed for 127.0.0.1"),
        "{}",
        r.body
    );
    let alerts = env.hub.recent();
    assert!(
        alerts
            .iter()
            .any(|a| a.event == AlertEvent::PinMismatch && a.host.as_deref() == Some("127.0.0.1")),
        "{alerts:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Refusals on the CONNECT itself
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connect_refusals_and_malformed_requests() {
    let w = world();
    let mut settings = test_settings();
    settings.deny_destinations = HashSet::from(["blocked.fedpin.test".to_string()]);
    settings.max_header_bytes = 8 * 1024;
    // Bounds the wait on a head that never completes (blank lines only).
    settings.handshake_timeout = Duration::from_secs(2);
    let env = start_proxy(&w.public, &w.pins(), settings).await;
    let up = w.genuine_http1().await;

    // deny_destinations (case-insensitive).
    let (r, _) = connect(env.addr, &format!("Blocked.Fedpin.Test:{}", up.port()), "").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("deny_destinations"), "{}", r.body);

    // Not CONNECT.
    let (r, _) = send_raw(
        env.addr,
        format!("GET http://{HOST}/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
    )
    .await;
    let r = r.expect("a reply to GET");
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.body.contains("CONNECT"), "{}", r.body);

    // CONNECT without a port, and with port 0.
    let (r, _) = connect(env.addr, HOST, "").await;
    assert_eq!(r.status, 400, "{r:?}");
    eprintln!("CONNECT without port: {}", r.body.trim());
    let (r, _) = connect(env.addr, &format!("{HOST}:0"), "").await;
    assert_eq!(r.status, 400, "{r:?}");
    // Hosts that would slip past deny_destinations or that a resolver reads
    // as an address: refused before any lookup.
    for bad in ["blocked.fedpin.test..", "127.1", "2130706433", "x[::1]"] {
        let (r, _) = connect(env.addr, &format!("{bad}:{}", up.port()), "").await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert!(r.body.contains("invalid host"), "{bad}: {}", r.body);
    }
    assert_serves(&env, &up).await;

    // Garbage request line: 400 or a clean close, and the proxy keeps serving.
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"HELLO\r\n\r\n",
        b"CONNECT\r\n\r\n",
        b"\r\n\r\n\r\n\r\n",
    ] {
        let (r, _) = send_raw(env.addr, garbage).await;
        eprintln!("garbage {garbage:?}: {:?}", r.as_ref().map(|r| r.status));
        if let Some(r) = r {
            assert_eq!(r.status, 400, "{garbage:?}: {r:?}");
        }
    }
    assert_serves(&env, &up).await;

    // Oversized head: 431 or closed, and the proxy keeps serving.
    let big = format!(
        "CONNECT {HOST}:{} HTTP/1.1\r\nHost: {HOST}\r\nX-Filler: {}\r\n\r\n",
        up.port(),
        "a".repeat(64 * 1024)
    );
    let (r, _) = send_raw(env.addr, big.as_bytes()).await;
    eprintln!("oversized head: {:?}", r.as_ref().map(|r| r.status));
    if let Some(r) = r {
        assert_eq!(r.status, 431, "{r:?}");
    }
    assert_serves(&env, &up).await;
    assert!(tunnels_drain(&env).await, "tunnels left open");
}

#[tokio::test]
async fn allowed_ports_refuses_other_ports() {
    let w = world();
    let mut settings = test_settings();
    settings.allowed_ports = Some(vec![8448]);
    let env = start_proxy(&w.public, &w.pins(), settings).await;
    let up = w.genuine_http1().await;
    let (r, _) = connect(env.addr, &format!("{HOST}:{}", up.port()), "").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("allowed_ports"), "{}", r.body);
    assert_eq!(up.seen().len(), 0, "nothing was dialled");
    assert_eq!(env.proxy.stats().refused.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn default_egress_policy_refuses_loopback() {
    let w = world();
    let mut settings = test_settings();
    settings.egress = EgressPolicy::new(vec![], vec![]);
    let env = start_proxy(&w.public, &w.pins(), settings).await;
    let up = w.genuine_http1().await;

    // Through a name that resolves to 127.0.0.1, and as an IP literal.
    for target in [format!("{HOST}:{}", up.port()), up.addr.to_string()] {
        let (r, _) = connect(env.addr, &target, "").await;
        assert_eq!(r.status, 403, "{target}: {r:?}");
        assert!(r.body.contains("127.0.0.0/8"), "{target}: {}", r.body);
        assert!(r.body.contains("allow_ips"), "{target}: {}", r.body);
    }
    assert_eq!(up.seen().len(), 0, "nothing was dialled");
}

/// IPv6 forms that carry an IPv4 address (NAT64 64:ff9b::/96 and
/// 64:ff9b:1::/48, 6to4 2002::/16, IPv4-compatible ::/96, Teredo 2001::/32,
/// IPv4-mapped) are judged by the IPv4 address inside: each of these points
/// at 127.0.0.1 and is answered 403 before anything is dialled, even though
/// `allow_ips` opens 127.0.0.0/8 (an IPv4 allow entry does not open a
/// tunnel to it; only an entry for the IPv6 range does).
#[tokio::test]
async fn ipv6_forms_embedding_a_refused_ipv4_address_get_403() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;
    let port = up.port();
    let targets = [
        format!("[64:ff9b::7f00:1]:{port}"),
        format!("[64:ff9b::127.0.0.1]:{port}"),
        format!("[64:ff9b:1::7f00:1]:{port}"),
        format!("[2002:7f00:1::]:{port}"),
        format!("[::127.0.0.1]:{port}"),
        format!("[2001:0:7f00:1::]:{port}"),
        format!("[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}"),
        format!("[::ffff:10.0.0.1]:{port}"),
    ];
    for target in &targets {
        let (r, _) = connect(env.addr, target, "").await;
        assert_eq!(r.status, 403, "{target}: {r:?}");
        assert!(r.body.contains("allow_ips"), "{target}: {}", r.body);
    }
    assert_eq!(up.seen().len(), 0, "nothing was dialled");
    assert_eq!(
        env.proxy.stats().refused.load(Ordering::SeqCst),
        targets.len() as u64
    );
}

// ---------------------------------------------------------------------------
// 6. Non-TLS bytes inside the tunnel
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plaintext_inside_the_tunnel_closes_it_cleanly() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;

    let (r, mut tcp) = connect(env.addr, &format!("{HOST}:{}", up.port()), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // At most a TLS alert comes back, then the tunnel closes.
    let mut rest = Vec::new();
    let _ = bounded("the tunnel closing", tcp.read_to_end(&mut rest)).await;
    assert!(
        !rest.starts_with(b"HTTP/"),
        "plaintext was relayed: {rest:?}"
    );
    assert_eq!(up.seen().len(), 0, "nothing was dialled upstream");
    assert!(tunnels_drain(&env).await, "the tunnel was not released");
    assert_serves(&env, &up).await;
}

// ---------------------------------------------------------------------------
// 7. Proxy-Authorization
// ---------------------------------------------------------------------------

#[tokio::test]
async fn proxy_authorization_basic() {
    use base64::Engine as _;
    let w = world();
    let mut settings = test_settings();
    settings.proxy_auth = Some("synapse:s3cret".into());
    let env = start_proxy(&w.public, &w.pins(), settings).await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    let (r, _) = connect(env.addr, &target, "").await;
    assert_eq!(r.status, 407, "{r:?}");
    let challenge = r.header("proxy-authenticate").expect("Proxy-Authenticate");
    assert!(challenge.starts_with("Basic"), "{challenge}");

    for wrong in [
        format!("Proxy-Authorization: Basic {}\r\n", b64("synapse:wrong")),
        format!("Proxy-Authorization: Basic {}\r\n", b64("synapse:s3cret2")),
        "Proxy-Authorization: Basic !!!notbase64\r\n".to_string(),
        format!("Proxy-Authorization: Bearer {}\r\n", b64("synapse:s3cret")),
    ] {
        let (r, _) = connect(env.addr, &target, &wrong).await;
        assert_eq!(r.status, 407, "{wrong}: {r:?}");
    }
    assert_eq!(
        up.seen().len(),
        0,
        "nothing was dialled without credentials"
    );

    let right = format!("Proxy-Authorization: Basic {}\r\n", b64("synapse:s3cret"));
    let (r, tcp) = connect(env.addr, &target, &right).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get_inside(tcp, &env.ica.der, "/").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

// ---------------------------------------------------------------------------
// 8. Tunnel cap
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tunnel_cap_answers_503_and_frees_the_slot_on_close() {
    let w = world();
    let mut settings = test_settings();
    settings.max_tunnels = 1;
    let env = start_proxy(&w.public, &w.pins(), settings).await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());

    // Hold one established tunnel open (TLS up, nothing sent).
    let held = tunnel(&env, &target, HOST, &[b"http/1.1"]).await;
    assert_eq!(env.proxy.stats().active_tunnels.load(Ordering::SeqCst), 1);

    let (r, _) = send_raw(env.addr, connect_head(&target).as_bytes()).await;
    let r = r.expect("a reply while over capacity");
    assert_eq!(r.status, 503, "a second tunnel while one is open: {r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert_eq!(env.proxy.stats().over_capacity.load(Ordering::SeqCst), 1);

    // Close the first; a new client is served once the slot is free.
    drop(held);
    let start = Instant::now();
    let served = loop {
        let (r, tcp) = send_raw(env.addr, connect_head(&target).as_bytes()).await;
        let r = r.expect("a reply");
        if r.status == 200 {
            break Some(tcp);
        }
        assert_eq!(r.status, 503, "{r:?}");
        if start.elapsed() > STEP {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tcp = served.expect("the slot was not freed after the first tunnel closed");
    let r = get_inside(tcp, &env.ica.der, "/").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

// ---------------------------------------------------------------------------
// 9. Upstream down; upstream session resumption
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upstream_down_gets_502_and_upstream_sessions_resume() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;
    // Resumption is what this is about: no upstream connection is kept
    // between tunnels (kept_upstream_connection_serves_the_next_tunnel).
    env.proxy.set_settings(OutboundSettings {
        upstream_keepalive: Duration::ZERO,
        ..test_settings()
    });

    // A port nothing listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };

    // First genuine tunnel: full upstream handshake.
    assert_serves(&env, &up).await;

    // Down: the inner handshake still completes and the 502 names the failure.
    let tls = tunnel(
        &env,
        &format!("down.fedpin.test:{closed}"),
        "down.fedpin.test",
        &[b"http/1.1"],
    )
    .await;
    let r = get(tls, "down.fedpin.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert!(
        r.body
            .contains(&format!("connecting to 127.0.0.1:{closed}")),
        "{}",
        r.body
    );
    assert_eq!(
        r.headers.get("x-fedpin-alert").map(|v| v.to_str().unwrap()),
        Some("none")
    );
    assert_eq!(env.proxy.stats().upstream_errors.load(Ordering::SeqCst), 1);
    assert!(
        env.hub.recent().is_empty(),
        "a dead peer is not a pin alert"
    );

    // Second genuine tunnel: the upstream session resumes.
    assert_serves(&env, &up).await;
    let kinds: Vec<_> = up.seen().iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        vec![Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)],
        "upstream handshakes"
    );
    assert_eq!(env.proxy.stats().handshakes.get(HandshakeResult::Ok), 2);
}

// ---------------------------------------------------------------------------
// 10. Idle and half-close
// ---------------------------------------------------------------------------

#[tokio::test]
async fn idle_tunnel_is_closed_but_a_busy_one_is_not() {
    let w = world();
    let mut settings = test_settings();
    settings.idle_timeout = Duration::from_secs(1);
    let env = start_proxy(&w.public, &w.pins(), settings).await;
    let up = w.genuine_http1().await;

    let tls = tunnel_to(&env, up.port(), &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);

    // Busy for well over the idle timeout: keep-alive requests every 300 ms.
    let busy = Instant::now();
    while busy.elapsed() < Duration::from_millis(2500) {
        let req = Request::get("/")
            .header(hyper::header::HOST, HOST)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = bounded("keep-alive request", send.send_request(req))
            .await
            .expect("a busy tunnel stays open");
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Then idle: the proxy closes it (the upstream server has no idle timeout).
    let idle_from = Instant::now();
    let _ = bounded("the proxy closing an idle tunnel", conn).await;
    let took = idle_from.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );
    assert!(tunnels_drain(&env).await);
    assert!(up.requests.load(Ordering::SeqCst) >= 5);
}

/// A TLS server that reads until the client half-closes, then answers.
async fn echo_after_eof(cert: &Leaf) -> SocketAddr {
    net::serve_tls(net::acceptor(cert, &[]), |mut tls| async move {
        let mut got = Vec::new();
        if tls.read_to_end(&mut got).await.is_ok() {
            let _ = tls
                .write_all(format!("got {} bytes after EOF\n", got.len()).as_bytes())
                .await;
            let _ = tls.shutdown().await;
        }
    })
    .await
}

#[tokio::test]
async fn half_close_propagates_both_ways() {
    let (w, env) = proxy_for_world().await;
    let addr = echo_after_eof(&w.genuine).await;

    let mut tls = tunnel_to(&env, addr.port(), &[]).await;
    tls.write_all(b"ping ping").await.unwrap();
    // close_notify + FIN on our write side; our read side stays open.
    tls.shutdown().await.unwrap();
    let mut answer = String::new();
    bounded(
        "the answer after our half-close",
        tls.read_to_string(&mut answer),
    )
    .await
    .expect("a clean close after the answer");
    assert_eq!(answer, "got 9 bytes after EOF\n");
    assert!(tunnels_drain(&env).await);
    // Not HTTP: relayed as bytes, its upstream connection not kept.
    assert_eq!(env.proxy.kept_connections(), 0);
}

// ---------------------------------------------------------------------------
// Through the real daemon
// ---------------------------------------------------------------------------

/// Writes fedpin.toml, pins.toml, public-root.pem and the CA; returns the config path.
fn daemon_files(dir: &std::path::Path, w: &World) -> std::path::PathBuf {
    fedpin::tls::ca::init_ca(&dir.join("ca")).unwrap();
    std::fs::write(dir.join("pins.toml"), w.pins()).unwrap();
    std::fs::write(
        dir.join("public-root.pem"),
        common::pem("CERTIFICATE", w.public.cert.as_ref()),
    )
    .unwrap();
    common::process::outbound_config(
        dir,
        &format!(
            r#"extra_roots = "public-root.pem"
allow_ips = ["127.0.0.0/8"]
resolve = {{ "{HOST}" = "127.0.0.1" }}
"#
        ),
    )
}

#[tokio::test]
async fn daemon_runs_the_outbound_proxy_from_config() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let path = daemon_files(dir.path(), &w);
    let config = fedpin::config::Config::load(&path).unwrap();
    let daemon = fedpin::daemon::Daemon::start(&config).await.unwrap();
    let (proxy, addr) = daemon.outbound.clone().expect("outbound listener");
    let ica = fedpin::tls::load_certs(&dir.path().join("ca/fedpin-ca.pem")).unwrap();

    let up = w.genuine_http1().await;
    let (r, tcp) = connect(addr, &format!("{HOST}:{}", up.port()), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get_inside(tcp, &ica[0], "/_matrix/federation/v1/version").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        r.body,
        "genuine: GET /_matrix/federation/v1/version over HTTP/1.1\n"
    );
    assert_eq!(proxy.stats().handshakes.get(HandshakeResult::Ok), 1);

    // The same daemon blocks a CA-valid impostor for the pinned name.
    let bad = w.impostor_http1().await;
    let (r, tcp) = connect(addr, &format!("{HOST}:{}", bad.port()), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get_inside(tcp, &ica[0], "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert!(daemon
        .alerts
        .recent()
        .iter()
        .any(|a| a.event == AlertEvent::PinMismatch && a.severity == Severity::Critical));
    daemon.stop();
}

#[cfg(unix)]
#[tokio::test]
async fn ca_key_readable_by_others_is_refused_naming_chmod() {
    use std::os::unix::fs::PermissionsExt;
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let path = daemon_files(dir.path(), &w);
    let key = dir.path().join("ca/fedpin-ca.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "init_ca writes the key 0600"
    );
    // Loaded while 0600, then loosened before start: Daemon::start refuses.
    let config = fedpin::config::Config::load(&path).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fedpin::daemon::Daemon::start(&config)
        .await
        .expect_err("a world-readable CA key must be refused");
    let msg = err.to_string();
    assert!(msg.contains("chmod"), "{msg}");
    assert!(msg.contains("fedpin-ca.key"), "{msg}");

    // And the config check (what check-config runs) names it, with its line.
    let err = fedpin::prepare::Prepared::load(&path).expect_err("0644 key");
    let msg = err.to_string();
    assert!(msg.contains("chmod"), "{msg}");
    assert!(msg.contains("outbound.ca_key"), "{msg}");
    assert!(msg.contains("line "), "{msg}");
}

/// deny_destinations also applies to the TLS name when the CONNECT host differs
/// (SRV targets and delegation make them differ).
#[tokio::test]
async fn deny_destinations_applies_to_the_sni_name_too() {
    let w = world();
    let mut settings = test_settings();
    settings.deny_destinations.insert(HOST.to_string());
    let env = start_proxy(&w.public, &w.pins(), settings).await;
    let up = w.genuine_http1().await;
    // CONNECT to an address literal, SNI = the denied name.
    let tls = tunnel(
        &env,
        &format!("127.0.0.1:{}", up.port()),
        HOST,
        &[b"http/1.1"],
    )
    .await;
    let r = get(tls, HOST, "/_matrix/federation/v1/version").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert!(r.body.contains("deny_destinations"), "{r:?}");
    assert!(up.seen().is_empty(), "nothing is dialled for a denied name");
}

async fn fetch(env: &Env, name: &'static str, port: u16) -> HttpReply {
    let target = format!("{name}:{port}");
    let tls = tunnel(env, &target, name, &[b"http/1.1"]).await;
    get(tls, name, "/_matrix/federation/v1/version").await
}

/// Every pin policy through the proxy: pin-only, report mode, unpinned under
/// `webpki` and under `deny`.
#[tokio::test]
async fn pin_only_report_and_unpinned_policies_through_the_proxy() {
    let w = world();
    let self_signed = common::self_signed(&["selfsigned.fedpin.test"]);
    let report_pinned = leaf(&w.public, &["report.fedpin.test"]);
    let report_served = leaf(&w.public, &["report.fedpin.test"]);
    let unlisted = leaf(&w.public, &["unlisted.fedpin.test"]);
    let names = [
        "selfsigned.fedpin.test",
        "report.fedpin.test",
        "unlisted.fedpin.test",
    ];
    let pins = |unpinned: &str| {
        format!(
            "version = 1\n[policy]\nunpinned = \"{unpinned}\"\n\n[[peer]]\nserver_name = \"selfsigned.fedpin.test\"\npins = [\"{}\"]\ntrust = \"pin-only\"\n\n[[peer]]\nserver_name = \"report.fedpin.test\"\npins = [\"{}\"]\nmode = \"report\"\n",
            common::pin(&self_signed.cert),
            common::pin(&report_pinned.cert)
        )
    };
    let settings = || {
        let mut s = test_settings();
        for n in names {
            s.resolve
                .insert(n.to_string(), "127.0.0.1".parse().unwrap());
        }
        s
    };
    let ss_up = upstream(&self_signed, "selfsigned", &[b"http/1.1"]).await;
    let report_up = upstream(&report_served, "report", &[b"http/1.1"]).await;
    let unlisted_up = upstream(&unlisted, "unlisted", &[b"http/1.1"]).await;

    let env = start_proxy(&w.public, &pins("webpki"), settings()).await;
    // pin-only: a self-signed peer passes on its leaf key alone.
    let r = fetch(&env, "selfsigned.fedpin.test", ss_up.port()).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // report: a Web-PKI-valid mismatch passes, with an alert (action allowed).
    let r = fetch(&env, "report.fedpin.test", report_up.port()).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let a = env.hub.recent();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (a[0].event, a[0].action, a[0].severity),
        (AlertEvent::PinMismatch, Action::Allowed, Severity::Critical)
    );
    // unpinned under webpki: passes on Web PKI.
    let r = fetch(&env, "unlisted.fedpin.test", unlisted_up.port()).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // Counted per result and per pin-check mode.
    let stats = env.proxy.stats();
    assert_eq!(stats.handshakes.get(HandshakeResult::Ok), 3);
    let checks = env.proxy.verifier().pin_checks();
    assert_eq!(checks.get(CheckMode::Enforce, CheckResult::Match), 1);
    assert_eq!(checks.get(CheckMode::Report, CheckResult::Mismatch), 1);
    assert_eq!(checks.get(CheckMode::Unpinned, CheckResult::WebpkiOnly), 1);

    // unpinned under deny: 502 naming the policy, alert unpinned_denied.
    let env = start_proxy(&w.public, &pins("deny"), settings()).await;
    let r = fetch(&env, "unlisted.fedpin.test", unlisted_up.port()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    assert!(r.body.contains("policy.unpinned"), "{r:?}");
    assert_eq!(r.headers.get("x-fedpin-alert").unwrap(), "unpinned_denied");
    assert_eq!(env.hub.recent()[0].event, AlertEvent::UnpinnedDenied);
    let stats = env.proxy.stats();
    assert_eq!(stats.handshakes.get(HandshakeResult::UnpinnedDenied), 1);
    assert_eq!(stats.handshakes.get(HandshakeResult::Ok), 0);
    let checks = env.proxy.verifier().pin_checks();
    assert_eq!(checks.get(CheckMode::Unpinned, CheckResult::Refused), 1);
}

/// A hot reload changes the outcome mid-run, without a restart.
#[tokio::test]
async fn hot_reload_changes_the_outcome_mid_run() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let write = |toml: &str| {
        let tmp = dir.path().join(".pins.tmp");
        std::fs::write(&tmp, toml).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(&w.pins());
    let hub = AlertHub::new();
    let store = Arc::new(PinStore::open(&path, hub.clone()).unwrap());
    let _watch = store
        .watch(Duration::from_millis(20), Duration::from_secs(30))
        .unwrap();
    let env = start_proxy_with(&w.public, store.clone(), hub, test_settings()).await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());

    let r = get(tunnel(&env, &target, HOST, &[b"http/1.1"]).await, HOST, "/").await;
    assert_eq!(r.status, StatusCode::OK);

    // The operator pins the impostor's key instead (say, a bad edit): genuine is now refused.
    write(&pins_toml(&[(HOST, &w.impostor.cert)]));
    let s = store.clone();
    assert!(
        wait_until(STEP, move || s.current().generation == 2).await,
        "reload picked up"
    );
    let r = get(tunnel(&env, &target, HOST, &[b"http/1.1"]).await, HOST, "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");

    // Back to the genuine key: served again, same process.
    write(&w.pins());
    let s = store.clone();
    assert!(wait_until(STEP, move || s.current().generation == 3).await);
    let r = get(tunnel(&env, &target, HOST, &[b"http/1.1"]).await, HOST, "/").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

/// Synapse logs the status line of a failed federation request, never its
/// body, so the reason is also in the HTTP/1 reason phrase.
#[tokio::test]
async fn blocked_peer_reason_is_in_the_status_line() {
    let (w, env) = proxy_for_world().await;
    let bad = w.impostor_http1().await;
    let mut tls = tunnel_to(&env, bad.port(), &[b"http/1.1"]).await;
    tls.write_all(
        format!("GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = bounded("502 response", tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 502 fedpin refused hs.fedpin.test: pin check failed"),
        "{status_line}"
    );
    assert!(
        status_line.contains("(alert: pin_mismatch)"),
        "{status_line}"
    );
    assert!(status_line.is_ascii());
}

/// The admin listener: `/metrics` (parsed by a Prometheus text parser) shows
/// the mismatch counted; `/healthz` checks the CA files; `/pins` lists peers.
#[tokio::test]
async fn admin_metrics_count_a_mismatch_and_healthz_checks_files() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let path = daemon_files(dir.path(), &w);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, text).unwrap();
    let config = fedpin::config::Config::load(&path).unwrap();
    let daemon = fedpin::daemon::Daemon::start(&config).await.unwrap();
    let (_, addr) = daemon.outbound.clone().unwrap();
    let admin = daemon.admin.expect("admin listener");
    let ica = fedpin::tls::load_certs(&dir.path().join("ca/fedpin-ca.pem")).unwrap();

    let bad = w.impostor_http1().await;
    let (r, tcp) = connect(addr, &format!("{HOST}:{}", bad.port()), "").await;
    assert_eq!(r.status, 200);
    let tls = inner_tls(tcp, &ica[0], HOST, &[b"http/1.1"]).await.unwrap();
    assert_eq!(get(tls, HOST, "/").await.status, StatusCode::BAD_GATEWAY);

    async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
        let text = common::net::get_text(admin, "admin", path, STEP)
            .await
            .unwrap();
        let status = common::connect::status_of(&text);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let handshakes = |result: &str| {
        value(
            "fedpin_handshakes_total",
            &[("direction", "outbound"), ("result", result)],
        )
    };
    assert_eq!(handshakes("pin_mismatch"), Some(1.0), "{body}");
    for result in [
        "ok",
        "chain_invalid",
        "unpinned_denied",
        "expired",
        "timeout",
    ] {
        assert_eq!(handshakes(result), Some(0.0), "{result}: {body}");
    }
    assert_eq!(
        value(
            "fedpin_pin_checks_total",
            &[
                ("direction", "outbound"),
                ("mode", "enforce"),
                ("result", "mismatch")
            ]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(
            "fedpin_alerts_total",
            &[("event", "pin_mismatch"), ("severity", "critical")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(value("fedpin_pin_generation", &[]), Some(1.0), "{body}");
    assert_eq!(value("fedpin_pin_peers", &[]), Some(1.0), "{body}");
    assert!(
        !body.contains("!") && !body.contains('@'),
        "no IDs in labels"
    );
    assert!(
        body.contains("fedpin_outbound_upstream_handshake_seconds_count 1"),
        "the upstream handshake duration histogram saw the one handshake:\n{body}"
    );

    let (status, body) = admin_get(admin, "/pins").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["peers"][0]["server_name"], HOST);
    assert!(!body.contains("sha256/"), "no keys or pins in /pins");

    let (status, _) = admin_get(admin, "/healthz").await;
    assert_eq!(status, 200);
    std::fs::remove_file(dir.path().join("ca/fedpin-ca.key")).unwrap();
    let (status, body) = admin_get(admin, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains("interception CA key"), "{body}");
    daemon.stop();
}

/// Each way an upstream handshake can end is counted under its own result
/// label: expired pins, a pinned key on an invalid chain, a peer that never
/// answers the ClientHello, a pinned certificate replayed without its key.
#[tokio::test]
async fn handshake_results_are_counted_by_cause() {
    let w = world();
    let private = root("fedpin test private root (not trusted)");
    let expired_peer = leaf(&w.public, &["expired.fedpin.test"]);
    let offpath = leaf(&private, &["offpath.fedpin.test"]);
    let replayed = leaf(&w.public, &["replay.fedpin.test"]);
    let pins = format!(
        "version = 1\n[policy]\non_expired = \"deny\"\n\n[[peer]]\nserver_name = \"expired.fedpin.test\"\npins = [\"{}\"]\nexpires = \"2020-01-01T00:00:00Z\"\n\n[[peer]]\nserver_name = \"offpath.fedpin.test\"\npins = [\"{}\"]\n\n[[peer]]\nserver_name = \"silent.fedpin.test\"\npins = [\"{}\"]\n\n[[peer]]\nserver_name = \"replay.fedpin.test\"\npins = [\"{}\"]\n",
        common::pin(&expired_peer.cert),
        common::pin(&offpath.cert),
        common::pin(&w.genuine.cert),
        common::pin(&replayed.cert),
    );
    let mut settings = test_settings();
    for n in [
        "expired.fedpin.test",
        "offpath.fedpin.test",
        "silent.fedpin.test",
        "replay.fedpin.test",
    ] {
        settings
            .resolve
            .insert(n.to_string(), "127.0.0.1".parse().unwrap());
    }
    settings.handshake_timeout = Duration::from_secs(2);
    let env = start_proxy(&w.public, &pins, settings).await;

    let expired_up = upstream(&expired_peer, "expired", &[b"http/1.1"]).await;
    let r = fetch(&env, "expired.fedpin.test", expired_up.port()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    let offpath_up = upstream(&offpath, "offpath", &[b"http/1.1"]).await;
    let r = fetch(&env, "offpath.fedpin.test", offpath_up.port()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    // Accepts TCP, never speaks TLS.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let r = fetch(&env, "silent.fedpin.test", silent_port).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    // The pinned certificate replayed with another key.
    let other_key = leaf(&w.public, &["replay.fedpin.test"]).key_der();
    let replay = common::serve(vec![replayed.cert.clone()], other_key).await;
    let r = fetch(&env, "replay.fedpin.test", replay.port()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");

    let stats = env.proxy.stats();
    assert_eq!(stats.handshakes.get(HandshakeResult::Expired), 1);
    assert_eq!(stats.handshakes.get(HandshakeResult::ChainInvalid), 1);
    assert_eq!(stats.handshakes.get(HandshakeResult::Timeout), 1);
    assert_eq!(stats.handshakes.get(HandshakeResult::SignatureInvalid), 1);
    assert_eq!(stats.handshakes.get(HandshakeResult::Ok), 0);
    assert_eq!(stats.handshakes.get(HandshakeResult::PinMismatch), 0);
    let checks = env.proxy.verifier().pin_checks();
    assert_eq!(checks.get(CheckMode::Enforce, CheckResult::Expired), 1);
    assert_eq!(checks.get(CheckMode::Enforce, CheckResult::Refused), 1);
}

/// SPEC 4.13: a reload that revokes a key ends the open tunnels that
/// depended on it (the recorded upstream chain is re-checked against the new
/// set, no network needed), with an alert; a busy tunnel whose upstream
/// still passes stays open.
#[tokio::test]
async fn inv13_reload_that_revokes_a_key_ends_open_tunnels() {
    let w = world();
    let other_name = "other.fedpin.test";
    let other = leaf(&w.public, &[other_name]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let both = pins_toml(&[(HOST, &w.genuine.cert), (other_name, &other.cert)]);
    std::fs::write(&path, &both).unwrap();
    let hub = AlertHub::new();
    let store = Arc::new(
        PinStore::open(&path, hub.clone())
            .unwrap()
            .with_settle(Duration::ZERO),
    );
    let mut settings = test_settings();
    settings
        .resolve
        .insert(other_name.into(), "127.0.0.1".parse().unwrap());
    let env = start_proxy_with(&w.public, store.clone(), hub.clone(), settings).await;
    let up = w.genuine_http1().await;
    let up2 = upstream(&other, "genuine", &[b"http/1.1"]).await;

    // Two kept-alive tunnels, each answering.
    async fn open(
        env: &Env,
        target: &str,
        name: &str,
    ) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
        let tls = tunnel(env, target, name, &[b"http/1.1"]).await;
        let send = net::http1_client(tls).await.unwrap();
        send
    }
    async fn ask(
        send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        host: &str,
    ) -> Result<StatusCode, String> {
        let req = Request::get("/")
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        match tokio::time::timeout(STEP, send.send_request(req)).await {
            Ok(Ok(r)) => {
                let status = r.status();
                let _ = r.into_body().collect().await;
                Ok(status)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
    const N: usize = 10;
    let mut revocable = Vec::new();
    for _ in 0..N {
        let mut t = open(&env, &format!("{HOST}:{}", up.port()), HOST).await;
        assert_eq!(ask(&mut t, HOST).await, Ok(StatusCode::OK));
        revocable.push(t);
    }
    let mut b = open(&env, &format!("{other_name}:{}", up2.port()), other_name).await;
    assert_eq!(ask(&mut b, other_name).await, Ok(StatusCode::OK));
    assert_eq!(
        env.proxy.stats().active_tunnels.load(Ordering::Relaxed),
        N + 1
    );

    // HOST's key is revoked: its entry now pins the impostor's key only.
    std::fs::write(
        &path,
        pins_toml(&[(HOST, &w.impostor.cert), (other_name, &other.cert)]),
    )
    .unwrap();
    assert!(matches!(
        store.reload(),
        fedpin::pin_store::ReloadOutcome::Reloaded(2)
    ));
    let p = env.proxy.clone();
    assert!(
        wait_until(STEP, move || p.stats().revoked.load(Ordering::Relaxed)
            == N as u64)
        .await,
        "not every revoked tunnel was ended ({} of {N})",
        env.proxy.stats().revoked.load(Ordering::Relaxed)
    );
    let p = env.proxy.clone();
    assert!(
        wait_until(STEP, move || p
            .stats()
            .active_tunnels
            .load(Ordering::Relaxed)
            == 1)
        .await,
        "revoked tunnels are still counted open"
    );
    for t in &mut revocable {
        assert!(ask(t, HOST).await.is_err(), "a revoked tunnel still relays");
    }
    assert_eq!(ask(&mut b, other_name).await, Ok(StatusCode::OK));
    let alert = hub
        .recent()
        .into_iter()
        .find(|x| x.reason.contains("open tunnel closed after pin reload"))
        .expect("an alert names the closed tunnel");
    assert_eq!(alert.event, AlertEvent::PinMismatch);
    assert_eq!(alert.severity, Severity::Critical);
    assert_eq!(alert.host.as_deref(), Some(HOST));
}

// ---------------------------------------------------------------------------
// Upstream connections kept between tunnels (issue 13, item 4)
// ---------------------------------------------------------------------------

/// One request with `Connection: close` (as the load client sends), written
/// and read as raw bytes: the status line and body of the answer.
async fn get_closing(mut tls: TlsStream<TcpStream>, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    bounded("the answer", tls.read_to_string(&mut answer))
        .await
        .expect("an answer, then a clean close");
    answer
}

/// One `Connection: close` GET of `/` through a new tunnel to `target`,
/// answered 200.
async fn get_ok(env: &Env, target: &str) {
    let r = get_closing(tunnel(env, target, HOST, &[]).await, "/").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// Publishes the same pins again as generation `generation` (the file
/// changed by a comment).
fn same_pins_again(w: &World, store: &PinStore, path: &std::path::Path, generation: u64) {
    std::fs::write(path, format!("{}\n# edited\n", w.pins())).unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::Reloaded(g) if g == generation));
}

/// A proxy over a pin file on disk, reloaded by hand (`store.reload()`).
async fn proxy_over_file(w: &World) -> (Env, Arc<PinStore>, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    std::fs::write(&path, w.pins()).unwrap();
    let hub = AlertHub::new();
    let store = Arc::new(PinStore::open(&path, hub.clone()).unwrap());
    let env = start_proxy_with(&w.public, store.clone(), hub, test_settings()).await;
    (env, store, path, dir)
}

#[tokio::test]
async fn kept_upstream_connection_serves_the_next_tunnel() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());

    let first = get_closing(tunnel(&env, &target, HOST, &[]).await, "/one").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("genuine: GET /one over HTTP/1.1"), "{first}");
    // The homeserver's `Connection: close` ended its tunnel, not the
    // upstream connection: that one waits for the next tunnel.
    assert!(
        kept_reaches(&env, 1).await,
        "the upstream connection was not kept"
    );

    let second = get_closing(tunnel(&env, &target, HOST, &[b"http/1.1"]).await, "/two").await;
    assert!(
        second.contains("genuine: GET /two over HTTP/1.1"),
        "{second}"
    );
    assert_eq!(
        up.seen().len(),
        1,
        "one upstream TLS connection for both tunnels"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
    let stats = env.proxy.stats();
    assert_eq!(stats.upstream_reused.load(Ordering::SeqCst), 1);
    assert_eq!(stats.handshakes.get(HandshakeResult::Ok), 1);
    assert!(kept_reaches(&env, 1).await);

    // Two tunnels at once: the second finds none kept and dials its own.
    let a = tunnel(&env, &target, HOST, &[]).await;
    let b = tunnel(&env, &target, HOST, &[]).await;
    assert!(get_closing(a, "/a").await.contains("GET /a"));
    assert!(get_closing(b, "/b").await.contains("GET /b"));
    assert_eq!(up.seen().len(), 2);
    assert!(kept_reaches(&env, 2).await);
}

#[tokio::test]
async fn a_reload_closes_kept_connections_and_the_next_tunnel_is_checked_again() {
    let w = world();
    let (env, store, path, _dir) = proxy_over_file(&w).await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());

    get_ok(&env, &target).await;
    assert!(kept_reaches(&env, 1).await);

    // The same pins, a new generation: the kept connection goes, and the
    // next tunnel makes a full, pin-checked handshake (not even resumed).
    same_pins_again(&w, &store, &path, 2);
    assert!(kept_reaches(&env, 0).await, "a reload must empty the pool");
    get_ok(&env, &target).await;
    let kinds: Vec<_> = up.seen().iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        vec![Some(HandshakeKind::Full), Some(HandshakeKind::Full)]
    );
    assert_eq!(env.proxy.stats().upstream_reused.load(Ordering::SeqCst), 0);
    assert!(kept_reaches(&env, 1).await);

    // A reload that no longer accepts the genuine key: the kept connection
    // is not reused; the next tunnel is refused by the new set.
    std::fs::write(&path, pins_toml(&[(HOST, &w.impostor.cert)])).unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::Reloaded(3)));
    let r = get_closing(tunnel(&env, &target, HOST, &[]).await, "/").await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(r.contains("alert: pin_mismatch"), "{r}");
    assert_eq!(env.proxy.stats().upstream_reused.load(Ordering::SeqCst), 0);
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_kept_connection_is_not_taken_once_the_pool_is_stale() {
    // The pool refuses an older generation by itself, even before the
    // proxy's reload watcher has emptied it.
    let w = world();
    let (env, store, path, _dir) = proxy_over_file(&w).await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());
    get_ok(&env, &target).await;
    assert!(kept_reaches(&env, 1).await);
    same_pins_again(&w, &store, &path, 2);
    // No wait for the watcher here.
    get_ok(&env, &target).await;
    assert_eq!(env.proxy.stats().upstream_reused.load(Ordering::SeqCst), 0);
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn keepalive_zero_keeps_nothing_and_h2_tunnels_relay_bytes() {
    let w = world();
    let env = start_proxy(
        &w.public,
        &w.pins(),
        OutboundSettings {
            upstream_keepalive: Duration::ZERO,
            ..test_settings()
        },
    )
    .await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());
    for _ in 0..2 {
        let r = get_closing(tunnel(&env, &target, HOST, &[]).await, "/").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert!(tunnels_drain(&env).await);
    assert_eq!(env.proxy.kept_connections(), 0);
    assert_eq!(up.seen().len(), 2);

    // With the default, an h2 tunnel is relayed as bytes: nothing is kept.
    let (w, env) = proxy_for_world().await;
    let up = upstream(&w.genuine, "genuine", &[b"h2", b"http/1.1"]).await;
    let tls = tunnel_to(&env, up.port(), &[b"h2", b"http/1.1"]).await;
    let r = get(tls, HOST, "/").await;
    assert_eq!(r.version, hyper::Version::HTTP_2);
    assert!(tunnels_drain(&env).await);
    assert_eq!(env.proxy.kept_connections(), 0);
}

/// A peer that answers one request per connection, then closes it
/// (`Connection: close`), and counts its connections.
async fn one_request_peer(w: &World) -> (SocketAddr, Arc<AtomicUsize>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let addr = net::serve_tls(net::acceptor(&w.genuine, &[b"http/1.1"]), move |tls| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = format!("once: {}\n", req.uri().path());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        }
    })
    .await;
    (addr, conns)
}

#[tokio::test]
async fn a_request_after_the_peer_closed_goes_on_a_new_pinned_connection() {
    let (w, env) = proxy_for_world().await;
    let (addr, conns) = one_request_peer(&w).await;
    let tls = tunnel_to(&env, addr.port(), &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 through the tunnel");
    tokio::spawn(conn);
    for path in ["/first", "/second", "/third"] {
        bounded("ready", send.ready())
            .await
            .expect("the tunnel stays open");
        let req = Request::get(path)
            .header(hyper::header::HOST, HOST)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = bounded("answer", send.send_request(req))
            .await
            .expect("an answer");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        // The peer's `Connection: close` is not passed on: the homeserver's
        // connection stays, and the next request dials again.
        assert!(resp.headers().get(hyper::header::CONNECTION).is_none());
        let body = bounded("body", resp.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, format!("once: {path}\n").as_bytes());
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        3,
        "one upstream connection per request"
    );
    // Each was dialled and pin-checked.
    assert_eq!(env.proxy.stats().handshakes.get(HandshakeResult::Ok), 3);
    assert_eq!(env.proxy.stats().active_tunnels.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_method_split_over_records_is_still_read_as_http() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());
    for _ in 0..2 {
        let mut tls = tunnel(&env, &target, HOST, &[]).await;
        // One TLS record per write, and the proxy reads between them.
        for part in [
            "G",
            "E",
            "T /split HTTP/1.1\r\n",
            "Host: x\r\nConnection: close\r\n\r\n",
        ] {
            tls.write_all(part.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut answer = String::new();
        bounded("answer", tls.read_to_string(&mut answer))
            .await
            .unwrap();
        assert!(answer.contains("genuine: GET /split"), "{answer}");
        assert!(kept_reaches(&env, 1).await);
    }
    assert_eq!(env.proxy.stats().upstream_reused.load(Ordering::SeqCst), 1);
    assert_eq!(up.seen().len(), 1);
}

/// A GET of `path` for the pinned peer, as the homeserver sends it.
fn get_to(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(hyper::header::HOST, HOST)
        .body(Empty::<Bytes>::new())
        .unwrap()
}

/// Asks the genuine peer for `path` over a kept-alive tunnel; its answer
/// is read to the end.
async fn ask(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, path: &str) {
    bounded("ready", send.ready())
        .await
        .expect("the tunnel is open");
    let resp = bounded("answer", send.send_request(get_to(path)))
        .await
        .expect("an answer");
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    let body = bounded("body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.starts_with(format!("genuine: GET {path}").as_bytes()));
}

#[tokio::test]
async fn a_quiet_tunnel_parks_and_lends_its_upstream_connection() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());
    let mut a = net::http1_client(tunnel(&env, &target, HOST, &[]).await)
        .await
        .unwrap();
    ask(&mut a, "/a1").await;
    // A quiet, kept-alive tunnel parks: its upstream connection is kept
    // for any tunnel to the peer, the tunnel stays open.
    assert!(kept_reaches(&env, 1).await, "the quiet tunnel did not park");
    let mut b = net::http1_client(tunnel(&env, &target, HOST, &[]).await)
        .await
        .unwrap();
    ask(&mut b, "/b1").await;
    assert!(kept_reaches(&env, 1).await);
    ask(&mut a, "/a2").await;
    assert!(kept_reaches(&env, 1).await);
    ask(&mut b, "/b2").await;
    assert_eq!(
        up.seen().len(),
        1,
        "one upstream connection served both tunnels"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 4);
    assert_eq!(env.proxy.stats().upstream_reused.load(Ordering::SeqCst), 3);
    assert_eq!(env.proxy.stats().active_tunnels.load(Ordering::SeqCst), 2);
}

/// A connection goes back to the pool as soon as its answer has been read,
/// not when its tunnel parks: a second tunnel takes it while the first is
/// still open and not parked, and no second connection is dialled.
#[tokio::test]
async fn an_answered_request_lends_its_connection_before_the_tunnel_parks() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());
    let mut a = net::http1_client(tunnel(&env, &target, HOST, &[]).await)
        .await
        .unwrap();
    ask(&mut a, "/a1").await;
    assert!(kept_reaches(&env, 1).await, "the connection was not lent");
    let stats = env.proxy.stats();
    assert_eq!(
        stats.parked_tunnels.load(Ordering::SeqCst),
        0,
        "lent only once the tunnel parked"
    );
    let second = get_closing(tunnel(&env, &target, HOST, &[]).await, "/b1").await;
    assert!(second.contains("genuine: GET /b1"), "{second}");
    assert_eq!(up.seen().len(), 1, "one upstream connection for both");
    assert_eq!(stats.upstream_reused.load(Ordering::SeqCst), 1);
    // The first tunnel's next request takes the connection back.
    assert!(kept_reaches(&env, 1).await);
    ask(&mut a, "/a2").await;
    assert_eq!(up.seen().len(), 1);
    assert_eq!(up.requests.load(Ordering::SeqCst), 3);
    assert_eq!(stats.upstream_reused.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_peer_that_never_answers_gets_the_idle_timeout() {
    let w = world();
    let env = start_proxy(
        &w.public,
        &w.pins(),
        OutboundSettings {
            idle_timeout: Duration::from_millis(600),
            ..test_settings()
        },
    )
    .await;
    // Reads the request, then says nothing and keeps the connection open.
    let addr = net::serve_tls(
        net::acceptor(&w.genuine, &[b"http/1.1"]),
        |mut tls| async move {
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        },
    )
    .await;
    let tls = tunnel_to(&env, addr.port(), &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 through the tunnel");
    tokio::spawn(conn);
    let req = Request::get("/silent")
        .header(hyper::header::HOST, HOST)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = bounded("an answer from fedpin", send.send_request(req))
        .await
        .expect("fedpin answers for the silent peer");
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(tunnels_drain(&env).await, "the tunnel was not closed");
    assert_eq!(env.proxy.kept_connections(), 0);
}

#[tokio::test]
async fn a_parked_tunnel_meets_a_new_deny_list_on_its_next_request() {
    let (w, env) = proxy_for_world().await;
    let up = w.genuine_http1().await;
    let target = format!("{HOST}:{}", up.port());
    let mut send = net::http1_client(tunnel(&env, &target, HOST, &[]).await)
        .await
        .unwrap();
    let r = bounded("first", send.send_request(get_to("/first")))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.into_body().collect().await;
    assert!(kept_reaches(&env, 1).await, "the tunnel did not park");
    // The operator denies the peer: the parked tunnel's next request is
    // refused (not sent on the kept connection), and the tunnel closes.
    let mut denied = test_settings();
    denied.deny_destinations.insert(HOST.to_string());
    env.proxy.set_settings(denied);
    bounded("ready", send.ready()).await.unwrap();
    let r = bounded("second", send.send_request(get_to("/second")))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        1,
        "the denied request reached the peer"
    );
    assert!(tunnels_drain(&env).await, "the tunnel was not closed");
}
