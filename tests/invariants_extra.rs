//! More tests for the SPEC section 4 invariants, each named after the invariant
//! it guards. Each one covers a bug in the verifier that `tests/invariants.rs`
//! let through in a mutation check: a test here passes against the real code
//! and fails against the mutant named in its doc comment.
//! Real TLS on 127.0.0.1 with chains minted per test by rcgen, or
//! `VerifierCore::evaluate` / `PinnedClientVerifier::evaluate` where a
//! handshake adds nothing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fedpin::alert::{Action, AlertEvent, Severity};
use fedpin::pins::PinSet;
use fedpin::verify::{Basis, PinnedClientVerifier, Usage, Verdict};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "hs.fedpin.test";

fn peer_toml(policy: &str, host: &str, pins: &[String], extra: &str) -> String {
    let pins: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "version = 1\n[policy]\n{policy}\n\n[[peer]]\nserver_name = \"{host}\"\npins = [{}]\n{extra}\n",
        pins.join(", ")
    )
}

/// A leaf for `names` whose only extended key usage is `eku`.
fn leaf_with_eku(issuer: &Ca, names: &[&str], eku: ExtendedKeyUsagePurpose) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![eku];
    let cert = params.signed_by(&key, &issuer.issuer).unwrap();
    Leaf {
        cert: cert.der().clone(),
        key,
    }
}

/// Serves `chain` signed with `key` (which need not match the leaf), speaking
/// only TLS 1.2, so the client checks the ServerKeyExchange signature through
/// `verify_tls12_signature`.
async fn serve_tls12(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    #[derive(Debug)]
    struct AnyKey(Arc<CertifiedKey>);
    impl rustls::server::ResolvesServerCert for AnyKey {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let provider = fedpin::tls::provider();
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let ck = Arc::new(CertifiedKey::new(chain, signing));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AnyKey(ck)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hello\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

fn at(rfc3339: &str) -> UnixTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    UnixTime::since_unix_epoch(Duration::from_secs(t.unix_timestamp() as u64))
}

/// Invariant 2 (the chain must validate *for the host name*) applied to every
/// Web PKI fallback: no entry under `policy.unpinned = "webpki"`, and expired
/// pins under `policy.on_expired = "webpki"`. A CA-valid certificate for
/// another name is refused. Mutant caught: `webpki_check` skipping
/// `verify_is_valid_for_subject_name`.
#[tokio::test]
async fn inv6_webpki_fallbacks_check_the_host_name() {
    let ca = root("CA");
    let (core, hub) = core(&[&ca.cert]);
    let wrong_name = leaf(&ca, &["somebody-else.fedpin.test"]);
    let addr = serve(vec![wrong_name.cert.clone()], wrong_name.key_der()).await;

    let unpinned = pinset("version = 1\n[policy]\nunpinned = \"webpki\"\n");
    let out = connect(&core, &unpinned, addr, HOST).await;
    assert!(
        out.result.is_err(),
        "unpinned host, certificate for another name"
    );

    let expired = pinset(&peer_toml(
        "on_expired = \"webpki\"",
        HOST,
        &[pin(&wrong_name.cert).to_string()],
        "expires = \"2020-01-01T00:00:00Z\"",
    ));
    let out = connect(&core, &expired, addr, HOST).await;
    assert!(
        out.result.is_err(),
        "expired pins, certificate for another name"
    );

    let a = alerts(&hub);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(
        (a[0].event, a[0].action),
        (AlertEvent::ChainInvalid, Action::Blocked)
    );
    assert_eq!(
        (a[1].event, a[1].action),
        (AlertEvent::PinExpired, Action::Blocked)
    );
    for a in &a {
        assert_ne!(a.webpki, "valid");
        assert_eq!(a.severity, Severity::Warning);
    }
}

/// Invariant 5: report mode lets a mismatch through only if Web PKI passes,
/// and Web PKI includes the name check. Mutant caught: `webpki_check`
/// skipping the name check (report mode would then allow a CA-valid
/// certificate for any name).
#[tokio::test]
async fn inv5_report_mode_needs_webpki_valid_for_the_name() {
    let ca = root("CA");
    let pinned = leaf(&ca, &[HOST]);
    let wrong_name = leaf(&ca, &["somebody-else.fedpin.test"]);
    let (core, hub) = core(&[&ca.cert]);
    let pins = pinset(&peer_toml(
        "",
        HOST,
        &[pin(&pinned.cert).to_string()],
        "mode = \"report\"",
    ));
    let addr = serve(vec![wrong_name.cert.clone()], wrong_name.key_der()).await;
    let out = connect(&core, &pins, addr, HOST).await;
    assert!(out.result.is_err());
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].event, a[0].severity, a[0].action),
        (AlertEvent::PinMismatch, Severity::Warning, Action::Blocked)
    );
}

