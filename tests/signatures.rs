//! Request signatures verified at the edge (SPEC 4.12), with keys fetched
//! over the pinned verifier or pinned in the pin file: forged requests never
//! reach the homeserver, cannot spend a genuine origin's budget, cannot make
//! fedpin dial special addresses, and a flood of them costs at most one key
//! fetch.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::matrix::{
    b64, edge_sender, get_with_auth, homeserver, origin, status_of_send, Origin, ORIGIN_HOST,
};
use common::{leaf, net, pem, root, Ca};
use fedpin::alert::{AlertEvent, AlertHub, Severity};
use fedpin::config::SignatureMode;
use fedpin::egress::EgressPolicy;
use fedpin::keys::{KeyFetchSettings, KeyFetcher};
use fedpin::matrix::signing::SignedRequest;
use fedpin::pin_store::PinStore;
use fedpin::pins::PinSet;
use fedpin::proxy::inbound::{EdgeRules, InboundProxy, InboundSettings, RateLimit};
use fedpin::tls::certs::CertStore;
use fedpin::tls::UpstreamTls;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use tokio::net::TcpListener;
use tokio::sync::watch;

const SERVER: &str = "hs.fedpin.test";

struct Edge {
    addr: SocketAddr,
    ca: Ca,
    hub: AlertHub,
    keys: Arc<KeyFetcher>,
    proxy: Arc<InboundProxy>,
    seen: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

/// An edge for SERVER verifying signatures in `mode`; key fetches may reach
/// loopback only where `allow_loopback` (the tests' origins live there).
async fn edge(
    ca: Ca,
    mode: SignatureMode,
    pins: &str,
    rules: EdgeRules,
    allow_loopback: bool,
) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let server = leaf(&ca, &[SERVER]);
    std::fs::write(
        dir.path().join("c.pem"),
        pem("CERTIFICATE", server.cert.as_ref()),
    )
    .unwrap();
    std::fs::write(dir.path().join("k.pem"), server.key.serialize_pem()).unwrap();
    let certs =
        Arc::new(CertStore::open(&dir.path().join("c.pem"), &dir.path().join("k.pem")).unwrap());
    let hub = AlertHub::new();
    let store = Arc::new(PinStore::fixed(PinSet::parse(pins).unwrap(), hub.clone()));
    let core = net::only_anchor(&ca.cert, &hub);
    let allow = if allow_loopback {
        vec!["127.0.0.0/8".parse().unwrap()]
    } else {
        vec![]
    };
    let mut settings = KeyFetchSettings {
        egress: EgressPolicy::new(allow, vec![]),
        timeout: Duration::from_secs(5),
        ..KeyFetchSettings::default()
    };
    settings
        .resolve
        .insert(ORIGIN_HOST.into(), "127.0.0.1".parse().unwrap());
    settings
        .resolve
        .insert("private.fedpin.test".into(), "127.0.0.1".parse().unwrap());
    // Nothing listens for this one (port 1 on loopback): no DNS query
    // leaves the machine.
    settings
        .resolve
        .insert("ghost.fedpin.test".into(), "127.0.0.1".parse().unwrap());
    let keys = Arc::new(KeyFetcher::new(
        Arc::new(UpstreamTls::new(
            core.clone(),
            store.clone(),
            fedpin::tls::provider(),
        )),
        settings,
    ));
    let (hs, seen) = homeserver().await;
    let inbound = InboundSettings {
        upstream: format!("http://{hs}").parse().unwrap(),
        server_name: Some(SERVER.into()),
        verify_signatures: mode,
        ..InboundSettings::default()
    };
    let proxy = Arc::new(
        InboundProxy::new(inbound, rules, certs, store, core).with_key_fetcher(keys.clone()),
    );
    let (addr, tx) = net::spawn_server(|l, rx| proxy.clone().serve(l, rx)).await;
    Edge {
        addr,
        ca,
        hub,
        keys,
        proxy,
        seen,
        _dir: dir,
        _stop: tx,
    }
}

/// [`edge`] enforcing signatures, with an empty pin file, no origin rules
/// and key fetches over pinned TLS.
async fn enforcing_edge(ca: Ca) -> Edge {
    edge(
        ca,
        SignatureMode::Enforce,
        "version = 1\n",
        EdgeRules::default(),
        true,
    )
    .await
}

/// One HTTP/1.1 request over a new TLS connection from `from` (a loopback
/// address); returns the status.
async fn send(edge: &Edge, from: &str, method: &str, uri: &str, auth: &str, body: &str) -> u16 {
    let mut sender = edge_sender(edge.addr, &edge.ca.cert, SERVER, Some(from)).await;
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, SERVER)
        .header(hyper::header::AUTHORIZATION, auth)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    status_of_send(&mut sender, req).await
}

const VERSION: &str = "/_matrix/federation/v1/version";

/// `GET` [`VERSION`] through `edge` from the address `from`, with `auth`.
async fn get_version(edge: &Edge, from: &str, auth: &str) -> u16 {
    send(edge, from, "GET", VERSION, auth, "").await
}

