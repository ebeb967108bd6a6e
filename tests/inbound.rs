//! SPEC 2 (inbound), 5 (alerts), 7 (config `[inbound]`): the inbound edge end to end.
//!
//! Every test builds a real [`InboundProxy`] on 127.0.0.1 with a server
//! certificate minted per test by rcgen (PEM files in a temp dir, loaded by
//! [`CertStore`]), in front of a stand-in for Synapse's plain-HTTP federation
//! listener: a real hyper HTTP/1.1 server on 127.0.0.1 that records every
//! request it receives (method, raw URI, version, every header, body) and
//! answers what the test asks for (immediately, late, or as a stream held
//! back by the test). Clients are real TLS clients trusting only the test CA:
//! hyper HTTP/1.1 or h2 on top of tokio-rustls, or raw bytes where the test
//! needs byte-exact control of the request head. Every wait is bounded;
//! nothing leaves loopback.
//!
//! Also (from mutual.rs): two fedpin deployments pinning each other in both
//! directions, the inbound edge checking client certificates.

mod common;

use bytes::Bytes;
use common::{bounded, leaf, net, pem, root, wait_until, Ca, Leaf};
use fedpin::alert::{Action, AlertEvent, AlertHub, Direction};
use fedpin::config::ClientAuth;
use fedpin::metrics::HandshakeResult;
use fedpin::pin_store::PinStore;
use fedpin::pins::PinSet;
use fedpin::proxy::inbound::{EdgeRules, InboundProxy, InboundSettings, RateLimit};
use fedpin::proxy::outbound::OutboundProxy;
use fedpin::tls::certs::CertStore;
use fedpin::tls::mint::LeafMinter;
use fedpin::tls::UpstreamTls;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

/// The protected homeserver's own name (the inbound certificate's SAN).
const SERVER: &str = "hs.fedpin.test";
/// `Host` as a remote homeserver sends it.
const HOST: &str = "hs.fedpin.test:8448";
/// A remote homeserver that talks to us (mutual TLS tests pin its client key).
const PEER: &str = "peer.fedpin.test";
/// Upper bound for any single network step of a test.
const STEP: Duration = Duration::from_secs(10);
/// Poll interval for bounded waits.
const TICK: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Harness: waits
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Harness: PEM files
// ---------------------------------------------------------------------------

fn cert_pem(l: &Leaf) -> String {
    pem("CERTIFICATE", l.cert.as_ref())
}

fn key_pem(l: &Leaf) -> String {
    l.key.serialize_pem()
}

/// Replaces `path` the way certbot and editors do: write a temp file, rename over.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------
// Harness: the stand-in homeserver (plain HTTP/1.1 federation listener)
// ---------------------------------------------------------------------------

/// One request exactly as the homeserver received it.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    /// The request target as sent on the wire (origin-form).
    uri: String,
    version: Version,
    /// Every header line, in order (names lowercased by hyper).
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

impl Recorded {
    fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The header's only value (panics if it appears more than once).
    fn one(&self, name: &str) -> Option<String> {
        let mut all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {all:?}",
            all.len()
        );
        all.pop()
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

/// The homeserver's answer.
enum Reply {
    Now(Response<UpBody>),
    After(Duration, Response<UpBody>),
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A response body fed by the test through a channel (streams, held back by a gate).
struct ChanBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn up_full(status: u16, body: impl Into<Bytes>) -> Response<UpBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The default homeserver: 200 `{"upstream":"ok"}` at once.
fn ok_handler() -> Handler {
    Arc::new(|_| Reply::Now(up_full(200, r#"{"upstream":"ok"}"#)))
}

/// A running stand-in homeserver.
struct Upstream {
    addr: SocketAddr,
    /// Requests whose head arrived (whether or not the body completed).
    started: Arc<AtomicUsize>,
    /// Requests whose body failed part way.
    aborted: Arc<AtomicUsize>,
    /// Complete requests.
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

async fn upstream(handler: Handler) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let aborted = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (s2, a2, l2) = (started.clone(), aborted.clone(), log.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (started, aborted, log, handler) =
                (s2.clone(), a2.clone(), l2.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (started, aborted, log, handler) = (
                        started.clone(),
                        aborted.clone(),
                        log.clone(),
                        handler.clone(),
                    );
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        let (parts, body) = req.into_parts();
                        let body = match body.collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => {
                                aborted.fetch_add(1, Ordering::SeqCst);
                                return Ok::<_, Infallible>(up_full(400, "{}"));
                            }
                        };
                        let rec = Recorded {
                            method: parts.method,
                            uri: parts.uri.to_string(),
                            version: parts.version,
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                                .collect(),
                            body,
                        };
                        let reply = handler(&rec);
                        log.lock().unwrap().push(rec);
                        Ok(match reply {
                            Reply::Now(r) => r,
                            Reply::After(d, r) => {
                                tokio::time::sleep(d).await;
                                r
                            }
                        })
                    }
                });
                net::serve_http1(tcp, svc).await;
            });
        }
    });
    Upstream {
        addr,
        started,
        aborted,
        log,
    }
}

// ---------------------------------------------------------------------------
// Harness: the proxy under test
// ---------------------------------------------------------------------------

/// What a test wants from its proxy.
struct Opts {
    settings: InboundSettings,
    rules: EdgeRules,
    pins: String,
    handler: Handler,
    /// Overrides the upstream URL (default: the stand-in homeserver).
    upstream: Option<hyper::Uri>,
    /// Mint a client leaf for PEER under the test CA and pin it (replaces `pins`).
    pin_peer: bool,
}

impl Opts {
    /// The defaults with `handler`.
    fn handler(handler: Handler) -> Self {
        Opts::default().with_handler(handler)
    }

    /// The defaults with `edit` made to the settings.
    fn settings(edit: impl FnOnce(&mut InboundSettings)) -> Self {
        let mut opts = Opts::default();
        edit(&mut opts.settings);
        opts
    }

    /// The defaults with `edit` made to the edge rules.
    fn rules(edit: impl FnOnce(&mut EdgeRules)) -> Self {
        let mut opts = Opts::default();
        edit(&mut opts.rules);
        opts
    }

    fn with_handler(self, handler: Handler) -> Self {
        Opts { handler, ..self }
    }
}

/// An inbound alert `event` was raised naming the client at `local`.
#[track_caller]
fn assert_inbound_alert(hub: &AlertHub, event: AlertEvent, local: SocketAddr) {
    let alerts = hub.recent();
    let a = alerts
        .iter()
        .find(|a| a.event == event && a.direction == Direction::Inbound)
        .unwrap_or_else(|| panic!("no inbound {event:?}: {alerts:?}"));
    let peer = local.to_string();
    assert_eq!(a.peer_addr.as_deref(), Some(peer.as_str()), "{a:?}");
    assert_eq!(a.port, Some(local.port()), "{a:?}");
}

/// Waits (up to STEP) until no connection is open; whether that happened.
async fn connections_drain(env: &Env) -> bool {
    wait_until(STEP, || {
        env.proxy.stats().connections.load(Ordering::SeqCst) == 0
    })
    .await
}

/// How many handshakes ended with `result` so far.
fn handshakes(env: &Env, result: HandshakeResult) -> u64 {
    env.proxy.stats().handshakes.get(result)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The defaults with a 1 s idle timeout (and a 10 s header timeout).
fn idle_after_1s() -> Opts {
    Opts::settings(|s| (s.idle_timeout, s.header_timeout) = (secs(1), secs(10)))
}

/// A rate limit of `per_second`, bursting to `burst`.
fn rate(per_second: u32, burst: u32) -> Option<RateLimit> {
    Some(RateLimit { per_second, burst })
}

/// The lanes every edge of these tests runs on: `FEDPIN_TEST_LANES`
/// (`.ci/run` runs this file a second time with 2), else none: the
/// connections are tasks of the test's runtime.
fn test_lanes() -> usize {
    std::env::var("FEDPIN_TEST_LANES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            settings: InboundSettings {
                header_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(30),
                handshake_timeout: Duration::from_secs(5),
                lanes: test_lanes(),
                ..InboundSettings::default()
            },
            rules: EdgeRules::default(),
            pins: "version = 1\n".into(),
            handler: ok_handler(),
            upstream: None,
            pin_peer: false,
        }
    }
}

struct Env {
    proxy: Arc<InboundProxy>,
    addr: SocketAddr,
    hub: AlertHub,
    ca: Ca,
    server: Leaf,
    cert_path: PathBuf,
    key_path: PathBuf,
    up: Upstream,
    /// The pinned client leaf (with `pin_peer`).
    client: Option<Leaf>,
    /// The pin store (file-backed) and its file.
    pins: Arc<PinStore>,
    pins_path: PathBuf,
    _dir: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
}

async fn start(opts: Opts) -> Env {
    let ca = root("fedpin inbound test CA");
    let server = leaf(&ca, &[SERVER]);
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("fullchain.pem");
    let key_path = dir.path().join("privkey.pem");
    std::fs::write(&cert_path, cert_pem(&server)).unwrap();
    std::fs::write(&key_path, key_pem(&server)).unwrap();
    let up = upstream(opts.handler).await;

    let client = opts.pin_peer.then(|| leaf(&ca, &[PEER]));
    let pins = match &client {
        Some(c) => peer_pins(c),
        None => opts.pins,
    };
    let hub = AlertHub::new();
    PinSet::parse(&pins).unwrap_or_else(|e| panic!("test pin file invalid: {e}\n{pins}"));
    let pins_path = dir.path().join("pins.toml");
    std::fs::write(&pins_path, &pins).unwrap();
    let pins = Arc::new(
        PinStore::open(&pins_path, hub.clone())
            .unwrap()
            .with_settle(Duration::ZERO),
    );
    let core = net::only_anchor(&ca.cert, &hub);
    let certs = Arc::new(CertStore::open(&cert_path, &key_path).unwrap());
    let mut settings = opts.settings;
    settings.upstream = opts
        .upstream
        .unwrap_or_else(|| format!("http://{}", up.addr).parse().unwrap());
    let proxy = Arc::new(InboundProxy::new(
        settings,
        opts.rules,
        certs,
        pins.clone(),
        core,
    ));
    let (addr, tx) = net::spawn_server(|l, rx| proxy.clone().serve(l, rx)).await;
    Env {
        proxy,
        addr,
        hub,
        ca,
        server,
        cert_path,
        key_path,
        up,
        client,
        pins,
        pins_path,
        _dir: dir,
        shutdown: tx,
    }
}

// ---------------------------------------------------------------------------
// Harness: clients
// ---------------------------------------------------------------------------

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A fresh client config (fresh session cache: every handshake is a full one).
fn client_config(
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    cert: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    net::client_config_as(&[ca], alpn, cert)
}

