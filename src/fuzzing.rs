//! Property checks shared by the `fuzz/` targets and the corpus-replay test
//! (`tests/fuzz_corpus.rs`), so a crash found once stays fixed without the
//! fuzzer. Each function panics only when a property is violated.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};

use crate::alert::{AlertHub, ServedCert};
use crate::pins::{Pin, PinSet};
use crate::verify::{Presented, Usage, VerifierCore};

/// A parsed pin re-serialises to exactly the input.
pub fn pin_string(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(pin) = s.parse::<Pin>() {
            assert_eq!(pin.to_string(), s, "pin does not round-trip");
        }
    }
}

/// A pin file that parses lists no host twice, and every host looks up to
/// the peer that lists it; errors always carry a message. Parsed in
/// sections (as a large file is, on several threads) it gives what it gives
/// whole, and so does a reload that reuses a prior set's sections; the
/// plain reader of sections reads the text and each section as the TOML
/// crate does, or leaves it to the TOML crate.
pub fn pin_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::pins::check_plain_reader(text);
        let whole = crate::pins::parse_outcome(PinSet::parse_whole(text));
        for pieces in [1, 2, 3, 5] {
            let split = crate::pins::parse_outcome(PinSet::parse_on_threads(text, pieces));
            assert_eq!(split, whole, "{pieces} pieces differ from the whole");
        }
        reload_after(text, &whole);
    }
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

