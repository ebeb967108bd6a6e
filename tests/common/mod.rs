//! Test support shared by the integration crates. Nothing here reaches
//! beyond 127.0.0.1.
//!
//! * here: per-test PKI minted with rcgen, pin files (`peer_toml`, `pinset`),
//!   a replaying TLS server and a pinned client, `bounded`, `wait_until`;
//! * [`net`]: TLS server and client configs, stand-in servers (TLS upstreams
//!   and receivers, plain-HTTP homeservers), HTTP/1.1 clients;
//! * [`connect`]: the raw CONNECT client for the outbound proxy, and its
//!   loopback settings;
//! * [`process`]: running the real binaries (`fedpin run` config head,
//!   command, stdout lines, listening addresses, reaping);
//! * [`matrix`]: a Matrix origin (signing key, key server), the stand-in
//!   homeserver for signature tests, and a sender to the edge.
//!
//! Each crate includes this module and uses part of it, hence
//! `allow(dead_code)`; so do the benches (`#[path]`).
#![allow(dead_code)]

pub mod connect;
pub mod matrix;
pub mod net;
pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;

use fedpin::alert::{Alert, AlertHub};
use fedpin::pins::{Pin, PinSet};
use fedpin::verify::{PeerContext, PinnedServerVerifier, Verdict, VerifierCore};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A CA (root or intermediate) that can issue.
pub struct Ca {
    pub cert: CertificateDer<'static>,
    pub issuer: Issuer<'static, KeyPair>,
}

/// An end-entity certificate and its key.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
}

