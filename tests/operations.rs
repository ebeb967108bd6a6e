//! Operating fedpin: the process lifecycle of `fedpin run` (signals,
//! systemd notifications, `--log-format`, completions) and the alert sinks
//! (webhook, Matrix room, command).

mod common;

use bytes::Bytes;
use common::*;
use fedpin::alert::{Alert, AlertEvent, AlertHub, Direction, Severity};
use fedpin::sinks::{CommandSink, HttpTarget, MatrixSink, WebhookSink};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

// ----------------------------------------------------------------------
// Moved unchanged from tests/lifecycle.rs:
// Process lifecycle of `fedpin run`: SIGTERM drains an in-flight request
// before exiting 0; a broken config on SIGHUP keeps the running one;
// `--log-format`; shell completions.
// ----------------------------------------------------------------------

/// A homeserver stand-in that answers after `delay`.
async fn slow_homeserver(delay: Duration) -> SocketAddr {
    net::plain_http(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(Full::new(Bytes::from_static(b"{\"done\":true}")))
    })
    .await
}

struct Running {
    child: process::Reaped,
    inbound: SocketAddr,
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("/bin/sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Starts `fedpin run` with an [inbound] section; waits for its "listening" line.
fn start(
    dir: &std::path::Path,
    upstream: SocketAddr,
    ca: &common::Ca,
) -> (Running, std::path::PathBuf) {
    start_with(dir, upstream, ca, |_| {})
}

/// [`start`], the command changed by `configure` first (its environment,
/// where its log goes). `NOTIFY_SOCKET` is removed before.
fn start_with(
    dir: &std::path::Path,
    upstream: SocketAddr,
    ca: &common::Ca,
    configure: impl FnOnce(&mut Command),
) -> (Running, std::path::PathBuf) {
    let server = leaf(ca, &["hs.fedpin.test"]);
    server.write_pem(&dir.join("cert.pem"), &dir.join("key.pem"));
    std::fs::write(dir.join("pins.toml"), "version = 1\n").unwrap();
    let cfg = dir.join("fedpin.toml");
    std::fs::write(
        &cfg,
        format!("pins = \"pins.toml\"\n[inbound]\nlisten = \"127.0.0.1:0\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\nupstream = \"http://{upstream}\"\n"),
    )
    .unwrap();
    let mut cmd = process::fedpin_run(&cfg, &["--drain-secs", "20"]);
    cmd.env_remove("NOTIFY_SOCKET");
    configure(&mut cmd);
    let (child, addrs, _) = process::spawn_listening(cmd, &["inbound"]);
    let [addr] = addrs[..] else { unreachable!() };
    (
        Running {
            child,
            inbound: addr,
        },
        cfg,
    )
}

async fn get(addr: SocketAddr, ca: &CertificateDer<'static>) -> Result<(u16, String), String> {
    let cfg = net::client_config(&[ca], &[b"http/1.1"]);
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("hs.fedpin.test").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut s = net::http1_client(tls).await?;
    let req = Request::get("/_matrix/key/v2/server")
        .header("host", "hs.fedpin.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    net::status_and_body(resp).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_in_flight_request_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root("lifecycle CA");
    let upstream = slow_homeserver(Duration::from_millis(1500)).await;
    let (mut running, _) = start(dir.path(), upstream, &ca);
    let addr = running.inbound;
    let ca_der = ca.cert.clone();
    let in_flight = tokio::spawn(async move { get(addr, &ca_der).await });
    // Let the request reach the homeserver, then ask fedpin to stop.
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(running.child.id(), "TERM");
    let r = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r,
        Ok((200, "{\"done\":true}".to_string())),
        "the in-flight request completes"
    );
    // Then the process exits 0 once nothing is open (well before the 20 s drain deadline).
    let status = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = running.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "fedpin did not exit after draining"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_config_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = root("lifecycle CA");
    let upstream = slow_homeserver(Duration::ZERO).await;
    let (running, cfg) = start(dir.path(), upstream, &ca);
    assert_eq!(get(running.inbound, &ca.cert).await.map(|r| r.0), Ok(200));
    std::fs::write(&cfg, "this is = not [valid toml\n").unwrap();
    signal(running.child.id(), "HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(running.inbound, &ca.cert).await.map(|r| r.0),
        Ok(200),
        "a broken config keeps the running one"
    );
}

/// `fedpin run` with the log filter `filter`, its JSON log (stderr) in
/// `dir/fedpin.log`; answers `requests` kept-alive GETs and returns the
/// log's access lines (target `fedpin::access`) and how many lines it has
/// in all, once every line is written (the log is batched).
async fn access_lines(filter: &str, requests: usize) -> (Vec<serde_json::Value>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let ca = root("access log CA");
    let upstream = slow_homeserver(Duration::ZERO).await;
    let log = dir.path().join("fedpin.log");
    let file = std::fs::File::create(&log).unwrap();
    let (running, _) = start_with(dir.path(), upstream, &ca, |cmd| {
        cmd.env("FEDPIN_LOG", filter).stderr(file);
    });
    for _ in 0..requests {
        assert_eq!(get(running.inbound, &ca.cert).await.map(|r| r.0), Ok(200));
    }
    // SIGTERM: the daemon drains and writes out its log before it exits.
    signal(running.child.id(), "TERM");
    let mut child = running.child;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let all: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let n = all.len();
    let access = all
        .into_iter()
        .filter(|v| v["target"] == "fedpin::access")
        .collect();
    (access, n)
}

/// The daemon's JSON log has one access line per request, written straight
/// to the log in the JSON format's shape (`access_log::Line::log`): these
/// members and no others, no span lists; and `FEDPIN_LOG` still turns the
/// access log off.
#[tokio::test(flavor = "multi_thread")]
async fn the_json_access_log_has_a_line_per_request_and_obeys_the_filter() {
    let (access, _) = access_lines("info", 3).await;
    assert_eq!(access.len(), 3, "{access:#?}");
    for v in &access {
        let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(top, ["fields", "level", "target", "timestamp"], "{v}");
        assert_eq!(v["level"], "INFO");
        let f = &v["fields"];
        let mut keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "bytes",
                "client",
                "direction",
                "latency_ms",
                "message",
                "method",
                "origin",
                "path",
                "status"
            ],
            "{v}"
        );
        assert_eq!(f["message"], "request");
        assert_eq!(f["direction"], "inbound");
        assert_eq!(f["method"], "GET");
        assert_eq!(f["path"], "/_matrix/key/v2/server");
        assert_eq!(f["origin"], "-");
        assert_eq!(f["status"], 200);
        assert_eq!(f["bytes"], "{\"done\":true}".len());
        assert_eq!(f["client"], "127.0.0.1");
        assert!(f["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{v}");
    }
    let (access, all) = access_lines("info,fedpin::access=off", 2).await;
    assert!(access.is_empty(), "{access:#?}");
    assert!(all > 0, "the rest of the log is still written");
}

/// Under systemd (`Type=notify-reload`): READY=1 once the listeners are
/// bound, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP
/// reload, STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn systemd_readiness_reload_and_stop_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let recv = |what: &str| {
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {what} notification: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ca = root("lifecycle CA");
    let upstream = slow_homeserver(Duration::ZERO).await;
    let (mut running, _cfg) = start_with(dir.path(), upstream, &ca, |cmd| {
        cmd.env("NOTIFY_SOCKET", &sock_path);
    });

