//! Notary key servers (`[[inbound.key_servers]]`): an origin's keys vouched
//! for by a configured notary are used without dialling the origin; a
//! notary answer signed by an unconfigured key, or a document the origin
//! did not sign, is refused; a pinned origin is always asked directly over
//! its pinned TLS, whatever a notary says. Real TLS on loopback.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::matrix::{b64, origin, Origin, ORIGIN_HOST};
use common::{leaf, pin, root, Ca};
use fedpin::alert::AlertHub;
use fedpin::egress::EgressPolicy;
use fedpin::keys::{KeyError, KeyFetchSettings, KeyFetcher, KeyServer};
use fedpin::matrix::signing::VerifyKey;
use fedpin::pin_store::PinStore;
use fedpin::pins::PinSet;
use fedpin::tls::UpstreamTls;
use fedpin::verify::VerifierCore;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::Value;
use tokio::net::TcpListener;

const NOTARY_HOST: &str = "notary.fedpin.test";

/// A notary stand-in: answers `POST /_matrix/key/v2/query` with whatever
/// `answer` holds, and counts the queries and the origins asked about.
struct Notary {
    name: String,
    kp: Ed25519KeyPair,
    answer: Arc<Mutex<Vec<Value>>>,
    queries: Arc<AtomicUsize>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Notary {
    /// The notary's next answer: `doc`, vouched for with its key.
    fn will_vouch(&self, doc: &Value) {
        self.answer.lock().unwrap().push(self.vouch(doc));
    }

    /// How often it was queried, and how often `o`'s own key server was.
    fn queries_and_dials(&self, o: &Origin) -> (usize, usize) {
        let queries = self.queries.load(Ordering::SeqCst);
        (queries, o.key_requests.load(Ordering::SeqCst))
    }

    fn key_server(&self, seed: u8) -> KeyServer {
        let kp = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        KeyServer {
            server_name: self.name.clone(),
            verify_keys: vec![
                VerifyKey::from_base64("ed25519:n", &b64(kp.public_key().as_ref())).unwrap(),
            ],
        }
    }

    /// `doc` with this notary's signature added (by `kp`, as `ed25519:n`).
    fn vouch(&self, doc: &Value) -> Value {
        common::matrix::signed(doc, &self.name, "ed25519:n", &self.kp)
    }
}

async fn notary(ca: &Ca, seed: u8) -> Notary {
    let cert = leaf(ca, &[NOTARY_HOST]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name = format!("{NOTARY_HOST}:{}", listener.local_addr().unwrap().port());
    let config = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.clone()], cert.key_der())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let answer: Arc<Mutex<Vec<Value>>> = Arc::default();
    let queries = Arc::new(AtomicUsize::new(0));
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (a, q, k) = (answer.clone(), queries.clone(), asked.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, a, q, k) = (acceptor.clone(), a.clone(), q.clone(), k.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (a, q, k) = (a.clone(), q.clone(), k.clone());
                    async move {
                        let ok = req.method() == hyper::Method::POST
                            && req.uri().path() == "/_matrix/key/v2/query";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let out = if ok {
                            q.fetch_add(1, Ordering::SeqCst);
                            let query: Value = serde_json::from_slice(&body).unwrap();
                            for o in query["server_keys"].as_object().unwrap().keys() {
                                k.lock().unwrap().push(o.clone());
                            }
                            let docs = a.lock().unwrap().clone();
                            serde_json::to_vec(&serde_json::json!({ "server_keys": docs })).unwrap()
                        } else {
                            b"{}".to_vec()
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(out),
                        )))
                    }
                });
                common::net::serve_http1(tls, svc).await;
            });
        }
    });
    Notary {
        name,
        kp: Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap(),
        answer,
        queries,
        asked,
    }
}

/// A CA, an origin (key seed 1) and a notary (key seed 7) with leaves from it.
async fn origin_and_notary() -> (Ca, Origin, Notary) {
    let ca = root("fedpin notary test CA");
    let o = origin(&ca, 1).await;
    let n = notary(&ca, 7).await;
    (ca, o, n)
}

/// `keys` yields the origin's real key `ed25519:k`.
async fn assert_real_key(keys: &KeyFetcher, o: &Origin) {
    let k = keys.key(&o.name, "ed25519:k").await.unwrap();
    assert_eq!(&k.key[..], o.kp.public_key().as_ref());
}

/// An origin, a notary vouching (key 7) for `doc` of it, and a fetcher with
/// an empty pin file that trusts the notary's key `seed`; asserts that the
/// fetcher yields the origin's real key.
async fn real_key_with_notary(doc: fn(&Origin) -> Value, seed: u8) -> (Origin, Notary, KeyFetcher) {
    let (ca, o, n) = origin_and_notary().await;
    n.will_vouch(&doc(&o));
    let keys = fetcher(&ca, "version = 1\n", vec![n.key_server(seed)]);
    assert_real_key(&keys, &o).await;
    (o, n, keys)
}

/// The key document of `o`, self-signed, valid for an hour.
fn key_doc(o: &Origin) -> Value {
    common::matrix::key_doc(&o.name, &o.kp)
}

