//! Outbound path benchmark: the same client talking to the same loopback peer
//! directly, and through fedpin's outbound proxy (CONNECT + interception +
//! pinned upstream), in one run so the results compare as ratios.
//!
//! * `new_connection`: a fresh TCP connection, TLS handshake(s) and one
//!   HTTP/1.1 request. Through fedpin that is CONNECT + inner handshake with a
//!   cached minted leaf + upstream handshake (resumed within a pin generation).
//! * `keepalive_request`: one request on an already-open connection / tunnel
//!   (the per-request cost a kept-alive tunnel adds).
//!
//! Run: `cargo bench --bench outbound`.

// The PKI, TLS and proxy-settings helpers of the integration tests (tests/common).
#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use fedpin::alert::AlertHub;
use fedpin::pin_store::PinStore;
use fedpin::pins::PinSet;
use fedpin::proxy::outbound::OutboundProxy;
use fedpin::tls::mint::LeafMinter;
use fedpin::tls::UpstreamTls;

const HOST: &str = "bench.fedpin.test";

struct Setup {
    upstream: SocketAddr,
    proxy: SocketAddr,
    public_ca: CertificateDer<'static>,
    icept_ca: CertificateDer<'static>,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn setup() -> Setup {
    let public = common::root("bench public CA");
    let leaf = common::leaf(&public, &[HOST]);
    let leaf_der = leaf.cert.clone();

    // Upstream: HTTP/1.1 over TLS, kept alive.
    let mut sc = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf_der.clone()], leaf.key_der())
        .unwrap();
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"{\"server\":{}}"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });

    // fedpin outbound in front, pinning the leaf.
    let hub = AlertHub::new();
    let pin = common::pin(&leaf_der);
    let set = PinSet::parse(&format!(
        "version = 1\n[[peer]]\nserver_name = \"{HOST}\"\npins = [\"{pin}\"]\n"
    ))
    .unwrap();
    let tls = Arc::new(UpstreamTls::new(
        common::net::only_anchor(&public.cert, &hub),
        Arc::new(PinStore::fixed(set, hub)),
        fedpin::tls::provider(),
    ));
    let icept = common::interception_ca();
    let minter = Arc::new(LeafMinter::from_pem(&icept.cert_pem, &icept.key_pem, 16).unwrap());
    let proxy = Arc::new(OutboundProxy::new(
        common::connect::loopback_settings(&[HOST]),
        tls,
        minter,
    ));
    let pl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = pl.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(proxy.serve(pl, rx));
    Setup {
        upstream,
        proxy: proxy_addr,
        public_ca: public.cert,
        icept_ca: icept.der,
        _stop: stop,
    }
}

fn client_config(trust: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Like a homeserver opening new connections: no client-side resumption.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

async fn open(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    via_proxy: Option<u16>,
) -> SendRequest<Empty<Bytes>> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    if let Some(port) = via_proxy {
        tcp.write_all(
            format!("CONNECT {HOST}:{port} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
    }
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn request(send: &mut SendRequest<Empty<Bytes>>) {
    send.ready().await.unwrap();
    let req = Request::get("/_matrix/federation/v1/version")
        .header("host", HOST)
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert!(resp.status().is_success());
    let _ = resp.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let direct_cfg = client_config(&s.public_ca);
    let proxied_cfg = client_config(&s.icept_ca);
    let up_port = s.upstream.port();

    let mut g = c.benchmark_group("outbound_new_connection");
    g.measurement_time(Duration::from_secs(8)).sample_size(40);
    g.bench_function("direct", |b| {
        b.iter(|| {
            rt.block_on(async { request(&mut open(&direct_cfg, s.upstream, None).await).await })
        })
    });
    g.bench_function("through_fedpin", |b| {
        b.iter(|| {
            rt.block_on(async {
                request(&mut open(&proxied_cfg, s.proxy, Some(up_port)).await).await
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("outbound_keepalive_request");
    g.measurement_time(Duration::from_secs(6)).sample_size(60);
    let mut direct = rt.block_on(open(&direct_cfg, s.upstream, None));
    g.bench_function("direct", |b| b.iter(|| rt.block_on(request(&mut direct))));
    let mut tunnel = rt.block_on(open(&proxied_cfg, s.proxy, Some(up_port)));
    g.bench_function("through_fedpin", |b| {
        b.iter(|| rt.block_on(request(&mut tunnel)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