    let ready = recv("READY");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains(&format!("STATUS=serving: inbound {}", running.inbound)),
        "{ready:?}"
    );
    // Ready means serving.
    assert_eq!(get(running.inbound, &ca.cert).await.map(|r| r.0), Ok(200));

    signal(running.child.id(), "HUP");
    let reloading = recv("RELOADING");
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let ready = recv("READY after reload");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    signal(running.child.id(), "TERM");
    let stopping = recv("STOPPING");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = running.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn completions_for_both_binaries() {
    for (bin, name) in [
        (env!("CARGO_BIN_EXE_fedpin"), "fedpin"),
        (env!("CARGO_BIN_EXE_pinctl"), "pinctl"),
    ] {
        let out = Command::new(bin)
            .args(["completions", "bash"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("_{name}()")) || text.contains(name),
            "{text}"
        );
    }
}

// ----------------------------------------------------------------------
// Moved unchanged from tests/alert_sinks.rs:
// The webhook and Matrix alert sinks against local HTTPS receivers.
// ----------------------------------------------------------------------

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
    let seen = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(statuses));
    let s2 = seen.clone();
    let addr = net::serve_https(net::acceptor(&server, &[]), move |req| {
        let seen = s2.clone();
        let statuses = statuses.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let auth = net::header_text(req.headers(), "authorization");
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
            r
        }
    })
    .await;
    (addr.port(), seen)
}