/// A reload reuses the sections of the set before it whose bytes are
/// unchanged: after a set of `text`, `text` and texts made from it (a
/// blank line first, so every section moves; the first section dropped,
/// repeated at the end, or swapped with the second; the end cut off; a
/// newline added at the end) give what a first load of each gives; so does
/// `text` after each of them, and after a reload of each after `text` (a
/// set built from taken sections). Both through the threads entry and the
/// one the store uses.
fn reload_after(text: &str, whole: &str) {
    let outcome = crate::pins::parse_outcome;
    let first = text.find("\n[[peer]]").map(|i| i + 1);
    let second = first.and_then(|f| text[f + 1..].find("\n[[peer]]").map(|i| f + 2 + i));
    let mut half = text.len() / 2;
    while !text.is_char_boundary(half) {
        half -= 1;
    }
    let mut others = vec![
        format!("\n{text}"),
        format!("{text}\n"),
        text[..half].to_string(),
    ];
    if let (Some(a), Some(b)) = (first, second) {
        let (head, one, rest) = (&text[..a], &text[a..b], &text[b..]);
        others.push(format!("{head}{rest}"));
        others.push(format!("{text}\n{one}"));
        if let Some(c) = rest[1..].find("\n[[peer]]").map(|i| i + 2) {
            others.push(format!("{head}{}{one}{}", &rest[..c], &rest[c..]));
        }
    }
    let source = |t: &str| bytes::Bytes::copy_from_slice(t.as_bytes());
    let after = |t: &str, prior: &PinSet| {
        let threads = outcome(PinSet::parse_after_on_threads(t, prior, 2));
        let store = outcome(PinSet::parse_source_after(source(t), Some(prior)));
        assert_eq!(
            threads, store,
            "the store's reload differs from the threads'"
        );
        store
    };
    if let Ok(prior) = PinSet::parse_on_threads(text, 2) {
        assert_eq!(
            after(text, &prior),
            whole,
            "a reload of the same text differs"
        );
        for other in &others {
            let fresh = outcome(PinSet::parse_whole(other));
            assert_eq!(
                after(other, &prior),
                fresh,
                "a reload after another text differs"
            );
        }
    }
    for other in &others {
        if let Ok(prior) = PinSet::parse_on_threads(other, 2) {
            assert_eq!(
                after(text, &prior),
                whole,
                "a reload after another text differs"
            );
            if let Ok(chained) = PinSet::parse_after_on_threads(other, &prior, 2) {
                assert_eq!(after(text, &chained), whole, "a second reload differs");
            }
            if let Ok(back) = PinSet::parse_after_on_threads(text, &prior, 2) {
                if let Ok(again) = PinSet::parse_after_on_threads(other, &back, 2) {
                    assert_eq!(after(text, &again), whole, "a third reload differs");
                }
            }
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
    let verdict = core.evaluate(
        &set,
        &Presented {
            lookup: "fuzz.example",
            name: name.as_ref(),
            end_entity: ee,
            intermediates: rest,
            now: UnixTime::now(),
            usage: Usage::Server,
        },
    );
    assert!(
        !verdict.is_accept(),
        "accepted a chain with no trust anchor"
    );
}

/// The request line of an HTTP/1 head (`METHOD SP target SP HTTP/1.x`, ending
/// in LF or CRLF), as hyper's parser splits it; `None` when it is not one.
fn request_line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = data.iter().position(|&b| b == b'\n')?;
    let line = &data[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if parts.next().is_some()
        || method.is_empty()
        || !method.iter().all(|&b| token(b))
        || target.is_empty()
        || !matches!(version, b"HTTP/1.0" | b"HTTP/1.1")
    {
        return None;
    }
    Some((method, target))
}

/// CONNECT request heads: a destination that is accepted has a non-zero port
/// and a non-empty host in normal form (no ASCII uppercase, no trailing dot,
/// no brackets, IP literals in canonical text), agrees with the request's
/// authority, and is a fixed point (`host:port`, IPv6 re-bracketed, gives
/// the same destination). Refusals carry a message, and a target without an
/// authority is always refused as such.
pub fn connect_head(data: &[u8]) {
    use crate::proxy::connect_target::{connect_target, ConnectTargetError};

    let Some((method, target)) = request_line(data) else {
        return;
    };
    let Ok(uri) = hyper::Uri::try_from(target) else {
        return;
    };
    if method != b"CONNECT" {
        return;
    }
    match connect_target(&uri) {
        Ok(t) => {
            let auth = uri.authority().expect("accepted without an authority");
            assert_eq!(
                Some(t.port),
                auth.port_u16(),
                "port differs from the authority"
            );
            assert_ne!(t.port, 0, "port 0 accepted");
            assert!(!t.host.is_empty(), "empty host accepted");
            assert!(
                !t.host.bytes().any(|b| b.is_ascii_uppercase()),
                "host {:?} is not lowercase",
                t.host
            );
            assert!(!t.host.ends_with('.'), "host {:?} ends with a dot", t.host);
            assert!(
                !t.host.contains(['[', ']']),
                "host {:?} keeps brackets",
                t.host
            );
            let lookup = crate::pins::normalize_lookup(auth.host());
            match t.host.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    assert_eq!(t.host, ip.to_string(), "IP literal is not canonical");
                    assert_eq!(
                        lookup.parse::<std::net::IpAddr>().ok(),
                        Some(ip),
                        "IP differs from the authority's"
                    );
                }
                Err(_) => assert_eq!(t.host, lookup, "host differs from normalize_lookup"),
            }
            let again = if t.host.contains(':') {
                format!("[{}]:{}", t.host, t.port)
            } else {
                format!("{}:{}", t.host, t.port)
            };
            let uri = hyper::Uri::try_from(again.as_str()).expect("normal form must parse");
            assert_eq!(
                connect_target(&uri).as_ref(),
                Ok(&t),
                "normalisation is not idempotent"
            );
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "refusal without a message");
            assert_eq!(
                uri.authority().is_none(),
                e == ConnectTargetError::NoAuthority,
                "NoAuthority iff the target has no authority"
            );
        }
    }
}

