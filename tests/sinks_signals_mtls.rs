//! The command alert sink and SIGHUP reload.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fedpin::alert::{AlertEvent, AlertHub, CommandSink, Direction};
use fedpin::pins::PinStore;

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
