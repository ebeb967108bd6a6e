//! A Matrix origin homeserver for request-signature tests: an ed25519
//! signing key and a TLS server answering `/_matrix/key/v2/server` with a
//! self-signed key document. Loopback only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use fedpin::matrix::signing::SignedRequest;
use http_body_util::Full;
use hyper::Request;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::{leaf, Ca};

/// The DNS name every test origin uses (tests map it to 127.0.0.1).
pub const ORIGIN_HOST: &str = "origin.fedpin.test";

/// Unpadded standard base64.
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
}

/// An origin homeserver: its signing key and a TLS key server.
pub struct Origin {
    /// `origin.fedpin.test:PORT`.
    pub name: String,
    /// Its signing key (`ed25519:k`).
    pub kp: Ed25519KeyPair,
    /// Key-document requests served.
    pub key_requests: Arc<AtomicUsize>,
}

impl Origin {
    pub fn sign(
        &self,
        method: &str,
        uri: &str,
        body: &[u8],
        key_id: &str,
        destination: &str,
    ) -> String {
        let req = SignedRequest {
            method,
            uri,
            origin: &self.name,
            destination,
            body,
        };
        let sig = b64(self.kp.sign(&req.signed_bytes().unwrap()).as_ref());
        format!(
            r#"X-Matrix origin="{}",destination="{destination}",key="{key_id}",sig="{sig}""#,
            self.name
        )
    }
}

/// The key document of server `name` with key `ed25519:k` = `kp`,
/// self-signed, valid for an hour.
pub fn key_doc(name: &str, kp: &Ed25519KeyPair) -> serde_json::Value {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    let doc = serde_json::json!({
        "server_name": name,
        "valid_until_ts": until,
        "verify_keys": { "ed25519:k": { "key": b64(kp.public_key().as_ref()) } },
        "old_verify_keys": {},
    });
    signed(&doc, name, "ed25519:k", kp)
}

/// `doc` with a signature by `server`'s key `key_id` = `kp` added: over the
/// canonical JSON of `doc` without its `signatures`, as Matrix signs JSON.
pub fn signed(
    doc: &serde_json::Value,
    server: &str,
    key_id: &str,
    kp: &Ed25519KeyPair,
) -> serde_json::Value {
    let mut unsigned = doc.clone();
    if let Some(o) = unsigned.as_object_mut() {
        o.remove("signatures");
    }
    let text = fedpin::matrix::canonical_json::encode_value(&unsigned).unwrap();
    let mut out = doc.clone();
    out["signatures"][server][key_id] = b64(kp.sign(text.as_bytes()).as_ref()).into();
    out
}

/// Serves `/_matrix/key/v2/server` for `name` with key `ed25519:k` from seed.
pub async fn origin(ca: &Ca, seed: u8) -> Origin {
    let kp = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
    let cert = leaf(ca, &[ORIGIN_HOST]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = format!("{ORIGIN_HOST}:{port}");
    let doc = key_doc(&name, &kp);
    let body = Bytes::from(serde_json::to_vec(&doc).unwrap());
    let key_requests = Arc::new(AtomicUsize::new(0));
    let counter = key_requests.clone();
    let acceptor = super::net::acceptor(&cert, &[]);
    super::net::serve_https_on(listener, acceptor, move |req| {
        if req.uri().path() == "/_matrix/key/v2/server" {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        let body = body.clone();
        async move { hyper::Response::new(Full::new(body)) }
    });
    Origin {
        name,
        kp,
        key_requests,
    }
}

/// The stand-in homeserver: counts requests, answers 200.
pub async fn homeserver() -> (SocketAddr, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let addr = super::net::plain_http(move |_req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { hyper::Response::new(Full::new(Bytes::from("{}"))) }
    })
    .await;
    (addr, seen)
}

/// An HTTP/1.1 sender over a new TLS connection to an edge at `addr` that
/// serves `server` with a certificate under the root `ca`, from the loopback
/// address `from` (any when `None`).
pub async fn edge_sender(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    server: &str,
    from: Option<&str>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let config = super::net::client_config(&[ca], &[b"http/1.1"]);
    let tcp = match from {
        Some(from) => {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
            sock.connect(addr).await.unwrap()
        }
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
    };
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from(server.to_owned()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let sender = super::net::http1_client(tls).await.unwrap();
    sender
}

/// One GET of `uri` for `server` with the `Authorization` header `auth` on
/// `sender`, within 15 s.
pub async fn get_with_auth(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    server: &str,
    uri: &str,
    auth: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let req = Request::get(uri)
        .header(hyper::header::HOST, server)
        .header(hyper::header::AUTHORIZATION, auth)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send_within(sender, req).await
}

/// Sends `req` on `sender`, within 15 s.
pub async fn send_within(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> hyper::Response<hyper::body::Incoming> {
    tokio::time::timeout(std::time::Duration::from_secs(15), sender.send_request(req))
        .await
        .unwrap()
        .unwrap()
}

/// Sends `req` on `sender` (within 15 s); the status, after reading the body.
pub async fn status_of_send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> u16 {
    use http_body_util::BodyExt as _;
    let resp = send_within(sender, req).await;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}