/// The X-Matrix header of origin `o` for `GET` [`VERSION`], signed with `key_id`.
fn sign_version(o: &Origin, key_id: &str) -> String {
    o.sign("GET", VERSION, b"", key_id, SERVER)
}

const TXN: &str = "/_matrix/federation/v1/send/txn1";
const BODY: &str = r#"{"origin_server_ts": 1, "pdus": [], "edus": []}"#;

#[tokio::test]
async fn correctly_signed_requests_pass_and_forged_ones_never_reach_the_homeserver() {
    let ca = root("fedpin signatures test CA");
    let o = origin(&ca, 1).await;
    let e = enforcing_edge(ca).await;

    let good = o.sign("PUT", TXN, BODY.as_bytes(), "ed25519:k", SERVER);
    assert_eq!(send(&e, "127.0.0.1", "PUT", TXN, &good, BODY).await, 200);
    // Same signature, other JSON spelling of the same body: still valid.
    let respelled = r#"{ "pdus":[],"edus":[], "origin_server_ts":1 }"#;
    assert_eq!(
        send(&e, "127.0.0.1", "PUT", TXN, &good, respelled).await,
        200
    );
    assert_eq!(e.seen.load(Ordering::SeqCst), 2);

    // Forgeries: another body, another URI, another key, another destination.
    let forger = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
    let forged_sig = {
        let req = SignedRequest {
            method: "PUT",
            uri: TXN,
            origin: &o.name,
            destination: SERVER,
            body: BODY.as_bytes(),
        };
        b64(forger.sign(&req.signed_bytes().unwrap()).as_ref())
    };
    let forged = format!(
        r#"X-Matrix origin="{}",destination="{SERVER}",key="ed25519:k",sig="{forged_sig}""#,
        o.name
    );
    let elsewhere = good.replace(SERVER, "other.fedpin.test");
    for (uri, auth, body) in [
        (TXN, good.as_str(), r#"{"pdus": [{"evil": true}]}"#),
        ("/_matrix/federation/v1/send/txn2", good.as_str(), BODY),
        (TXN, forged.as_str(), BODY),
        (TXN, elsewhere.as_str(), BODY),
    ] {
        assert_eq!(
            send(&e, "127.0.0.1", "PUT", uri, auth, body).await,
            401,
            "{auth}"
        );
    }
    assert_eq!(
        e.seen.load(Ordering::SeqCst),
        2,
        "a forged request reached the homeserver"
    );
    assert_eq!(e.proxy.stats().by_class[5].load(Ordering::Relaxed), 4);
    // One key fetch served all of it (the origin's key server saw one request).
    assert_eq!(o.key_requests.load(Ordering::SeqCst), 1);
    assert_eq!(e.keys.fetches(), 1);
}

#[tokio::test]
async fn a_flood_of_forged_requests_for_an_unknown_origin_costs_at_most_one_key_fetch() {
    let ca = root("fedpin signatures test CA");
    let e = enforcing_edge(ca).await;
    // Nothing answers for this origin (loopback port 1, see `edge`); every
    // request is forged.
    let ghost = "ghost.fedpin.test:1";
    let auth = format!(
        r#"X-Matrix origin="{ghost}",destination="{SERVER}",key="ed25519:k",sig="{}""#,
        b64(&[7; 64])
    );
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (addr, ca_cert) = (e.addr, e.ca.cert.clone());
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = edge_sender(addr, &ca_cert, SERVER, None).await;
            let mut refused = 0;
            for _ in 0..100 {
                let resp =
                    get_with_auth(&mut sender, SERVER, "/_matrix/federation/v1/version", &auth)
                        .await;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    refused += 1;
                }
                let _ = resp.into_body().collect().await;
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert_eq!(refused, 1000);
    assert_eq!(e.seen.load(Ordering::SeqCst), 0);
    assert!(e.keys.fetches() <= 1, "{} key fetches", e.keys.fetches());
}

/// Forged requests in a victim's name from another address cannot spend
/// the victim's per-origin budget: refused before the rules (enforce), or
/// bucketed with their own address (report).
#[tokio::test]
async fn forged_flood_for_a_victim_leaves_its_signed_requests_served() {
    for mode in [SignatureMode::Enforce, SignatureMode::Report] {
        let ca = root("fedpin signatures test CA");
        let victim = origin(&ca, 1).await;
        let rules = EdgeRules {
            per_origin: Some(RateLimit {
                per_second: 1,
                burst: 5,
            }),
            ..EdgeRules::default()
        };
        let e = edge(ca, mode, "version = 1\n", rules, true).await;
        let forged = format!(
            r#"X-Matrix origin="{}",destination="{SERVER}",key="ed25519:k",sig="{}""#,
            victim.name,
            b64(&[7; 64])
        );
        for _ in 0..20 {
            let s = get_version(&e, "127.0.0.2", &forged).await;
            assert!(
                s == 401 || s == 429 || (mode == SignatureMode::Report && s == 200),
                "{s}"
            );
        }
        let good = sign_version(&victim, "ed25519:k");
        for i in 0..5 {
            let s = get_version(&e, "127.0.0.1", &good).await;
            assert_eq!(s, 200, "{mode:?}: signed request {i} of the victim");
        }
    }
}

#[tokio::test]
async fn a_request_signed_with_an_unpinned_key_is_refused_with_a_critical_alert() {
    let ca = root("fedpin signatures test CA");
    let o = origin(&ca, 1).await;
    let pinned = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
    let pins = format!(
        "version = 1\n[[peer]]\nserver_name = \"{}\"\npins = [\"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\nsigning_keys = [\"ed25519:k={}\"]\n",
        o.name,
        b64(pinned.public_key().as_ref())
    );
    let e = edge(
        ca,
        SignatureMode::Enforce,
        &pins,
        EdgeRules::default(),
        true,
    )
    .await;
    // The pinned key verifies without any fetch.
    let good = sign_version(&o, "ed25519:k");
    assert_eq!(get_version(&e, "127.0.0.1", &good).await, 200);
    assert_eq!(e.keys.fetches(), 0);
    // A validly made signature with another key ID (e.g. a key the peer's
    // server now publishes, or an attacker's): refused and alerted.
    let other = sign_version(&o, "ed25519:new");
    assert_eq!(get_version(&e, "127.0.0.1", &other).await, 401);
    assert_eq!(e.seen.load(Ordering::SeqCst), 1);
    let alerts = e.hub.recent();
    let a = alerts
        .iter()
        .find(|a| a.event == AlertEvent::SigningKeyMismatch)
        .expect("signing_key_mismatch alert");
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.server_name.as_deref(), Some(o.name.as_str()));
}