/// Synapse's reading of one X-Matrix value, modelled for ASCII input
/// (`_parse_auth_header`: split on `[ \t]*,[ \t]*`, keys lowercased, last
/// repeat wins, a value starting with `"` loses its first and last
/// character and has `\x` unescaped). `None` where Synapse raises. The
/// differential test in `tests/differential/` runs Synapse's own code; this
/// model lets the fuzzer look for disagreements at full speed.
fn synapse_reading(value: &str) -> Option<(String, String, String, Option<String>)> {
    let rest = value.strip_prefix("X-Matrix")?;
    let params = rest.trim_start_matches(' ');
    if params.len() == rest.len() {
        return None;
    }
    let mut dict = std::collections::HashMap::new();
    for param in split_on_comma_with_blanks(params) {
        let (k, v) = param.split_once('=')?;
        dict.insert(k.to_ascii_lowercase(), v.to_owned());
    }
    let strip = |v: &String| -> String {
        match v.strip_prefix('"') {
            Some(q) => {
                let mut inner: Vec<char> = q.chars().collect();
                inner.pop();
                let mut out = String::new();
                let mut it = inner.into_iter().peekable();
                while let Some(c) = it.next() {
                    match (c, it.peek()) {
                        ('\\', Some(&n)) if n != '\n' => {
                            out.push(n);
                            it.next();
                        }
                        _ => out.push(c),
                    }
                }
                out
            }
            None => v.clone(),
        }
    };
    Some((
        strip(dict.get("origin")?),
        strip(dict.get("key")?),
        strip(dict.get("sig")?),
        dict.get("destination").map(strip),
    ))
}

/// Python's `re.split(r"[ \t]*,[ \t]*", s)`: blanks next to a comma go
/// with it.
fn split_on_comma_with_blanks(s: &str) -> Vec<&str> {
    let pieces: Vec<&str> = s.split(',').collect();
    let last = pieces.len() - 1;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            if i > 0 {
                p = p.trim_start_matches([' ', '\t']);
            }
            if i < last {
                p = p.trim_end_matches([' ', '\t']);
            }
            p
        })
        .collect()
}

/// Writes an X-Matrix header the way Synapse's `build_auth_headers` does.
fn xmatrix_render(x: &crate::proxy::xmatrix::XMatrix) -> String {
    let mut h = format!(
        "X-Matrix origin=\"{}\",key=\"{}\",sig=\"{}\"",
        x.origin, x.key, x.sig
    );
    if let Some(d) = &x.destination {
        h.push_str(&format!(",destination=\"{d}\""));
    }
    h
}

/// X-Matrix `Authorization` values: an accepted header is printable ASCII
/// with the scheme written exactly `X-Matrix`, its origin is a Matrix server
/// name in canonical form, Synapse's reading (modelled by
/// [`synapse_reading`]) yields exactly the same origin, key, signature and
/// destination, and re-rendering it as Synapse writes headers parses back
/// equal. Refusals carry a message.
pub fn xmatrix(data: &[u8]) {
    use crate::proxy::xmatrix::parse;

    match parse(data) {
        Ok(x) => {
            assert!(
                data.iter().all(|b| (0x20..0x7f).contains(b)),
                "accepted a header that is not printable ASCII"
            );
            let text = std::str::from_utf8(data).expect("printable ASCII is UTF-8");
            assert!(
                text.starts_with("X-Matrix "),
                "accepted another scheme spelling"
            );
            let canonical = x
                .origin
                .parse::<crate::discovery::ServerName>()
                .map(|n| n.to_string())
                .ok();
            assert_eq!(
                canonical.as_deref(),
                Some(x.origin.as_str()),
                "origin {:?} is not a server name in canonical form",
                x.origin
            );
            assert_eq!(
                synapse_reading(text),
                Some((
                    x.origin.clone(),
                    x.key.clone(),
                    x.sig.clone(),
                    x.destination.clone()
                )),
                "Synapse would read {text:?} differently"
            );
            let again = xmatrix_render(&x);
            assert_eq!(
                parse(again.as_bytes()).as_ref(),
                Ok(&x),
                "re-rendered header {again:?} does not parse back"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty(), "refusal without a message"),
    }
}

/// `/.well-known/matrix/server` bodies: accepted exactly when the body is a
/// JSON object whose `m.server` is a string that parses as a server name,
/// and then to that name; the name's canonical text parses back to it.
/// Refusals carry a message.
pub fn well_known(data: &[u8]) {
    use crate::discovery::{Host, ServerName};

    let expected: Option<ServerName> = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.as_object()?.get("m.server")?.as_str()?.parse().ok());
    match crate::discovery::parse_well_known(data) {
        Ok(name) => {
            assert_eq!(Some(&name), expected.as_ref(), "differs from m.server");
            let text = name.to_string();
            let again: ServerName = text.parse().expect("canonical form must parse");
            assert_eq!(again, name, "canonical form does not round-trip");
            assert_eq!(again.to_string(), text, "canonical form is not stable");
            assert_ne!(name.port, Some(0), "port 0 accepted");
            if let Host::Dns(h) = &name.host {
                assert!(!h.is_empty() && !h.ends_with('.'), "host {h:?} not normal");
                assert!(
                    !h.bytes().any(|b| b.is_ascii_uppercase()),
                    "{h:?} not lowercase"
                );
            }
        }
        Err(e) => {
            assert!(expected.is_none(), "refused a usable m.server");
            assert!(!e.to_string().is_empty(), "refusal without a message");
        }
    }
}