/// Invariant 6: expired pins under `on_expired = "webpki"` fall back to Web
/// PKI, so a chain that does not validate is refused. Mutant caught: the
/// expired branch accepting on `ExpiredPolicy::Webpki` whatever Web PKI says.
#[tokio::test]
async fn inv6_expired_pins_webpki_fallback_refuses_invalid_chain() {
    let trusted = root("Trusted");
    let untrusted = root("Untrusted");
    let (core, hub) = core(&[&trusted.cert]);
    let l = leaf(&untrusted, &[HOST]);
    let pins = pinset(&peer_toml(
        "on_expired = \"webpki\"",
        HOST,
        &[pin(&l.cert).to_string()],
        "expires = \"2020-01-01T00:00:00Z\"",
    ));
    let addr = serve(vec![l.cert.clone()], l.key_der()).await;
    let out = connect(&core, &pins, addr, HOST).await;
    assert!(
        out.result.is_err(),
        "expired pins + untrusted chain must be refused"
    );
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].event, a[0].action),
        (AlertEvent::PinExpired, Action::Blocked)
    );
}

/// Invariant 6 (expired pins): `expires` is an instant; its UTC offset
/// counts. `2030-01-01T00:00:00+02:00` is 2029-12-31T22:00Z: at 23:00Z the
/// pins have expired, at 21:00Z they have not. Mutant caught: comparing
/// wall-clock date and time while ignoring the offset.
#[test]
fn inv6_pin_expiry_honours_the_utc_offset() {
    let ca = root("CA");
    let l = leaf(&ca, &[HOST]);
    let (core, _hub) = core(&[&ca.cert]);
    let pins = pinset(&peer_toml(
        "on_expired = \"deny\"",
        HOST,
        &[pin(&l.cert).to_string()],
        "expires = \"2030-01-01T00:00:00+02:00\"",
    ));
    let name = ServerName::try_from(HOST).unwrap();
    let eval = |now: UnixTime| {
        core.evaluate(
            &pins,
            HOST,
            Some(&name),
            &l.cert,
            &[],
            now,
            Usage::Server,
            &Default::default(),
        )
    };
    let after = eval(at("2029-12-31T23:00:00Z"));
    match &after.verdict {
        Verdict::Reject(r) => assert_eq!(r.event, AlertEvent::PinExpired),
        v => panic!("one hour after expiry the pins must count as expired: {v:?}"),
    }
    let before = eval(at("2029-12-31T21:00:00Z"));
    match &before.verdict {
        Verdict::Accept(a) => assert_eq!(a.basis(), Basis::PinOnValidatedPath),
        v => panic!("one hour before expiry the pins are enforced and match: {v:?}"),
    }
}

/// Invariant 3: under `trust = "pin-only"` only the leaf key counts; a
/// leaf that Web PKI accepts for the name but whose key is not pinned is
/// refused (in enforce mode) with the CA-compromise severity. Mutant caught:
/// pin-only treated as "pin OR Web PKI".
#[tokio::test]
async fn inv3_pin_only_refuses_ca_valid_leaf_with_unpinned_key() {
    let ca = root("Public CA");
    let (core, hub) = core(&[&ca.cert]);
    let pinned = self_signed(&[HOST]);
    let ca_valid = leaf(&ca, &[HOST]);
    let pins = pinset(&peer_toml(
        "",
        HOST,
        &[pin(&pinned.cert).to_string()],
        "trust = \"pin-only\"",
    ));
    let addr = serve(vec![ca_valid.cert.clone()], ca_valid.key_der()).await;
    let out = connect(&core, &pins, addr, HOST).await;
    assert!(
        out.result.is_err(),
        "a CA-valid but unpinned leaf is not enough"
    );
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].event, a[0].severity, a[0].action, a[0].webpki.as_str()),
        (
            AlertEvent::PinMismatch,
            Severity::Critical,
            Action::Blocked,
            "valid"
        )
    );
}

