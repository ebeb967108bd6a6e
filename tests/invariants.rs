//! One test per security invariant of SPEC section 4, each named after it.
//! Real TLS on 127.0.0.1 with chains minted per test by rcgen.

mod common;

use common::*;
use fedpin::alert::{Action, AlertEvent, Direction, Severity};
use fedpin::verify::{Basis, Usage, Verdict};
use rustls::pki_types::{CertificateDer, UnixTime};

const HOST: &str = "hs.fedpin.test";

fn peer_toml(policy: &str, pins: &[String], extra: &str) -> String {
    let pins: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "version = 1\n[policy]\n{policy}\n\n[[peer]]\nserver_name = \"{HOST}\"\npins = [{}]\n{extra}\n",
        pins.join(", ")
    )
}

/// Invariant 1: Web PKI with the configured roots plus extra anchors.
#[tokio::test]
async fn inv1_webpki_roots_plus_extra_anchors() {
    let ca = root("Private Federation CA");
    let l = leaf(&ca, &[HOST]);
    let addr = serve(vec![l.cert.clone()], l.key_der()).await;
    let pins = pinset("version = 1\n");

    // With the private CA as an extra anchor: accepted (unpinned, policy webpki).
    let (with_extra, _) = core(&[&ca.cert]);
    let out = connect(&with_extra, &pins, addr, HOST).await;
    assert_eq!(out.result.as_deref(), Ok("hello\n"));
    assert_eq!(out.record.unwrap().basis, Some(Basis::UnpinnedWebPki));

    // Mozilla roots alone do not know this CA: rejected, chain_invalid alert.
    let hub = fedpin::alert::AlertHub::new();
    let mozilla = std::sync::Arc::new(
        fedpin::verify::VerifierCore::new(&fedpin::tls::provider(), &[], hub.clone()).unwrap(),
    );
    let out = connect(&mozilla, &pins, addr, HOST).await;
    assert!(out.result.is_err());
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].event, AlertEvent::ChainInvalid);
    assert!(a[0].webpki.contains("UnknownIssuer"), "{}", a[0].webpki);
}

/// Invariant 2: a CA-valid impostor for a pinned host is rejected with a critical alert.
#[tokio::test]
async fn inv2_ca_valid_impostor_is_critical_pin_mismatch() {
    let ca = root("Public CA");
    let genuine = leaf(&ca, &[HOST]);
    let impostor = leaf(&ca, &[HOST]);
    let (core, hub) = core(&[&ca.cert]);
    let pins = pinset(&peer_toml("", &[pin(&genuine.cert).to_string()], ""));

    let good = serve(vec![genuine.cert.clone()], genuine.key_der()).await;
    let out = connect(&core, &pins, good, HOST).await;
    assert_eq!(out.result.as_deref(), Ok("hello\n"));
    assert_eq!(out.record.unwrap().basis, Some(Basis::PinOnValidatedPath));
    assert!(alerts(&hub).is_empty());

    let bad = serve(vec![impostor.cert.clone()], impostor.key_der()).await;
    let out = connect(&core, &pins, bad, HOST).await;
    let err = out.result.unwrap_err();
    assert!(err.contains("pin check failed for hs.fedpin.test"), "{err}");
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    let a = &a[0];
    assert_eq!(a.event, AlertEvent::PinMismatch);
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.action, Action::Blocked);
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
    let pins = pinset(&peer_toml("", &[pin(&genuine_int.cert).to_string()], ""));

    // The genuine chain passes on the intermediate's pin.
    let good = serve(
        vec![genuine.cert.clone(), genuine_int.cert.clone()],
        genuine.key_der(),
    )
    .await;
    assert_eq!(
        connect(&core, &pins, good, HOST).await.result.as_deref(),
        Ok("hello\n")
    );

    // The attacker sends the pinned intermediate too, but it is not on the path that validates.
    let bad = serve(
        vec![rogue_leaf.cert.clone(), genuine_int.cert.clone()],
        rogue_leaf.key_der(),
    )
    .await;
    let out = connect(&core, &pins, bad, HOST).await;
    assert!(out.result.is_err());
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].event, AlertEvent::PinMismatch);
    assert_eq!(a[0].severity, Severity::Critical);
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
        let pins = pinset(&peer_toml("", &[p.to_string()], ""));
        let out = connect(&core, &pins, addr, HOST).await;
        assert_eq!(out.result.as_deref(), Ok("hello\n"));
    }
    assert!(alerts(&hub).is_empty());
}