/// The origin is chosen by the sender: key fetches obey the egress policy,
/// so an origin naming a loopback address (or a name resolving to one)
/// causes no connection at all.
#[tokio::test]
async fn origins_naming_special_addresses_cause_no_dial() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dialled = Arc::new(AtomicUsize::new(0));
    let d = dialled.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            d.fetch_add(1, Ordering::SeqCst);
        }
    });
    let ca = root("fedpin signatures test CA");
    let e = edge(
        ca,
        SignatureMode::Enforce,
        "version = 1\n",
        EdgeRules::default(),
        false,
    )
    .await;
    for origin in [
        format!("127.0.0.1:{port}"),
        format!("private.fedpin.test:{port}"),
    ] {
        let auth = format!(
            r#"X-Matrix origin="{origin}",destination="{SERVER}",key="ed25519:k",sig="{}""#,
            b64(&[7; 64])
        );
        let s = get_version(&e, "127.0.0.1", &auth).await;
        assert_eq!(s, 401, "{origin}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        dialled.load(Ordering::SeqCst),
        0,
        "fedpin dialled a refused address"
    );
    assert_eq!(e.seen.load(Ordering::SeqCst), 0);
}

/// `pinctl add` records the peer's signing keys read over the pinned
/// connection; `pinctl verify` reports a key that is added or removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinctl_records_signing_keys_and_verify_reports_a_change() {
    let ca = root("fedpin signatures test CA");
    let o = origin(&ca, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("ca.pem");
    std::fs::write(&roots, pem("CERTIFICATE", ca.cert.as_ref())).unwrap();
    let pins = dir.path().join("pins.toml");
    std::fs::write(&pins, "version = 1\n").unwrap();
    let port = o.name.rsplit(':').next().unwrap().to_owned();
    let pinctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinctl"))
            .arg("--pins")
            .arg(&pins)
            .args(args)
            .arg("--roots")
            .arg(&roots)
            .arg("--connect")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = pinctl(&["add", &o.name, "--yes"]);
    assert_eq!(code, Some(0), "{out}");
    let set = PinSet::load(&pins).unwrap();
    let peer = set.by_server_name(&o.name).unwrap();
    assert_eq!(peer.signing_keys.len(), 1, "{out}");
    assert_eq!(peer.signing_keys[0].id, "ed25519:k");
    assert_eq!(
        peer.signing_keys[0].key.as_slice(),
        o.kp.public_key().as_ref()
    );
    let (code, out) = pinctl(&["verify", &o.name]);
    assert_eq!(code, Some(0), "{out}");
    // The same TLS identity now publishes another signing key.
    let text = std::fs::read_to_string(&pins).unwrap();
    let other = Ed25519KeyPair::from_seed_unchecked(&[2; 32]).unwrap();
    std::fs::write(
        &pins,
        text.replace(
            &b64(o.kp.public_key().as_ref()),
            &b64(other.public_key().as_ref()),
        ),
    )
    .unwrap();
    let (code, out) = pinctl(&["verify", &o.name]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("signing keys changed"), "{out}");
    assert!(
        out.contains(&format!(
            "added [ed25519:k={}]",
            b64(o.kp.public_key().as_ref())
        )),
        "{out}"
    );
}