async fn tls_with(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SERVER.to_string()).unwrap();
    bounded(
        "TLS handshake with the inbound edge",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
}

async fn tls(env: &Env, alpn: &[&[u8]]) -> Tls {
    tls_with(env.addr, client_config(&env.ca.cert, alpn, None))
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with the inbound edge failed: {e}"))
}

/// The X-Matrix header a remote homeserver `origin` would send to us.
fn xmatrix(origin: &str) -> String {
    format!(
        r#"X-Matrix origin="{origin}",destination="{SERVER}",key="ed25519:1",sig="c2lnbmF0dXJlK/8=""#
    )
}

/// A federation request as HTTP/1.1 would carry it (`Host` header, origin-form URI).
fn fed_req(
    method: Method,
    path: &str,
    origin: Option<&str>,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, HOST);
    if let Some(o) = origin {
        b = b.header(hyper::header::AUTHORIZATION, xmatrix(o));
    }
    b.body(Full::new(body.into())).unwrap()
}

fn get(path: &str, origin: Option<&str>) -> Request<Full<Bytes>> {
    fed_req(Method::GET, path, origin, Bytes::new())
}

/// A response as the remote homeserver saw it.
#[derive(Debug)]
struct HttpReply {
    status: StatusCode,
    headers: HeaderMap,
    version: Version,
    body: Bytes,
}

impl HttpReply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// A Matrix JSON error with `errcode` and a non-empty `error`.
    fn assert_matrix_error(&self, status: u16, errcode: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?} {}", self.text());
        let j = self.json();
        assert_eq!(j["errcode"], errcode, "{j}");
        assert!(
            j["error"].as_str().is_some_and(|e| !e.is_empty()),
            "no error text: {j}"
        );
        assert_eq!(
            self.headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }
}

/// A client connection: HTTP/1.1 or h2 (by negotiated ALPN).
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn open(tls: Tls) -> (Sender, tokio::task::JoinHandle<()>) {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            (
                Sender::H2(send),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1.1 handshake");
            (
                Sender::H1(send),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        }
    }

    /// Sends one request; over h2 the `Host` header becomes `:authority`.
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<HttpReply, String> {
        let fut = async {
            let resp = match self {
                Sender::H1(s) => {
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(req).await
                }
                Sender::H2(s) => {
                    let (mut parts, body) = req.into_parts();
                    if parts.uri.authority().is_none() {
                        let host = parts
                            .headers
                            .remove(hyper::header::HOST)
                            .map(|h| h.to_str().unwrap().to_string())
                            .unwrap_or_else(|| HOST.to_string());
                        let pq = parts.uri.path_and_query().unwrap().as_str();
                        parts.uri = format!("https://{host}{pq}").parse().unwrap();
                    }
                    parts.version = Version::HTTP_2;
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(Request::from_parts(parts, body)).await
                }
            }
            .map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(HttpReply {
                status: parts.status,
                headers: parts.headers,
                version: parts.version,
                body,
            })
        };
        bounded("request through the inbound edge", fut).await
    }
}

/// One request on a fresh HTTP/1.1 connection.
async fn call(env: &Env, req: Request<Full<Bytes>>) -> HttpReply {
    let (mut s, _conn) = Sender::open(tls(env, &[b"http/1.1"]).await).await;
    s.send(req)
        .await
        .unwrap_or_else(|e| panic!("request through the inbound edge failed: {e}"))
}

/// One request with a given client config; any failure (handshake or request) as text.
async fn try_call(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<HttpReply, String> {
    let tls = tls_with(addr, config).await.map_err(|e| e.to_string())?;
    let (mut s, _conn) = Sender::open(tls).await;
    s.send(req).await
}

/// A raw HTTP/1.1 client over TLS (byte-exact request heads, incremental reads).
struct Raw {
    rd: ReadHalf<Tls>,
    wr: Option<WriteHalf<Tls>>,
    buf: Vec<u8>,
}

/// A response head read by [`Raw`].
#[derive(Debug)]
struct RawHead {
    status: u16,
    headers: Vec<(String, String)>,
}

impl RawHead {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Raw {
    fn new(tls: Tls) -> Raw {
        let (rd, wr) = tokio::io::split(tls);
        Raw {
            rd,
            wr: Some(wr),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let wr = self.wr.as_mut().expect("writer taken");
        bounded("writing to the inbound edge", async {
            wr.write_all(bytes).await.unwrap();
            wr.flush().await.unwrap();
        })
        .await;
    }

    /// Reads more bytes; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        let mut b = vec![0u8; 64 * 1024];
        match bounded("reading from the inbound edge", self.rd.read(&mut b)).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
        }
    }

    async fn head(&mut self) -> RawHead {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                let text = String::from_utf8(head).unwrap();
                let mut lines = text.split("\r\n");
                let status = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no status line in {text:?}"));
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                return RawHead { status, headers };
            }
            if !self.fill().await {
                panic!(
                    "the edge closed before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "the edge closed mid-body");
        }
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8(l[..i].to_vec()).unwrap();
            }
            assert!(self.fill().await, "the edge closed mid-body");
        }
    }

    /// The next chunk of a chunked body; None after the last one.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let line = self.line().await;
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|e| panic!("bad chunk size line {line:?}: {e}"));
        if size == 0 {
            while !self.line().await.is_empty() {}
            return None;
        }
        let data = self.exact(size).await;
        assert_eq!(self.exact(2).await, b"\r\n");
        Some(data)
    }

    async fn body(&mut self, head: &RawHead) -> Vec<u8> {
        if head
            .get("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            let mut out = Vec::new();
            while let Some(c) = self.chunk().await {
                out.extend(c);
            }
            out
        } else if let Some(n) = head.get("content-length") {
            self.exact(n.parse().unwrap()).await
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        }
    }

    /// Reads until the edge closes the connection; its time, or None if still open after `limit`.
    async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut b = vec![0u8; 4096];
        loop {
            let left = limit.checked_sub(start.elapsed())?;
            match tokio::time::timeout(left, self.rd.read(&mut b)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&b[..n]),
            }
        }
    }
}

/// Deterministic, non-repeating-looking bytes (corruption and reordering show).
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk * 12 + 8);
    for c in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------
// 1. Passthrough
// ---------------------------------------------------------------------------

