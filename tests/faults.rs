//! Fault tests for pin-file writes: `pinctl` killed at every step of a write
//! leaves the old file or the new one, never a partial one; a full disk, a
//! read-only file system or a read-only directory gives a clear error naming
//! the file, an intact file and no leftover temporary file. The full and
//! read-only file systems are real tmpfs mounts where the test may mount
//! (root, as on CI), and injected OS errors (`FEDPIN_FAULT=write:enospc`,
//! `create:erofs`) everywhere.
//!
//! Faults at run time (from runtime_faults.rs): the material fedpin serves
//! with becoming unreadable, and file descriptors running out.

mod common;

use common::{leaf, net, pem, root, wait_until};
use fedpin::alert::{AlertEvent, Direction};
use fedpin::pins::{Pin, PinSet};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn pinctl(pins: &Path, args: &[&str], fault: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pinctl"));
    c.arg("--pins").arg(pins).args(args);
    if let Some(f) = fault {
        c.env("FEDPIN_FAULT", f);
    }
    c.output().unwrap()
}

fn pin(n: u8) -> String {
    Pin::of_spki(&[n, 1, 2]).to_string()
}

#[test]
fn killed_at_every_write_step_leaves_old_or_new_file() {
    for (i, step) in ["after-create", "after-write", "after-fsync", "after-rename"]
        .iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        with_one_peer(&path);
        let before = std::fs::read(&path).unwrap();

        let out = add_two_pins(&path, "b.example", 3, Some(step));
        assert!(
            !out.status.success(),
            "{step}: the fault point must kill pinctl"
        );

        let after = std::fs::read(&path).unwrap();
        let set = PinSet::parse_bytes(&after)
            .unwrap_or_else(|e| panic!("{step}: partial or broken file: {e}"));
        if i < 3 {
            assert_eq!(
                after, before,
                "{step}: killed before the rename, the old file stays"
            );
        } else {
            assert!(
                set.by_server_name("b.example").is_some(),
                "{step}: renamed, the new file is in place"
            );
        }
        // The lock died with the process: the next write goes through.
        let out = add_two_pins(&path, "c.example", 5, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{step}: {err}");
        assert!(PinSet::load(&path)
            .unwrap()
            .by_server_name("c.example")
            .is_some());
    }
}

#[cfg(unix)]
#[test]
fn read_only_directory_gives_a_clear_error_and_an_intact_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    assert!(pinctl(
        &path,
        &["add", "a.example", "--pin", &pin(1), "--pin", &pin(2)],
        None
    )
    .status
    .success());
    let before = std::fs::read(&path).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores directory permissions; only assert where they apply.
    let probe = std::fs::File::create(dir.path().join("probe"));
    if probe.is_ok() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!(
            "running as root: directory permissions do not apply; skipping the read-only case"
        );
        return;
    }
    let out = pinctl(
        &path,
        &["add", "b.example", "--pin", &pin(3), "--pin", &pin(4)],
        None,
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is intact");
}

/// Names of leftover temporary files in `dir` (a failed write must remove its own).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pins-"))
        .collect()
}