/// A well-formed key document for `o`'s name, self-signed by a key `o`
/// never had: what a compromised notary would vouch for.
fn made_up_doc(o: &Origin) -> Value {
    key_doc(&Origin {
        name: o.name.clone(),
        kp: Ed25519KeyPair::from_seed_unchecked(&[0x5a; 32]).unwrap(),
        key_requests: Arc::default(),
    })
}

/// A fetcher trusting `ca`, allowed to dial loopback (where the stand-ins
/// live), with `pins` as its pin file and `servers` as its notaries.
fn fetcher(ca: &Ca, pins: &str, servers: Vec<KeyServer>) -> KeyFetcher {
    let hub = AlertHub::new();
    let store = Arc::new(PinStore::fixed(PinSet::parse(pins).unwrap(), hub.clone()));
    let core = Arc::new(
        VerifierCore::with_only_anchors(
            &fedpin::tls::provider(),
            std::slice::from_ref(&ca.cert),
            hub,
        )
        .unwrap(),
    );
    let mut settings = KeyFetchSettings {
        egress: EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]),
        timeout: Duration::from_secs(5),
        key_servers: servers,
        ..KeyFetchSettings::default()
    };
    for host in [ORIGIN_HOST, NOTARY_HOST] {
        settings
            .resolve
            .insert(host.into(), "127.0.0.1".parse().unwrap());
    }
    KeyFetcher::new(
        Arc::new(UpstreamTls::new(core, store, fedpin::tls::provider())),
        settings,
    )
}

/// The leaf certificate served at `name` (`host:port` on loopback).
async fn served_leaf(ca: &Ca, name: &str) -> rustls::pki_types::CertificateDer<'static> {
    let (host, port) = name.split_once(':').unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn keys_vouched_for_by_a_configured_notary_are_used_without_dialling_the_origin() {
    let (o, n, keys) = real_key_with_notary(key_doc, 7).await;
    let dialled = "(notary queries, origin dials): the origin was dialled";
    assert_eq!(n.queries_and_dials(&o), (1, 0), "{dialled}");
    assert_eq!(*n.asked.lock().unwrap(), vec![o.name.clone()]);
    // Cached: no second query.
    keys.key(&o.name, "ed25519:k").await.unwrap();
    assert_eq!(n.queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_notary_answer_signed_by_an_unconfigured_key_falls_back_to_the_origin() {
    // A well-formed document for the origin, self-signed by a key the
    // origin never had, vouched by the notary's key 7 while the config
    // names key 8. Refused from the notary; the origin itself answers with
    // its real key.
    let (o, n, _keys) = real_key_with_notary(made_up_doc, 8).await;
    assert_eq!(n.queries_and_dials(&o), (1, 1));
}

#[tokio::test]
async fn a_document_the_origin_did_not_sign_is_refused_even_when_vouched() {
    let (ca, o, n) = origin_and_notary().await;
    // The notary makes up a key for the origin and signs the document with
    // it: self-signed by the made-up key, so only the origin's own keys
    // (which it does not hold) would make it genuine.
    let made_up = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
    let real = o.kp.public_key().to_owned();
    let fake = Origin {
        name: o.name.clone(),
        kp: made_up,
        key_requests: Arc::default(),
    };
    // No fallback possible: the origin is a port nothing answers on.
    let ghost = format!("{ORIGIN_HOST}:1");
    let _ = o;
    let fake = Origin {
        name: ghost.clone(),
        ..fake
    };
    let mut doc = key_doc(&fake);
    // ... and lists the origin's real key under the signing key's ID: the
    // self-signature no longer matches the published key.
    doc["verify_keys"]["ed25519:k"]["key"] = b64(real.as_ref()).into();
    n.will_vouch(&doc);
    let keys = fetcher(&ca, "version = 1\n", vec![n.key_server(7)]);
    match keys.key(&ghost, "ed25519:k").await {
        Err(KeyError::Fetch { reason, .. }) => {
            assert!(
                reason.contains(&format!("key server {}", n.name)),
                "{reason}"
            );
            assert!(
                reason.contains("self-signature") || reason.contains("signed"),
                "{reason}"
            );
        }
        other => panic!("expected a refused fetch, got {other:?}"),
    }
    assert_eq!(n.queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pinned_origin_is_asked_directly_whatever_the_notary_says() {
    let (ca, o, n) = origin_and_notary().await;
    // A compromised notary vouches, with its configured key, for a key the
    // origin never had (a well-formed, self-signed document).
    n.will_vouch(&made_up_doc(&o));
    // The origin's TLS key is pinned: its own key server, over pinned TLS,
    // is the only source.
    let tls = served_leaf(&ca, &o.name).await;
    let pins = format!(
        "version = 1\n[[peer]]\nserver_name = \"{}\"\npins = [\"{}\"]\n",
        o.name,
        pin(&tls)
    );
    let keys = fetcher(&ca, &pins, vec![n.key_server(7)]);
    assert_real_key(&keys, &o).await;
    assert_eq!(
        n.queries.load(Ordering::SeqCst),
        0,
        "a notary was asked about a pinned origin"
    );
    assert_eq!(o.key_requests.load(Ordering::SeqCst), 1);
}