/// Invariant 4 on the TLS 1.2 path: a peer that replays the pinned
/// certificate without its key fails the ServerKeyExchange signature check.
/// Mutant caught: `verify_tls12_signature` returning Ok (the invariants
/// tests only ever negotiate TLS 1.3).
#[tokio::test]
async fn inv4_tls12_replayed_pinned_certificate_without_key_fails() {
    let ca = root("CA");
    let genuine = leaf(&ca, &[HOST]);
    let attacker_key = leaf(&ca, &[HOST]).key_der();
    let (core, hub) = core(&[&ca.cert]);

    // Control: the genuine key over TLS 1.2 is accepted.
    let pins = pinset(&peer_toml("", HOST, &[pin(&genuine.cert).to_string()], ""));
    let good = serve_tls12(vec![genuine.cert.clone()], genuine.key_der()).await;
    assert_eq!(
        connect(&core, &pins, good, HOST).await.result.as_deref(),
        Ok("hello\n")
    );

    for trust in ["trust = \"webpki\"", "trust = \"pin-only\""] {
        let pins = pinset(&peer_toml(
            "",
            HOST,
            &[pin(&genuine.cert).to_string()],
            trust,
        ));
        let addr = serve_tls12(vec![genuine.cert.clone()], attacker_key.clone_key()).await;
        let out = connect(&core, &pins, addr, HOST).await;
        assert!(out.result.is_err(), "{trust}: TLS 1.2 replay must fail");
        let rec = out.record.unwrap();
        assert!(rec.signature_failed && !rec.accepted, "{trust}");
    }
    let a = alerts(&hub);
    assert!(!a.is_empty());
    assert!(a
        .iter()
        .all(|a| a.event == AlertEvent::SignatureInvalid && a.severity == Severity::Critical));
}

/// Invariant 2 for IP-literal peers: a peer reached by IP address is looked
/// up by that address, so its pins are enforced (a CA-valid impostor with the
/// right IP SAN is refused, critical). Mutant caught: the lookup key of an
/// IP `ServerName` not being its canonical text (the peer then falls through
/// to `policy.unpinned`).
#[tokio::test]
async fn inv2_ip_literal_peer_is_pinned() {
    let ca = root("CA");
    let ip = "127.0.0.1";
    let genuine = leaf(&ca, &[ip]);
    let impostor = leaf(&ca, &[ip]);
    let (core, hub) = core(&[&ca.cert]);
    let pins = pinset(&peer_toml(
        "unpinned = \"webpki\"",
        "127.0.0.1:8448",
        &[pin(&genuine.cert).to_string()],
        "",
    ));
    let good = serve(vec![genuine.cert.clone()], genuine.key_der()).await;
    let out = connect(&core, &pins, good, ip).await;
    assert_eq!(out.result.as_deref(), Ok("hello\n"));
    assert_eq!(out.record.unwrap().basis, Some(Basis::PinOnValidatedPath));

    let bad = serve(vec![impostor.cert.clone()], impostor.key_der()).await;
    let out = connect(&core, &pins, bad, ip).await;
    assert!(
        out.result.is_err(),
        "CA-valid impostor for a pinned IP peer"
    );
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].event, a[0].severity),
        (AlertEvent::PinMismatch, Severity::Critical)
    );
    assert_eq!(a[0].host.as_deref(), Some(ip));
}

/// Invariant 2 (a server's chain validates *as a server certificate*): a
/// pinned leaf whose extended key usage is client authentication only is
/// refused outbound. Mutant caught: `check_server` verifying with
/// `Usage::Client`.
#[tokio::test]
async fn inv2_server_chain_must_validate_for_server_auth() {
    let ca = root("CA");
    let (core, hub) = core(&[&ca.cert]);
    let client_only = leaf_with_eku(&ca, &[HOST], ExtendedKeyUsagePurpose::ClientAuth);
    let pins = pinset(&peer_toml(
        "",
        HOST,
        &[pin(&client_only.cert).to_string()],
        "",
    ));
    let addr = serve(vec![client_only.cert.clone()], client_only.key_der()).await;
    let out = connect(&core, &pins, addr, HOST).await;
    assert!(
        out.result.is_err(),
        "a clientAuth-only certificate is not a server certificate"
    );
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].event, AlertEvent::ChainInvalid);

    // Control: the same thing with serverAuth is accepted.
    let server = leaf_with_eku(&ca, &[HOST], ExtendedKeyUsagePurpose::ServerAuth);
    let pins = pinset(&peer_toml("", HOST, &[pin(&server.cert).to_string()], ""));
    let addr = serve(vec![server.cert.clone()], server.key_der()).await;
    assert_eq!(
        connect(&core, &pins, addr, HOST).await.result.as_deref(),
        Ok("hello\n")
    );
}

