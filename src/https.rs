//! fedpin's one HTTPS client, for the requests fedpin makes itself: the
//! `.well-known` fetch of discovery, the edge's signing-key fetches and
//! notary queries, and the webhook and Matrix alert sinks.
//!
//! One layer, built once per use from the crate's TLS policy (the ring-only
//! provider, safe protocol versions, HTTP/1.1 ALPN), with two kinds of
//! trust:
//!
//! * [`Trust::WebPki`]: Mozilla's roots plus configured anchors, in one
//!   `ClientConfig` shared by every request (discovery, alert sinks);
//! * [`Trust::Pinned`]: the pinned verifier under the pin store's current
//!   generation, per connection, so a peer's key document is read only
//!   from a server its pins accept (key fetches, notaries).
//!
//! Every dial goes through a [`Dialer`]: static `resolve` and `connect_to`
//! overrides and, where the destination is chosen by someone else (an
//! inbound request's origin), the egress policy, so a name resolving to a
//! private address is never dialled. Every request has a time limit and a
//! body limit; [`HttpsClient::get_following`] follows redirects within a
//! limit, never to the same URL twice, https only.
//!
//! Why no connection pool (hyper-util's pooled client with hyper-rustls
//! was the alternative): none of these requests is on a hot path (a key
//! fetch per origin per key lifetime, an alert now and then), a pooled
//! connection would carry a certificate check made under an older pin
//! generation into a newer one, and the callers need what the connection
//! presented (`pinctl` shows every hop's chain). One connection per
//! request keeps every check current and the chain at hand.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::egress::EgressPolicy;
use crate::tls::UpstreamTls;
use crate::verify::PeerContext;

/// What `User-Agent` fedpin sends.
pub const USER_AGENT_VALUE: &str = concat!("fedpin/", env!("CARGO_PKG_VERSION"));

/// How servers' certificates are checked.
#[derive(Clone)]
pub enum Trust {
    /// Web PKI: one shared configuration (see [`webpki_config`]).
    WebPki(Arc<rustls::ClientConfig>),
    /// The pinned verifier, per connection, under the current pin generation.
    Pinned(Arc<UpstreamTls>),
}

/// A TLS client configuration trusting Mozilla's roots plus `extra`, with
/// the crate's provider and HTTP/1.1 ALPN.
pub fn webpki_config(extra: &[TrustAnchor<'static>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    roots.extend(extra.iter().cloned());
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot build TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Trust anchors from DER certificates.
pub fn anchors(certs: &[CertificateDer<'static>]) -> Result<Vec<TrustAnchor<'static>>, String> {
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| format!("unusable trust anchor: {e}"))
        })
        .collect()
}

/// Where connections go: overrides first, then DNS; the egress policy,
/// when set, checks every address before it is dialled.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    /// Addresses allowed and refused; `None` dials what the name resolves
    /// to (destinations the operator configured: alert sinks, `pinctl`).
    pub egress: Option<EgressPolicy>,
    /// Static name → address overrides (the port is kept).
    pub resolve: BTreeMap<String, IpAddr>,
    /// Static `(host, port)` → address overrides (like curl's `--connect-to`).
    pub connect_to: BTreeMap<(String, u16), SocketAddr>,
    /// Dial this address for every host not in `connect_to` (tests).
    pub fixed: Option<SocketAddr>,
}