/// URI (percent-encoding, query), Host and Authorization reach the homeserver
/// byte for byte; hop-by-hop headers are dropped; XFF/XFP are set; a 5 MB
/// chunked body streams up intact and a held-back response streams down.
#[tokio::test]
async fn passthrough_is_byte_exact_strips_hop_by_hop_and_streams_both_ways() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let handler: Handler = Arc::new(move |rec: &Recorded| {
        if rec.uri.contains("/send/") {
            let (tx, rx) = mpsc::channel(4);
            let g = g.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"{\"part\":1,")).await;
                g.notified().await;
                let _ = tx.send(Bytes::from_static(b"\"part2\":2,")).await;
                let _ = tx.send(Bytes::from_static(b"\"end\":true}")).await;
            });
            let mut r = Response::new(ChanBody(rx).boxed());
            *r.status_mut() = StatusCode::ACCEPTED;
            let h = r.headers_mut();
            h.insert("x-upstream", "yes".parse().unwrap());
            h.insert("connection", "x-resp-hop".parse().unwrap());
            h.insert("x-resp-hop", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=99".parse().unwrap());
            Reply::Now(r)
        } else {
            Reply::Now(up_full(200, r#"{"upstream":"ok"}"#))
        }
    });
    let env = start(Opts::handler(handler)).await;

    let uri = "/_matrix/federation/v1/send/txn%2F1?x=%20y&ver=%21a%3Ab";
    let auth = r#"X-Matrix origin="a.example",destination="hs.fedpin.test",key="ed25519:1",sig="Zm9v+/YmFy==""#;
    let body = pattern(5 * 1024 * 1024 + 17);
    let head = format!(
        "PUT {uri} HTTP/1.1\r\n\
         Host: {HOST}\r\n\
         Authorization: {auth}\r\n\
         Content-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\
         Connection: keep-alive, X-Hop-Secret, Upgrade\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Upgrade: websocket\r\n\
         X-Hop-Secret: do-not-forward\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\n\
         X-Forwarded-For: 203.0.113.7\r\n\
         X-End-To-End: kept\r\n\
         \r\n"
    );
    let mut raw = Raw::new(tls(&env, &[b"http/1.1"]).await);
    raw.send(head.as_bytes()).await;
    // Write the body from its own task while this one reads.
    let mut wr = raw.wr.take().unwrap();
    let wire = chunked(&body, 64 * 1024 - 3);
    let writer = tokio::spawn(async move {
        wr.write_all(&wire).await.unwrap();
        wr.flush().await.unwrap();
        wr
    });

    let resp = raw.head().await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(resp.get("x-upstream"), Some("yes"));
    for hop in ["x-resp-hop", "keep-alive"] {
        assert_eq!(
            resp.get(hop),
            None,
            "response hop-by-hop {hop} forwarded: {resp:?}"
        );
    }
    // The first part arrives while the homeserver is still holding the rest back.
    let mut got = Vec::new();
    while !got.ends_with(b"{\"part\":1,") {
        match raw.chunk().await {
            Some(c) => got.extend(c),
            None => panic!("body ended before the gate opened: {got:?}"),
        }
    }
    gate.notify_one();
    while let Some(c) = raw.chunk().await {
        got.extend(c);
    }
    assert_eq!(
        String::from_utf8(got).unwrap(),
        r#"{"part":1,"part2":2,"end":true}"#
    );
    let wr = bounded("body writer", writer).await.unwrap();

    let reqs = env.up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.method, Method::PUT);
    assert_eq!(
        r.uri, uri,
        "request target must reach the homeserver byte for byte"
    );
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.one("host").as_deref(), Some(HOST));
    assert_eq!(r.one("authorization").as_deref(), Some(auth));
    assert_eq!(r.one("content-type").as_deref(), Some("application/json"));
    assert_eq!(r.one("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(
        r.one("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "a peer-supplied X-Forwarded-For is replaced by the real client IP (Synapse trusts the leftmost entry)"
    );
    assert_eq!(r.one("x-forwarded-proto").as_deref(), Some("https"));
    for hop in [
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "x-hop-secret",
        "proxy-connection",
    ] {
        assert!(
            r.all(hop).is_empty(),
            "hop-by-hop {hop} forwarded: {:?}",
            r.headers
        );
    }
    assert!(r.all("connection").is_empty(), "{:?}", r.headers);
    assert_eq!(r.body.len(), body.len(), "body length at the homeserver");
    assert!(
        r.body.as_ref() == body.as_slice(),
        "body corrupted on the way up"
    );

    // The same connection still serves (keep-alive), and without an incoming
    // X-Forwarded-For the header is just the client IP.
    raw.wr = Some(wr);
    raw.send(
        format!("GET /_matrix/key/v2/server HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let h = raw.head().await;
    assert_eq!(h.status, 200);
    assert_eq!(raw.body(&h).await, br#"{"upstream":"ok"}"#);
    let reqs = env.up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(reqs[1].one("x-forwarded-proto").as_deref(), Some("https"));
}

/// A client's own X-Forwarded-Proto is replaced, a Content-Length body is
/// passed with its length, and the upstream's status and headers come back.
#[tokio::test]
async fn content_length_bodies_and_statuses_pass_through() {
    let handler: Handler = Arc::new(|rec: &Recorded| {
        let mut r = up_full(
            if rec.uri.ends_with("missing") {
                404
            } else {
                200
            },
            format!(r#"{{"len":{}}}"#, rec.body.len()),
        );
        r.headers_mut().insert("x-synapse", "yes".parse().unwrap());
        Reply::Now(r)
    });
    let env = start(Opts::handler(handler)).await;
    let body = Bytes::from(pattern(100_000));
    let mut req = fed_req(
        Method::POST,
        "/_matrix/federation/v1/user/keys/query",
        Some("a.example"),
        body.clone(),
    );
    req.headers_mut()
        .insert("x-forwarded-proto", "http".parse().unwrap());
    let r = call(&env, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["len"], 100_000);
    assert_eq!(r.headers.get("x-synapse").unwrap(), "yes");
    let rec = env.up.requests().pop().unwrap();
    assert_eq!(rec.one("content-length").as_deref(), Some("100000"));
    assert_eq!(rec.one("x-forwarded-proto").as_deref(), Some("https"));
    assert!(rec.body == body);

    // The homeserver's own error statuses reach the peer unchanged.
    let r = call(
        &env,
        get("/_matrix/federation/v1/event/missing", Some("a.example")),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.headers.get("x-synapse").unwrap(), "yes");
}

/// Content-Length plus Transfer-Encoding (a request-smuggling classic): the
/// chunked framing wins, the homeserver gets one request with one consistent
/// framing, and bytes smuggled inside the body never become a request.
#[tokio::test]
async fn conflicting_framing_cannot_smuggle_a_second_request() {
    let env = start(Opts::default()).await;
    let smuggled = format!(
        "abcdGET /_matrix/federation/v1/smuggled HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\n\r\n",
        xmatrix("evil.example")
    );
    let mut raw = Raw::new(tls(&env, &[b"http/1.1"]).await);
    let mut wire = format!(
        "POST /_matrix/federation/v1/send/s HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        xmatrix("a.example")
    )
    .into_bytes();
    wire.extend(chunked(smuggled.as_bytes(), 16));
    raw.send(&wire).await;
    let h = raw.head().await;
    assert_eq!(h.status, 200, "{h:?}");
    raw.body(&h).await;
    // Whatever the edge does with the connection now, nothing else is forwarded.
    let _ = raw.closed_within(Duration::from_millis(300)).await;
    let reqs = env.up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].uri, "/_matrix/federation/v1/send/s");
    assert_eq!(reqs[0].body, smuggled.as_bytes());
    let cl = reqs[0].all("content-length");
    let te = reqs[0].all("transfer-encoding");
    assert!(
        cl.is_empty() || te.is_empty(),
        "the homeserver got both framings: {:?}",
        reqs[0].headers
    );
    if let Some(cl) = cl.first() {
        assert_eq!(cl.parse::<usize>().unwrap(), smuggled.len());
    }
    assert_eq!(env.up.started(), 1);
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections_and_frees_slots() {
    let env = start(Opts::settings(|s| s.max_connections = 1)).await;
    let (mut first, first_conn) = Sender::open(tls(&env, &[b"http/1.1"]).await).await;
    let r = first
        .send(get("/_matrix/key/v2/server", None))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // A second peer while the only slot is taken: closed without service.
    let second = try_call(
        env.addr,
        client_config(&env.ca.cert, &[b"http/1.1"], None),
        get("/_matrix/key/v2/server", None),
    )
    .await;
    assert!(second.is_err(), "served beyond max_connections: {second:?}");
    // The first one leaves; its slot is reused.
    drop(first);
    first_conn.abort();
    let _ = first_conn.await;
    assert!(connections_drain(&env).await, "the slot was not released");
    let r = call(&env, get("/_matrix/key/v2/server", None)).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------
// 2. Only federation paths
// ---------------------------------------------------------------------------

#[tokio::test]
async fn non_federation_paths_get_404_json_and_never_reach_the_homeserver() {
    let env = start(Opts::default()).await;
    for path in [
        "/",
        "/_matrix/client/v3/sync",
        "/_matrix/client/versions",
        "/_synapse/admin/v1/users/@admin:hs.fedpin.test",
        "/_matrix/federation",
        "/_matrix/federationx/v1/version",
        "/_matrix/keys/v2/server",
        "/_matrix/media/v3/download/hs/abc",
        "/.well-known/matrix/server",
    ] {
        let r = call(&env, get(path, Some("a.example"))).await;
        r.assert_matrix_error(404, "M_UNRECOGNIZED");
    }
    assert_eq!(env.up.started(), 0, "{:?}", env.up.requests());
    // And the proxy still forwards the real thing.
    let r = call(
        &env,
        get("/_matrix/federation/v1/version", Some("a.example")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(env.up.started(), 1);
}

/// Paths with dot segments (also ones hidden behind `%2F`), an encoded `\\`
/// or `.`, or a literal `\\`, are refused with 400 `M_UNRECOGNIZED` before
/// anything is forwarded: a hop behind fedpin that normalises paths would
/// otherwise turn `/_matrix/federation/../client/v3/login` into a
/// non-federation path. Real federation paths with percent-encoded IDs
/// (room version 3 event IDs carry `%2F`) still pass byte for byte.
#[tokio::test]
async fn dot_segments_and_encoded_separators_are_refused_before_forwarding() {
    let env = start(Opts::default()).await;
    let bad = [
        "/_matrix/federation/../client/v3/login",
        "/_matrix/federation/v1/..%2f..%2f_synapse/admin/v1/users",
        "/_matrix/federation/v1/..%2F..%2F_synapse/admin/v1/users",
        "/_matrix/federation/v1/%2e%2e/%2E%2E/client/v3/login",
        "/_matrix/federation/v1/x%5c..%5Cclient",
        "/_matrix/federation/v1/x\\..\\client",
        "/_matrix/federation/./v1/version",
        "/_matrix/federation/v1/..",
        "/_matrix/federation/v1/.",
        "/_matrix/key/../../_synapse/admin/v1/users",
        "/_matrix/key/v2/query/%2e%2e",
        "/_matrix/federation/v1/version/..?x=1",
        "/_matrix/federation/v1/x%2F.%2F..%2Fclient",
    ];
    for path in bad {
        // Raw bytes, so no client library can normalise the path on the way.
        let mut raw = Raw::new(tls(&env, &[b"http/1.1"]).await);
        raw.send(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\n\r\n",
                xmatrix("a.example")
            )
            .as_bytes(),
        )
        .await;
        let h = raw.head().await;
        assert_eq!(h.status, 400, "{path}: {h:?}");
        let body = raw.body(&h).await;
        let j: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
        assert_eq!(j["errcode"], "M_UNRECOGNIZED", "{path}: {j}");
    }
    // The same over h2.
    let (mut s, _conn) = Sender::open(tls(&env, &[b"h2"]).await).await;
    let r = s
        .send(get(
            "/_matrix/federation/v1/..%2f..%2f_synapse/admin/v1/users",
            Some("a.example"),
        ))
        .await
        .unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    r.assert_matrix_error(400, "M_UNRECOGNIZED");
    assert_eq!(env.up.started(), 0, "{:?}", env.up.requests());

    // Real federation paths, with percent-encoded room and event IDs, pass untouched.
    let good = [
        "/_matrix/federation/v1/event/%24Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg",
        "/_matrix/federation/v1/event/%24acR1l0raoZnm60CBwAVgqbZqoO%2FmYU81xysh1u7XcJk",
        "/_matrix/federation/v1/state_ids/%21room%3Aexample.org?event_id=%24event%3Aexample.org",
        "/_matrix/federation/v1/make_join/%21room%3Aexample.org/%40alice%3Aa.example?ver=10",
        "/_matrix/federation/v2/send_join/%21room%3Aexample.org/%24event%3Aexample.org",
        "/_matrix/federation/v1/query/profile?user_id=%40a%3Aa.example&field=../x",
        "/_matrix/key/v2/server",
    ];
    for path in good {
        let r = call(&env, get(path, Some("a.example"))).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    let reqs = env.up.requests();
    let seen: Vec<&str> = reqs.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(seen, good);
}

// ---------------------------------------------------------------------------
// 3. X-Matrix authorization
// ---------------------------------------------------------------------------

#[tokio::test]
async fn federation_requests_need_a_well_formed_x_matrix_header_key_requests_do_not() {
    let env = start(Opts::default()).await;
    let path = "/_matrix/federation/v1/query/profile?user_id=%40a%3Aa.example";

    let r = call(&env, get(path, None)).await;
    r.assert_matrix_error(401, "M_UNAUTHORIZED");

    for bad in [
        r#"X-Matrix origin="unterminated"#,
        r#"X-Matrix key="ed25519:1",sig="x""#,
        r#"X-Matrix origin="not a server name",key="ed25519:1",sig="x""#,
        r#"X-Matrix origin="a.example",origin="b.example""#,
        "X-Matrix origin",
        "Bearer syt_secret_token",
    ] {
        let mut req = get(path, None);
        req.headers_mut()
            .insert(hyper::header::AUTHORIZATION, bad.parse().unwrap());
        let r = call(&env, req).await;
        r.assert_matrix_error(401, "M_UNAUTHORIZED");
    }
    // Two X-Matrix headers naming different origins.
    let mut req = get(path, Some("a.example"));
    req.headers_mut().append(
        hyper::header::AUTHORIZATION,
        xmatrix("b.example").parse().unwrap(),
    );
    call(&env, req)
        .await
        .assert_matrix_error(401, "M_UNAUTHORIZED");
    assert_eq!(env.up.started(), 0, "{:?}", env.up.requests());

    // Key requests are unauthenticated by design: forwarded.
    let r = call(&env, get("/_matrix/key/v2/server", None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(
        &env,
        fed_req(
            Method::POST,
            "/_matrix/key/v2/query",
            None,
            r#"{"server_keys":{}}"#,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // A signed federation request is forwarded too.
    let r = call(&env, get(path, Some("a.example"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let reqs = env.up.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[0].uri, "/_matrix/key/v2/server");
    assert!(reqs[0].all("authorization").is_empty());
    assert_eq!(reqs[2].uri, path);
}

// ---------------------------------------------------------------------------
// 4. Origin deny / allow lists, hot swap
// ---------------------------------------------------------------------------

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn deny_origins_refuse_with_403_and_a_rule_change_applies_without_restart() {
    let env = start(Opts::rules(|r| r.deny_origins = set(&["spam.example"]))).await;
    let path = "/_matrix/federation/v1/send/1";
    for origin in ["spam.example", "spam.example:8448"] {
        let r = call(&env, fed_req(Method::PUT, path, Some(origin), "{}")).await;
        r.assert_matrix_error(403, "M_FORBIDDEN");
    }
    // Another spelling of the same server is refused before the rules run:
    // Synapse would authenticate the bytes "SPAM.Example", not the rule's name.
    let r = call(&env, fed_req(Method::PUT, path, Some("SPAM.Example"), "{}")).await;
    r.assert_matrix_error(401, "M_UNAUTHORIZED");
    // Key queries signed by a denied origin are refused as well.
    call(&env, get("/_matrix/key/v2/server", Some("spam.example")))
        .await
        .assert_matrix_error(403, "M_FORBIDDEN");
    assert_eq!(env.up.started(), 0, "{:?}", env.up.requests());
    // Names that merely contain the denied one are not denied.
    for origin in ["good.example", "notspam.example", "spam.example.org"] {
        let r = call(&env, fed_req(Method::PUT, path, Some(origin), "{}")).await;
        assert_eq!(r.status, StatusCode::OK, "{origin}: {}", r.text());
    }
    assert_eq!(env.up.started(), 3);

    // Hot change on a connection opened before the change.
    let (mut s, _c) = Sender::open(tls(&env, &[b"http/1.1"]).await).await;
    let r = s
        .send(fed_req(Method::PUT, path, Some("spam.example"), "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    env.proxy.set_rules(EdgeRules::default());
    let r = s
        .send(fed_req(Method::PUT, path, Some("spam.example"), "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let last = env.up.requests().pop().unwrap();
    assert_eq!(last.one("authorization"), Some(xmatrix("spam.example")));
}

/// The outside review's bypass: fedpin and Synapse read different origins
/// from the same bytes. Each request below is one Synapse would authenticate
/// as the denied `spam.example` (or could read differently from fedpin); the
/// edge refuses every one with 401 before any rule runs, and none reaches
/// the homeserver.
#[tokio::test]
async fn x_matrix_origin_hidden_from_the_edge_is_refused_before_the_rules() {
    let env = start(Opts::rules(|r| r.deny_origins = set(&["spam.example"]))).await;
    let path = "/_matrix/federation/v1/send/1";
    let good = xmatrix("good.example");
    let spam = xmatrix("spam.example");
    let single: Vec<String> = vec![
        // A quoted comma: Synapse splits on it, the last origin wins.
        format!(
            r#"X-Matrix origin="good.example",key="ed25519:1",sig="c2ln",x="1,origin=spam.example,y=2""#
        ),
        // A repeated key in another case.
        r#"X-Matrix origin="good.example",key="ed25519:1",sig="c2ln",Origin="spam.example""#.into(),
        // KELVIN SIGN: Python's str.lower() makes it "key"... and "origin"
        // has no such letter, so the repeat is hidden in `key` instead.
        "X-Matrix origin=\"spam.example\",key=\"ed25519:1\",sig=\"c2ln\",\u{212a}ey=\"ed25519:2\""
            .into(),
        // Another spelling of the scheme (Synapse ignores the header).
        r#"x-matrix origin="good.example",key="ed25519:1",sig="c2ln""#.into(),
    ];
    for h in &single {
        let mut req = fed_req(Method::PUT, path, None, "{}");
        let v = hyper::header::HeaderValue::from_bytes(h.as_bytes()).unwrap();
        req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
        call(&env, req)
            .await
            .assert_matrix_error(401, "M_UNAUTHORIZED");
    }
    // Two Authorization headers: Synapse takes the last X-Matrix one.
    for (first, second) in [
        (good.as_str(), spam.as_str()),
        (good.as_str(), good.as_str()),
        (good.as_str(), "Bearer syt_x"),
        ("Bearer syt_x", spam.as_str()),
    ] {
        let mut req = fed_req(Method::PUT, path, None, "{}");
        req.headers_mut()
            .append(hyper::header::AUTHORIZATION, first.parse().unwrap());
        req.headers_mut()
            .append(hyper::header::AUTHORIZATION, second.parse().unwrap());
        call(&env, req)
            .await
            .assert_matrix_error(401, "M_UNAUTHORIZED");
    }
    assert_eq!(env.up.started(), 0, "{:?}", env.up.requests());
    // The same server, correctly written, is served.
    let r = call(&env, fed_req(Method::PUT, path, Some("good.example"), "{}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(env.up.started(), 1);
}

#[tokio::test]
async fn allow_origins_serve_only_the_listed_servers() {
    let env = start(Opts::rules(|r| r.allow_origins = set(&["friend.example"]))).await;
    let path = "/_matrix/federation/v1/version";
    for origin in ["friend.example", "friend.example:8448"] {
        let r = call(&env, get(path, Some(origin))).await;
        assert_eq!(r.status, StatusCode::OK, "{origin}: {}", r.text());
    }
    for origin in [
        "stranger.example",
        "friend.example.evil",
        "evil-friend.example",
    ] {
        call(&env, get(path, Some(origin)))
            .await
            .assert_matrix_error(403, "M_FORBIDDEN");
    }
    assert_eq!(env.up.started(), 2);
    env.proxy.set_rules(EdgeRules {
        allow_origins: set(&["friend.example", "stranger.example"]),
        ..EdgeRules::default()
    });
    assert_eq!(
        call(&env, get(path, Some("stranger.example"))).await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------
// 5. Rate limits
// ---------------------------------------------------------------------------

/// Checks a 429: `Retry-After` whole seconds ≥ 1, JSON `retry_after_ms`.
/// Counts `r` as served (200) or as limited (429, checked by
/// [`assert_limited`]) in `(served, limited)`; any other status fails.
fn tally(r: &HttpReply, (ok, limited): &mut (usize, usize)) {
    match r.status.as_u16() {
        200 => *ok += 1,
        429 => {
            assert_limited(r);
            *limited += 1;
        }
        other => panic!("unexpected {other}: {}", r.text()),
    }
}

fn assert_limited(r: &HttpReply) {
    r.assert_matrix_error(429, "M_LIMIT_EXCEEDED");
    let ra: u64 = r
        .headers
        .get(hyper::header::RETRY_AFTER)
        .expect("429 without Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(ra >= 1, "Retry-After {ra}");
    let ms = r.json()["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms is a number");
    assert!(
        ms > 0 && ms <= ra * 1000,
        "retry_after_ms {ms} vs Retry-After {ra}"
    );
}

#[tokio::test]
async fn per_origin_rate_limit_answers_429_with_retry_after_and_spares_other_origins() {
    let env = start(Opts::rules(|r| r.per_origin = rate(2, 3))).await;
    let (mut s, _c) = Sender::open(tls(&env, &[b"http/1.1"]).await).await;
    let path = "/_matrix/federation/v1/send/1";
    let mut counts = (0, 0);
    for _ in 0..10 {
        let r = s
            .send(fed_req(Method::PUT, path, Some("a.example"), "{}"))
            .await
            .unwrap();
        tally(&r, &mut counts);
    }
    let (ok, limited) = counts;
    assert!(ok >= 3, "the burst of 3 is served ({ok} served)");
    assert!(
        limited >= 5,
        "most of 10 quick requests are limited ({limited})"
    );
    assert_eq!(
        env.up.started(),
        ok,
        "limited requests never reach the homeserver"
    );
    // Another origin, same client IP and connection: still served.
    let r = s
        .send(fed_req(Method::PUT, path, Some("b.example"), "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The limited origin recovers once its bucket refills.
    let start_wait = Instant::now();
    loop {
        let r = s
            .send(fed_req(Method::PUT, path, Some("a.example"), "{}"))
            .await
            .unwrap();
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(5),
            "a.example never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn per_ip_rate_limit_applies_across_origins_and_key_requests() {
    let env = start(Opts::rules(|r| r.per_ip = rate(2, 3))).await;
    let (mut s, _c) = Sender::open(tls(&env, &[b"http/1.1"]).await).await;
    let mut counts = (0, 0);
    for i in 0..10 {
        // Different origins, and unauthenticated key requests: all one IP.
        let req = if i % 3 == 2 {
            get("/_matrix/key/v2/server", None)
        } else {
            get(
                "/_matrix/federation/v1/version",
                Some(&format!("o{i}.example")),
            )
        };
        tally(&s.send(req).await.unwrap(), &mut counts);
    }
    let (ok, limited) = counts;
    assert!(ok >= 3 && limited >= 5, "{ok} served, {limited} limited");
    assert_eq!(env.up.started(), ok);
}

// ---------------------------------------------------------------------------
// 6. Body size
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oversized_bodies_get_413() {
    const MAX: u64 = 64 * 1024;
    let handler: Handler = Arc::new(|rec: &Recorded| {
        Reply::Now(up_full(200, format!(r#"{{"len":{}}}"#, rec.body.len())))
    });
    let env = start(Opts::settings(|s| s.max_body = MAX).with_handler(handler)).await;
    let path = "/_matrix/federation/v1/send/big";

    // Declared too large: refused from the head alone, the body is never awaited.
    let mut raw = Raw::new(tls(&env, &[b"http/1.1"]).await);
    raw.send(
        format!(
            "PUT {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n{{\"a\":",
            xmatrix("a.example"),
            MAX + 1
        )
        .as_bytes(),
    )
    .await;
    let h = raw.head().await;
    assert_eq!(h.status, 413, "{h:?}");
    let body = raw.body(&h).await;
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["errcode"], "M_TOO_LARGE");
    assert_eq!(
        env.up.started(),
        0,
        "a declared-oversized request reached the homeserver"
    );

    // Exactly the limit is fine.
    let exact = Bytes::from(pattern(MAX as usize));
    let r = call(
        &env,
        fed_req(Method::PUT, path, Some("a.example"), exact.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["len"], MAX);
    assert!(env.up.requests()[0].body == exact);

    // Chunked (no length declared) and too long: 413 once the limit is crossed.
    let mut raw = Raw::new(tls(&env, &[b"http/1.1"]).await);
    raw.send(
        format!(
            "PUT {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            xmatrix("a.example")
        )
        .as_bytes(),
    )
    .await;
    let mut wr = raw.wr.take().unwrap();
    let wire = chunked(&pattern(4 * MAX as usize), 8 * 1024);
    let writer = tokio::spawn(async move {
        // The edge may stop reading once it has answered: errors are expected.
        let _ = wr.write_all(&wire).await;
        let _ = wr.flush().await;
    });
    let h = raw.head().await;
    assert_eq!(h.status, 413, "{h:?}");
    let j: serde_json::Value = serde_json::from_slice(&raw.body(&h).await).unwrap();
    assert_eq!(j["errcode"], "M_TOO_LARGE");
    let _ = bounded("body writer", writer).await;
    assert_eq!(
        env.up.requests().len(),
        1,
        "the homeserver must not receive a complete oversized request"
    );
    // If its head was forwarded, the homeserver saw the body cut off.
    assert!(
        wait_until(STEP, || env.up.started()
            == 1 + env.up.aborted.load(Ordering::SeqCst))
        .await,
        "started {}, aborted {}",
        env.up.started(),
        env.up.aborted.load(Ordering::SeqCst)
    );
}

/// A request head larger than max_header_bytes is refused, not forwarded.
#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let env = start(Opts::settings(|s| s.max_header_bytes = 16 * 1024)).await;
    let mut raw = Raw::new(tls(&env, &[b"http/1.1"]).await);
    let filler = "a".repeat(8 * 1024);
    let mut head = format!(
        "GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {}\r\n",
        xmatrix("a.example")
    );
    for i in 0..16 {
        head.push_str(&format!("X-Filler-{i}: {filler}\r\n"));
    }
    head.push_str("\r\n");
    let wr = raw.wr.as_mut().unwrap();
    let _ = wr.write_all(head.as_bytes()).await;
    let _ = wr.flush().await;
    let closed = raw.closed_within(STEP).await;
    assert!(closed.is_some(), "the edge kept a 130 KB head open");
    let text = String::from_utf8_lossy(&raw.buf).into_owned();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "unexpected answer to an oversized head: {text:?}"
    );
    assert_eq!(env.up.started(), 0);
}

// ---------------------------------------------------------------------------
// 7. Slow-loris, handshake and idle timeouts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn slow_loris_head_is_cut_off_while_other_clients_are_served() {
    let env = start(Opts::settings(|s| {
        (s.header_timeout, s.idle_timeout) = (secs(1), secs(30))
    }))
    .await;
    let mut loris = Raw::new(tls(&env, &[b"http/1.1"]).await);
    let began = Instant::now();
    loris
        .send(
            format!("GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ")
                .as_bytes(),
        )
        .await;
    // Trickle one byte every 100 ms from its own task (bytes keep flowing, so
    // only the head deadline can end this).
    let mut wr = loris.wr.take().unwrap();
    let trickler = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b"a").await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    });
    // Meanwhile an honest peer is served, twice, on fresh connections.
    for _ in 0..2 {
        let r = call(
            &env,
            get("/_matrix/federation/v1/version", Some("a.example")),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let closed = loris.closed_within(Duration::from_secs(6)).await;
    trickler.abort();
    let total = began.elapsed();
    assert!(
        closed.is_some(),
        "a trickled request head was kept open for 6 s"
    );
    assert!(
        total >= Duration::from_millis(900),
        "cut off before the 1 s head deadline ({total:?})"
    );
    let text = String::from_utf8_lossy(&loris.buf).into_owned();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer to a slow head: {text:?}"
    );
    assert_eq!(
        env.up.started(),
        2,
        "the slow request never reached the homeserver"
    );
}

#[tokio::test]
async fn silent_tls_clients_are_dropped_after_the_handshake_timeout() {
    let env = start(Opts::settings(|s| s.handshake_timeout = secs(1))).await;
    let mut tcp = TcpStream::connect(env.addr).await.unwrap();
    let began = Instant::now();
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(6), tcp.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a client that never starts TLS is still connected after 6 s"
    );
    assert!(began.elapsed() >= Duration::from_millis(900));
    assert!(wait_until(STEP, || handshakes(&env, HandshakeResult::Timeout) == 1).await);
    assert!(
        connections_drain(&env).await,
        "the connection slot was not released"
    );
}

#[tokio::test]
async fn idle_http1_keep_alive_connection_is_closed_after_idle_timeout() {
    let env = start(idle_after_1s()).await;
    let mut raw = Raw::new(tls(&env, &[b"http/1.1"]).await);
    raw.send(format!("GET /_matrix/key/v2/server HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let h = raw.head().await;
    assert_eq!(h.status, 200);
    raw.body(&h).await;
    let closed = raw.closed_within(Duration::from_secs(5)).await;
    let closed = closed.expect("an idle keep-alive connection stayed open for 5 s");
    assert!(
        closed >= Duration::from_millis(800),
        "closed too early: {closed:?}"
    );
    assert!(connections_drain(&env).await);
}

/// How many times the edge has parked an idle HTTP/1.1 connection.
fn parked(env: &Env) -> u64 {
    env.proxy.stats().parked.load(Ordering::SeqCst)
}

/// An idle HTTP/1.1 connection is parked (hyper's connection and buffers
/// released, the TLS stream kept) and serves the client's next request on
/// the same TLS stream, including a head whose first half hyper had read
/// before parking.
#[tokio::test]
async fn parked_http1_connection_serves_the_next_request_on_the_same_stream() {
    let env = start(Opts::settings(|s| s.idle_timeout = secs(30))).await;
    let mut raw = Raw::new(tls(&env, &[b"http/1.1"]).await);
    let req = format!("GET /_matrix/key/v2/server HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let (first, rest) = req.split_at(20);
    for round in 1..=2 {
        raw.send(req.as_bytes()).await;
        let h = raw.head().await;
        assert_eq!(h.status, 200, "round {round}");
        raw.body(&h).await;
        if round == 2 {
            // Half of the next head before the quiet second: parked with
            // those bytes in hyper's buffer.
            raw.send(first.as_bytes()).await;
        }
        assert!(
            wait_until(STEP, || parked(&env) == round).await,
            "the idle connection was not parked (round {round})"
        );
    }
    raw.send(rest.as_bytes()).await;
    let h = raw.head().await;
    assert_eq!(h.status, 200, "the head split around parking");
    raw.body(&h).await;
    // A head that stalls on a connection that has served nothing yet is
    // left to hyper's header timeout, not parked.
    raw.send(first.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    raw.send(rest.as_bytes()).await;
    let h = raw.head().await;
    assert_eq!(h.status, 200, "a stalled head on an unparked connection");
    assert!(
        h.headers
            .iter()
            .all(|(k, v)| !(k.eq_ignore_ascii_case("connection") && v == "close")),
        "{:?}",
        h.headers
    );
    raw.body(&h).await;
    assert_eq!(
        env.up.requests().len(),
        4,
        "each request reached the homeserver once"
    );
    assert_eq!(env.proxy.stats().connections.load(Ordering::SeqCst), 1);
}

/// A connection whose request is waiting for the homeserver (within
/// request_timeout) is busy, not idle.
#[tokio::test]
async fn a_request_waiting_on_the_homeserver_is_not_cut_by_the_idle_timeout() {
    let handler: Handler =
        Arc::new(|_: &Recorded| Reply::After(Duration::from_secs(2), up_full(200, "{}")));
    let env = start(
        Opts::settings(|s| (s.idle_timeout, s.request_timeout) = (secs(1), secs(5)))
            .with_handler(handler),
    )
    .await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let (mut s, _c) = Sender::open(tls(&env, &[alpn]).await).await;
        let r = s
            .send(get("/_matrix/federation/v1/backfill/x", Some("a.example")))
            .await;
        assert_eq!(
            r.map(|r| r.status),
            Ok(StatusCode::OK),
            "{}",
            String::from_utf8_lossy(alpn)
        );
    }
}

#[tokio::test]
async fn idle_h2_connection_is_closed_after_idle_timeout() {
    let env = start(idle_after_1s()).await;
    let t = tls(&env, &[b"h2"]).await;
    assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut s, conn) = Sender::open(t).await;
    let r = s.send(get("/_matrix/key/v2/server", None)).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let began = Instant::now();
    // The client only answers the edge's own frames (PING acks); it sends no requests.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "an idle h2 connection stayed open for 5 s (idle_timeout = 1 s)"
    );
    assert!(began.elapsed() >= Duration::from_millis(800));
}

// ---------------------------------------------------------------------------
// 8. Homeserver down or slow
// ---------------------------------------------------------------------------

/// This thread's log, at `level` and above, into a file read back with
/// `std::fs::read_to_string(file.path())` (a `Mutex<File>` is a
/// `MakeWriter`), while the guard lives. `#[tokio::test]` runs every task on
/// the test's thread; an edge on lanes would log from theirs.
fn thread_log(
    level: tracing::Level,
) -> (tempfile::NamedTempFile, tracing::subscriber::DefaultGuard) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(Mutex::new(log.reopen().unwrap()))
        .with_max_level(level)
        .with_ansi(false)
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

/// What [`thread_log`] wrote: all of it, and its lines that contain `needle`.
fn logged(log: &tempfile::NamedTempFile, needle: &str) -> (String, Vec<String>) {
    let logs = std::fs::read_to_string(log.path()).unwrap();
    let lines = logs
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect();
    (logs, lines)
}

/// Also: the warning carries the connection's span (client address, pin
/// generation), which is entered around each event, not on every poll.
/// `#[tokio::test]` runs on this thread, so the thread's subscriber sees
/// everything (no lanes: their threads would log elsewhere).
#[tokio::test]
async fn homeserver_down_gives_502_json() {
    let (log, _guard) = thread_log(tracing::Level::INFO);
    // A port that was just free: nothing listens there.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let env = start(Opts {
        upstream: Some(format!("http://127.0.0.1:{port}").parse().unwrap()),
        ..Opts::settings(|s| s.lanes = 0)
    })
    .await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let (mut s, _c) = Sender::open(tls(&env, &[alpn]).await).await;
        let r = s
            .send(get("/_matrix/federation/v1/version", Some("a.example")))
            .await
            .unwrap();
        r.assert_matrix_error(502, "M_UNKNOWN");
        // The body says what happened, not an internal error dump.
        assert!(
            r.json()["error"].as_str().unwrap().contains("homeserver"),
            "{}",
            r.text()
        );
    }
    let (logs, warned) = logged(&log, "homeserver unreachable");
    assert_eq!(warned.len(), 2, "one warning per request:\n{logs}");
    for line in warned {
        assert!(
            line.contains("connection{client_addr=127.0.0.1:") && line.contains("pins_generation="),
            "the warning lacks the connection's span: {line}"
        );
    }
}

#[tokio::test]
async fn slow_homeserver_gives_504_json_after_request_timeout() {
    let handler: Handler = Arc::new(|rec: &Recorded| {
        if rec.uri.contains("slow") {
            Reply::After(Duration::from_secs(8), up_full(200, "{}"))
        } else {
            Reply::Now(up_full(200, r#"{"upstream":"ok"}"#))
        }
    });
    let env =
        start(Opts::settings(|s| s.request_timeout = Duration::from_secs(1)).with_handler(handler))
            .await;
    let (mut s, _c) = Sender::open(tls(&env, &[b"http/1.1"]).await).await;
    let began = Instant::now();
    let r = s
        .send(get("/_matrix/federation/v1/event/slow", Some("a.example")))
        .await
        .unwrap();
    let took = began.elapsed();
    r.assert_matrix_error(504, "M_UNKNOWN");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "504 after {took:?}"
    );
    // The client connection is still usable afterwards.
    let r = s
        .send(get("/_matrix/federation/v1/version", Some("a.example")))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------
// 9. Certificate reload
// ---------------------------------------------------------------------------

/// The leaf a fresh full handshake sees.
async fn served_leaf(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let t = tls_with(addr, client_config(&ca.cert, &[b"http/1.1"], None))
        .await
        .expect("handshake with the inbound edge");
    t.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn certificate_reload_swaps_good_pairs_and_keeps_the_old_one_on_bad_ones() {
    let env = start(Opts::default()).await;
    assert_eq!(served_leaf(env.addr, &env.ca).await, env.server.cert);
    let certs = env.proxy.certs();
    assert!(
        !certs.reload().unwrap(),
        "unchanged files are not a new pair"
    );

    // A renewal: new pair, renamed over the old files.
    let b = leaf(&env.ca, &[SERVER]);
    replace_file(&env.cert_path, &cert_pem(&b));
    replace_file(&env.key_path, &key_pem(&b));
    assert!(certs.reload().unwrap(), "a good new pair is taken");
    assert_eq!(served_leaf(env.addr, &env.ca).await, b.cert);
    // The served chain is the new one for proxied requests too.
    let r = call(&env, get("/_matrix/key/v2/server", None)).await;
    assert_eq!(r.status, StatusCode::OK);

    // Half a renewal: certificate from one pair, key from another.
    let c = leaf(&env.ca, &[SERVER]);
    let d = leaf(&env.ca, &[SERVER]);
    replace_file(&env.cert_path, &cert_pem(&c));
    replace_file(&env.key_path, &key_pem(&d));
    let e = certs
        .reload()
        .expect_err("a mismatched key must be refused");
    assert!(e.to_string().contains("does not match"), "{e}");
    assert_eq!(
        served_leaf(env.addr, &env.ca).await,
        b.cert,
        "old pair stays in force"
    );

    // Garbage in both files.
    replace_file(&env.cert_path, "not a certificate\n");
    replace_file(
        &env.key_path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    assert!(certs.reload().is_err());
    assert_eq!(served_leaf(env.addr, &env.ca).await, b.cert);

    // A valid certificate with a garbage key, and a deleted key file.
    replace_file(&env.cert_path, &cert_pem(&c));
    assert!(certs.reload().is_err());
    std::fs::remove_file(&env.key_path).unwrap();
    assert!(certs.reload().is_err());
    assert_eq!(served_leaf(env.addr, &env.ca).await, b.cert);

    // The next complete renewal is taken again.
    replace_file(&env.key_path, &key_pem(&c));
    assert!(certs.reload().unwrap());
    assert_eq!(served_leaf(env.addr, &env.ca).await, c.cert);
    assert_eq!(certs.reload_counts(), (2, 4));
}

/// The daemon watches the certificate files and re-reads its config.
#[tokio::test]
async fn daemon_picks_up_a_renewed_certificate_and_reloads_edge_rules() {
    let ca = root("fedpin inbound daemon CA");
    let a = leaf(&ca, &[SERVER]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pins.toml"), "version = 1\n").unwrap();
    std::fs::write(d.join("fullchain.pem"), cert_pem(&a)).unwrap();
    std::fs::write(d.join("privkey.pem"), key_pem(&a)).unwrap();
    let up = upstream(ok_handler()).await;
    let config_text = |extra: &str| {
        format!(
            "pins = \"pins.toml\"\n\n[inbound]\nlisten = \"127.0.0.1:0\"\ncert = \"fullchain.pem\"\nkey = \"privkey.pem\"\nupstream = \"http://{}\"\n{extra}",
            up.addr
        )
    };
    let config_path = d.join("fedpin.toml");
    std::fs::write(&config_path, config_text("")).unwrap();
    let config = fedpin::config::Config::load(&config_path).unwrap();
    let daemon = fedpin::daemon::Daemon::start(&config).await.unwrap();
    let addr = daemon.inbound.as_ref().expect("inbound configured").1;
    assert_eq!(served_leaf(addr, &ca).await, a.cert);

    // certbot-style renewal: both files replaced by rename.
    let b = leaf(&ca, &[SERVER]);
    replace_file(&d.join("fullchain.pem"), &cert_pem(&b));
    replace_file(&d.join("privkey.pem"), &key_pem(&b));
    let began = Instant::now();
    loop {
        if served_leaf(addr, &ca).await == b.cert {
            break;
        }
        assert!(
            began.elapsed() < STEP,
            "the renewed certificate was not picked up within {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A config edit adds a deny rule; reloading applies it to new requests.
    let (mut s, _c) = Sender::open(
        tls_with(addr, client_config(&ca.cert, &[b"http/1.1"], None))
            .await
            .unwrap(),
    )
    .await;
    let req = || get("/_matrix/federation/v1/version", Some("spam.example"));
    assert_eq!(s.send(req()).await.unwrap().status, StatusCode::OK);
    std::fs::write(
        &config_path,
        config_text("deny_origins = [\"Spam.Example\"]\n"),
    )
    .unwrap();
    fedpin::daemon::reload_config(&daemon, &config_path);
    s.send(req())
        .await
        .unwrap()
        .assert_matrix_error(403, "M_FORBIDDEN");
    // A broken config edit keeps the running rules.
    std::fs::write(&config_path, "pins = \n[inbound\n").unwrap();
    fedpin::daemon::reload_config(&daemon, &config_path);
    s.send(req())
        .await
        .unwrap()
        .assert_matrix_error(403, "M_FORBIDDEN");
    daemon.stop();
}

// ---------------------------------------------------------------------------
// 10. HTTP/2 and HTTP/1.1
// ---------------------------------------------------------------------------

#[tokio::test]
async fn h2_and_http1_clients_are_both_served_and_the_homeserver_gets_http1_with_host() {
    let handler: Handler = Arc::new(|rec: &Recorded| {
        Reply::Now(up_full(200, format!(r#"{{"len":{}}}"#, rec.body.len())))
    });
    let env = start(Opts::handler(handler)).await;
    let path = "/_matrix/federation/v1/query/profile?user_id=%40a%3Aa.example&field=displayname";

    // h2.
    let t = tls(&env, &[b"h2", b"http/1.1"]).await;
    assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut s, _c) = Sender::open(t).await;
    let r = s.send(get(path, Some("a.example"))).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_2);
    let body = Bytes::from(pattern(300_000));
    let r = s
        .send(fed_req(
            Method::PUT,
            "/_matrix/federation/v1/send/h2txn",
            Some("a.example"),
            body.clone(),
        ))
        .await
        .unwrap();
    assert_eq!(r.json()["len"], 300_000);
    // Several streams at once on the one connection.
    let Sender::H2(h2) = &s else { unreachable!() };
    let mut joins = Vec::new();
    for i in 0..5 {
        let mut h2 = h2.clone();
        joins.push(tokio::spawn(async move {
            let req = Request::get(format!(
                "https://{HOST}/_matrix/federation/v1/event/%24e{i}"
            ))
            .header(hyper::header::AUTHORIZATION, xmatrix("a.example"))
            .body(Full::new(Bytes::new()))
            .unwrap();
            h2.send_request(req).await.map(|r| r.status())
        }));
    }
    for j in joins {
        assert_eq!(
            bounded("h2 stream", j).await.unwrap().unwrap(),
            StatusCode::OK
        );
    }

    // HTTP/1.1 by ALPN.
    let t = tls(&env, &[b"http/1.1"]).await;
    assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut s1, _c1) = Sender::open(t).await;
    let r = s1.send(get(path, Some("a.example"))).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_11);

    let reqs = env.up.requests();
    assert_eq!(reqs.len(), 8, "{reqs:?}");
    for (i, rec) in reqs.iter().enumerate() {
        assert_eq!(rec.version, Version::HTTP_11, "request {i}");
        assert_eq!(
            rec.one("host").as_deref(),
            Some(HOST),
            "request {i}: {:?}",
            rec.headers
        );
        assert_eq!(
            rec.one("authorization"),
            Some(xmatrix("a.example")),
            "request {i}"
        );
        assert_eq!(rec.one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(rec.one("x-forwarded-proto").as_deref(), Some("https"));
    }
    assert_eq!(reqs[0].uri, path);
    assert_eq!(reqs[1].uri, "/_matrix/federation/v1/send/h2txn");
    assert!(reqs[1].body == body);
    assert_eq!(reqs[7].uri, path);
}

// ---------------------------------------------------------------------------
// 11. Mutual pinned TLS
// ---------------------------------------------------------------------------

fn peer_pins(genuine: &Leaf) -> String {
    format!(
        "version = 1\n[policy]\nunpinned = \"deny\"\n\n[[peer]]\nserver_name = \"{PEER}\"\npins = [\"{}\"]\n",
        common::pin(&genuine.cert)
    )
}

/// Starts an edge asking for client certificates (`mode`) whose pin file pins
/// PEER to a client key minted under the edge's CA (returned).
async fn start_mtls(mode: ClientAuth) -> (Env, Leaf) {
    let mut env = start(Opts {
        settings: InboundSettings {
            client_auth: mode,
            ..Opts::default().settings
        },
        pin_peer: true,
        ..Opts::default()
    })
    .await;
    let genuine = env.client.take().unwrap();
    (env, genuine)
}

#[tokio::test]
async fn mutual_tls_require_accepts_the_pinned_client_bound_to_its_origin() {
    let (env, genuine) = start_mtls(ClientAuth::Require).await;
    let impostor = leaf(&env.ca, &[PEER]);
    let path = "/_matrix/federation/v1/version";
    let with = |c: Option<&Leaf>| client_config(&env.ca.cert, &[b"h2", b"http/1.1"], c);

    // The pinned key, X-Matrix origin = its name (with or without port): served.
    for origin in [PEER, "peer.fedpin.test:8448"] {
        let r = try_call(env.addr, with(Some(&genuine)), get(path, Some(origin)))
            .await
            .unwrap_or_else(|e| panic!("pinned client refused: {e}"));
        assert_eq!(r.status, StatusCode::OK, "{origin}: {}", r.text());
    }
    assert_eq!(env.up.started(), 2);
    assert!(env.hub.recent().is_empty(), "{:?}", env.hub.recent());

    // The pinned key speaking for another server: 401.
    let r = try_call(
        env.addr,
        with(Some(&genuine)),
        get(path, Some("other.example")),
    )
    .await
    .unwrap();
    r.assert_matrix_error(401, "M_UNAUTHORIZED");
    assert_eq!(env.up.started(), 2);

    // Another key for the same name (CA-valid): refused at the handshake, with an inbound alert.
    let before = handshakes(&env, HandshakeResult::PinMismatch);
    let r = try_call(env.addr, with(Some(&impostor)), get(path, Some(PEER))).await;
    assert!(r.is_err(), "an unpinned client key was served: {r:?}");
    assert!(
        wait_until(STEP, || handshakes(&env, HandshakeResult::PinMismatch)
            > before)
        .await
    );
    let alerts = env.hub.recent();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.event, AlertEvent::PinMismatch);
    assert_eq!(a.direction, Direction::Inbound);
    assert_eq!(a.action, Action::Blocked);
    assert_eq!(a.host.as_deref(), Some(PEER));
    assert_eq!(
        a.served_chain[0].pin.as_deref(),
        Some(common::pin(&impostor.cert).to_string().as_str())
    );
    let json: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    assert_eq!(json["direction"], "inbound");
    assert_eq!(json["event"], "pin_mismatch");

    // No client certificate at all: refused.
    let r = try_call(env.addr, with(None), get(path, Some(PEER))).await;
    assert!(
        r.is_err(),
        "require served a client without a certificate: {r:?}"
    );
    // A CA-valid certificate for an unpinned name: policy.unpinned = deny.
    let stranger = leaf(&env.ca, &["stranger.example"]);
    let r = try_call(
        env.addr,
        with(Some(&stranger)),
        get(path, Some("stranger.example")),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        env.up.started(),
        2,
        "no refused client reached the homeserver"
    );

    // Key requests carry no origin: a pinned client is served.
    let r = try_call(
        env.addr,
        with(Some(&genuine)),
        get("/_matrix/key/v2/server", None),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn mutual_tls_request_serves_clients_without_a_certificate() {
    let (env, genuine) = start_mtls(ClientAuth::Request).await;
    let path = "/_matrix/federation/v1/version";
    let with = |c: Option<&Leaf>| client_config(&env.ca.cert, &[b"http/1.1"], c);
    let r = try_call(env.addr, with(None), get(path, Some("anyone.example")))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = try_call(env.addr, with(Some(&genuine)), get(path, Some(PEER)))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // A presented certificate still binds the origin.
    try_call(
        env.addr,
        with(Some(&genuine)),
        get(path, Some("anyone.example")),
    )
    .await
    .unwrap()
    .assert_matrix_error(401, "M_UNAUTHORIZED");
    // And a presented certificate that fails its pins is refused.
    let impostor = leaf(&env.ca, &[PEER]);
    assert!(
        try_call(env.addr, with(Some(&impostor)), get(path, Some(PEER)))
            .await
            .is_err()
    );
    assert_eq!(env.up.started(), 2);
}

// ---------------------------------------------------------------------------
// 12. Access log discipline
// ---------------------------------------------------------------------------

/// `#[tokio::test]` runs on a current-thread runtime, so every task the
/// proxy spawns runs on this thread and logs into the thread's default subscriber.
#[tokio::test]
async fn access_log_shows_templated_paths_and_never_identifiers_tokens_or_bodies() {
    let (log, _guard) = thread_log(tracing::Level::TRACE);

    // No lanes: their threads would log to the global subscriber.
    let env = start(Opts::settings(|s| s.lanes = 0)).await;
    let secret_sig = "U0VDUkVULVNJR05BVFVSRQ";
    let auth = format!(
        r#"X-Matrix origin="a.example",destination="{SERVER}",key="ed25519:1",sig="{secret_sig}""#
    );
    let send = |method: Method, path: &str, body: &'static str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, HOST)
            .header(hyper::header::AUTHORIZATION, auth.as_str())
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let (mut s, _c) = Sender::open(tls(&env, &[b"http/1.1"]).await).await;
    let join = "/_matrix/federation/v1/make_join/!room:hs.example/@alice:hs.example?ver=10&ver=11";
    let send_join = "/_matrix/federation/v2/send_join/%21room%3Ahs.example/%24event-SECRET-ID";
    let secret =
        r#"{"content":{"body":"SECRET-MESSAGE-CONTENT"},"access_token":"syt_SECRET_TOKEN"}"#;
    let messages = "/_matrix/client/v3/rooms/!room:hs.example/messages";
    for (method, path, body, status) in [
        (Method::GET, join, "", StatusCode::OK),
        (Method::PUT, send_join, secret, StatusCode::OK),
        // A refused request is logged the same way.
        (Method::GET, messages, "", StatusCode::NOT_FOUND),
    ] {
        let r = s.send(send(method, path, body)).await.unwrap();
        assert_eq!(r.status, status);
    }

    let (logs, access) = logged(&log, "fedpin::access");
    assert_eq!(access.len(), 3, "one access line per request:\n{logs}");
    assert!(
        access[0].contains("path=/_matrix/federation/v1/make_join/{roomId}/{userId}"),
        "{}",
        access[0]
    );
    assert!(
        access[0].contains("status=200") && access[0].contains("method=GET"),
        "{}",
        access[0]
    );
    assert!(access[0].contains(r#"origin="a.example""#), "{}", access[0]);
    assert!(
        access[1].contains("path=/_matrix/federation/v2/send_join/{roomId}/{eventId}"),
        "{}",
        access[1]
    );
    assert!(access[2].contains("status=404"), "{}", access[2]);
    for needle in [
        "!room",
        "%21room",
        "@alice",
        "alice",
        "hs.example/",
        "ver=10",
        "event-SECRET-ID",
        "SECRET",
        secret_sig,
        "X-Matrix",
        "syt_",
    ] {
        assert!(
            !logs.contains(needle),
            "the logs contain {needle:?}:\n{logs}"
        );
    }
    // The body did reach the homeserver (so it was there to leak).
    assert!(env.up.requests()[1].body.starts_with(b"{\"content\""));
}

// ---------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_stops_accepting_new_connections() {
    let env = start(Opts::default()).await;
    assert_eq!(
        call(&env, get("/_matrix/key/v2/server", None)).await.status,
        StatusCode::OK
    );
    env.shutdown.send(true).unwrap();
    let began = Instant::now();
    while TcpStream::connect(env.addr).await.is_ok() {
        assert!(began.elapsed() < STEP, "still accepting after shutdown");
        tokio::time::sleep(TICK).await;
    }
}

/// CPU time this thread has used (Linux: /proc/thread-self/stat, 100 Hz ticks).
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// Whoever holds the shutdown sender may drop it without stopping the edge
/// (serve runs "until shutdown turns true"), and an idle edge must then not
/// busy-loop on the closed channel. `#[tokio::test]` is current-thread: a
/// spinning accept loop would burn this very thread.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_dropped_shutdown_sender_neither_stops_nor_spins_the_edge() {
    let mut env = start(Opts::default()).await;
    drop(std::mem::replace(
        &mut env.shutdown,
        watch::channel(false).0,
    ));
    assert_eq!(
        call(&env, get("/_matrix/key/v2/server", None)).await.status,
        StatusCode::OK
    );
    let before = thread_cpu();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let used = thread_cpu() - before;
    assert!(
        used < Duration::from_millis(200),
        "the idle edge used {used:?} of CPU in 600 ms"
    );
    assert_eq!(
        call(&env, get("/_matrix/key/v2/server", None)).await.status,
        StatusCode::OK
    );
}

/// SPEC 4.13, inbound: a reload that revokes a client certificate's key
/// ends the open connections authenticated by it, with an alert naming the
/// client; requests on it stop being served.
#[tokio::test]
async fn inv13_reload_that_revokes_a_client_key_ends_its_open_connections() {
    revoke_open_client_connection(false).await;
}

/// The same for a connection parked while idle (no hyper connection on it
/// at the time of the reload).
#[tokio::test]
async fn inv13_reload_that_revokes_a_client_key_ends_its_parked_connections() {
    revoke_open_client_connection(true).await;
}

async fn revoke_open_client_connection(parked_first: bool) {
    let (env, genuine) = start_mtls(ClientAuth::Require).await;
    let config = client_config(&env.ca.cert, &[b"http/1.1"], Some(&genuine));
    let tls = tls_with(env.addr, config).await.unwrap();
    let mut send = net::http1_client(tls).await.unwrap();
    let path = "/_matrix/federation/v1/version";
    let r = send.send_request(get(path, Some(PEER))).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.into_body().collect().await;
    if parked_first {
        assert!(
            wait_until(STEP, || parked(&env) == 1).await,
            "the idle connection was not parked"
        );
    }

    // PEER's entry now pins another key.
    let other = leaf(&env.ca, &[PEER]);
    std::fs::write(&env.pins_path, peer_pins(&other)).unwrap();
    assert!(matches!(
        env.pins.reload(),
        fedpin::pin_store::ReloadOutcome::Reloaded(_)
    ));
    let p = env.proxy.clone();
    assert!(
        wait_until(STEP, move || p.stats().revoked.load(Ordering::Relaxed) == 1).await,
        "the connection with the revoked client key was not ended"
    );
    let again = send.send_request(get(path, Some(PEER))).await;
    assert!(
        again.is_err(),
        "a revoked client connection was still served"
    );
    assert_eq!(env.up.started(), 1);
    let alert = env
        .hub
        .recent()
        .into_iter()
        .find(|a| a.reason.contains("open connection closed after pin reload"))
        .expect("an alert names the closed connection");
    assert_eq!(alert.event, AlertEvent::PinMismatch);
    assert!(alert.peer_addr.is_some(), "{alert:?}");
}

// ----------------------------------------------------------------------
// Moved unchanged from tests/mutual.rs:
// Two fedpin deployments pinning each other in both directions: A's outbound
// presents a client certificate; B's inbound (client_auth = require) checks
// it against B's pin file and binds it to the X-Matrix origin, while A pins
// B's server key as usual.
// ----------------------------------------------------------------------

const A: &str = "a.fedpin.test";
const B: &str = "b.fedpin.test";

fn pins_for(name: &str, cert: &CertificateDer<'_>) -> Arc<PinStore> {
    let mut set = PinSet::parse(&format!(
        "version = 1\n[policy]\nunpinned = \"deny\"\n[[peer]]\nserver_name = \"{name}\"\npins = [\"{}\"]\n",
        common::pin(cert)
    ))
    .unwrap();
    set.generation = 1;
    Arc::new(PinStore::fixed(set, AlertHub::new()))
}

/// Homeserver B's federation listener (plain HTTP): echoes the origin it was given.
async fn homeserver() -> SocketAddr {
    net::plain_http(|req| async move {
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        Response::new(Full::new(Bytes::from(format!("B got: {auth}"))))
    })
    .await
}

struct World {
    public: Ca,
    b_server: Leaf,
    a_client: Leaf,
    b_inbound: SocketAddr,
    b_hub: AlertHub,
    _dir: tempfile::TempDir,
}

async fn b_side() -> World {
    let public = root("public CA");
    let b_server = leaf(&public, &[B]);
    let a_client = leaf(&public, &[A]);
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("b.pem");
    let key = dir.path().join("b.key");
    std::fs::write(&cert, pem("CERTIFICATE", b_server.cert.as_ref())).unwrap();
    std::fs::write(&key, b_server.key.serialize_pem()).unwrap();
    let b_hub = AlertHub::new();
    let core = net::only_anchor(&public.cert, &b_hub);
    let upstream: hyper::Uri = format!("http://{}", homeserver().await).parse().unwrap();
    let settings = InboundSettings {
        upstream,
        client_auth: ClientAuth::Require,
        ..InboundSettings::default()
    };
    let inbound = Arc::new(InboundProxy::new(
        settings,
        EdgeRules {
            deny_origins: HashSet::new(),
            ..EdgeRules::default()
        },
        Arc::new(CertStore::open(&cert, &key).unwrap()),
        pins_for(A, &a_client.cert),
        core,
    ));
    let (b_inbound, stop) = net::spawn_server(|l, rx| inbound.serve(l, rx)).await;
    std::mem::forget(stop);
    World {
        public,
        b_server,
        a_client,
        b_inbound,
        b_hub,
        _dir: dir,
    }
}

/// A's outbound proxy presenting `client` as its client certificate.
async fn a_outbound(w: &World, client: &Leaf) -> (SocketAddr, CertificateDer<'static>) {
    let hub = AlertHub::new();
    let core = net::only_anchor(&w.public.cert, &hub);
    let upstream = UpstreamTls::new(core, pins_for(B, &w.b_server.cert), fedpin::tls::provider())
        .with_client_auth(vec![client.cert.clone()], client.key_der());
    let ica = common::interception_ca();
    let minter = LeafMinter::from_pem(&ica.cert_pem, &ica.key_pem, 8).unwrap();
    let proxy = Arc::new(OutboundProxy::new(
        common::connect::loopback_settings(&[B]),
        Arc::new(upstream),
        Arc::new(minter),
    ));
    let (addr, stop) = net::spawn_server(|l, rx| proxy.serve(l, rx)).await;
    std::mem::forget(stop);
    (addr, ica.der)
}

/// Homeserver A sends one federation request to B through A's fedpin.
async fn send(
    proxy: SocketAddr,
    ica: &CertificateDer<'static>,
    port: u16,
    origin: &str,
) -> (u16, String) {
    try_send(proxy, ica, port, origin)
        .await
        .expect("request through the tunnel")
}

async fn try_send(
    proxy: SocketAddr,
    ica: &CertificateDer<'static>,
    port: u16,
    origin: &str,
) -> Result<(u16, String), String> {
    let tcp = common::connect::tunnel_tcp(proxy, &format!("{B}:{port}")).await;
    let cfg = net::client_config(&[ica], &[b"http/1.1"]);
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(B).unwrap(), tcp)
        .await
        .unwrap();
    let mut s = net::http1_client(tls).await.unwrap();
    let auth = format!(r#"X-Matrix origin="{origin}",destination="{B}",key="ed25519:1",sig="x""#);
    let host = format!("{B}:{port}");
    let resp = get_authorized(&mut s, "/_matrix/federation/v1/version", &host, auth).await?;
    net::status_and_body(resp).await
}

/// GETs `path` on `s` with the `host` and `authorization` headers, within 10 s.
async fn get_authorized(
    s: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
    host: &str,
    auth: String,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let req = Request::get(path)
        .header("host", host)
        .header("authorization", auth)
        .body(Empty::<Bytes>::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), s.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn two_fedpins_pin_each_other_in_both_directions() {
    let w = b_side().await;
    let port = w.b_inbound.port();

    // A presents the pinned client certificate: B serves it.
    let (proxy, ica) = a_outbound(&w, &w.a_client).await;
    let (status, body) = send(proxy, &ica, port, A).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("B got: X-Matrix origin=\"a.fedpin.test\""),
        "{body}"
    );

    // The same certificate claiming another origin: refused by B (401).
    let (status, _) = send(proxy, &ica, port, "c.fedpin.test").await;
    assert_eq!(status, 401);

    // A (or an impostor of A) with another key for the same name: B refuses
    // the client certificate with an inbound alert and the request never
    // reaches homeserver B. (With TLS 1.3 the client learns of the refusal
    // only after its side of the handshake is done, so A's homeserver sees
    // the tunnel closed rather than a 502: fail closed, reason in B's alert.)
    let other = leaf(&w.public, &[A]);
    let (proxy2, ica2) = a_outbound(&w, &other).await;
    match try_send(proxy2, &ica2, port, A).await {
        Ok((status, body)) => assert!(
            status >= 500 && !body.starts_with("B got"),
            "{status} {body}"
        ),
        Err(e) => assert!(!e.is_empty()),
    }
    let alerts = w.b_hub.recent();
    assert!(
        alerts
            .iter()
            .any(|a| a.event == AlertEvent::PinMismatch && a.direction == Direction::Inbound),
        "{alerts:?}"
    );
}

/// A client certificate with no DNS name: its key must be pinned for some
/// peer to finish the handshake, and every request's X-Matrix origin must be
/// a peer whose own entry pins that key.
#[tokio::test]
async fn nameless_client_certificate_is_bound_to_the_origin_entry() {
    let public = root("public CA");
    let server = leaf(&public, &[B]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.pem"),
        pem("CERTIFICATE", server.cert.as_ref()),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.key"), server.key.serialize_pem()).unwrap();
    // Self-signed, no subjectAltName at all.
    let nameless = |cn: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.self_signed(&key).unwrap();
        common::Leaf {
            cert: cert.der().clone(),
            key,
        }
    };
    let pinned = nameless("peer without a name");
    let other = nameless("someone else");
    let hub = AlertHub::new();
    let mut set = PinSet::parse(&format!(
        "version = 1\n[policy]\nunpinned = \"webpki\"\n[[peer]]\nserver_name = \"n.fedpin.test\"\npins = [\"{}\"]\ntrust = \"pin-only\"\n",
        common::pin(&pinned.cert)
    ))
    .unwrap();
    set.generation = 1;
    let core = net::only_anchor(&public.cert, &hub);
    let upstream: hyper::Uri = format!("http://{}", homeserver().await).parse().unwrap();
    let inbound = Arc::new(InboundProxy::new(
        InboundSettings {
            upstream,
            client_auth: ClientAuth::Require,
            ..InboundSettings::default()
        },
        EdgeRules::default(),
        Arc::new(CertStore::open(&dir.path().join("b.pem"), &dir.path().join("b.key")).unwrap()),
        Arc::new(PinStore::fixed(set, hub.clone())),
        core,
    ));
    let (addr, stop) = net::spawn_server(|l, rx| inbound.serve(l, rx)).await;
    std::mem::forget(stop);

    async fn request(
        addr: SocketAddr,
        ca: &CertificateDer<'static>,
        client: &common::Leaf,
        origin: &str,
    ) -> Result<u16, String> {
        let cfg = net::client_config_as(&[ca], &[b"http/1.1"], Some(client));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from(B).unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut s = net::http1_client(tls).await?;
        let auth = format!(r#"X-Matrix origin="{origin}",key="ed25519:1",sig="x""#);
        let path = "/_matrix/federation/v1/query/profile";
        Ok(get_authorized(&mut s, path, B, auth)
            .await?
            .status()
            .as_u16())
    }

    let as_pinned = |origin| request(addr, &public.cert, &pinned, origin);
    assert_eq!(as_pinned("n.fedpin.test").await, Ok(200), "n.fedpin.test");
    assert_eq!(
        as_pinned("n.fedpin.test:8448").await,
        Ok(200),
        "n.fedpin.test:8448"
    );
    // The same key claiming an unpinned origin is not bound to it, even under unpinned = "webpki".
    assert_eq!(
        as_pinned("other.fedpin.test").await,
        Ok(401),
        "other.fedpin.test"
    );
    // A nameless key pinned for nobody: the handshake (or the first request) fails.
    assert!(!matches!(
        request(addr, &public.cert, &other, "n.fedpin.test").await,
        Ok(200)
    ));
    assert!(
        hub.recent()
            .iter()
            .any(|a| a.direction == Direction::Inbound),
        "{:?}",
        hub.recent()
    );
}

/// Inbound alerts name the attacker: a client certificate refused by B's
/// inbound verifier (client_auth = "require") raises an alert carrying the
/// client's socket address and port, for a key mismatch on a pinned name and
/// for an unpinned name under `unpinned = "deny"` alike.
#[tokio::test]
async fn refused_client_certificate_alert_names_the_client_address() {
    let w = b_side().await;
    let connect_as = |client: Leaf| {
        let ca = w.public.cert.clone();
        let server = w.b_inbound;
        async move {
            let cfg = net::client_config_as(&[&ca], &[], Some(&client));
            let tcp = TcpStream::connect(server).await.unwrap();
            let local = tcp.local_addr().unwrap();
            let res = async {
                let mut tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(ServerName::try_from(B).unwrap(), tcp)
                    .await?;
                // Under TLS 1.3 the refusal arrives after the client's side of
                // the handshake: read to see it.
                let mut b = [0u8; 1];
                tls.read(&mut b).await
            };
            let res = tokio::time::timeout(Duration::from_secs(10), res)
                .await
                .expect("bounded");
            (local, res)
        }
    };

    // Another key for the pinned name A: pin_mismatch.
    let (local, res) = connect_as(leaf(&w.public, &[A])).await;
    assert!(res.is_err(), "an impostor client is refused: {res:?}");
    assert_inbound_alert(&w.b_hub, AlertEvent::PinMismatch, local);

    // A name with no entry under unpinned = "deny": unpinned_denied.
    let (local, res) = connect_as(leaf(&w.public, &["stranger.fedpin.test"])).await;
    assert!(res.is_err(), "an unpinned client is refused: {res:?}");
    assert_inbound_alert(&w.b_hub, AlertEvent::UnpinnedDenied, local);

    // Each connection has its own verifier, yet the pinned client still
    // resumes its session on the next connection (same pin generation).
    let cfg = net::client_config_as(&[&w.public.cert], &[], Some(&w.a_client));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(w.b_inbound).await.unwrap();
        let mut tls = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(ServerName::try_from(B).unwrap(), tcp),
        )
        .await
        .expect("bounded")
        .expect("the pinned client is accepted");
        // Let the server's session ticket arrive, then close.
        let _ = tokio::time::timeout(Duration::from_millis(200), tls.read(&mut [0u8; 1])).await;
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    assert_eq!(kinds[1], Some(rustls::HandshakeKind::Resumed), "{kinds:?}");
}