/// Splits fuzz input into SRV answers: each is priority, weight and port
/// (2 bytes big-endian each), a length byte (mod 32) and that many target
/// bytes (lossy UTF-8); at most 32 records.
fn split_srv(mut data: &[u8]) -> Vec<crate::discovery::SrvTarget> {
    let mut out = Vec::new();
    while data.len() >= 7 && out.len() < 32 {
        let u16_at = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
        let (priority, weight, port) = (u16_at(0), u16_at(2), u16_at(4));
        let n = usize::from(data[6] % 32).min(data.len() - 7);
        let target = String::from_utf8_lossy(&data[7..7 + n]).into_owned();
        data = &data[7 + n..];
        out.push(crate::discovery::SrvTarget {
            priority,
            weight,
            port,
            target,
        });
    }
    out
}

/// SRV answer choice: the pick is one of the answers, usable (port not 0,
/// target not empty or `.`), with no usable answer of lower priority or of
/// equal priority and higher weight, and the first listed among equals;
/// there is no pick exactly when no answer is usable, and unusable answers
/// never change the pick.
pub fn srv(data: &[u8]) {
    use crate::discovery::{pick_srv, SrvTarget};

    let records = split_srv(data);
    let usable = |r: &SrvTarget| r.port != 0 && !r.target.trim_end_matches('.').is_empty();
    let pick = pick_srv(&records);
    let Some(p) = pick else {
        assert!(!records.iter().any(usable), "no pick among usable answers");
        return;
    };
    let at = records
        .iter()
        .position(|r| std::ptr::eq(r, p))
        .expect("the pick is not one of the answers");
    assert!(usable(p), "picked an unusable answer {p:?}");
    for (i, r) in records.iter().enumerate().filter(|(_, r)| usable(r)) {
        assert!(
            r.priority >= p.priority,
            "{r:?} has a lower priority than {p:?}"
        );
        if r.priority == p.priority {
            assert!(r.weight <= p.weight, "{r:?} has a higher weight than {p:?}");
            if r.weight == p.weight {
                assert!(i >= at, "{r:?} is listed before the equal pick {p:?}");
            }
        }
    }
    let only_usable: Vec<SrvTarget> = records.iter().filter(|r| usable(r)).cloned().collect();
    assert_eq!(
        pick_srv(&only_usable),
        Some(p),
        "unusable answers changed the pick"
    );
}

/// The placeholders `template` writes.
const TEMPLATE_PLACEHOLDERS: [&str; 6] = [
    "{roomId}",
    "{eventId}",
    "{userId}",
    "{roomAlias}",
    "{param}",
    "{…}",
];

/// The identifier placeholder a path segment must become, if any.
fn identifier_placeholder(seg: &str) -> Option<&'static str> {
    let lower = seg.get(..3).map(str::to_ascii_lowercase);
    match (seg.chars().next(), lower.as_deref()) {
        (Some('!'), _) | (_, Some("%21")) => Some("{roomId}"),
        (Some('$'), _) | (_, Some("%24")) => Some("{eventId}"),
        (Some('@'), _) | (_, Some("%40")) => Some("{userId}"),
        (Some('#'), _) | (_, Some("%23")) => Some("{roomAlias}"),
        _ => None,
    }
}

