//! The command alert sink, SIGHUP reload, and the client-side (mutual TLS) verifier.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fedpin::alert::{AlertEvent, AlertHub, CommandSink, Direction};
use fedpin::pins::{PinSet, PinStore};
use fedpin::verify::PinnedClientVerifier;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sample_alert(host: &str) -> fedpin::alert::Alert {
    fedpin::alert::Alert {
        event: AlertEvent::PinMismatch,
        severity: fedpin::alert::Severity::Critical,
        time: fedpin::alert::Alert::now_string(),
        direction: Direction::Outbound,
        server_name: Some(host.into()),
        host: Some(host.into()),
        port: Some(8448),
        peer_addr: Some("127.0.0.1:8448".into()),
        mode: Some(fedpin::pins::Mode::Enforce),
        action: fedpin::alert::Action::Blocked,
        webpki: "valid".into(),
        served_chain: vec![],
        known_pins: vec![],
        expires: None,
        pin_generation: 1,
        reason: "test".into(),
        repeats: 1,
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

/// SPEC 4.8 / issue: SIGHUP re-reads the pin file.
#[tokio::test]
async fn sighup_reloads_the_pin_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let p1 = fedpin::pins::Pin::of_spki(b"one");
    let p2 = fedpin::pins::Pin::of_spki(b"two");
    std::fs::write(
        &path,
        format!("version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{p1}\"]\n"),
    )
    .unwrap();
    let store = Arc::new(PinStore::open(&path, AlertHub::new()).unwrap());
    fedpin::pins::spawn_sighup_reload(store.clone()).unwrap();
    std::fs::write(
        &path,
        format!("version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{p2}\"]\n"),
    )
    .unwrap();
    assert_eq!(
        store.current().generation,
        1,
        "no watcher: nothing changes without the signal"
    );
    // The shell's builtin kill: no dependency on a kill binary being installed.
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("kill -HUP {}", std::process::id())])
        .status()
        .unwrap();
    assert!(status.success());
    let s = store.clone();
    assert!(wait_until(Duration::from_secs(10), move || s.current().generation == 2).await);
    assert!(store.current().lookup("a.example").unwrap().has_pin(&p2));
}

async fn mtls_server(verifier: Arc<PinnedClientVerifier>, server: &Leaf) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert.clone()], server.key_der())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hello\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn mtls_client(
    addr: std::net::SocketAddr,
    ca: &Ca,
    client: Option<&Leaf>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.serialize_der())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("inbound.fedpin.test").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut s = String::new();
    tls.read_to_string(&mut s)
        .await
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Mutual pinned TLS: the right client key is accepted, another is refused with an inbound alert.
#[tokio::test]
async fn client_verifier_accepts_pinned_client_and_refuses_another() {
    let ca = root("Federation CA");
    let server = leaf(&ca, &["inbound.fedpin.test"]);
    let genuine = leaf(&ca, &["peer.fedpin.test"]);
    let impostor = leaf(&ca, &["peer.fedpin.test"]);
    let (core, hub) = core(&[&ca.cert]);
    let mut set = PinSet::parse(&format!(
        "version = 1\n[policy]\nunpinned = \"deny\"\n[[peer]]\nserver_name = \"peer.fedpin.test\"\npins = [\"{}\"]\n",
        pin(&genuine.cert)
    ))
    .unwrap();
    set.generation = 3;
    let verifier = Arc::new(PinnedClientVerifier::new(core, Arc::new(set), true));
    let addr = mtls_server(verifier, &server).await;

    assert_eq!(
        mtls_client(addr, &ca, Some(&genuine)).await.as_deref(),
        Ok("hello\n")
    );
    assert!(mtls_client(addr, &ca, Some(&impostor)).await.is_err());
    assert!(
        mtls_client(addr, &ca, None).await.is_err(),
        "client_auth = require refuses clients without a certificate"
    );
    let unknown = leaf(&ca, &["stranger.fedpin.test"]);
    assert!(
        mtls_client(addr, &ca, Some(&unknown)).await.is_err(),
        "policy.unpinned = deny applies to clients"
    );

    let a = hub.recent();
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].event, AlertEvent::PinMismatch);
    assert_eq!(a[0].direction, Direction::Inbound);
    assert_eq!(a[0].pin_generation, 3);
    assert_eq!(a[1].event, AlertEvent::UnpinnedDenied);
}