/// Invariant 2: a pinned leaf whose chain does not validate (unknown CA,
/// expired, wrong name) is rejected under trust = "webpki".
#[tokio::test]
async fn inv2_pinned_leaf_with_invalid_chain_is_rejected() {
    let trusted = root("Trusted");
    let untrusted = root("Untrusted");
    let (core, hub) = core(&[&trusted.cert]);

    let l = leaf(&untrusted, &[HOST]);
    let pins = pinset(&peer_toml("", &[pin(&l.cert).to_string()], ""));
    let addr = serve(vec![l.cert.clone()], l.key_der()).await;
    assert!(connect(&core, &pins, addr, HOST).await.result.is_err());

    let old = expired_leaf(&trusted, &[HOST]);
    let pins_old = pinset(&peer_toml("", &[pin(&old.cert).to_string()], ""));
    let addr = serve(vec![old.cert.clone()], old.key_der()).await;
    assert!(connect(&core, &pins_old, addr, HOST).await.result.is_err());

    let other = leaf(&trusted, &["other.fedpin.test"]);
    let pins_other = pinset(&peer_toml("", &[pin(&other.cert).to_string()], ""));
    let addr = serve(vec![other.cert.clone()], other.key_der()).await;
    assert!(connect(&core, &pins_other, addr, HOST)
        .await
        .result
        .is_err());

    let a = alerts(&hub);
    assert_eq!(a.len(), 3);
    for a in &a {
        assert_eq!(a.event, AlertEvent::ChainInvalid, "{}", a.reason);
        assert_eq!(a.severity, Severity::Warning);
        assert_ne!(a.webpki, "valid");
    }
}

/// Invariant 3: pin-only peers are checked on the leaf key alone.
#[tokio::test]
async fn inv3_pin_only_checks_leaf_key_alone() {
    let (core, hub) = core(&[]);
    let ss = self_signed(&["some-other-name.example"]);
    let pins = pinset(&peer_toml(
        "",
        &[pin(&ss.cert).to_string()],
        "trust = \"pin-only\"",
    ));
    let addr = serve(vec![ss.cert.clone()], ss.key_der()).await;
    let out = connect(&core, &pins, addr, HOST).await;
    assert_eq!(
        out.result.as_deref(),
        Ok("hello\n"),
        "name and chain are not required"
    );
    assert_eq!(out.record.unwrap().basis, Some(Basis::PinOnlyLeaf));

    // The self-signed key changed: rejected.
    let changed = self_signed(&[HOST]);
    let addr = serve(vec![changed.cert.clone()], changed.key_der()).await;
    assert!(connect(&core, &pins, addr, HOST).await.result.is_err());
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].event, AlertEvent::PinMismatch);
    assert_eq!(a[0].action, Action::Blocked);

    // Other certificates the peer sends are ignored: the pinned cert as an extra does not count.
    let decoy = self_signed(&[HOST]);
    let addr = serve(vec![decoy.cert.clone(), ss.cert.clone()], decoy.key_der()).await;
    assert!(connect(&core, &pins, addr, HOST).await.result.is_err());
}