/// Access-log path templates: the output never carries an identifier sigil
/// (`!`, `$`, `@`, `#`), a query, or any percent-escape; each output segment
/// is empty (where the input's was), a placeholder, or the input's segment
/// copied verbatim as a plain word; identifiers in the first 25 segments
/// become their placeholder; the output length is bounded (25 segments,
/// then `{…}`); and templating a template only turns identifier
/// placeholders into `{param}` (placeholders are not API words, so plain
/// idempotence does not hold by design).
pub fn access_log(data: &[u8]) {
    use crate::proxy::access_log::template;

    // Longest literal kept ("exchange_third_party_invite" is 27) or placeholder.
    const MAX_WORD: usize = 32;
    let path = String::from_utf8_lossy(data);
    let out = template(&path);
    assert!(
        !out.contains(['!', '$', '@', '#', '?', '%']),
        "template {out:?} keeps an identifier, query or escape"
    );
    let input: Vec<&str> = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split('/')
        .collect();
    let segs: Vec<&str> = out.split('/').collect();
    assert!(
        segs.len() <= input.len(),
        "template {out:?} has extra segments"
    );
    for (i, seg) in segs.iter().enumerate() {
        if seg.is_empty() {
            assert!(input[i].is_empty(), "segment {i} of {out:?} was dropped");
        } else if *seg == "{…}" {
            assert!(i > 24 && i + 1 == segs.len(), "{out:?}: early truncation");
        } else if !TEMPLATE_PLACEHOLDERS.contains(seg) {
            assert_eq!(*seg, input[i], "segment {i} of {out:?} is not the input's");
            assert!(
                seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "kept segment {seg:?} is not a plain word"
            );
        }
        if i <= 24 {
            if let Some(p) = identifier_placeholder(input[i]) {
                assert_eq!(*seg, p, "segment {i} of {out:?} is not {p}");
            }
        }
    }
    // At most 25 segments and the `/{…}` marker, whatever the input.
    assert!(
        out.len() <= 25 * (MAX_WORD + 1) + "/{…}".len(),
        "template of {} bytes is {} bytes long",
        path.len(),
        out.len()
    );
    let erased: Vec<&str> = segs
        .iter()
        .map(|s| match *s {
            "{roomId}" | "{eventId}" | "{userId}" | "{roomAlias}" => "{param}",
            s => s,
        })
        .collect();
    assert_eq!(
        template(&out),
        erased.join("/"),
        "templating {out:?} again changed it"
    );
}

