//! One test per security invariant of SPEC section 4, each named after it.
//! Real TLS on 127.0.0.1 with chains minted per test by rcgen.

mod common;

use common::*;
use fedpin::alert::AlertEvent::*;
use fedpin::alert::{
    Action, Action::*, Alert, AlertEvent, AlertHub, Direction, Severity, Severity::*,
};
use fedpin::pins::{Mode, PinSet};
use fedpin::verify::{
    Basis, Outcome, PinnedClientVerifier, Presented, Refusal, Usage, Verdict, VerifierCore,
};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

const HOST: &str = "hs.fedpin.test";
const PIN_ONLY: &str = "trust = \"pin-only\"";
const REPORT: &str = "mode = \"report\"";
const EXPIRED: &str = "expires = \"2020-01-01T00:00:00Z\"";
const EXPIRED_WEBPKI: &str = "on_expired = \"webpki\"";
const EXPIRED_DENY: &str = "on_expired = \"deny\"";
const UNPINNED_WEBPKI: &str = "unpinned = \"webpki\"";
const UNPINNED_DENY: &str = "unpinned = \"deny\"";

/// A pin set with `policy` lines whose one peer, HOST, is pinned to the key
/// of `cert`, with `extra` lines of that entry.
fn pins_for(policy: &str, cert: &CertificateDer<'_>, extra: &str) -> Arc<PinSet> {
    pins_at(policy, HOST, cert, extra)
}

/// [`pins_for`] for the peer `host`.
fn pins_at(policy: &str, host: &str, cert: &CertificateDer<'_>, extra: &str) -> Arc<PinSet> {
    pinset(&peer_toml(policy, host, &[pin(cert).to_string()], extra))
}