impl Dialer {
    /// Connects to `host:port`: the first candidate address that the egress
    /// policy allows and that answers.
    pub async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let candidates: Vec<SocketAddr> =
            if let Some(a) = self.connect_to.get(&(host.to_owned(), port)) {
                vec![*a]
            } else if let Some(a) = self.fixed {
                vec![a]
            } else if let Some(ip) = self.resolve.get(host) {
                vec![SocketAddr::new(*ip, port)]
            } else if let Ok(ip) = host.parse::<IpAddr>() {
                vec![SocketAddr::new(ip, port)]
            } else {
                tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?
                    .collect()
            };
        let mut refusals = Vec::new();
        let mut failures = Vec::new();
        for addr in candidates {
            if let Some(policy) = &self.egress {
                if let Err(r) = policy.check(addr.ip()) {
                    refusals.push(format!("{} {r}", addr.ip()));
                    continue;
                }
            }
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(e) => failures.push(format!("TCP connect to {addr} failed: {e}")),
            }
        }
        if !failures.is_empty() {
            return Err(failures.join("; "));
        }
        Err(format!(
            "refusing to dial {host}:{port} (egress policy): {}",
            if refusals.is_empty() {
                "no addresses".to_owned()
            } else {
                refusals.join("; ")
            }
        ))
    }
}

/// Where one request goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The name the certificate must be valid for (and the SNI).
    pub tls_name: &'a str,
    /// The host to dial (resolved by the [`Dialer`]).
    pub connect_host: &'a str,
    /// The port to dial.
    pub port: u16,
    /// The `Host` header.
    pub host_header: &'a str,
    /// Plain HTTP, no TLS (only the alert sinks, to loopback, allow it).
    pub plain: bool,
}

impl<'a> Target<'a> {
    /// `https://host:port` with `host` as TLS name, dial host and `Host`
    /// (with the port unless it is 443).
    pub fn https(host: &'a str, port: u16, host_header: &'a str) -> Self {
        Target {
            tls_name: host,
            connect_host: host,
            port,
            host_header,
            plain: false,
        }
    }
}

/// What came back from one request.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The response status.
    pub status: StatusCode,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The body of a 2xx answer (empty otherwise), at most the body limit.
    pub body: Bytes,
    /// The certificates the server presented (empty over plain HTTP).
    pub chain: Vec<CertificateDer<'static>>,
}

/// One hop of [`HttpsClient::get_following`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The host asked.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The path asked.
    pub path: String,
    /// The answer's status.
    pub status: u16,
    /// The certificates the host presented.
    pub chain: Vec<CertificateDer<'static>>,
}

/// Which redirects [`HttpsClient::get_following`] follows.
#[derive(Debug, Clone, Copy)]
pub struct Redirects {
    /// At most this many.
    pub max: usize,
    /// Whether a redirect may go to another host (`https://` only); when
    /// false only paths on the same host are followed.
    pub other_hosts: bool,
}