/// Invariant 2: the pin entry is found whatever the case of the TLS name and
/// with or without the trailing dot of an absolute name, so an impostor
/// cannot dodge the pins by spelling. Mutant caught: `normalize_lookup` not
/// lowercasing (the trailing dot is also stripped by rustls-pki-types before
/// the verifier sees the name; the spellings stay here as a guard).
#[tokio::test]
async fn inv2_pin_lookup_ignores_case_and_trailing_dot() {
    let ca = root("CA");
    let genuine = leaf(&ca, &[HOST]);
    let impostor = leaf(&ca, &[HOST]);
    let (core, hub) = core(&[&ca.cert]);
    let pins = pinset(&peer_toml(
        "unpinned = \"webpki\"",
        HOST,
        &[pin(&genuine.cert).to_string()],
        "",
    ));
    let bad = serve(vec![impostor.cert.clone()], impostor.key_der()).await;
    for spelled in ["HS.Fedpin.TEST", "hs.fedpin.test.", "Hs.FEDPIN.test."] {
        let out = connect(&core, &pins, bad, spelled).await;
        assert!(out.result.is_err(), "{spelled}: impostor must be refused");
        let rec = out.record.unwrap();
        assert_eq!(rec.host, HOST, "{spelled}");
    }
    let a = alerts(&hub);
    assert_eq!(a.len(), 1, "same host, same leaf: merged ({a:?})");
    assert_eq!(
        (a[0].event, a[0].severity),
        (AlertEvent::PinMismatch, Severity::Critical)
    );
}

/// Invariant 6 for client certificates (inbound mutual TLS): a client
/// certificate that carries a pinned name is checked against that name's
/// pins even when it lists an unpinned name first, so a client cannot choose
/// `policy.unpinned = "webpki"` by SAN order. Mutant caught:
/// `PinnedClientVerifier` looking up only the first SAN.
#[test]
fn inv6_client_cannot_pick_unpinned_policy_by_san_order() {
    let ca = root("CA");
    let genuine = leaf(&ca, &["peer.fedpin.test"]);
    let sneaky = leaf(&ca, &["unlisted.fedpin.test", "peer.fedpin.test"]);
    let (core, _hub) = core(&[&ca.cert]);
    let mut set = PinSet::parse(&peer_toml(
        "unpinned = \"webpki\"",
        "peer.fedpin.test",
        &[pin(&genuine.cert).to_string()],
        "",
    ))
    .unwrap();
    set.generation = 1;
    let v = PinnedClientVerifier::new(core, Arc::new(set), true);
    let ev = v.evaluate(&genuine.cert, &[], UnixTime::now());
    assert!(ev.verdict.is_accept(), "{:?}", ev.verdict);
    let ev = v.evaluate(&sneaky.cert, &[], UnixTime::now());
    match &ev.verdict {
        Verdict::Reject(r) => assert_eq!(r.event, AlertEvent::PinMismatch),
        v => panic!("a client naming a pinned peer must meet its pins: {v:?}"),
    }
    assert_eq!(ev.host, "peer.fedpin.test");
    let alert = ev.alert.expect("alert");
    assert_eq!(alert.severity, Severity::Critical);
}

/// Invariant 4 for client certificates: a client that replays a pinned
/// client certificate without its key fails the CertificateVerify check.
/// Mutant caught: `PinnedClientVerifier::verify_tls13_signature` returning Ok.
#[tokio::test]
async fn inv4_client_replaying_pinned_certificate_without_key_fails() {
    #[derive(Debug)]
    struct Replay(Arc<CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Replay {
        fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let ca = root("CA");
    let server = leaf(&ca, &["inbound.fedpin.test"]);
    let genuine = leaf(&ca, &["peer.fedpin.test"]);
    let attacker = leaf(&ca, &["peer.fedpin.test"]);
    let (core, _hub) = core(&[&ca.cert]);
    let mut set = PinSet::parse(&peer_toml(
        "unpinned = \"deny\"",
        "peer.fedpin.test",
        &[pin(&genuine.cert).to_string()],
        "",
    ))
    .unwrap();
    set.generation = 1;
    let verifier = Arc::new(PinnedClientVerifier::new(core, Arc::new(set), true));
    let config = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert.clone()], server.key_der())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hello\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });

    let provider = fedpin::tls::provider();
    let client = |key: PrivateKeyDer<'static>| {
        let signing = provider.key_provider.load_private_key(key).unwrap();
        let ck = Arc::new(CertifiedKey::new(vec![genuine.cert.clone()], signing));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_cert_resolver(Arc::new(Replay(ck))),
        )
    };
    async fn talk(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("inbound.fedpin.test").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut s = String::new();
        tls.read_to_string(&mut s)
            .await
            .map_err(|e| e.to_string())?;
        Ok(s)
    }
    assert_eq!(
        talk(client(genuine.key_der()), addr).await.as_deref(),
        Ok("hello\n"),
        "control: the genuine key is accepted"
    );
    let replay = talk(client(attacker.key_der()), addr).await;
    assert_ne!(
        replay.as_deref(),
        Ok("hello\n"),
        "replay without the key must fail"
    );
}