/// Invariant 4: the handshake signature is always checked against the leaf key.
#[tokio::test]
async fn inv4_replayed_pinned_certificate_without_key_fails() {
    let ca = root("CA");
    let genuine = leaf(&ca, &[HOST]);
    let attacker_key = leaf(&ca, &[HOST]).key_der();
    let (core, hub) = core(&[&ca.cert]);
    for trust in ["trust = \"webpki\"", "trust = \"pin-only\""] {
        let pins = pinset(&peer_toml("", &[pin(&genuine.cert).to_string()], trust));
        let addr = serve(vec![genuine.cert.clone()], attacker_key.clone_key()).await;
        let out = connect(&core, &pins, addr, HOST).await;
        assert!(out.result.is_err(), "{trust}: replay must fail");
        let rec = out.record.unwrap();
        assert!(rec.signature_failed && !rec.accepted, "{trust}");
    }
    let a = alerts(&hub);
    assert_eq!(a.len(), 1, "identical replays merge within 60 s");
    assert_eq!(a[0].event, AlertEvent::SignatureInvalid);
    assert_eq!(a[0].severity, Severity::Critical);
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
    let pins = pinset(&peer_toml(
        "",
        &[pin(&pinned.cert).to_string()],
        "mode = \"report\"",
    ));

    let addr = serve(vec![valid_other.cert.clone()], valid_other.key_der()).await;
    let out = connect(&core, &pins, addr, HOST).await;
    assert_eq!(out.result.as_deref(), Ok("hello\n"));
    assert_eq!(out.record.unwrap().basis, Some(Basis::ReportModeWebPki));

    let addr = serve(vec![invalid_other.cert.clone()], invalid_other.key_der()).await;
    assert!(connect(&core, &pins, addr, HOST).await.result.is_err());

    let a = alerts(&hub);
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0].event, a[0].severity, a[0].action),
        (AlertEvent::PinMismatch, Severity::Critical, Action::Allowed)
    );
    assert_eq!(a[0].mode, Some(fedpin::pins::Mode::Report));
    assert_eq!(
        (a[1].event, a[1].action),
        (AlertEvent::PinMismatch, Action::Blocked)
    );
    assert_eq!(a[1].severity, Severity::Warning);
}

/// Invariant 6: hosts without an entry follow policy.unpinned.
#[tokio::test]
async fn inv6_unpinned_policy_webpki_and_deny() {
    let ca = root("CA");
    let l = leaf(&ca, &["unlisted.fedpin.test"]);
    let (core, hub) = core(&[&ca.cert]);
    let addr = serve(vec![l.cert.clone()], l.key_der()).await;
    let other_pin = pin(&leaf(&ca, &[HOST]).cert).to_string();

    let webpki = pinset(&peer_toml(
        "unpinned = \"webpki\"",
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

    let deny = pinset(&peer_toml("unpinned = \"deny\"", &[other_pin], ""));
    let out = connect(&core, &deny, addr, "unlisted.fedpin.test").await;
    assert!(out.result.unwrap_err().contains("policy.unpinned"));
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].event, a[0].action),
        (AlertEvent::UnpinnedDenied, Action::Blocked)
    );
    assert_eq!(a[0].webpki, "valid");
}