/// The client (see the [module documentation](self)).
#[derive(Clone)]
pub struct HttpsClient {
    trust: Trust,
    dialer: Dialer,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field(
                "trust",
                &match self.trust {
                    Trust::WebPki(_) => "webpki",
                    Trust::Pinned(_) => "pinned",
                },
            )
            .field("dialer", &self.dialer)
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl HttpsClient {
    /// A client with this trust, dialling by DNS, 10 s and 64 KiB limits.
    pub fn new(trust: Trust) -> Self {
        HttpsClient {
            trust,
            dialer: Dialer::default(),
            timeout: Duration::from_secs(10),
            max_body: 64 * 1024,
        }
    }

    /// Web PKI trust with `extra` anchors.
    pub fn webpki(extra: &[TrustAnchor<'static>]) -> Result<Self, String> {
        Ok(Self::new(Trust::WebPki(Arc::new(webpki_config(extra)?))))
    }

    /// Dials through `dialer`.
    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    /// Limits each request (connect, handshake, answer and body) to `t`.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Reads at most `n` bytes of a body.
    pub fn with_max_body(mut self, n: usize) -> Self {
        self.max_body = n;
        self
    }

    /// The per-request time limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One request over a new connection. A non-empty `body` is sent as
    /// JSON. Errors are reasons, naming the step that failed.
    pub async fn send(
        &self,
        target: Target<'_>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Exchange, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, target.host_header)
            .header(USER_AGENT, USER_AGENT_VALUE);
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let limit = self.timeout;
        tokio::time::timeout(limit, self.connect_and_exchange(target, req))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {limit:?}")))
    }

    /// Dials `target` (TLS per the client's trust, unless plain) and runs
    /// one exchange.
    async fn connect_and_exchange(
        &self,
        target: Target<'_>,
        req: Request<Full<Bytes>>,
    ) -> Result<Exchange, String> {
        let tcp = self.dialer.dial(target.connect_host, target.port).await?;
        if target.plain {
            return self.exchange(tcp, req, Vec::new()).await;
        }
        let name = ServerName::try_from(target.tls_name.to_owned())
            .map_err(|_| format!("{:?} is not a valid TLS server name", target.tls_name))?;
        let tls = match &self.trust {
            Trust::WebPki(config) => tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {} failed: {e}", target.tls_name))?,
            Trust::Pinned(upstream) => {
                let ctx = PeerContext {
                    direction: Some(crate::alert::Direction::Outbound),
                    server_name: None,
                    port: Some(target.port),
                    peer_addr: tcp.peer_addr().ok(),
                };
                let connector = upstream
                    .connector(ctx, vec![b"http/1.1".to_vec()])
                    .map_err(|e| e.to_string())?;
                connector.connect(name, tcp).await.map_err(|e| {
                    match connector.record().filter(|v| !v.is_accept()) {
                        Some(v) => format!("TLS with {} refused: {v}", target.tls_name),
                        None => format!("TLS with {} failed: {e}", target.tls_name),
                    }
                })?
            }
        };
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        self.exchange(tls, req, chain).await
    }

    /// HTTP/1.1 over `io`: sends `req`, reads the answer.
    async fn exchange<IO>(
        &self,
        io: IO,
        req: Request<Full<Bytes>>,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Exchange, String>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let driver = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "fedpin::discovery", error = %e, "HTTP connection ended with an error");
            }
        }));
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP request failed: {e}"))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = if status.is_success() {
            let too_big = || format!("body is larger than {} KiB", self.max_body / 1024);
            let declared = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|len| len > self.max_body as u64) {
                return Err(too_big());
            }
            Limited::new(resp.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        too_big()
                    } else {
                        format!("reading the body failed: {e}")
                    }
                })?
                .to_bytes()
        } else {
            Bytes::new()
        };
        drop(driver);
        Ok(Exchange {
            status,
            location,
            body,
            chain,
        })
    }

    /// GET `https://host:port/path`, following redirects as `redirects`
    /// allows (never to a URL already asked); returns the final 200 and
    /// every hop. The time limit applies to each hop.
    pub async fn get_following(
        &self,
        host: &str,
        port: u16,
        path: &str,
        redirects: Redirects,
        headers: &[(&str, &str)],
    ) -> Result<(Exchange, Vec<Hop>), String> {
        let mut next = (host.to_owned(), port, path.to_owned());
        let mut hops: Vec<Hop> = Vec::new();
        loop {
            let (h, port, path) = next;
            if hops
                .iter()
                .any(|x| x.host == h && x.port == port && x.path == path)
            {
                return Err(format!("redirect loop back to https://{h}:{port}{path}"));
            }
            let host_header = if port == 443 {
                h.clone()
            } else {
                format!("{h}:{port}")
            };
            let answer = self
                .send(
                    Target::https(&h, port, &host_header),
                    Method::GET,
                    &path,
                    headers,
                    Bytes::new(),
                )
                .await?;
            hops.push(Hop {
                host: h.clone(),
                port,
                path: path.clone(),
                status: answer.status.as_u16(),
                chain: answer.chain.clone(),
            });
            match answer.status {
                StatusCode::OK => return Ok((answer, hops)),
                StatusCode::MOVED_PERMANENTLY
                | StatusCode::FOUND
                | StatusCode::SEE_OTHER
                | StatusCode::TEMPORARY_REDIRECT
                | StatusCode::PERMANENT_REDIRECT => {
                    if hops.len() > redirects.max {
                        return Err(format!("more than {} redirects", redirects.max));
                    }
                    let location = answer.location.ok_or_else(|| {
                        format!("HTTP status {} without a Location", answer.status)
                    })?;
                    let target = redirect_target(&location, &h, port)?;
                    if !redirects.other_hosts && (target.0 != h || target.1 != port) {
                        return Err(format!("redirect to another host ({location:?}) refused"));
                    }
                    next = target;
                }
                other => return Err(format!("HTTP status {other}, expected 200 OK")),
            }
        }
    }
}