/// A critical outbound alert about `host` (port 8448, Web PKI valid, blocked,
/// pin generation 1): [`Alert::local`] with the peer filled in.
fn alert(event: AlertEvent, host: &str) -> Alert {
    Alert {
        severity: Severity::Critical,
        server_name: Some(host.into()),
        host: Some(host.into()),
        port: Some(8448),
        webpki: "valid".into(),
        ..Alert::local(
            event,
            Direction::Outbound,
            1,
            format!("pin check failed for {host}"),
        )
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
        fedpin::sinks::CommandSink::new(format!("sleep 0.05; cat >> '{}'", out.display()));
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

// ----------------------------------------------------------------------
// Moved unchanged from tests/sinks_signals_mtls.rs:
// The command alert sink.
// ----------------------------------------------------------------------

/// [`alert`] for a pin mismatch, with the peer address and mode filled in.
fn sample_alert(host: &str) -> fedpin::alert::Alert {
    fedpin::alert::Alert {
        peer_addr: Some("127.0.0.1:8448".into()),
        mode: Some(fedpin::pins::Mode::Enforce),
        reason: "test".into(),
        ..alert(AlertEvent::PinMismatch, host)
    }
}

/// The command sink gets the JSON on stdin; a hung command never blocks raise().
#[tokio::test]
async fn command_sink_receives_json_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let hub = AlertHub::new();
    CommandSink::new(format!("cat >> '{}'", out.display())).attach(&hub);
    hub.raise(sample_alert("a.example"));
    hub.raise(sample_alert("b.example"));
    let ok = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&out)
            .map(|s| s.lines().count() == 2)
            .unwrap_or(false)
    })
    .await;
    assert!(ok, "both alerts reach the command");
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["event"], "pin_mismatch");
    }

    // A command that hangs: raise() still returns at once, the command is killed after its timeout.
    let hung = AlertHub::new();
    let mut sink = CommandSink::new("sleep 30");
    sink.timeout = Duration::from_millis(200);
    sink.max_concurrent = 1;
    sink.queue = 4;
    sink.attach(&hung);
    let start = Instant::now();
    // More criticals than the room reserved for them plus the queue.
    for i in 0..fedpin::alert::CRITICAL_QUEUE + 50 {
        hung.raise(sample_alert(&format!("h{i}.example")));
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "raise must not wait on sinks"
    );
    assert!(
        hung.counters()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "overflow is counted"
    );
    let ok = wait_until(Duration::from_secs(10), || {
        hung.counters()
            .sink_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    assert!(ok, "a timed-out command is counted as a failure");

    // A failing command is counted too.
    let failing = AlertHub::new();
    CommandSink::new("exit 3").attach(&failing);
    failing.raise(sample_alert("f.example"));
    assert!(
        wait_until(Duration::from_secs(10), || failing
            .counters()
            .sink_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
        .await
    );
}