/// Adds a second peer to a file holding one and expects a clean refusal
/// naming `os_error`, with the file byte-for-byte intact and no temp file left.
fn refused_write_keeps_the_file(path: &Path, fault: Option<&str>, os_error: &str) {
    let before = std::fs::read(path).unwrap();
    let out = pinctl(
        path,
        &["add", "b.example", "--pin", &pin(3), "--pin", &pin(4)],
        fault,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(os_error), "{err}");
    assert!(
        err.contains(".pins-") || err.contains("pins.toml"),
        "names the file: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(path).unwrap(), before, "the file is intact");
    assert!(PinSet::parse_bytes(&before).is_ok());
    assert_eq!(leftovers(path.parent().unwrap()), Vec::<String>::new());
}

/// `pinctl add NAME --pin pin(n) --pin pin(n + 1)` on `path`, with the fault
/// point `fault`.
fn add_two_pins(path: &Path, name: &str, n: u8, fault: Option<&str>) -> std::process::Output {
    pinctl(
        path,
        &["add", name, "--pin", &pin(n), "--pin", &pin(n + 1)],
        fault,
    )
}

/// `path` becomes a pin file with one peer, a.example (pins 1 and 2).
fn with_one_peer(path: &Path) {
    let out = add_two_pins(path, "a.example", 1, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
}

/// A small tmpfs mounted for one test, when this process may mount (root
/// with CAP_SYS_ADMIN, as on the CI machines); unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn remount_read_only(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A refused pin-file write (`message`) leaves the file intact: first with
/// `fault` injected (on every machine), then for real on a tmpfs of `size`
/// that `spoil` makes fail, where the test may mount one.
fn write_fault_keeps_the_file(fault: &str, message: &str, size: &str, spoil: impl FnOnce(&Tmpfs)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    with_one_peer(&path);
    refused_write_keeps_the_file(&path, Some(fault), message);

    let Some(fs) = Tmpfs::mount(size) else {
        eprintln!("cannot mount a tmpfs here: only the injected {fault} case ran");
        return;
    };
    let path = fs.path().join("pins.toml");
    with_one_peer(&path);
    spoil(&fs);
    refused_write_keeps_the_file(&path, None, message);
}

#[test]
fn full_disk_gives_a_clear_error_and_an_intact_file() {
    // The real case fills the file system.
    write_fault_keeps_the_file("write:enospc", "No space left on device", "64k", |fs| {
        use std::io::Write;
        let mut filler = std::fs::File::create(fs.path().join("filler")).unwrap();
        let block = [0u8; 4096];
        while filler.write_all(&block).is_ok() {}
    });
}

#[test]
fn read_only_file_system_gives_a_clear_error_and_an_intact_file() {
    write_fault_keeps_the_file("create:erofs", "Read-only file system", "1m", |fs| {
        assert!(fs.remount_read_only(), "remount read-only");
    });
}

// ----------------------------------------------------------------------
// Moved unchanged from tests/runtime_faults.rs:
// Faults at run time in the material fedpin serves with: the interception
// CA's files or the inbound certificate's files becoming unreadable keep the
// last good material in use (handshakes keep working with it), raise one
// `cert_reload_failed` alert per failure, and show on `/healthz`; putting the
// files back clears the failure.
// ----------------------------------------------------------------------

const LIMIT: Duration = Duration::from_secs(10);

fn client_config(anchor: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    net::client_config(&[anchor], &[])
}

/// TLS to `addr` as `name` trusting only `anchor`; returns the served leaf.
async fn served_leaf(
    tcp: TcpStream,
    anchor: &CertificateDer<'static>,
    name: &str,
) -> Result<CertificateDer<'static>, String> {
    let connector = tokio_rustls::TlsConnector::from(client_config(anchor));
    let tls = tokio::time::timeout(
        LIMIT,
        connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

/// CONNECT through the outbound proxy; returns the tunnel after the 200.
async fn tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "proxy closed: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

async fn healthz(admin: SocketAddr) -> (u16, String) {
    let text = common::net::get_text(admin, "admin", "/healthz", LIMIT)
        .await
        .unwrap();
    (common::connect::status_of(&text), text)
}

/// Moves `path` aside (the file disappears, as when a renewal breaks a
/// symlink or a mount goes away); returns where it went.
fn take_away(path: &Path) -> std::path::PathBuf {
    let aside = path.with_extension("aside");
    std::fs::rename(path, &aside).unwrap();
    aside
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_ca_and_server_certificate_keep_the_last_good_material_and_alert() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fedpin::tls::ca::init_ca(&d.join("ca")).unwrap();
    let public = root("runtime-faults public root");
    let server = leaf(&public, &["hs.fedpin.test"]);
    std::fs::create_dir(d.join("tls")).unwrap();
    server.write_pem(&d.join("tls/server.pem"), &d.join("tls/server.key"));
    std::fs::write(d.join("pins.toml"), "version = 1\n").unwrap();
    std::fs::write(
        d.join("fedpin.toml"),
        r#"pins = "pins.toml"

[outbound]
listen = "127.0.0.1:0"
ca_cert = "ca/fedpin-ca.pem"
ca_key = "ca/fedpin-ca.key"
allow_ips = ["127.0.0.0/8"]
resolve = { "never-seen.fedpin.test" = "127.0.0.1" }
connect_timeout_secs = 2

[inbound]
listen = "127.0.0.1:0"
cert = "tls/server.pem"
key = "tls/server.key"
upstream = "http://127.0.0.1:9"

[admin]
listen = "127.0.0.1:0"
"#,
    )
    .unwrap();
    let config = fedpin::config::Config::load(&d.join("fedpin.toml")).unwrap();
    let daemon = fedpin::daemon::Daemon::start(&config).await.unwrap();
    let (_, proxy) = daemon.outbound.clone().unwrap();
    let (_, inbound) = daemon.inbound.clone().unwrap();
    let admin = daemon.admin.unwrap();
    let ica = fedpin::tls::load_certs(&d.join("ca/fedpin-ca.pem")).unwrap()[0].clone();
    let failures = |direction: Direction| {
        daemon
            .alerts
            .recent()
            .iter()
            .filter(|a| a.event == AlertEvent::CertReloadFailed && a.direction == direction)
            .count()
    };
    // Raised, before the hub's 60 s merge of identical alerts.
    let raised = || {
        daemon
            .alerts
            .counts_by_event()
            .iter()
            .filter(|(e, _, _)| *e == AlertEvent::CertReloadFailed)
            .map(|(_, _, n)| n)
            .sum::<u64>()
    };
    assert_eq!(healthz(admin).await.0, 200);

    // --- the interception CA key disappears
    let aside = take_away(&d.join("ca/fedpin-ca.key"));
    assert!(
        wait_until(LIMIT, || failures(Direction::Outbound) == 1
            && raised() == 1)
        .await,
        "no cert_reload_failed alert for the CA: {:?}",
        daemon.alerts.recent()
    );
    let alert = daemon
        .alerts
        .recent()
        .into_iter()
        .find(|a| a.event == AlertEvent::CertReloadFailed)
        .unwrap();
    assert!(alert.reason.contains("fedpin-ca.key"), "{}", alert.reason);
    assert!(alert.reason.contains("stays in use"), "{}", alert.reason);
    // A name never seen before needs a freshly minted leaf: the CA in memory
    // still signs it (the upstream is dead, so the tunnel answers 502, but
    // the inner handshake completes with a leaf from fedpin's CA).
    let tcp = tunnel(proxy, "never-seen.fedpin.test:9").await;
    let leaf = served_leaf(tcp, &ica, "never-seen.fedpin.test")
        .await
        .expect("minting keeps working with the CA key in memory");
    assert!(!leaf.is_empty());
    let (status, body) = healthz(admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("interception CA key"), "{body}");

    // --- the inbound certificate's key disappears
    let original = served_leaf(
        TcpStream::connect(inbound).await.unwrap(),
        &public.cert,
        "hs.fedpin.test",
    )
    .await
    .unwrap();
    let key_aside = take_away(&d.join("tls/server.key"));
    assert!(
        wait_until(LIMIT, || failures(Direction::Inbound) == 1 && raised() == 2).await,
        "no cert_reload_failed alert for the server certificate: {:?}",
        daemon.alerts.recent()
    );
    let still = served_leaf(
        TcpStream::connect(inbound).await.unwrap(),
        &public.cert,
        "hs.fedpin.test",
    )
    .await
    .expect("the inbound edge keeps serving the last good certificate");
    assert_eq!(still, original);
    let (status, body) = healthz(admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("server key"), "{body}");

    // More events while still broken raise no new alert (one per failure).
    std::fs::write(d.join("tls/unrelated"), "x").unwrap();
    std::fs::write(d.join("tls/server.pem.tmp"), "x").unwrap();
    std::fs::rename(d.join("tls/server.pem.tmp"), d.join("tls/server.pem")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(raised(), 2, "{:?}", daemon.alerts.recent());
    assert_eq!(
        served_leaf(
            TcpStream::connect(inbound).await.unwrap(),
            &public.cert,
            "hs.fedpin.test",
        )
        .await
        .unwrap(),
        original,
        "a garbage certificate file changes nothing either"
    );

    // --- files back: healthy again, same material.
    std::fs::write(
        d.join("tls/server.pem"),
        pem("CERTIFICATE", server.cert.as_ref()),
    )
    .unwrap();
    std::fs::rename(&key_aside, d.join("tls/server.key")).unwrap();
    std::fs::rename(&aside, d.join("ca/fedpin-ca.key")).unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if healthz(admin).await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "{}", healthz(admin).await.1);
    // Once usable again, a new failure is a new alert.
    // (Give the watcher time to reload the restored pair first.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    let key_aside = take_away(&d.join("tls/server.key"));
    assert!(
        wait_until(LIMIT, || raised() == 3).await,
        "a second failure after recovery raised no new alert: {:?}",
        daemon.alerts.recent()
    );
    std::fs::rename(&key_aside, d.join("tls/server.key")).unwrap();
    daemon.stop();
}

/// A homeserver stand-in: 200 with a small JSON body to every request.
async fn homeserver() -> SocketAddr {
    net::plain_http(|_req| async {
        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"server\":{}}",
        )))
    })
    .await
}