/// Request-body bytes through fedpin's canonical JSON: an accepted body
/// re-encodes to text that parses back to the same document and encodes
/// to itself (idempotent), is valid JSON to serde_json (unless it holds
/// integers beyond 64 bits, which serde_json reads differently), and has
/// no raw control characters or insignificant whitespace outside strings.
/// Refusals carry a message.
pub fn canonical_json(data: &[u8]) {
    use crate::matrix::canonical_json::{encode, parse};
    match parse(data) {
        Ok(doc) => {
            let text = encode(&doc).expect("an accepted document encodes");
            let again = parse(text.as_bytes()).expect("canonical text parses");
            assert_eq!(
                again, doc,
                "canonical text {text:?} parses to another document"
            );
            assert_eq!(
                encode(&again).expect("encodes"),
                text,
                "encoding is not idempotent"
            );
            assert!(
                !text.bytes().any(|b| b < 0x20),
                "raw control character in {text:?}"
            );
            if serde_json::from_str::<serde_json::Value>(&text).is_err() {
                // Only integers beyond 64 bits or nesting past serde_json's
                // limit may make serde_json disagree.
                assert!(
                    text.bytes().filter(|b| b.is_ascii_digit()).count() > 18
                        || text.bytes().filter(|b| *b == b'[' || *b == b'{').count() > 100,
                    "serde_json refuses canonical text {text:?}"
                );
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "refusal without a message"),
    }
}

/// `/_matrix/key/v2/server` answers for `fuzz.example` at a fixed time: an
/// accepted answer names that server, is valid after that time, and every
/// key it yields is an ed25519 key whose ID the answer lists under
/// `verify_keys` or an unexpired `old_verify_keys`; the answer carries a
/// signature by one of them. Refusals carry a message. The same bytes
/// read as a notary's answer are accepted only with a document for the
/// origin that carries both the notary's and the origin's signatures.
pub fn key_response(data: &[u8]) {
    const NOW: u64 = 1_700_000_000_000;
    match crate::keys::parse_key_response(data, "fuzz.example", NOW) {
        Ok((keys, until)) => {
            assert!(until > NOW, "expired answer accepted");
            assert!(!keys.is_empty(), "accepted without keys");
            let v: serde_json::Value = serde_json::from_slice(data).expect("accepted non-JSON");
            assert_eq!(v["server_name"], "fuzz.example");
            for (id, k) in &keys {
                assert_eq!(&k.id, id);
                assert!(id.starts_with("ed25519:"), "{id}");
                let listed = v["verify_keys"].get(id).is_some()
                    || v["old_verify_keys"]
                        .get(id)
                        .and_then(|o| o["expired_ts"].as_u64())
                        .is_some_and(|t| t > NOW);
                assert!(listed, "{id} is not a current key of the answer");
            }
            let signed_by_own = v["signatures"]["fuzz.example"]
                .as_object()
                .is_some_and(|s| s.keys().any(|id| v["verify_keys"].get(id).is_some()));
            assert!(signed_by_own, "accepted without a self-signature");
        }
        Err(e) => assert!(!e.is_empty(), "refusal without a message"),
    }
    // The same bytes as a notary's answer: accepted only with a document
    // for the origin that the notary signed.
    let notary = crate::keys::KeyServer {
        server_name: "notary.example".into(),
        verify_keys: vec![crate::matrix::signing::VerifyKey {
            id: "ed25519:n".into(),
            key: {
                use ring::signature::KeyPair as _;
                let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[3; 32])
                    .expect("a fixed seed");
                kp.public_key().as_ref().try_into().expect("32 bytes")
            },
        }],
    };
    match crate::keys::parse_notary_response(data, &notary, "fuzz.example", NOW) {
        Ok((keys, until)) => {
            assert!(until > NOW, "expired notary answer accepted");
            assert!(!keys.is_empty(), "notary answer accepted without keys");
            let v: serde_json::Value = serde_json::from_slice(data).expect("accepted non-JSON");
            let vouched = v["server_keys"].as_array().is_some_and(|docs| {
                docs.iter().any(|d| {
                    d["server_name"] == "fuzz.example"
                        && d["signatures"]["notary.example"].get("ed25519:n").is_some()
                        && d["signatures"]["fuzz.example"].is_object()
                })
            });
            assert!(vouched, "notary answer accepted without a vouched document");
        }
        Err(e) => assert!(!e.is_empty(), "notary refusal without a message"),
    }
}

/// A well-known fetch's redirect and answer: the first line is a
/// `Location`, the rest an `m.server` body. A followed redirect goes to an
/// https host without credentials (or a path on the same host), to a path
/// starting with `/`; a parsed answer is a server name whose text parses
/// back to it.
pub fn well_known_redirect(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (location, body) = text.split_once('\n').unwrap_or((&text, ""));
    match crate::discovery::redirect_target(location, "front.example", 443) {
        Ok((host, port, path)) => {
            assert!(!host.is_empty(), "empty redirect host from {location:?}");
            assert!(!host.contains('@') && !host.contains('/'), "{host:?}");
            assert!(path.starts_with('/'), "path {path:?} from {location:?}");
            // URI schemes are case-insensitive ("HTTPS://" is https).
            assert!(
                location
                    .get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
                    || location.starts_with('/'),
                "followed {location:?}"
            );
            if location.starts_with('/') {
                assert_eq!((host.as_str(), port), ("front.example", 443));
            }
        }
        Err(e) => assert!(!e.is_empty(), "refusal without a message"),
    }
    if let Ok(name) = crate::discovery::parse_well_known(body.as_bytes()) {
        let again: crate::discovery::ServerName =
            name.to_string().parse().expect("display re-parses");
        assert_eq!(again, name);
    }
}
