//! The outside review's inbound attacks replayed against the real `fedpin`
//! binary (`fedpin run` with `[inbound] verify_signatures = "enforce"`), in
//! front of a stand-in homeserver that counts what reaches it:
//!
//! * the hidden origin (quoted comma) and a second `Authorization` header
//!   never reach the homeserver;
//! * a flood of forged requests in a victim's name from another address
//!   leaves the victim's correctly signed requests answered 200;
//! * 1,000 forged requests for one origin cost at most one key fetch
//!   (`fedpin_signing_key_fetches_total` on `/metrics`);
//! * an origin naming a loopback address causes no dial.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::matrix::{
    b64, edge_sender, get_with_auth, homeserver, origin, status_of_send, ORIGIN_HOST,
};
use common::process;
use common::{leaf, pem, root, Ca};
use http_body_util::{BodyExt, Full};
use hyper::Request;

const SERVER: &str = "hs.fedpin.test";
const STEP: Duration = Duration::from_secs(15);
const VERSION: &str = "/_matrix/federation/v1/version";

/// fedpin with its proxy listener (inbound) and admin listener.
type Fedpin = process::ProxyAndAdmin;

/// `fedpin run` with an outbound section (its egress policy and trust
/// anchors are the key fetcher's) and an enforcing edge.
fn run(ca: &Ca, upstream: SocketAddr, extra: &str) -> Fedpin {
    let dir = process::outbound_dir(&pem("CERTIFICATE", ca.cert.as_ref()), "version = 1\n");
    let d = dir.path();
    let server = leaf(ca, &[SERVER]);
    server.write_pem(&d.join("cert.pem"), &d.join("key.pem"));
    let cfg = process::outbound_admin_config(
        d,
        &format!(
            r#"resolve = {{ "{ORIGIN_HOST}" = "127.0.0.1", "ghost.fedpin.test" = "127.0.0.1" }}
{extra}

[inbound]
listen = "127.0.0.1:0"
cert = "cert.pem"
key = "key.pem"
upstream = "http://{upstream}"
server_name = "{SERVER}"
verify_signatures = "enforce"
deny_origins = ["denied.fedpin.test"]
rate_per_origin = 1
burst_per_origin = 5
"#
        ),
    );
    process::run_proxy_and_admin(dir, &cfg, "inbound")
}

/// One request over a new TLS connection from the loopback address `from`,
/// with the given `Authorization` headers; the status.
async fn send(fp: &Fedpin, ca: &Ca, from: &str, auths: &[&str]) -> u16 {
    let mut sender = edge_sender(fp.proxy, &ca.cert, SERVER, Some(from)).await;
    let mut req = Request::get(VERSION).header(hyper::header::HOST, SERVER);
    for a in auths {
        req = req.header(hyper::header::AUTHORIZATION, *a);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    status_of_send(&mut sender, req).await
}

/// One counter from the admin listener's `/metrics`.
async fn metric(fp: &Fedpin, line_start: &str) -> f64 {
    let text = common::net::get_text(fp.admin, "admin", "/metrics", STEP)
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{text}"))
}

fn forged(origin: &str) -> String {
    format!(
        r#"X-Matrix origin="{origin}",destination="{SERVER}",key="ed25519:k",sig="{}""#,
        b64(&[7; 64])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_attacks_on_the_edge_fail_against_the_real_binary() {
    let ca = root("fedpin edge binary test CA");
    let victim = origin(&ca, 1).await;
    let (hs, seen) = homeserver().await;
    let fp = run(&ca, hs, r#"allow_ips = ["127.0.0.0/8"]"#);

    // The victim's correctly signed request: served.
    let good = victim.sign("GET", VERSION, b"", "ed25519:k", SERVER);
    assert_eq!(send(&fp, &ca, "127.0.0.1", &[&good]).await, 200);
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // The hidden origin and a second header: 401, never forwarded.
    let hidden = format!(
        r#"X-Matrix origin="{}",key="ed25519:k",sig="{}",x="1,origin=denied.fedpin.test,y=2""#,
        victim.name,
        b64(&[1; 64])
    );
    assert_eq!(send(&fp, &ca, "127.0.0.2", &[&hidden]).await, 401);
    let denied = forged("denied.fedpin.test");
    assert_eq!(send(&fp, &ca, "127.0.0.2", &[&good, &denied]).await, 401);
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // A forged flood in the victim's name from another address ...
    for _ in 0..20 {
        let s = send(&fp, &ca, "127.0.0.2", &[&forged(&victim.name)]).await;
        assert_eq!(s, 401);
    }
    // ... leaves the victim's budget (burst 5) untouched.
    for i in 0..4 {
        let s = send(&fp, &ca, "127.0.0.1", &[&good]).await;
        assert_eq!(s, 200, "victim's signed request {i} after the flood");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 5);
    assert_eq!(
        metric(
            &fp,
            "fedpin_inbound_requests_total{class=\"bad_signature\"}"
        )
        .await,
        20.0
    );

    // 1,000 forged requests for an origin nobody answers for: ≤ 1 fetch.
    let before = metric(&fp, "fedpin_signing_key_fetches_total").await;
    let ghost = forged("ghost.fedpin.test:1");
    let mut sender = edge_sender(fp.proxy, &ca.cert, SERVER, None).await;
    for i in 0..1000 {
        if let Err(e) = sender.ready().await {
            panic!("the edge closed the connection after {i} requests: {e}");
        }
        let r = get_with_auth(&mut sender, SERVER, VERSION, &ghost).await;
        assert_eq!(r.status().as_u16(), 401);
        let _ = r.into_body().collect().await;
    }
    let after = metric(&fp, "fedpin_signing_key_fetches_total").await;
    assert!(after - before <= 1.0, "{} key fetches", after - before);
    assert_eq!(seen.load(Ordering::SeqCst), 5);
    assert_eq!(victim.key_requests.load(Ordering::SeqCst), 1);
}

/// Without `allow_ips`, key fetches obey the default egress policy: an
/// origin naming loopback (directly or through a name) causes no dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_naming_loopback_cause_no_dial_from_the_real_binary() {
    let ca = root("fedpin edge binary test CA");
    let victim = origin(&ca, 1).await;
    let (hs, seen) = homeserver().await;
    let fp = run(&ca, hs, "");
    let port = victim.name.rsplit(':').next().unwrap().to_owned();
    for o in [format!("127.0.0.1:{port}"), victim.name.clone()] {
        let good = victim.sign("GET", VERSION, b"", "ed25519:k", SERVER);
        let claimed = good.replace(&victim.name, &o);
        assert_eq!(send(&fp, &ca, "127.0.0.1", &[&claimed]).await, 401, "{o}");
    }
    assert_eq!(
        victim.key_requests.load(Ordering::SeqCst),
        0,
        "fedpin dialled loopback"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}