/// What the verifier core says of `cert` presented (alone) as a server
/// certificate for `lookup` (and the TLS `name`, if any) at `now`.
fn evaluate(
    core: &VerifierCore,
    pins: &Arc<PinSet>,
    cert: &CertificateDer<'_>,
    (lookup, name): (&str, Option<&ServerName<'_>>),
    now: UnixTime,
) -> Verdict {
    let presented = Presented {
        lookup,
        name,
        end_entity: cert,
        intermediates: &[],
        now,
        usage: Usage::Server,
    };
    core.evaluate(pins, &presented)
}

/// A client verifier (client certificate required) for a pin file with
/// `policy` lines and `peers` (server name, pinned certificate, extra lines).
fn client_verifier(
    core: Arc<VerifierCore>,
    policy: &str,
    peers: &[(&str, &CertificateDer<'_>, &str)],
) -> PinnedClientVerifier {
    let mut toml = format!("version = 1\n[policy]\n{policy}\n");
    for (name, cert, extra) in peers {
        let pin = pin(cert);
        toml += &format!("[[peer]]\nserver_name = \"{name}\"\npins = [\"{pin}\"]\n{extra}\n");
    }
    PinnedClientVerifier::new(core, pinset(&toml), true)
}

/// Connects to `addr` as HOST and returns the greeting (or the error).
async fn greeting(
    core: &Arc<VerifierCore>,
    pins: &Arc<PinSet>,
    addr: SocketAddr,
) -> Result<String, String> {
    connect(core, pins, addr, HOST).await.result
}

/// The greeting of a server for `served` to a client that pins HOST to the
/// key of `pinned` (with `policy` lines and `extra` lines of the entry).
async fn served_pinned(
    core: &Arc<VerifierCore>,
    served: &Leaf,
    pinned: &Leaf,
    (policy, extra): (&str, &str),
) -> Result<String, String> {
    let pins = pins_for(policy, &pinned.cert, extra);
    greeting(core, &pins, serve_leaf(served).await).await
}

/// A CA (named `cn`) trusted by a fresh verifier core, with two leaves
/// for `name` (the pinned one and another).
fn two_leaves(cn: &str, name: &str) -> (Ca, Leaf, Leaf, (Arc<VerifierCore>, AlertHub)) {
    let ca = root(cn);
    let (pinned, other) = (leaf(&ca, &[name]), leaf(&ca, &[name]));
    let core = core(&[&ca.cert]);
    (ca, pinned, other, core)
}

/// Two roots, "Trusted" and "Untrusted", and a verifier core trusting the first.
fn trusted_and_untrusted() -> (Ca, Ca, (Arc<VerifierCore>, AlertHub)) {
    let (trusted, untrusted) = (root("Trusted"), root("Untrusted"));
    let core = core(&[&trusted.cert]);
    (trusted, untrusted, core)
}

/// A CA trusted by a fresh verifier core, and a server of one of its leaves
/// for "unlisted.fedpin.test".
async fn unlisted_server() -> (Ca, (Arc<VerifierCore>, AlertHub), SocketAddr) {
    let ca = root("CA");
    let l = leaf(&ca, &["unlisted.fedpin.test"]);
    let core = core(&[&ca.cert]);
    (ca, core, serve_leaf(&l).await)
}

/// Connects to `addr` as HOST: greeted, and accepted on `basis`.
async fn assert_basis(
    core: &Arc<VerifierCore>,
    pins: &Arc<PinSet>,
    addr: SocketAddr,
    basis: Basis,
) {
    let out = connect(core, pins, addr, HOST).await;
    assert_eq!(out.result.as_deref(), Ok("hello\n"));
    assert_eq!(out.record.unwrap().basis(), Some(basis));
}

/// Connects to `addr` as HOST and asserts the greeting.
async fn assert_greets(core: &Arc<VerifierCore>, pins: &Arc<PinSet>, addr: SocketAddr) {
    assert_eq!(greeting(core, pins, addr).await.as_deref(), Ok("hello\n"));
}

/// Invariant 4: a server (TLS 1.2 only if `tls12`) replaying `genuine`'s
/// certificate, signing with `attacker_key`, is refused for a bad signature,
/// under `trust = "webpki"` and `"pin-only"` alike.
async fn assert_replays_fail(
    core: &Arc<VerifierCore>,
    genuine: &Leaf,
    attacker_key: &PrivateKeyDer<'static>,
    tls12: bool,
) {
    for trust in ["trust = \"webpki\"", PIN_ONLY] {
        let pins = pins_for("", &genuine.cert, trust);
        let (chain, key) = (vec![genuine.cert.clone()], attacker_key.clone_key());
        let addr = match tls12 {
            true => serve_tls12(chain, key).await,
            false => serve(chain, key).await,
        };
        let out = connect(core, &pins, addr, HOST).await;
        assert!(
            out.result.is_err(),
            "{trust} (TLS 1.2: {tls12}): replay must fail"
        );
        let rec = out.record.unwrap();
        let refusal = rec.refusal();
        let bad_signature = matches!(refusal, Some(Refusal::SignatureInvalid { .. }));
        assert!(bad_signature, "{trust}: {rec:?}");
    }
}

/// The one alert raised so far.
#[track_caller]
fn only_alert(hub: &AlertHub) -> Alert {
    let a = alerts(hub);
    assert_eq!(a.len(), 1, "{a:?}");
    a.into_iter().next().unwrap()
}

/// The event, severity and action of an alert.
fn summary(a: &Alert) -> (AlertEvent, Severity, Action) {
    (a.event, a.severity, a.action)
}

/// Invariant 1: Web PKI with the configured roots plus extra anchors.
#[tokio::test]
async fn inv1_webpki_roots_plus_extra_anchors() {
    let ca = root("Private Federation CA");
    let l = leaf(&ca, &[HOST]);
    let addr = serve_leaf(&l).await;
    let pins = pinset("version = 1\n");

    // With the private CA as an extra anchor: accepted (unpinned, policy webpki).
    let (with_extra, _) = core(&[&ca.cert]);
    let out = connect(&with_extra, &pins, addr, HOST).await;
    assert_eq!(out.result.as_deref(), Ok("hello\n"));
    assert_eq!(out.record.unwrap().basis(), Some(Basis::UnpinnedWebPki));

    // Mozilla roots alone do not know this CA: rejected, chain_invalid alert.
    let hub = fedpin::alert::AlertHub::new();
    let mozilla = std::sync::Arc::new(
        fedpin::verify::VerifierCore::new(&fedpin::tls::provider(), &[], hub.clone()).unwrap(),
    );
    let out = connect(&mozilla, &pins, addr, HOST).await;
    assert!(out.result.is_err());
    let a = [only_alert(&hub)];
    assert_eq!(a[0].event, ChainInvalid);
    assert!(a[0].webpki.contains("UnknownIssuer"), "{}", a[0].webpki);
}

/// Invariant 2: a CA-valid impostor for a pinned host is rejected with a critical alert.
#[tokio::test]
async fn inv2_ca_valid_impostor_is_critical_pin_mismatch() {
    let (_, genuine, impostor, (core, hub)) = two_leaves("Public CA", HOST);
    let pins = pins_for("", &genuine.cert, "");

    let good = serve_leaf(&genuine).await;
    assert_basis(&core, &pins, good, Basis::PinOnValidatedPath).await;
    assert!(alerts(&hub).is_empty());

    let bad = serve_leaf(&impostor).await;
    let out = connect(&core, &pins, bad, HOST).await;
    let err = out.result.unwrap_err();
    assert!(err.contains("pin check failed for hs.fedpin.test"), "{err}");
    let a = [only_alert(&hub)];
    let a = &a[0];
    assert_eq!(a.event, PinMismatch);
    assert_eq!(a.severity, Critical);
    assert_eq!(a.action, Blocked);
    assert_eq!(a.direction, Direction::Outbound);
    assert_eq!(a.webpki, "valid");
    assert_eq!(a.host.as_deref(), Some(HOST));
    assert_eq!(a.server_name.as_deref(), Some(HOST));
    assert_eq!(a.port, Some(bad.port()));
    assert_eq!(a.peer_addr.as_deref(), Some(bad.to_string().as_str()));
    assert_eq!(a.known_pins, vec![pin(&genuine.cert).to_string()]);
    assert_eq!(a.served_chain.len(), 1);
    assert_eq!(
        a.served_chain[0].pin.as_deref(),
        Some(pin(&impostor.cert).to_string().as_str())
    );
    assert_eq!(a.pin_generation, 1);
}

/// Invariant 2 (CVE-2016-2402): the genuine pinned intermediate appended to a
/// chain that validates through a different CA does not count.
#[tokio::test]
async fn inv2_pinned_intermediate_off_the_validated_path_does_not_count() {
    let genuine_root = root("Genuine Root");
    let genuine_int = intermediate(&genuine_root, "Genuine Intermediate");
    let genuine = leaf(&genuine_int, &[HOST]);
    let rogue_root = root("Compromised Root");
    let rogue_leaf = leaf(&rogue_root, &[HOST]);
    let (core, hub) = core(&[&genuine_root.cert, &rogue_root.cert]);
    let pins = pins_for("", &genuine_int.cert, "");

    // The genuine chain passes on the intermediate's pin.
    let good = serve(
        vec![genuine.cert.clone(), genuine_int.cert.clone()],
        genuine.key_der(),
    )
    .await;
    assert_greets(&core, &pins, good).await;

    // The attacker sends the pinned intermediate too, but it is not on the path that validates.
    let bad = serve(
        vec![rogue_leaf.cert.clone(), genuine_int.cert.clone()],
        rogue_leaf.key_der(),
    )
    .await;
    let out = connect(&core, &pins, bad, HOST).await;
    assert!(out.result.is_err());
    let a = [only_alert(&hub)];
    assert_eq!(a[0].event, PinMismatch);
    assert_eq!(a[0].severity, Critical);
    assert_eq!(a[0].served_chain.len(), 2);
}

/// Invariant 2: a pin on the trust anchor (not sent by the peer) counts; so does one on the leaf.
#[tokio::test]
async fn inv2_pin_on_anchor_or_leaf_of_validated_path_counts() {
    let r = root("Anchor Root");
    let int = intermediate(&r, "Int");
    let l = leaf(&int, &[HOST]);
    let (core, hub) = core(&[&r.cert]);
    let addr = serve(vec![l.cert.clone(), int.cert.clone()], l.key_der()).await;
    for p in [pin(&r.cert), pin(&l.cert)] {
        let pins = pinset(&peer_toml("", HOST, &[p.to_string()], ""));
        let out = connect(&core, &pins, addr, HOST).await;
        assert_eq!(out.result.as_deref(), Ok("hello\n"));
    }
    assert!(alerts(&hub).is_empty());
}

/// Invariant 2: a pinned leaf whose chain does not validate (unknown CA,
/// expired, wrong name) is rejected under trust = "webpki".
#[tokio::test]
async fn inv2_pinned_leaf_with_invalid_chain_is_rejected() {
    let (trusted, untrusted, (core, hub)) = trusted_and_untrusted();
    let unknown_ca = leaf(&untrusted, &[HOST]);
    let old = expired_leaf(&trusted, &[HOST]);
    let other = leaf(&trusted, &["other.fedpin.test"]);
    for l in [&unknown_ca, &old, &other] {
        assert!(served_pinned(&core, l, l, ("", "")).await.is_err());
    }

    let a = alerts(&hub);
    assert_eq!(a.len(), 3);
    for a in &a {
        assert_eq!(a.event, ChainInvalid, "{}", a.reason);
        assert_eq!(a.severity, Warning);
        assert_ne!(a.webpki, "valid");
    }
}

/// Invariant 3: pin-only peers are checked on the leaf key alone.
#[tokio::test]
async fn inv3_pin_only_checks_leaf_key_alone() {
    let (core, hub) = core(&[]);
    let ss = self_signed(&["some-other-name.example"]);
    let pins = pins_for("", &ss.cert, PIN_ONLY);
    let addr = serve_leaf(&ss).await;
    let out = connect(&core, &pins, addr, HOST).await;
    assert_eq!(
        out.result.as_deref(),
        Ok("hello\n"),
        "name and chain are not required"
    );
    assert_eq!(out.record.unwrap().basis(), Some(Basis::PinOnlyLeaf));

    // The self-signed key changed: rejected.
    let changed = self_signed(&[HOST]);
    let addr = serve_leaf(&changed).await;
    assert!(greeting(&core, &pins, addr).await.is_err());
    let a = [only_alert(&hub)];
    assert_eq!(a[0].event, PinMismatch);
    assert_eq!(a[0].action, Blocked);

    // Other certificates the peer sends are ignored: the pinned cert as an extra does not count.
    let decoy = self_signed(&[HOST]);
    let addr = serve(vec![decoy.cert.clone(), ss.cert.clone()], decoy.key_der()).await;
    assert!(greeting(&core, &pins, addr).await.is_err());
}

/// Invariant 4: the handshake signature is always checked against the leaf key.
#[tokio::test]
async fn inv4_replayed_pinned_certificate_without_key_fails() {
    let (_, genuine, attacker, (core, hub)) = two_leaves("CA", HOST);
    let attacker_key = attacker.key_der();
    assert_replays_fail(&core, &genuine, &attacker_key, false).await;
    let a = alerts(&hub);
    assert_eq!(a.len(), 1, "identical replays merge within 60 s");
    assert_eq!(a[0].event, SignatureInvalid);
    assert_eq!(a[0].severity, Critical);
}

/// Invariant 5: report mode lets a Web-PKI-valid mismatch through with an
/// alert, and blocks a Web-PKI-invalid one.
#[tokio::test]
async fn inv5_report_mode_allows_only_webpki_valid_mismatch() {
    let ca = root("CA");
    let rogue = root("Not trusted");
    let pinned = leaf(&ca, &[HOST]);
    let valid_other = leaf(&ca, &[HOST]);
    let invalid_other = leaf(&rogue, &[HOST]);
    let (core, hub) = core(&[&ca.cert]);
    let pins = pins_for("", &pinned.cert, REPORT);

    let addr = serve_leaf(&valid_other).await;
    assert_basis(&core, &pins, addr, Basis::ReportModeWebPki).await;

    let addr = serve_leaf(&invalid_other).await;
    assert!(greeting(&core, &pins, addr).await.is_err());

    let a = alerts(&hub);
    assert_eq!(a.len(), 2);
    assert_eq!(summary(&a[0]), (PinMismatch, Critical, Allowed));
    assert_eq!(a[0].mode, Some(fedpin::pins::Mode::Report));
    assert_eq!((a[1].event, a[1].action), (PinMismatch, Blocked));
    assert_eq!(a[1].severity, Warning);
}

/// Invariant 6: hosts without an entry follow policy.unpinned.
#[tokio::test]
async fn inv6_unpinned_policy_webpki_and_deny() {
    let (ca, (core, hub), addr) = unlisted_server().await;
    let other_pin = pin(&leaf(&ca, &[HOST]).cert).to_string();

    let webpki = pinset(&peer_toml(
        UNPINNED_WEBPKI,
        HOST,
        std::slice::from_ref(&other_pin),
        "",
    ));
    assert_eq!(
        connect(&core, &webpki, addr, "unlisted.fedpin.test")
            .await
            .result
            .as_deref(),
        Ok("hello\n")
    );
    assert!(alerts(&hub).is_empty());

    let deny = pinset(&peer_toml(UNPINNED_DENY, HOST, &[other_pin], ""));
    let out = connect(&core, &deny, addr, "unlisted.fedpin.test").await;
    assert!(out.result.unwrap_err().contains("policy.unpinned"));
    let a = [only_alert(&hub)];
    assert_eq!((a[0].event, a[0].action), (UnpinnedDenied, Blocked));
    assert_eq!(a[0].webpki, "valid");
}

/// Invariant 6: expired pins follow policy.on_expired (when they still
/// match; a mismatch is invariant 10's critical alert).
#[tokio::test]
async fn inv6_expired_pins_follow_on_expired() {
    let (_, pinned, rotated, (core, hub)) = two_leaves("CA", HOST);
    let addr = serve_leaf(&pinned).await;
    let expired = EXPIRED;

    let fallback = pins_for(EXPIRED_WEBPKI, &pinned.cert, expired);
    assert_basis(&core, &fallback, addr, Basis::ExpiredPinsWebPki).await;

    let deny = pins_for(EXPIRED_DENY, &pinned.cert, expired);
    assert!(greeting(&core, &deny, addr).await.is_err());

    // Not yet expired: enforced as usual (a rotated key is refused).
    let future = pins_for(
        EXPIRED_WEBPKI,
        &pinned.cert,
        "expires = \"2999-01-01T00:00:00Z\"",
    );
    let addr = serve_leaf(&rotated).await;
    assert!(greeting(&core, &future, addr).await.is_err());

    let a = alerts(&hub);
    assert_eq!(a.len(), 3);
    assert_eq!((a[0].event, a[0].action), (PinExpired, Allowed));
    assert_eq!(a[0].expires.as_deref(), Some("2020-01-01T00:00:00Z"));
    assert_eq!((a[1].event, a[1].action), (PinExpired, Blocked));
    assert_eq!((a[2].event, a[2].severity), (PinMismatch, Critical));
}

/// Invariant 10: expired pins are still compared. A CA-valid certificate
/// that matches no pin is a critical `pin_mismatch` whatever
/// `policy.on_expired` says: blocked in enforce mode (and always under
/// `on_expired = "deny"`), allowed only in report mode under
/// `on_expired = "webpki"`. `on_expired = "webpki"` accepts with a
/// `pin_expired` warning only when the expired pins still match.
#[tokio::test]
async fn invariant_10_expired_pins_are_still_compared() {
    let ca = root("CA");
    let pinned = leaf(&ca, &[HOST]);
    let impostor = leaf(&ca, &[HOST]);
    let good = serve_leaf(&pinned).await;
    let bad = serve_leaf(&impostor).await;
    let expired = EXPIRED;
    let pinned_pin = [pin(&pinned.cert).to_string()];

    // (on_expired, extra peer keys, server) -> accepted?, alert (event, severity, action)
    let blocked = (PinMismatch, Critical, Blocked);
    let allowed = (PinMismatch, Critical, Allowed);
    let expired_ok = (PinExpired, Warning, Allowed);
    let expired_no = (PinExpired, Warning, Blocked);
    let cases = [
        ("webpki", "", bad, false, blocked),
        ("webpki", PIN_ONLY, bad, false, blocked),
        ("webpki", REPORT, bad, true, allowed),
        ("deny", "", bad, false, blocked),
        ("deny", REPORT, bad, false, blocked),
        ("webpki", "", good, true, expired_ok),
        ("deny", "", good, false, expired_no),
    ];
    for (on_expired, extra, addr, accepted, want) in cases {
        let what = format!(
            "on_expired = {on_expired}, {extra:?}, served {}",
            if addr == good { "pinned" } else { "impostor" }
        );
        let (core, hub) = core(&[&ca.cert]);
        let pins = pinset(&peer_toml(
            &format!("on_expired = \"{on_expired}\""),
            HOST,
            &pinned_pin,
            &format!("{expired}\n{extra}"),
        ));
        let out = connect(&core, &pins, addr, HOST).await;
        assert_eq!(out.result.is_ok(), accepted, "{what}: {:?}", out.result);
        if addr == bad && accepted {
            assert_eq!(
                out.record.unwrap().basis(),
                Some(Basis::ReportModeWebPki),
                "{what}"
            );
        }
        let a = alerts(&hub);
        assert_eq!(a.len(), 1, "{what}: {a:?}");
        assert_eq!(summary(&a[0]), want, "{what}");
        assert_eq!(a[0].webpki, "valid", "{what}");
        assert_eq!(
            a[0].expires.as_deref(),
            Some("2020-01-01T00:00:00Z"),
            "{what}"
        );
    }
}

/// Invariant 7: any error while verifying rejects (garbage certificates, empty chains, odd names).
#[tokio::test]
async fn inv7_fail_closed_on_unparseable_certificate() {
    let (core, hub) = core(&[]);
    let pins = pinset("version = 1\n[policy]\nunpinned = \"webpki\"\n");
    let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    for cert in [&junk, &CertificateDer::from(vec![])] {
        let ev = evaluate(&core, &pins, cert, (HOST, None), UnixTime::now());
        assert!(!ev.is_accept());
    }

    // Over real TLS: a server that sends garbage instead of a certificate.
    let k = self_signed(&[HOST]);
    let addr = serve(vec![junk.clone()], k.key_der()).await;
    assert!(greeting(&core, &pins, addr).await.is_err());
    assert!(alerts(&hub).iter().any(|a| a.event == VerifyError));

    // A pin-only peer whose pinned key signs the handshake but whose certificate is garbage: rejected too.
    let pinned_junk = pins_for("", &k.cert, PIN_ONLY);
    assert!(greeting(&core, &pinned_junk, addr).await.is_err());
}

/// Invariant 9: lookup work does not grow with the number of peers (hash
/// lookup, no scan). 100,000 lookups in a 100,000-peer set finish in well
/// under a second with a hash map; a linear scan would need ~10^10 string
/// comparisons, and the watchdog (60 s, far beyond any machine's need) fails it.
#[test]
fn inv9_lookup_is_constant_work() {
    let n = 100_000;
    let mut toml = String::from("version = 1\n");
    for i in 0..n {
        let p = fedpin::pins::Pin::of_spki(&(i as u32).to_be_bytes());
        toml.push_str(&format!(
            "[[peer]]\nserver_name = \"h{i}.example\"\npins = [\"{p}\"]\n"
        ));
    }
    let set = std::sync::Arc::new(fedpin::pins::PinSet::parse(&toml).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let s = set.clone();
    std::thread::spawn(move || {
        let mut found = 0;
        for i in (0..n).rev() {
            if s.lookup(&format!("H{i}.example.")).is_some() {
                found += 1;
            }
        }
        let _ = tx.send(found);
    });
    let found = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("lookups must not scan the peer list");
    assert_eq!(found, n);
}

// ----------------------------------------------------------------------
// Moved unchanged from tests/invariants_extra.rs:
// More tests for the SPEC section 4 invariants, each named after the invariant
// it guards. Each one covers a bug in the verifier that `tests/invariants.rs`
// let through in a mutation check: a test here passes against the real code
// and fails against the mutant named in its doc comment.
// Real TLS on 127.0.0.1 with chains minted per test by rcgen, or
// `VerifierCore::evaluate` / `PinnedClientVerifier::evaluate` where a
// handshake adds nothing.
// ----------------------------------------------------------------------

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
    net::serve_hello(any_key_config(chain, key, &[&rustls::version::TLS12])).await
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
    let addr = serve_leaf(&wrong_name).await;

    let unpinned = pinset("version = 1\n[policy]\nunpinned = \"webpki\"\n");
    let out = greeting(&core, &unpinned, addr).await;
    assert!(out.is_err(), "unpinned host, certificate for another name");

    let expired = pins_for(EXPIRED_WEBPKI, &wrong_name.cert, EXPIRED);
    let out = greeting(&core, &expired, addr).await;
    assert!(out.is_err(), "expired pins, certificate for another name");

    let a = alerts(&hub);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!((a[0].event, a[0].action), (ChainInvalid, Blocked));
    assert_eq!((a[1].event, a[1].action), (PinExpired, Blocked));
    for a in &a {
        assert_ne!(a.webpki, "valid");
        assert_eq!(a.severity, Warning);
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
    let pins = pins_for("", &pinned.cert, REPORT);
    let addr = serve_leaf(&wrong_name).await;
    let out = connect(&core, &pins, addr, HOST).await;
    assert!(out.result.is_err());
    let a = [only_alert(&hub)];
    assert_eq!(summary(&a[0]), (PinMismatch, Warning, Blocked));
}

/// Invariant 6: expired pins under `on_expired = "webpki"` fall back to Web
/// PKI, so a chain that does not validate is refused. Mutant caught: the
/// expired branch accepting on `ExpiredPolicy::Webpki` whatever Web PKI says.
#[tokio::test]
async fn inv6_expired_pins_webpki_fallback_refuses_invalid_chain() {
    let (_, untrusted, (core, hub)) = trusted_and_untrusted();
    let l = leaf(&untrusted, &[HOST]);
    let out = served_pinned(&core, &l, &l, (EXPIRED_WEBPKI, EXPIRED)).await;
    let msg = "expired pins + untrusted chain must be refused";
    assert!(out.is_err(), "{msg}");
    let a = [only_alert(&hub)];
    assert_eq!((a[0].event, a[0].action), (PinExpired, Blocked));
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
    let pins = pins_for(
        EXPIRED_DENY,
        &l.cert,
        "expires = \"2030-01-01T00:00:00+02:00\"",
    );
    let name = ServerName::try_from(HOST).unwrap();
    let eval = |now: UnixTime| evaluate(&core, &pins, &l.cert, (HOST, Some(&name)), now);
    let after = eval(at("2029-12-31T23:00:00Z"));
    match &after.outcome {
        Outcome::Reject(r) => assert_eq!(r.event(), PinExpired),
        v => panic!("one hour after expiry the pins must count as expired: {v:?}"),
    }
    let before = eval(at("2029-12-31T21:00:00Z"));
    match &before.outcome {
        Outcome::Accept(a) => assert_eq!(a.basis(), Basis::PinOnValidatedPath),
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
    let out = served_pinned(&core, &ca_valid, &pinned, ("", PIN_ONLY)).await;
    assert!(out.is_err(), "a CA-valid but unpinned leaf is not enough");
    let a = [only_alert(&hub)];
    assert_eq!(
        (a[0].event, a[0].severity, a[0].action, a[0].webpki.as_str()),
        (PinMismatch, Critical, Blocked, "valid")
    );
}

/// Invariant 4 on the TLS 1.2 path: a peer that replays the pinned
/// certificate without its key fails the ServerKeyExchange signature check.
/// Mutant caught: `verify_tls12_signature` returning Ok (the invariants
/// tests only ever negotiate TLS 1.3).
#[tokio::test]
async fn inv4_tls12_replayed_pinned_certificate_without_key_fails() {
    let (_, genuine, attacker, (core, hub)) = two_leaves("CA", HOST);
    let attacker_key = attacker.key_der();

    // Control: the genuine key over TLS 1.2 is accepted.
    let pins = pins_for("", &genuine.cert, "");
    let good = serve_tls12(vec![genuine.cert.clone()], genuine.key_der()).await;
    assert_greets(&core, &pins, good).await;

    assert_replays_fail(&core, &genuine, &attacker_key, true).await;
    let a = alerts(&hub);
    assert!(!a.is_empty());
    assert!(a
        .iter()
        .all(|a| a.event == SignatureInvalid && a.severity == Critical));
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
        UNPINNED_WEBPKI,
        "127.0.0.1:8448",
        &[pin(&genuine.cert).to_string()],
        "",
    ));
    let good = serve_leaf(&genuine).await;
    let out = connect(&core, &pins, good, ip).await;
    assert_eq!(out.result.as_deref(), Ok("hello\n"));
    assert_eq!(out.record.unwrap().basis(), Some(Basis::PinOnValidatedPath));

    let bad = serve_leaf(&impostor).await;
    let out = connect(&core, &pins, bad, ip).await;
    assert!(
        out.result.is_err(),
        "CA-valid impostor for a pinned IP peer"
    );
    let a = [only_alert(&hub)];
    assert_eq!((a[0].event, a[0].severity), (PinMismatch, Critical));
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
    let out = served_pinned(&core, &client_only, &client_only, ("", "")).await;
    assert!(
        out.is_err(),
        "a clientAuth-only certificate is not a server certificate"
    );
    let a = [only_alert(&hub)];
    assert_eq!(a[0].event, ChainInvalid);

    // Control: the same thing with serverAuth is accepted.
    let server = leaf_with_eku(&ca, &[HOST], ExtendedKeyUsagePurpose::ServerAuth);
    let out = served_pinned(&core, &server, &server, ("", "")).await;
    assert_eq!(out.as_deref(), Ok("hello\n"));
}

/// Invariant 2: the pin entry is found whatever the case of the TLS name and
/// with or without the trailing dot of an absolute name, so an impostor
/// cannot dodge the pins by spelling. Mutant caught: `normalize_lookup` not
/// lowercasing (the trailing dot is also stripped by rustls-pki-types before
/// the verifier sees the name; the spellings stay here as a guard).
#[tokio::test]
async fn inv2_pin_lookup_ignores_case_and_trailing_dot() {
    let (_, genuine, impostor, (core, hub)) = two_leaves("CA", HOST);
    let pins = pins_for(UNPINNED_WEBPKI, &genuine.cert, "");
    let bad = serve_leaf(&impostor).await;
    for spelled in ["HS.Fedpin.TEST", "hs.fedpin.test.", "Hs.FEDPIN.test."] {
        let out = connect(&core, &pins, bad, spelled).await;
        assert!(out.result.is_err(), "{spelled}: impostor must be refused");
        let rec = out.record.unwrap();
        assert_eq!(rec.host, HOST, "{spelled}");
    }
    let a = alerts(&hub);
    assert_eq!(a.len(), 1, "same host, same leaf: merged ({a:?})");
    assert_eq!((a[0].event, a[0].severity), (PinMismatch, Critical));
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
    let peer = [("peer.fedpin.test", &genuine.cert, "")];
    let v = client_verifier(core, UNPINNED_WEBPKI, &peer);
    let ev = v.evaluate(&genuine.cert, &[], UnixTime::now());
    assert!(ev.is_accept(), "{:?}", ev);
    let ev = v.evaluate(&sneaky.cert, &[], UnixTime::now());
    match &ev.outcome {
        Outcome::Reject(r) => assert_eq!(r.event(), PinMismatch),
        v => panic!("a client naming a pinned peer must meet its pins: {v:?}"),
    }
    assert_eq!(ev.host, "peer.fedpin.test");
    let alert = ev
        .alert(v.pins(), &sneaky.cert, &[], v.context())
        .expect("alert");
    assert_eq!(alert.severity, Critical);
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
    let peer = [("peer.fedpin.test", &genuine.cert, "")];
    let verifier = Arc::new(client_verifier(core, UNPINNED_DENY, &peer));
    let addr = mtls_server(verifier, &server).await;

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
    assert_eq!(
        mtls_talk(client(genuine.key_der()), addr).await.as_deref(),
        Ok("hello\n"),
        "control: the genuine key is accepted"
    );
    let replay = mtls_talk(client(attacker.key_der()), addr).await;
    assert_ne!(
        replay.as_deref(),
        Ok("hello\n"),
        "replay without the key must fail"
    );
}

// ----------------------------------------------------------------------
// Moved unchanged from tests/review_findings.rs:
// Regression tests for findings of the verifier review (F1–F5). Each asserts
// what SPEC 4/5 asks for and failed before the fix.
// ----------------------------------------------------------------------

/// F1: an IPv6 host written in a non-canonical form in the pin file is never
/// found, because the verifier looks IP peers up by their canonical text.
/// The peer silently falls through to `policy.unpinned` (Web PKI only).
#[test]
fn f1_ipv6_host_in_non_canonical_form_is_unpinned() {
    let ca = root("CA");
    let genuine = leaf(&ca, &["::1"]);
    let impostor = leaf(&ca, &["::1"]);
    let (core, _hub) = core(&[&ca.cert]);
    let pins = pinset(&format!(
        "version = 1\n[[peer]]\nserver_name = \"[0:0:0:0:0:0:0:1]:8448\"\npins = [\"{}\"]\n",
        pin(&genuine.cert)
    ));
    let name = ServerName::try_from("::1").unwrap();
    let lookup = fedpin::verify::lookup_key(&name);
    let ev = evaluate(
        &core,
        &pins,
        &impostor.cert,
        (&lookup, Some(&name)),
        UnixTime::now(),
    );
    assert!(
        !ev.is_accept(),
        "CA-valid impostor for a pinned IPv6 peer accepted: {:?}",
        ev
    );
}

/// F2: the dedup key ignores severity, so a critical pin_mismatch (Web PKI
/// valid, the CA-compromise signature) for the same host and leaf key as an
/// earlier warning is swallowed for 60 s, and if a warning follows it the
/// merged record is a warning too: the critical is never reported as such.
#[test]
fn f2_critical_alert_is_not_merged_into_a_warning() {
    let hub = AlertHub::new();
    let mk = |severity: Severity, webpki: &str| Alert {
        event: PinMismatch,
        severity,
        time: Alert::now_string(),
        direction: Direction::Outbound,
        server_name: Some("hs.fedpin.test".into()),
        host: Some("hs.fedpin.test".into()),
        port: Some(8448),
        peer_addr: Some("192.0.2.1:8448".into()),
        mode: Some(Mode::Enforce),
        action: Blocked,
        webpki: webpki.into(),
        served_chain: vec![fedpin::alert::ServedCert {
            subject: "CN=x".into(),
            issuer: "CN=y".into(),
            not_after: String::new(),
            pin: Some("sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
        }],
        known_pins: vec![],
        expires: None,
        pin_generation: 1,
        reason: "x".into(),
        repeats: 1,
    };
    hub.raise(mk(Warning, "CertExpired"));
    hub.raise(mk(Critical, "valid"));
    hub.raise(mk(Warning, "CertExpired"));
    hub.flush_all();
    let a = hub.recent();
    assert!(
        a.iter().any(|a| a.severity == Critical),
        "no critical record was ever emitted: {:?}",
        a.iter()
            .map(|a| (a.severity, a.repeats))
            .collect::<Vec<_>>()
    );
}

/// F3a: a client certificate that names two pinned peers is checked against
/// whichever comes first in its SAN list; a CA-issued certificate listing a
/// report-mode peer first is accepted although its key matches neither pin
/// set, and the caller is not told which name was authenticated.
#[test]
fn f3a_client_san_order_picks_the_weakest_pinned_entry() {
    let ca = root("CA");
    let enforced_key = leaf(&ca, &["enforced.fedpin.test"]);
    let report_key = leaf(&ca, &["report.fedpin.test"]);
    let attacker = leaf(&ca, &["report.fedpin.test", "enforced.fedpin.test"]);
    let enforced = ("enforced.fedpin.test", &enforced_key.cert, "");
    let report = ("report.fedpin.test", &report_key.cert, REPORT);
    let msg = "certificate naming enforced.fedpin.test accepted via the report-mode entry";
    assert_client_refused(&ca, [enforced, report], &attacker.cert, msg);
}

/// F3b: same with a pin-only peer: its own self-signed key, plus a victim's
/// name in the SAN list, is accepted (pin-only ignores names).
#[test]
fn f3b_pin_only_client_can_also_claim_a_victims_name() {
    let ca = root("CA");
    let victim = leaf(&ca, &["victim.fedpin.test"]);
    let p = self_signed(&["pinonly.fedpin.test", "victim.fedpin.test"]);
    let peers = [
        ("victim.fedpin.test", &victim.cert, ""),
        ("pinonly.fedpin.test", &p.cert, PIN_ONLY),
    ];
    let msg = "a certificate that names victim.fedpin.test must meet the victim's pins";
    assert_client_refused(&ca, peers, &p.cert, msg);
}

/// Under `unpinned = "deny"` with `peers` (issued by `ca`), the client
/// certificate `presented` is refused (F3).
#[track_caller]
fn assert_client_refused(
    ca: &Ca,
    peers: [(&str, &CertificateDer<'_>, &str); 2],
    presented: &CertificateDer<'_>,
    msg: &str,
) {
    let (core, _hub) = core(&[&ca.cert]);
    let v = client_verifier(core, UNPINNED_DENY, &peers);
    let ev = v.evaluate(presented, &[], UnixTime::now());
    assert!(!ev.is_accept(), "{msg}: {ev:?}");
}

/// F4: with `hosts` given, the server name's own host is not looked up; a
/// peer reached by its server name (SRV delegation: SNI = server name) is
/// unpinned, and nothing warns about it.
#[test]
fn f4_hosts_without_the_server_name_host_leaves_it_unpinned() {
    let set = PinSet::parse(&format!(
        "version = 1\n[[peer]]\nserver_name = \"example.org\"\nhosts = [\"matrix.example.org\"]\npins = [\"{}\", \"{}\"]\n",
        fedpin::pins::Pin::of_spki(b"a"),
        fedpin::pins::Pin::of_spki(b"b")
    ))
    .unwrap();
    assert!(
        set.lookup("example.org").is_some() || !set.warnings.is_empty(),
        "example.org is silently unpinned"
    );
}

/// F5: alerts about hosts without an entry carry no server_name (SPEC 5:
/// `server_name` is a who-and-where field; the TLS name is the best known).
#[tokio::test]
async fn f5_unpinned_alerts_name_the_server() {
    let (_, (core, hub), addr) = unlisted_server().await;
    let deny = pinset("version = 1\n[policy]\nunpinned = \"deny\"\n");
    let _ = connect(&core, &deny, addr, "unlisted.fedpin.test").await;
    let a = [only_alert(&hub)];
    assert_eq!(a[0].server_name.as_deref(), Some("unlisted.fedpin.test"));
}

// ----------------------------------------------------------------------
// Moved unchanged from tests/sinks_signals_mtls.rs:
// The client-side (mutual TLS) verifier.
// ----------------------------------------------------------------------

async fn mtls_server(verifier: Arc<PinnedClientVerifier>, server: &Leaf) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert.clone()], server.key_der())
        .unwrap();
    net::serve_hello(config).await
}

async fn mtls_client(
    addr: std::net::SocketAddr,
    ca: &Ca,
    client: Option<&Leaf>,
) -> Result<String, String> {
    mtls_talk(net::client_config_as(&[&ca.cert], &[], client), addr).await
}

/// Greets the mutual-TLS server at `addr` as "inbound.fedpin.test" with `config`.
async fn mtls_talk(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
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

/// Mutual pinned TLS: the right client key is accepted, another is refused with an inbound alert.
#[tokio::test]
async fn client_verifier_accepts_pinned_client_and_refuses_another() {
    let ca = root("Federation CA");
    let server = leaf(&ca, &["inbound.fedpin.test"]);
    let genuine = leaf(&ca, &["peer.fedpin.test"]);
    let impostor = leaf(&ca, &["peer.fedpin.test"]);
    let (core, hub) = core(&[&ca.cert]);
    let mut set = PinSet::parse(&format!(
        "version = 1\n[policy]\nunpinned = \"deny\"\n[[peer]]\nserver_name = \"peer.fedpin.test\"\npins = [\"{}\"]\n",
        pin(&genuine.cert)
    ))
    .unwrap();
    set.generation = 3;
    let verifier = Arc::new(PinnedClientVerifier::new(core, Arc::new(set), true));
    let addr = mtls_server(verifier, &server).await;

    assert_eq!(
        mtls_client(addr, &ca, Some(&genuine)).await.as_deref(),
        Ok("hello\n")
    );
    assert!(mtls_client(addr, &ca, Some(&impostor)).await.is_err());
    assert!(
        mtls_client(addr, &ca, None).await.is_err(),
        "client_auth = require refuses clients without a certificate"
    );
    let unknown = leaf(&ca, &["stranger.fedpin.test"]);
    assert!(
        mtls_client(addr, &ca, Some(&unknown)).await.is_err(),
        "policy.unpinned = deny applies to clients"
    );

    let a = hub.recent();
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].event, PinMismatch);
    assert_eq!(a[0].direction, Direction::Inbound);
    assert_eq!(a[0].pin_generation, 3);
    assert_eq!(a[1].event, UnpinnedDenied);
}
