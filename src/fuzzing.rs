//! Property checks shared by the `fuzz/` targets and the corpus-replay test
//! (`tests/fuzz_corpus.rs`), so a crash found once stays fixed without the
//! fuzzer. Each function panics only when a property is violated.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};

use crate::alert::{AlertHub, ServedCert};
use crate::pins::{Pin, PinSet};
use crate::verify::{PeerContext, Usage, Verdict, VerifierCore};

/// A parsed pin re-serialises to exactly the input.
pub fn pin_string(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(pin) = s.parse::<Pin>() {
            assert_eq!(pin.to_string(), s, "pin does not round-trip");
        }
    }
}

/// A pin file that parses lists no host twice, and every host looks up to
/// the peer that lists it; errors always carry a message.
pub fn pin_file(data: &[u8]) {
    match PinSet::parse_bytes(data) {
        Ok(set) => {
            let mut seen = std::collections::HashSet::new();
            for peer in set.peers() {
                assert!(!peer.pins.is_empty(), "a peer without pins was accepted");
                for h in &peer.hosts {
                    assert!(seen.insert(h.clone()), "host {h} listed twice");
                    let found = set.lookup(h).expect("listed host must look up");
                    assert_eq!(found.server_name, peer.server_name);
                }
            }
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            assert!(e.errors.iter().all(|d| !d.message.is_empty()));
        }
    }
}

/// The config parser never panics and errors are located.
pub fn config_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) =
            crate::config::Config::parse(text, std::path::Path::new("/nonexistent-fuzz-base"))
        {
            assert!(!e.errors.is_empty());
        }
    }
}

/// Matrix server names: a parsed name displays to a string that parses back to it.
pub fn server_name(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(name) = s.parse::<crate::discovery::ServerName>() {
            let again: crate::discovery::ServerName =
                name.to_string().parse().expect("canonical form must parse");
            assert_eq!(again, name);
        }
        let _ = crate::pins::split_server_name(s);
    }
    let _ = crate::discovery::parse_well_known(data);
}

/// Splits fuzz input into certificates: each is a 2-byte big-endian length and that many bytes.
fn split_chain(mut data: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 8 {
        let n = u16::from_be_bytes([data[0], data[1]]) as usize;
        data = &data[2..];
        let n = n.min(data.len());
        out.push(CertificateDer::from(data[..n].to_vec()));
        data = &data[n..];
    }
    out
}

/// Arbitrary DER chains: describing them never panics, and with no trust
/// anchor and no pin-only entry the verifier never accepts (fail closed).
pub fn der_chain(data: &[u8]) {
    let chain = split_chain(data);
    for c in &chain {
        let _ = ServedCert::describe(c.as_ref());
        let _ = crate::verify::spki_of_der(c.as_ref());
        let _ = crate::verify::dns_sans(c.as_ref());
    }
    let _ = crate::verify::pins_of_pem_or_der(data);
    let Some((ee, rest)) = chain.split_first() else {
        return;
    };
    let provider = crate::tls::provider();
    let core = match VerifierCore::with_only_anchors(&provider, &[], AlertHub::new()) {
        Ok(c) => Arc::new(c),
        Err(_) => return,
    };
    let Ok(set) = PinSet::parse("version = 1\n[policy]\nunpinned = \"webpki\"\n") else {
        return;
    };
    let name = rustls::pki_types::ServerName::try_from("fuzz.example").ok();
    let ev = core.evaluate(
        &set,
        "fuzz.example",
        name.as_ref(),
        ee,
        rest,
        UnixTime::now(),
        Usage::Server,
        &PeerContext::default(),
    );
    assert!(
        matches!(ev.verdict, Verdict::Reject(_)),
        "accepted a chain with no trust anchor"
    );
}
