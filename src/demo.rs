//! `fedpin demo`: a self-contained loopback demonstration of the pin check.
//!
//! It mints a stand-in "public" CA, a genuine remote homeserver whose key is
//! pinned, and an impostor holding a certificate the same CA issued for the
//! same name (the mis-issued / compromised-CA case Web PKI cannot see). Both
//! answer `GET /_matrix/federation/v1/version` over TLS on 127.0.0.1. fedpin's
//! upstream TLS (the same [`UpstreamTls`] and [`PinnedServerVerifier`] the
//! outbound proxy uses) then dials each one.

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

use crate::alert::{AlertEvent, AlertHub, Direction, Severity};
use crate::pins::{PinSet, PinStore};
use crate::tls::UpstreamTls;
use crate::verify::{PeerContext, VerifierCore};

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
        self.genuine.is_ok() && self.impostor.is_err() && self.critical_alert
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

async fn federation_get(upstream: &UpstreamTls, addr: SocketAddr) -> Result<String, String> {
    let connector = upstream
        .connector(
            PeerContext {
                direction: Some(Direction::Outbound),
                server_name: Some(DEMO_HOST.into()),
                port: Some(addr.port()),
                peer_addr: Some(addr),
            },
            vec![b"http/1.1".to_vec()],
        )
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(DEMO_HOST).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name.to_owned(), tcp)
        .await
        .map_err(|err| match connector.record().and_then(|r| r.rejected) {
            Some(r) => r.reason,
            None => err.to_string(),
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/_matrix/federation/v1/version")
        .header("host", DEMO_HOST)
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
    Ok(format!("{status} {}", String::from_utf8_lossy(&body)))
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
    let upstream = UpstreamTls::new(core, store, provider);

    let limit = Duration::from_secs(20);
    let genuine = tokio::time::timeout(limit, federation_get(&upstream, genuine_addr))
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    let impostor = tokio::time::timeout(limit, federation_get(&upstream, impostor_addr))
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