impl Leaf {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Writes the certificate (PEM) to `cert` and its key (PKCS#8 PEM) to `key`.
    pub fn write_pem(&self, cert: &std::path::Path, key: &std::path::Path) {
        std::fs::write(cert, pem("CERTIFICATE", self.cert.as_ref())).unwrap();
        std::fs::write(key, self.key.serialize_pem()).unwrap();
    }
}

/// Parameters of a CA certificate named `cn` (no path length limit).
pub fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// An interception CA as `fedpin ca init` makes one (P-256, path length
/// 0): PEM for the minter, DER for the client's trust store.
pub struct InterceptionCa {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// A fresh [`InterceptionCa`].
pub fn interception_ca() -> InterceptionCa {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params("fedpin test interception CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let cert = params.self_signed(&key).unwrap();
    InterceptionCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A self-signed root CA.
pub fn root(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(cn);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// An intermediate CA signed by `parent`.
pub fn intermediate(parent: &Ca, cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(cn);
    let cert = params.signed_by(&key, &parent.issuer).unwrap();
    Ca {
        cert: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `names` signed by `issuer`.
pub fn leaf(issuer: &Ca, names: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &issuer.issuer).unwrap();
    Leaf {
        cert: cert.der().clone(),
        key,
    }
}

/// A leaf whose validity ended in the past.
pub fn expired_leaf(issuer: &Ca, names: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.signed_by(&key, &issuer.issuer).unwrap();
    Leaf {
        cert: cert.der().clone(),
        key,
    }
}

/// A self-signed leaf (pin-only peers).
pub fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        cert: cert.der().clone(),
        key,
    }
}

/// The pin of a certificate's key.
pub fn pin(cert: &CertificateDer<'_>) -> Pin {
    fedpin::verify::spki_of_der(cert.as_ref()).expect("test cert parses")
}

/// Builds a pin set from TOML text.
pub fn pinset(toml: &str) -> Arc<PinSet> {
    let mut set =
        PinSet::parse(toml).unwrap_or_else(|e| panic!("test pin file invalid: {e}\n{toml}"));
    set.generation = 1;
    Arc::new(set)
}

/// A verifier core trusting only `anchors`, with a fresh alert hub.
pub fn core(anchors: &[&CertificateDer<'static>]) -> (Arc<VerifierCore>, AlertHub) {
    let hub = AlertHub::new();
    let list: Vec<CertificateDer<'static>> = anchors.iter().map(|c| (*c).clone()).collect();
    let core =
        VerifierCore::with_only_anchors(&fedpin::tls::provider(), &list, hub.clone()).unwrap();
    (Arc::new(core), hub)
}

/// Resolver that serves a chain with whatever key it is given, without
/// checking that they match (to play a peer that replays a certificate).
#[derive(Debug)]
struct AnyKey(Arc<CertifiedKey>);

impl ResolvesServerCert for AnyKey {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server config serving `chain` signed with `key` (which need not match
/// the leaf), for the protocol `versions`.
pub fn any_key_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ServerConfig {
    let provider = fedpin::tls::provider();
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let ck = Arc::new(CertifiedKey::new(chain, signing));
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AnyKey(ck)))
}

/// Starts a TLS server on 127.0.0.1:0 serving `chain` signed with `key`
/// (which need not match the leaf). Each connection gets "hello\n" and is closed.
pub async fn serve(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> SocketAddr {
    let mut config = any_key_config(chain, key, rustls::DEFAULT_VERSIONS);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    net::serve_hello(config).await
}

/// [`serve`] for a leaf with its own key.
pub async fn serve_leaf(l: &Leaf) -> SocketAddr {
    serve(vec![l.cert.clone()], l.key_der()).await
}

/// Runs `fut` within 10 s; a timeout panics naming `what`.
pub async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    const STEP: std::time::Duration = std::time::Duration::from_secs(10);
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no outcome within {STEP:?}"),
    }
}

/// What a pinned client saw.
pub struct Outcome {
    pub result: Result<String, String>,
    pub record: Option<Verdict>,
    pub resumed: bool,
}

/// Connects with a fresh PinnedServerVerifier for `pins` and reads the greeting.
pub async fn connect(
    core: &Arc<VerifierCore>,
    pins: &Arc<PinSet>,
    addr: SocketAddr,
    name: &str,
) -> Outcome {
    let verifier = Arc::new(PinnedServerVerifier::new(
        core.clone(),
        pins.clone(),
        PeerContext {
            direction: Some(fedpin::alert::Direction::Outbound),
            server_name: None,
            port: Some(addr.port()),
            peer_addr: Some(addr),
        },
    ));
    let config = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let out = connect_with(Arc::new(config), addr, name).await;
    Outcome {
        result: out.0,
        record: verifier.record(),
        resumed: out.1,
    }
}

/// Connects with a given client config; returns the greeting (or the error) and whether it resumed.
pub async fn connect_with(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> (Result<String, String>, bool) {
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    match connector.connect(server_name, tcp).await {
        Ok(mut tls) => {
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let mut s = String::new();
            match tls.read_to_string(&mut s).await {
                Ok(_) => (Ok(s), resumed),
                Err(e) => (Err(e.to_string()), resumed),
            }
        }
        Err(e) => (Err(e.to_string()), false),
    }
}

/// The alerts raised so far.
pub fn alerts(hub: &AlertHub) -> Vec<Alert> {
    hub.recent()
}

/// PEM armour for DER bytes (`label` e.g. "CERTIFICATE").
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The whole number in the environment variable `key` (`default` when unset
/// or not a number), clamped to 1..=`max`: a knob of the long-running tests.
pub fn env_knob(key: &str, default: u64, max: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// Whether the environment variable `key` is `1` (e.g. keep a run's files).
pub fn env_flag(key: &str) -> bool {
    std::env::var(key).is_ok_and(|v| v == "1")
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cond()
}

/// A pin file with a `[policy]` section (`policy`: its lines) and one peer
/// `host` pinned to `pins`, followed by `extra` lines of that entry.
pub fn peer_toml(policy: &str, host: &str, pins: &[String], extra: &str) -> String {
    let pins: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "version = 1\n[policy]\n{policy}\n\n[[peer]]\nserver_name = \"{host}\"\npins = [{}]\n{extra}\n",
        pins.join(", ")
    )
}

/// The block scalar under `key: |` in a YAML text (first occurrence), dedented.
pub fn block_scalar(yaml: &str, key: &str) -> String {
    let header = format!("{key}: |");
    let mut lines = yaml.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("no `{header}` block"));
    let body: Vec<&str> = lines.collect();
    let indent = body
        .iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .expect("block has content");
    let mut out = String::new();
    for l in body {
        if l.trim().is_empty() {
            out.push('\n');
            continue;
        }
        if l.len() - l.trim_start().len() < indent {
            break;
        }
        out.push_str(&l[indent..]);
        out.push('\n');
    }
    out
}
