//! Two fedpin deployments pinning each other in both directions: A's outbound
//! presents a client certificate; B's inbound (client_auth = require) checks
//! it against B's pin file and binds it to the X-Matrix origin, while A pins
//! B's server key as usual.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{leaf, pem, root, Ca, Leaf};
use fedpin::alert::{AlertEvent, AlertHub, Direction};
use fedpin::config::ClientAuth;
use fedpin::pins::{PinSet, PinStore};
use fedpin::proxy::egress::EgressPolicy;
use fedpin::proxy::inbound::{EdgeRules, InboundProxy, InboundSettings};
use fedpin::proxy::outbound::{OutboundProxy, OutboundSettings};
use fedpin::tls::certs::CertStore;
use fedpin::tls::mint::LeafMinter;
use fedpin::tls::UpstreamTls;
use fedpin::verify::VerifierCore;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap_or("").to_string())
                            .unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            format!("B got: {auth}"),
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
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
    let core = Arc::new(
        VerifierCore::with_only_anchors(
            &fedpin::tls::provider(),
            std::slice::from_ref(&public.cert),
            b_hub.clone(),
        )
        .unwrap(),
    );
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
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_inbound = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    tokio::spawn(inbound.serve(l, rx));
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
    let core = Arc::new(
        VerifierCore::with_only_anchors(
            &fedpin::tls::provider(),
            std::slice::from_ref(&w.public.cert),
            hub.clone(),
        )
        .unwrap(),
    );
    let upstream = UpstreamTls::new(core, pins_for(B, &w.b_server.cert), fedpin::tls::provider())
        .with_client_auth(vec![client.cert.clone()], client.key_der());
    let ica_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ica = p.self_signed(&ica_key).unwrap();
    let minter = LeafMinter::from_pem(&ica.pem(), &ica_key.serialize_pem(), 8).unwrap();
    let mut settings = OutboundSettings {
        egress: EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]),
        ..OutboundSettings::default()
    };
    settings
        .resolve
        .insert(B.into(), "127.0.0.1".parse().unwrap());
    let proxy = Arc::new(OutboundProxy::new(
        settings,
        Arc::new(upstream),
        Arc::new(minter),
    ));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    tokio::spawn(proxy.serve(l, rx));
    (addr, ica.der().clone())
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
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {B}:{port} HTTP/1.1\r\nHost: {B}:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ica.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(B).unwrap(), tcp)
        .await
        .unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/_matrix/federation/v1/version")
        .header("host", format!("{B}:{port}"))
        .header(
            "authorization",
            format!("X-Matrix origin=\"{origin}\",destination=\"{B}\",key=\"ed25519:1\",sig=\"x\""),
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
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
        (cert.der().clone(), key)
    };
    let (pinned_cert, pinned_key) = nameless("peer without a name");
    let (other_cert, other_key) = nameless("someone else");
    let hub = AlertHub::new();
    let mut set = PinSet::parse(&format!(
        "version = 1\n[policy]\nunpinned = \"webpki\"\n[[peer]]\nserver_name = \"n.fedpin.test\"\npins = [\"{}\"]\ntrust = \"pin-only\"\n",
        common::pin(&pinned_cert)
    ))
    .unwrap();
    set.generation = 1;
    let core = Arc::new(
        VerifierCore::with_only_anchors(
            &fedpin::tls::provider(),
            std::slice::from_ref(&public.cert),
            hub.clone(),
        )
        .unwrap(),
    );
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
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    tokio::spawn(inbound.serve(l, rx));

    async fn request(
        addr: SocketAddr,
        ca: &CertificateDer<'static>,
        cert: &CertificateDer<'static>,
        key: &rcgen::KeyPair,
        origin: &str,
    ) -> Result<u16, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![cert.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(
                    rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
                ),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(B).unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get("/_matrix/federation/v1/query/profile")
            .header("host", B)
            .header(
                "authorization",
                format!("X-Matrix origin=\"{origin}\",key=\"ed25519:1\",sig=\"x\""),
            )
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(req))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    }

    assert_eq!(
        request(
            addr,
            &public.cert,
            &pinned_cert,
            &pinned_key,
            "n.fedpin.test"
        )
        .await,
        Ok(200)
    );
    assert_eq!(
        request(
            addr,
            &public.cert,
            &pinned_cert,
            &pinned_key,
            "n.fedpin.test:8448"
        )
        .await,
        Ok(200)
    );
    // The same key claiming an unpinned origin is not bound to it, even under unpinned = "webpki".
    assert_eq!(
        request(
            addr,
            &public.cert,
            &pinned_cert,
            &pinned_key,
            "other.fedpin.test"
        )
        .await,
        Ok(401)
    );
    // A nameless key pinned for nobody: the handshake (or the first request) fails.
    assert!(!matches!(
        request(addr, &public.cert, &other_cert, &other_key, "n.fedpin.test").await,
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
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let cfg = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![client.cert.clone()], client.key_der())
                .unwrap();
            let tcp = TcpStream::connect(server).await.unwrap();
            let local = tcp.local_addr().unwrap();
            let res = async {
                let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
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
    let alerts = w.b_hub.recent();
    let a = alerts
        .iter()
        .find(|a| a.event == AlertEvent::PinMismatch && a.direction == Direction::Inbound)
        .unwrap_or_else(|| panic!("no inbound pin_mismatch: {alerts:?}"));
    assert_eq!(
        a.peer_addr.as_deref(),
        Some(local.to_string().as_str()),
        "{a:?}"
    );
    assert_eq!(a.port, Some(local.port()), "{a:?}");

    // A name with no entry under unpinned = "deny": unpinned_denied.
    let (local, res) = connect_as(leaf(&w.public, &["stranger.fedpin.test"])).await;
    assert!(res.is_err(), "an unpinned client is refused: {res:?}");
    let alerts = w.b_hub.recent();
    let a = alerts
        .iter()
        .find(|a| a.event == AlertEvent::UnpinnedDenied && a.direction == Direction::Inbound)
        .unwrap_or_else(|| panic!("no inbound unpinned_denied: {alerts:?}"));
    assert_eq!(
        a.peer_addr.as_deref(),
        Some(local.to_string().as_str()),
        "{a:?}"
    );
    assert_eq!(a.port, Some(local.port()), "{a:?}");

    // Each connection has its own verifier, yet the pinned client still
    // resumes its session on the next connection (same pin generation).
    let mut roots = rustls::RootCertStore::empty();
    roots.add(w.public.cert.clone()).unwrap();
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![w.a_client.cert.clone()], w.a_client.key_der())
            .unwrap(),
    );
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
