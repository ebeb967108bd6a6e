//! `fedpin demo`: a self-contained loopback demonstration of the pin check.
//!
//! It mints a stand-in "public" CA, a genuine remote homeserver whose key is
//! pinned, and an impostor holding a certificate the same CA issued for the
//! same name (the mis-issued / compromised-CA case Web PKI cannot see). Both
//! answer `GET /_matrix/federation/v1/version` over TLS on 127.0.0.1. fedpin's
//! outbound proxy runs in front of them with its own interception CA, and a
//! stand-in homeserver (trusting only that CA, as Synapse is configured to)
//! sends one federation request to each through `CONNECT`, exactly as
//! Synapse's `https_proxy` does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::alert::{AlertEvent, AlertHub, Severity};
use crate::egress::EgressPolicy;
use crate::pin_store::PinStore;
use crate::pins::PinSet;
use crate::proxy::outbound::{OutboundProxy, OutboundSettings};
use crate::tls::mint::LeafMinter;
use crate::tls::UpstreamTls;
use crate::verify::VerifierCore;

/// The name both demo servers answer as.
pub const DEMO_HOST: &str = "remote.demo.fedpin.test";

/// Errors setting the demo up (not the pin outcomes, which are its result).
#[derive(Debug, thiserror::Error)]
#[error("demo setup failed: {0}")]
pub struct DemoError(String);

fn e<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DemoError + '_ {
    move |err| DemoError(format!("{what}: {err}"))
}

/// What the demo saw.
#[derive(Debug)]
pub struct DemoReport {
    /// The genuine peer's answer, or why it failed.
    pub genuine: Result<String, String>,
    /// The impostor's answer (it must not get one), or why it was blocked.
    pub impostor: Result<String, String>,
    /// The alerts raised, as JSON lines.
    pub alerts: Vec<String>,
    /// Whether the impostor raised a critical pin_mismatch.
    pub critical_alert: bool,
}

impl DemoReport {
    /// The demo's success condition: genuine passed, impostor blocked with a critical alert.
    pub fn success(&self) -> bool {
        self.genuine.is_ok()
            && self.impostor.as_ref().is_err_and(|e| e.starts_with("502"))
            && self.critical_alert
    }
}

struct Minted {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn mint_leaf(issuer: &Issuer<'_, KeyPair>, name: &str, org: &str) -> Result<Minted, DemoError> {
    let key = KeyPair::generate().map_err(e("key generation"))?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(e("leaf params"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    let cert = params.signed_by(&key, issuer).map_err(e("leaf signing"))?;
    Ok(Minted {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

async fn serve(who: &'static str, m: Minted) -> Result<SocketAddr, DemoError> {
    let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(e("server TLS config"))?
        .with_no_client_auth()
        .with_single_cert(m.chain, m.key)
        .map_err(e("server certificate"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(e("bind"))?;
    let addr = listener.local_addr().map_err(e("local address"))?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                    let body =
                        format!("{{\"server\":{{\"name\":\"{who}\",\"version\":\"demo\"}}}}");
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn federation_get(
    proxy: SocketAddr,
    port: u16,
    trust: &CertificateDer<'static>,
) -> Result<String, String> {
    let mut tcp = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let head = format!("CONNECT {DEMO_HOST}:{port} HTTP/1.1\r\nHost: {DEMO_HOST}:{port}\r\n\r\n");
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // Read the CONNECT response head byte by byte (it is tiny) so no tunnel bytes are consumed.
    let mut resp = Vec::new();
    let mut byte = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        if resp.len() > 8192 || tcp.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
            return Err("the proxy closed the connection during CONNECT".into());
        }
        resp.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&resp)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    if !status_line.contains(" 200") {
        return Err(format!("CONNECT refused: {status_line}"));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(DEMO_HOST).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS inside the tunnel failed: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/_matrix/federation/v1/version")
        .header("host", format!("{DEMO_HOST}:{port}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = format!("{status} {}", String::from_utf8_lossy(&body).trim_end());
    if status.is_success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Runs the demo and returns what happened.
pub async fn run() -> Result<DemoReport, DemoError> {
    // A stand-in for a public CA that every Web PKI client trusts.
    let ca_key = KeyPair::generate().map_err(e("CA key"))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e("CA params"))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Demo Public Root CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e("CA signing"))?;
    let ca_der = ca_cert.der().clone();
    let issuer = Issuer::new(ca_params, ca_key);

    let genuine = mint_leaf(&issuer, DEMO_HOST, "Genuine Homeserver")?;
    let impostor = mint_leaf(&issuer, DEMO_HOST, "Interceptor")?;
    let genuine_pin = crate::verify::spki_of_der(genuine.chain[0].as_ref())
        .ok_or_else(|| DemoError("cannot read the genuine certificate".into()))?;
    let backup_key = KeyPair::generate().map_err(e("backup key"))?;
    let backup_pin =
        crate::pins::Pin::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&backup_key));

    let pin_file = format!(
        "version = 1\n[policy]\nunpinned = \"webpki\"\non_expired = \"webpki\"\n\n[[peer]]\nserver_name = \"{DEMO_HOST}\"\npins = [\"{genuine_pin}\", \"{backup_pin}\"]\ntrust = \"webpki\"\nmode = \"enforce\"\n"
    );
    let set = PinSet::parse(&pin_file).map_err(e("demo pin file"))?;

    let genuine_addr = serve("genuine", genuine).await?;
    let impostor_addr = serve("impostor", impostor).await?;

    let hub = AlertHub::new();
    let provider = crate::tls::provider();
    let core = Arc::new(
        VerifierCore::with_only_anchors(&provider, std::slice::from_ref(&ca_der), hub.clone())
            .map_err(e("verifier"))?,
    );
    let store = Arc::new(PinStore::fixed(set, hub.clone()));
    let upstream = Arc::new(UpstreamTls::new(core, store, provider));

    // fedpin's interception CA: the only CA the homeserver trusts for federation.
    let (icept_cert, icept_key) =
        crate::tls::ca::generate("fedpin demo interception CA").map_err(e("interception CA"))?;
    let minter = LeafMinter::from_pem(&icept_cert.pem(), &icept_key.serialize_pem(), 16)
        .map_err(e("minter"))?;

    let mut settings = OutboundSettings {
        egress: EgressPolicy::new(
            vec!["127.0.0.0/8".parse().map_err(e("allow_ips"))?],
            Vec::new(),
        ),
        ..OutboundSettings::default()
    };
    settings.resolve.insert(
        DEMO_HOST.to_string(),
        std::net::IpAddr::from([127, 0, 0, 1]),
    );
    let proxy = Arc::new(OutboundProxy::new(settings, upstream, Arc::new(minter)));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(e("bind the proxy"))?;
    let proxy_addr = listener.local_addr().map_err(e("proxy address"))?;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(proxy.serve(listener, stop_rx));

    let trust = icept_cert.der().clone();
    let limit = Duration::from_secs(20);
    let genuine = tokio::time::timeout(
        limit,
        federation_get(proxy_addr, genuine_addr.port(), &trust),
    )
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    let impostor = tokio::time::timeout(
        limit,
        federation_get(proxy_addr, impostor_addr.port(), &trust),
    )
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    let recent = hub.recent();
    let critical_alert = recent
        .iter()
        .any(|a| a.event == AlertEvent::PinMismatch && a.severity == Severity::Critical);
    Ok(DemoReport {
        genuine,
        impostor,
        alerts: recent.iter().map(|a| a.to_json()).collect(),
        critical_alert,
    })
}
