//! Regression tests for findings of the verifier review (F1–F5). Each asserts
//! what SPEC 4/5 asks for and failed before the fix.

mod common;

use std::sync::Arc;

use common::*;
use fedpin::alert::{Action, Alert, AlertEvent, AlertHub, Direction, Severity};
use fedpin::pins::{Mode, PinSet};
use fedpin::verify::{PinnedClientVerifier, Usage, Verdict};
use rustls::pki_types::{ServerName, UnixTime};

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
    let ev = core.evaluate(
        &pins,
        &fedpin::verify::lookup_key(&name),
        Some(&name),
        &impostor.cert,
        &[],
        UnixTime::now(),
        Usage::Server,
        &Default::default(),
    );
    assert!(
        !ev.verdict.is_accept(),
        "CA-valid impostor for a pinned IPv6 peer accepted: {:?}",
        ev.verdict
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
        event: AlertEvent::PinMismatch,
        severity,
        time: Alert::now_string(),
        direction: Direction::Outbound,
        server_name: Some("hs.fedpin.test".into()),
        host: Some("hs.fedpin.test".into()),
        port: Some(8448),
        peer_addr: Some("192.0.2.1:8448".into()),
        mode: Some(Mode::Enforce),
        action: Action::Blocked,
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
    hub.raise(mk(Severity::Warning, "CertExpired"));
    hub.raise(mk(Severity::Critical, "valid"));
    hub.raise(mk(Severity::Warning, "CertExpired"));
    hub.flush_all();
    let a = hub.recent();
    assert!(
        a.iter().any(|a| a.severity == Severity::Critical),
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
    let (core, _hub) = core(&[&ca.cert]);
    let mut set = PinSet::parse(&format!(
        "version = 1\n[policy]\nunpinned = \"deny\"\n\
         [[peer]]\nserver_name = \"enforced.fedpin.test\"\npins = [\"{}\"]\n\
         [[peer]]\nserver_name = \"report.fedpin.test\"\npins = [\"{}\"]\nmode = \"report\"\n",
        pin(&enforced_key.cert),
        pin(&report_key.cert)
    ))
    .unwrap();
    set.generation = 1;
    let v = PinnedClientVerifier::new(core, Arc::new(set), true);
    let ev = v.evaluate(&attacker.cert, &[], UnixTime::now());
    assert!(
        matches!(ev.verdict, Verdict::Reject(_)),
        "certificate naming enforced.fedpin.test accepted via the report-mode entry: {:?}",
        ev.verdict
    );
}

/// F3b: same with a pin-only peer: its own self-signed key, plus a victim's
/// name in the SAN list, is accepted (pin-only ignores names).
#[test]
fn f3b_pin_only_client_can_also_claim_a_victims_name() {
    let ca = root("CA");
    let victim = leaf(&ca, &["victim.fedpin.test"]);
    let p = self_signed(&["pinonly.fedpin.test", "victim.fedpin.test"]);
    let (core, _hub) = core(&[&ca.cert]);
    let mut set = PinSet::parse(&format!(
        "version = 1\n[policy]\nunpinned = \"deny\"\n\
         [[peer]]\nserver_name = \"victim.fedpin.test\"\npins = [\"{}\"]\n\
         [[peer]]\nserver_name = \"pinonly.fedpin.test\"\npins = [\"{}\"]\ntrust = \"pin-only\"\n",
        pin(&victim.cert),
        pin(&p.cert)
    ))
    .unwrap();
    set.generation = 1;
    let v = PinnedClientVerifier::new(core, Arc::new(set), true);
    let ev = v.evaluate(&p.cert, &[], UnixTime::now());
    assert!(
        matches!(ev.verdict, Verdict::Reject(_)),
        "a certificate that names victim.fedpin.test must meet the victim's pins: {:?}",
        ev.verdict
    );
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
    let ca = root("CA");
    let l = leaf(&ca, &["unlisted.fedpin.test"]);
    let (core, hub) = core(&[&ca.cert]);
    let addr = serve(vec![l.cert.clone()], l.key_der()).await;
    let deny = pinset("version = 1\n[policy]\nunpinned = \"deny\"\n");
    let _ = connect(&core, &deny, addr, "unlisted.fedpin.test").await;
    let a = alerts(&hub);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].server_name.as_deref(), Some("unlisted.fedpin.test"));
}