/// Invariant 6: expired pins follow policy.on_expired (when they still
/// match; a mismatch is invariant 10's critical alert).
#[tokio::test]
async fn inv6_expired_pins_follow_on_expired() {
    let ca = root("CA");
    let pinned = leaf(&ca, &[HOST]);
    let rotated = leaf(&ca, &[HOST]);
    let (core, hub) = core(&[&ca.cert]);
    let addr = serve(vec![pinned.cert.clone()], pinned.key_der()).await;
    let expired = "expires = \"2020-01-01T00:00:00Z\"";

    let fallback = pinset(&peer_toml(
        "on_expired = \"webpki\"",
        &[pin(&pinned.cert).to_string()],
        expired,
    ));
    let out = connect(&core, &fallback, addr, HOST).await;
    assert_eq!(out.result.as_deref(), Ok("hello\n"));
    assert_eq!(out.record.unwrap().basis, Some(Basis::ExpiredPinsWebPki));

    let deny = pinset(&peer_toml(
        "on_expired = \"deny\"",
        &[pin(&pinned.cert).to_string()],
        expired,
    ));
    assert!(connect(&core, &deny, addr, HOST).await.result.is_err());

    // Not yet expired: enforced as usual (a rotated key is refused).
    let future = pinset(&peer_toml(
        "on_expired = \"webpki\"",
        &[pin(&pinned.cert).to_string()],
        "expires = \"2999-01-01T00:00:00Z\"",
    ));
    let addr = serve(vec![rotated.cert.clone()], rotated.key_der()).await;
    assert!(connect(&core, &future, addr, HOST).await.result.is_err());

    let a = alerts(&hub);
    assert_eq!(a.len(), 3);
    assert_eq!(
        (a[0].event, a[0].action),
        (AlertEvent::PinExpired, Action::Allowed)
    );
    assert_eq!(a[0].expires.as_deref(), Some("2020-01-01T00:00:00Z"));
    assert_eq!(
        (a[1].event, a[1].action),
        (AlertEvent::PinExpired, Action::Blocked)
    );
    assert_eq!(
        (a[2].event, a[2].severity),
        (AlertEvent::PinMismatch, Severity::Critical)
    );
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
    let good = serve(vec![pinned.cert.clone()], pinned.key_der()).await;
    let bad = serve(vec![impostor.cert.clone()], impostor.key_der()).await;
    let expired = "expires = \"2020-01-01T00:00:00Z\"";
    let pinned_pin = [pin(&pinned.cert).to_string()];

    // (on_expired, extra peer keys, server) -> accepted?, alert (event, severity, action)
    let cases = [
        (
            "webpki",
            "",
            bad,
            false,
            (AlertEvent::PinMismatch, Severity::Critical, Action::Blocked),
        ),
        (
            "webpki",
            "trust = \"pin-only\"",
            bad,
            false,
            (AlertEvent::PinMismatch, Severity::Critical, Action::Blocked),
        ),
        (
            "webpki",
            "mode = \"report\"",
            bad,
            true,
            (AlertEvent::PinMismatch, Severity::Critical, Action::Allowed),
        ),
        (
            "deny",
            "",
            bad,
            false,
            (AlertEvent::PinMismatch, Severity::Critical, Action::Blocked),
        ),
        (
            "deny",
            "mode = \"report\"",
            bad,
            false,
            (AlertEvent::PinMismatch, Severity::Critical, Action::Blocked),
        ),
        (
            "webpki",
            "",
            good,
            true,
            (AlertEvent::PinExpired, Severity::Warning, Action::Allowed),
        ),
        (
            "deny",
            "",
            good,
            false,
            (AlertEvent::PinExpired, Severity::Warning, Action::Blocked),
        ),
    ];
    for (on_expired, extra, addr, accepted, want) in cases {
        let what = format!(
            "on_expired = {on_expired}, {extra:?}, served {}",
            if addr == good { "pinned" } else { "impostor" }
        );
        let (core, hub) = core(&[&ca.cert]);
        let pins = pinset(&peer_toml(
            &format!("on_expired = \"{on_expired}\""),
            &pinned_pin,
            &format!("{expired}\n{extra}"),
        ));
        let out = connect(&core, &pins, addr, HOST).await;
        assert_eq!(out.result.is_ok(), accepted, "{what}: {:?}", out.result);
        if addr == bad && accepted {
            assert_eq!(
                out.record.unwrap().basis,
                Some(Basis::ReportModeWebPki),
                "{what}"
            );
        }
        let a = alerts(&hub);
        assert_eq!(a.len(), 1, "{what}: {a:?}");
        assert_eq!((a[0].event, a[0].severity, a[0].action), want, "{what}");
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
    let ev = core.evaluate(
        &pins,
        HOST,
        None,
        &junk,
        &[],
        UnixTime::now(),
        Usage::Server,
        &Default::default(),
    );
    assert!(matches!(ev.verdict, Verdict::Reject(_)));
    let ev = core.evaluate(
        &pins,
        HOST,
        None,
        &CertificateDer::from(vec![]),
        &[],
        UnixTime::now(),
        Usage::Server,
        &Default::default(),
    );
    assert!(matches!(ev.verdict, Verdict::Reject(_)));

    // Over real TLS: a server that sends garbage instead of a certificate.
    let k = self_signed(&[HOST]);
    let addr = serve(vec![junk.clone()], k.key_der()).await;
    assert!(connect(&core, &pins, addr, HOST).await.result.is_err());
    assert!(alerts(&hub)
        .iter()
        .any(|a| a.event == AlertEvent::VerifyError));

    // A pin-only peer whose pinned key signs the handshake but whose certificate is garbage: rejected too.
    let pinned_junk = pinset(&peer_toml(
        "",
        &[pin(&k.cert).to_string()],
        "trust = \"pin-only\"",
    ));
    assert!(connect(&core, &pinned_junk, addr, HOST)
        .await
        .result
        .is_err());
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
