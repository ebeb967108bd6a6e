//! The webhook and Matrix alert sinks against local HTTPS receivers.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{leaf, root, wait_until};
use fedpin::alert::{
    Action, Alert, AlertEvent, AlertHub, Direction, HttpTarget, MatrixSink, Severity, WebhookSink,
};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    auth: Option<String>,
    body: String,
}

/// An HTTPS receiver on 127.0.0.1 answering the given statuses in turn (then 200).
async fn receiver(ca: &common::Ca, statuses: Vec<u16>) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let server = leaf(ca, &["localhost"]);
    let config = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server.cert.clone()], server.key_der())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(statuses));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let seen = s2.clone();
            let statuses = statuses.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    let statuses = statuses.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        seen.lock().unwrap().push(Seen {
                            method,
                            path,
                            auth,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        let code = {
                            let mut st = statuses.lock().unwrap();
                            if st.is_empty() {
                                200
                            } else {
                                st.remove(0)
                            }
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *r.status_mut() = StatusCode::from_u16(code).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

fn alert(event: AlertEvent, host: &str) -> Alert {
    Alert {
        event,
        severity: Severity::Critical,
        time: Alert::now_string(),
        direction: Direction::Outbound,
        server_name: Some(host.into()),
        host: Some(host.into()),
        port: Some(8448),
        peer_addr: None,
        mode: None,
        action: Action::Blocked,
        webpki: "valid".into(),
        served_chain: vec![],
        known_pins: vec![],
        expires: None,
        pin_generation: 1,
        reason: format!("pin check failed for {host}"),
        repeats: 1,
    }
}

fn target(ca: &common::Ca) -> HttpTarget {
    let mut t = HttpTarget::new(std::slice::from_ref(&ca.cert)).unwrap();
    t.backoff = Duration::from_millis(20);
    t.timeout = Duration::from_secs(5);
    t
}

#[tokio::test]
async fn webhook_retries_after_a_500_and_delivers_the_json() {
    let ca = root("sink CA");
    let (port, seen) = receiver(&ca, vec![500]).await;
    let hub = AlertHub::new();
    WebhookSink::new(&format!("https://localhost:{port}/hook"), target(&ca))
        .unwrap()
        .attach(&hub);
    hub.raise(alert(AlertEvent::PinMismatch, "a.example"));
    assert!(wait_until(Duration::from_secs(10), || seen.lock().unwrap().len() >= 2).await);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one failed attempt (500), one delivery");
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].path, "/hook");
    let v: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(v["event"], "pin_mismatch");
    assert_eq!(hub.counters().sink_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn webhook_verifies_the_receiver_and_counts_failures() {
    let ca = root("sink CA");
    let other = root("not trusted");
    let (port, seen) = receiver(&other, vec![]).await;
    let hub = AlertHub::new();
    let mut t = target(&ca);
    t.attempts = 2;
    WebhookSink::new(&format!("https://localhost:{port}/hook"), t)
        .unwrap()
        .attach(&hub);
    hub.raise(alert(AlertEvent::PinMismatch, "a.example"));
    assert!(
        wait_until(Duration::from_secs(10), || hub
            .counters()
            .sink_failures
            .load(Ordering::Relaxed)
            == 1)
        .await
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing is sent to a receiver that fails Web PKI"
    );
}

#[tokio::test]
async fn matrix_sink_posts_to_the_room_with_the_token_and_summarises() {
    let ca = root("sink CA");
    let (port, seen) = receiver(&ca, vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "syt_secret_token\n").unwrap();
    let hub = AlertHub::new();
    let mut sink = MatrixSink::new(
        &format!("https://localhost:{port}"),
        "!ops:hs.example",
        &token,
        target(&ca),
    )
    .unwrap();
    sink.min_interval = Duration::from_millis(500);
    sink.attach(&hub);
    hub.raise(alert(AlertEvent::PinMismatch, "a.example"));
    assert!(wait_until(Duration::from_secs(10), || seen.lock().unwrap().len() == 1).await);
    // Three more inside the rate-limit window: one summarising message.
    for h in ["b.example", "c.example", "d.example"] {
        hub.raise(alert(AlertEvent::PinMismatch, h));
    }
    assert!(wait_until(Duration::from_secs(10), || seen.lock().unwrap().len() == 2).await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.method, "PUT");
        assert!(
            s.path
                .starts_with("/_matrix/client/v3/rooms/%21ops%3Ahs.example/send/m.room.message/"),
            "{}",
            s.path
        );
        assert_eq!(s.auth.as_deref(), Some("Bearer syt_secret_token"));
    }
    assert_ne!(seen[0].path, seen[1].path, "fresh transaction IDs");
    let first: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(first["msgtype"], "m.notice");
    assert!(first["body"].as_str().unwrap().contains("pin_mismatch"));
    let second: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
    assert!(
        second["body"].as_str().unwrap().contains("+2 more alerts"),
        "{second}"
    );
}

/// Criticals always reach the sinks: a flood of distinct warnings (each
/// with its own leaf key, so dedup cannot merge them: 600 handshakes with
/// random certificates) fills a slow command sink's queue, yet the critical
/// raised after them is delivered, and the flood reaches the sink summarised
/// with its count instead of one record each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_reaches_a_slow_command_sink_after_a_flood_of_warnings() {
    const FLOOD: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let window = Duration::from_millis(1500);
    let hub = AlertHub::with_window(window);
    // A slow sink: one command at a time, each taking 50 ms.
    let mut sink =
        fedpin::alert::CommandSink::new(format!("sleep 0.05; cat >> '{}'", out.display()));
    sink.max_concurrent = 1;
    sink.attach(&hub);
    for i in 0..FLOOD {
        let mut a = alert(AlertEvent::ChainInvalid, &format!("h{i}.example"));
        a.severity = Severity::Warning;
        a.direction = Direction::Inbound;
        a.served_chain = vec![fedpin::alert::ServedCert {
            subject: format!("CN=h{i}.example"),
            issuer: "CN=random".into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            pin: Some(fedpin::pins::Pin::of_spki(format!("key {i}").as_bytes()).to_string()),
        }];
        hub.raise(a);
    }
    hub.raise(alert(AlertEvent::PinMismatch, "victim.example"));

    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let got_critical = wait_until(Duration::from_secs(20), || {
        lines()
            .iter()
            .any(|v| v["severity"] == "critical" && v["host"] == "victim.example")
    })
    .await;
    assert!(
        got_critical,
        "the critical never reached the command sink ({} records did; dropped {})",
        lines().len(),
        hub.counters().dropped.load(Ordering::Relaxed)
    );
    let v = lines();
    let first_critical = v.iter().position(|v| v["severity"] == "critical").unwrap();
    assert!(
        first_critical < 30,
        "the critical waited behind {first_critical} warnings"
    );

    // After the window, the flood is summarised: every warning is accounted
    // for in `repeats`, in far fewer records than warnings.
    tokio::time::sleep(window).await;
    hub.flush_expired();
    let summed = || -> (u64, usize) {
        let v = lines();
        let w: Vec<_> = v
            .iter()
            .filter(|v| v["severity"] == "warning" && v["event"] == "chain_invalid")
            .collect();
        (
            w.iter().map(|v| v["repeats"].as_u64().unwrap_or(0)).sum(),
            w.len(),
        )
    };
    let ok = wait_until(Duration::from_secs(20), || summed().0 == FLOOD).await;
    let (total, records) = summed();
    assert!(
        ok,
        "warnings accounted for at the sink: {total} of {FLOOD} in {records} records"
    );
    assert!(records < 50, "{records} records for one flood");
    let summary = lines()
        .into_iter()
        .find(|v| v["repeats"].as_u64().unwrap_or(0) > 1)
        .expect("a summary record");
    assert_eq!(summary["direction"], "inbound");
    assert!(
        summary["reason"]
            .as_str()
            .unwrap_or("")
            .contains("chain_invalid"),
        "{summary}"
    );
    assert_eq!(hub.counters().dropped.load(Ordering::Relaxed), 0);
}
