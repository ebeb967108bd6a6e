//! TLS and HTTP plumbing shared by the stand-ins (homeservers, upstream
//! peers, receivers) and the clients of the tests. Loopback only.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fedpin::alert::AlertHub;
use fedpin::verify::VerifierCore;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::Leaf;

/// Binds 127.0.0.1:0 and spawns `serve(listener, shutdown)` (a proxy's
/// `serve`); returns the address and the sender that shuts it down.
pub async fn spawn_server<F, Fut>(serve: F) -> (SocketAddr, tokio::sync::watch::Sender<bool>)
where
    F: FnOnce(TcpListener, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, rx));
    (addr, tx)
}

/// A server config presenting `leaf` (alone), offering `alpn`.
pub fn server_config(leaf: &Leaf, alpn: &[&[u8]]) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert.clone()], leaf.key_der())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// An acceptor presenting `leaf` (alone), offering `alpn`.
pub fn acceptor(leaf: &Leaf, alpn: &[&[u8]]) -> TlsAcceptor {
    TlsAcceptor::from(Arc::new(server_config(leaf, alpn)))
}

/// A client config trusting only `anchors`, offering `alpn`, without a
/// client certificate.
pub fn client_config(
    anchors: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    client_config_as(anchors, alpn, None)
}

/// A client config trusting only `anchors`, offering `alpn`, presenting
/// `cert` (if any) as its client certificate.
pub fn client_config_as(
    anchors: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
    cert: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add((*a).clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert.clone()], c.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A verifier core trusting only `anchor`, raising its alerts on `hub`.
pub fn only_anchor(anchor: &CertificateDer<'static>, hub: &AlertHub) -> Arc<VerifierCore> {
    Arc::new(
        VerifierCore::with_only_anchors(
            &fedpin::tls::provider(),
            std::slice::from_ref(anchor),
            hub.clone(),
        )
        .unwrap(),
    )
}

/// A TLS server on 127.0.0.1:0: each connection that completes the
/// handshake with `acceptor` is handed to `handle` on a task of its own.
pub async fn serve_tls<F, Fut>(acceptor: TlsAcceptor, handle: F) -> SocketAddr
where
    F: Fn(TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_tls_on(listener, acceptor, handle);
    addr
}

/// [`serve_tls`] on a listener the caller bound (to know its port first).
pub fn serve_tls_on<F, Fut>(listener: TcpListener, acceptor: TlsAcceptor, handle: F)
where
    F: Fn(TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    handle(tls).await;
                }
            });
        }
    });
}

/// [`serve_tls_on`] answering every HTTP/1.1 request with `handler`.
pub fn serve_https_on<F, Fut>(listener: TcpListener, acceptor: TlsAcceptor, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_tls_on(listener, acceptor, move |tls| {
        let handler = handler.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = handler(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            serve_http1(tls, svc).await;
        }
    });
}

/// [`serve_https_on`] on 127.0.0.1:0; its address.
pub async fn serve_https<F, Fut>(acceptor: TlsAcceptor, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_https_on(listener, acceptor, handler);
    addr
}

/// Starts a TLS server on 127.0.0.1:0 with `config`. Each connection that
/// completes the handshake gets "hello\n" and is closed.
pub async fn serve_hello(config: rustls::ServerConfig) -> SocketAddr {
    serve_tls(TlsAcceptor::from(Arc::new(config)), |mut tls| async move {
        let _ = tls.write_all(b"hello\n").await;
        let _ = tls.shutdown().await;
    })
    .await
}

/// A plain-HTTP/1.1 server on 127.0.0.1:0 answering every request with
/// `handler`: the stand-in for a homeserver's federation listener behind
/// the inbound edge.
pub async fn plain_http<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    plain_http_counted(Arc::default(), handler).await
}

/// [`plain_http`] counting its open connections in `live`.
pub async fn plain_http_counted<F, Fut>(
    live: Arc<std::sync::atomic::AtomicUsize>,
    handler: F,
) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    use std::sync::atomic::Ordering::SeqCst;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            let live = live.clone();
            tokio::spawn(async move {
                live.fetch_add(1, SeqCst);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                serve_http1(tcp, svc).await;
                live.fetch_sub(1, SeqCst);
            });
        }
    });
    addr
}

/// A bodiless GET of `path` with the Host `authority`.
pub fn get_request(path: &str, authority: &str) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// An error with its sources, ": "-separated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A response's status, its `x-fedpin-alert` header and its whole body as text.
pub async fn status_alert_body(
    resp: Response<Incoming>,
) -> Result<(u16, Option<String>, String), String> {
    let status = resp.status().as_u16();
    let alert = header_text(resp.headers(), "x-fedpin-alert");
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {}", error_chain(&e)))?
        .to_bytes();
    Ok((status, alert, String::from_utf8_lossy(&body).into_owned()))
}

/// A response's status and its whole body as text ([`status_alert_body`]
/// without the header).
pub async fn status_and_body(resp: Response<Incoming>) -> Result<(u16, String), String> {
    let (status, _, body) = status_alert_body(resp).await?;
    Ok((status, body))
}

/// Serves HTTP on an accepted TLS connection with `svc`: h2 when ALPN chose
/// it, HTTP/1.1 otherwise.
pub async fn serve_http_by_alpn<S>(tls: TlsStream<TcpStream>, svc: S)
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

/// Serves HTTP/1.1 on `io` with `svc` until the connection ends.
pub async fn serve_http1<I, S, B>(io: I, svc: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// The header `name` of `headers` as text, when it is there and is text.
pub fn header_text(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Writes `GET path` for `host` with `Connection: close` on `io` and reads
/// the answer to its end, both within `limit`: the answer's bytes.
pub async fn get_close<S>(
    io: &mut S,
    host: &str,
    path: &str,
    limit: Duration,
) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(limit, async {
        io.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        io.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok(buf)
    })
    .await
    .map_err(|_| format!("GET {path}: no answer within {limit:?}"))?
}

/// [`get_close`] on a new TCP connection to `addr`: the answer as text.
pub async fn get_text(
    addr: SocketAddr,
    host: &str,
    path: &str,
    limit: Duration,
) -> Result<String, String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let buf = get_close(&mut tcp, host, path, limit).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// An HTTP/1.1 client on `io` (its connection driven by a task of its own).
pub async fn http1_client<B, I>(io: I) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}