/// One federation GET through the inbound edge; the status code.
async fn federation_get(
    inbound: SocketAddr,
    anchor: &CertificateDer<'static>,
) -> Result<u16, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(inbound))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(client_config(anchor));
    let mut tls = tokio::time::timeout(
        Duration::from_secs(3),
        connector.connect(ServerName::try_from("hs.fedpin.test").unwrap(), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /_matrix/federation/v1/version HTTP/1.1\r\nHost: hs.fedpin.test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))
}

/// File-descriptor exhaustion (`ulimit -n 64`): fedpin refuses new
/// connections with a log line naming the cause, never crashes, and serves
/// again once descriptors are free.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn descriptor_exhaustion_refuses_with_a_log_line_and_recovers() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let public = root("fd-exhaustion public root");
    let server = leaf(&public, &["hs.fedpin.test"]);
    server.write_pem(&d.join("cert.pem"), &d.join("key.pem"));
    std::fs::write(d.join("pins.toml"), "version = 1\n").unwrap();
    let upstream = homeserver().await;
    std::fs::write(
        d.join("fedpin.toml"),
        format!("pins = \"pins.toml\"\n[inbound]\nlisten = \"127.0.0.1:0\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\nupstream = \"http://{upstream}\"\n"),
    )
    .unwrap();
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "ulimit -n 64 && exec \"$0\" --log-format json run --config \"$1\"",
        ])
        .arg(env!("CARGO_BIN_EXE_fedpin"))
        .arg(d.join("fedpin.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("fedpin prints its listening line")
        .unwrap();
    let inbound: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(federation_get(inbound, &public.cert).await, Ok(200));
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let before = fds();

    // Hold raw connections (no ClientHello) until fedpin runs out of descriptors.
    let mut held = Vec::new();
    for _ in 0..96 {
        held.push(TcpStream::connect(inbound).await.unwrap());
    }
    let mut log = Vec::new();
    let saw_emfile = {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = false;
        while std::time::Instant::now() < deadline && !seen {
            while let Ok(l) = rx.try_recv() {
                seen |= l.contains("accept failed") && l.contains("Too many open files");
                log.push(l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    };
    assert!(
        saw_emfile,
        "no accept-failure log line naming EMFILE; log:\n{}",
        log.join("\n")
    );
    assert!(
        fds() >= 60,
        "fedpin holds {} descriptors, expected ~64",
        fds()
    );
    // While exhausted, a new client is not served.
    assert!(federation_get(inbound, &public.cert).await.is_err());
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "fedpin exited under descriptor exhaustion"
    );

    // Release: fedpin serves again.
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        if federation_get(inbound, &public.cert).await == Ok(200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ok,
        "fedpin did not recover after the descriptors were released"
    );
    let settled = wait_until(Duration::from_secs(15), || fds() <= before + 4).await;
    assert!(
        settled,
        "descriptors before {before}, after recovery {}",
        fds()
    );

    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