/// Aborts the wrapped task when dropped (so an HTTP connection driver never
/// outlives its request, e.g. on timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a `Location` header sends the next request: `(host, port, path)`.
/// A path on the same host, or an `https://` URL without credentials.
pub(crate) fn redirect_target(
    location: &str,
    from_host: &str,
    from_port: u16,
) -> Result<(String, u16, String), String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Ok((from_host.to_owned(), from_port, location.to_owned()));
    }
    let uri: hyper::Uri = location
        .parse()
        .map_err(|_| format!("redirect to an unusable location {location:?}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "redirect to {location:?} refused: only https:// locations are followed"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("redirect to {location:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "redirect to {location:?} refused: it carries credentials"
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host).to_owned();
    // `Authority::port` is None both without a port and with an unusable
    // one ("host:84x3"): tell them apart by what follows the host.
    let after_host = &authority.as_str()[authority.as_str().rfind(']').unwrap_or(0)..];
    let port = match authority.port_u16() {
        Some(p) if p > 0 => p,
        None if !after_host.contains(':') => 443,
        _ => return Err(format!("redirect to {location:?} has an invalid port")),
    };
    if host.is_empty() {
        return Err(format!("redirect to {location:?} has no host"));
    }
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    let path = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    Ok((host, port, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const HOST: &str = "svc.https.test";

    /// A test CA (as an anchor) and a TLS server for HOST on loopback that
    /// answers each request from `answer(path)` (the raw response), and
    /// counts connections.
    async fn server(
        answer: fn(&str) -> Vec<u8>,
    ) -> (TrustAnchor<'static>, SocketAddr, Arc<AtomicUsize>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![HOST.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counter = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if tls.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let line = String::from_utf8_lossy(&head);
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let _ = tls.write_all(&answer(&path)).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let anchor = webpki::anchor_from_trusted_cert(ca_cert.der())
            .unwrap()
            .to_owned();
        (anchor, addr, conns)
    }

    fn redirect(to: &str) -> Vec<u8> {
        format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    }

    fn routes(path: &str) -> Vec<u8> {
        match path {
            "/ok" => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
            }
            "/big" => {
                let mut r =
                    b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\nConnection: close\r\n\r\n"
                        .to_vec();
                r.resize(r.len() + 70_000, b'x');
                r
            }
            "/loop-a" => redirect("/loop-b"),
            "/loop-b" => redirect("/loop-a"),
            "/plain" => redirect("http://svc.https.test/ok"),
            "/elsewhere" => redirect("https://other.https.test/ok"),
            "/r1" => redirect("/r2"),
            "/r2" => redirect("/r3"),
            "/r3" => redirect("/ok"),
            _ => {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            }
        }
    }

    fn client(anchor: &TrustAnchor<'static>, addr: SocketAddr) -> HttpsClient {
        HttpsClient::webpki(std::slice::from_ref(anchor))
            .unwrap()
            .with_dialer(Dialer {
                fixed: Some(addr),
                ..Dialer::default()
            })
            .with_timeout(Duration::from_secs(5))
    }

    const SAME_HOST: Redirects = Redirects {
        max: 2,
        other_hosts: false,
    };

    #[tokio::test]
    async fn redirects_are_limited_https_only_and_never_loop() {
        let (anchor, addr, _) = server(routes).await;
        let c = client(&anchor, addr);
        let get = |path: &'static str, r: Redirects| {
            let c = c.clone();
            async move { c.get_following(HOST, 443, path, r, &[]).await }
        };
        let (ok, hops) = get("/r2", SAME_HOST).await.unwrap();
        assert_eq!(&ok.body[..], b"ok");
        assert_eq!(
            hops.iter().map(|h| h.path.as_str()).collect::<Vec<_>>(),
            ["/r2", "/r3", "/ok"]
        );
        assert!(hops.iter().all(|h| !h.chain.is_empty()));
        let e = get("/r1", SAME_HOST).await.unwrap_err();
        assert!(e.contains("more than 2 redirects"), "{e}");
        let e = get("/loop-a", SAME_HOST).await.unwrap_err();
        assert!(e.contains("redirect loop"), "{e}");
        let e = get("/plain", SAME_HOST).await.unwrap_err();
        assert!(e.contains("only https://"), "{e}");
        let e = get("/elsewhere", SAME_HOST).await.unwrap_err();
        assert!(e.contains("another host"), "{e}");
        let e = get("/missing", SAME_HOST).await.unwrap_err();
        assert!(e.contains("404"), "{e}");
    }

    #[tokio::test]
    async fn bodies_time_and_trust_are_limited() {
        let (anchor, addr, _) = server(routes).await;
        let c = client(&anchor, addr).with_max_body(64 * 1024);
        let e = c
            .get_following(HOST, 443, "/big", SAME_HOST, &[])
            .await
            .unwrap_err();
        assert!(e.contains("larger than 64 KiB"), "{e}");
        // Web PKI alone does not know the test CA.
        let e = HttpsClient::webpki(&[])
            .unwrap()
            .with_dialer(Dialer {
                fixed: Some(addr),
                ..Dialer::default()
            })
            .get_following(HOST, 443, "/ok", SAME_HOST, &[])
            .await
            .unwrap_err();
        assert!(
            e.contains("TLS handshake with svc.https.test failed"),
            "{e}"
        );
        // A server that accepts and never answers: the time limit ends it.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        let e = client(&anchor, silent_addr)
            .with_timeout(Duration::from_millis(300))
            .send(
                Target::https(HOST, 443, HOST),
                Method::GET,
                "/ok",
                &[],
                Bytes::new(),
            )
            .await
            .unwrap_err();
        assert!(e.contains("timed out after 300ms"), "{e}");
    }

    #[tokio::test]
    async fn the_egress_policy_refuses_before_any_connection() {
        let (anchor, addr, conns) = server(routes).await;
        let mut resolve = BTreeMap::new();
        resolve.insert(HOST.to_owned(), addr.ip());
        // The default policy refuses loopback.
        let c = HttpsClient::webpki(std::slice::from_ref(&anchor))
            .unwrap()
            .with_dialer(Dialer {
                egress: Some(EgressPolicy::new(Vec::new(), Vec::new())),
                resolve: resolve.clone(),
                ..Dialer::default()
            });
        let e = c
            .get_following(HOST, addr.port(), "/ok", SAME_HOST, &[])
            .await
            .unwrap_err();
        assert!(e.contains("egress policy"), "{e}");
        assert_eq!(conns.load(Ordering::SeqCst), 0);
        // Allowed explicitly, it connects.
        let c = HttpsClient::webpki(std::slice::from_ref(&anchor))
            .unwrap()
            .with_dialer(Dialer {
                egress: Some(EgressPolicy::new(
                    vec!["127.0.0.0/8".parse().unwrap()],
                    Vec::new(),
                )),
                resolve,
                ..Dialer::default()
            });
        let (ok, _) = c
            .get_following(HOST, addr.port(), "/ok", SAME_HOST, &[])
            .await
            .unwrap();
        assert_eq!(&ok.body[..], b"ok");
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }
}
