//! Process lifecycle of `fedpin run`: SIGTERM drains an in-flight request
//! before exiting 0; a broken config on SIGHUP keeps the running one;
//! `--log-format`; shell completions.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{leaf, pem, root};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

/// A homeserver stand-in that answers after `delay`.
async fn slow_homeserver(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"{\"done\":true}"),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

struct Running {
    child: std::process::Child,
    inbound: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    start_with(dir, upstream, ca, None)
}

/// [`start`], optionally with `NOTIFY_SOCKET` set as systemd would.
fn start_with(
    dir: &std::path::Path,
    upstream: SocketAddr,
    ca: &common::Ca,
    notify_socket: Option<&std::path::Path>,
) -> (Running, std::path::PathBuf) {
    let server = leaf(ca, &["hs.fedpin.test"]);
    std::fs::write(
        dir.join("cert.pem"),
        pem("CERTIFICATE", server.cert.as_ref()),
    )
    .unwrap();
    std::fs::write(dir.join("key.pem"), server.key.serialize_pem()).unwrap();
    std::fs::write(dir.join("pins.toml"), "version = 1\n").unwrap();
    let cfg = dir.join("fedpin.toml");
    std::fs::write(
        &cfg,
        format!("pins = \"pins.toml\"\n[inbound]\nlisten = \"127.0.0.1:0\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\nupstream = \"http://{upstream}\"\n"),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedpin"));
    cmd.env_remove("NOTIFY_SOCKET");
    if let Some(p) = notify_socket {
        cmd.env("NOTIFY_SOCKET", p);
    }
    let mut child = cmd
        .args([
            "--log-format",
            "json",
            "run",
            "--drain-secs",
            "20",
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("fedpin prints its listening line");
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"));
    (
        Running {
            child,
            inbound: addr,
        },
        cfg,
    )
}

async fn get(addr: SocketAddr, ca: &CertificateDer<'static>) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("hs.fedpin.test").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/_matrix/key/v2/server")
        .header("host", "hs.fedpin.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
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
    let (mut running, _cfg) = start_with(dir.path(), upstream, &ca, Some(&sock_path));

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
