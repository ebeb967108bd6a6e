//! Delegation is part of the peer (SPEC 3 and 4.11), against the real
//! binaries: `pinctl add` discovers a peer that delegates with
//! `/.well-known/matrix/server` (local servers, `--connect-to`), pins both the
//! well-known front and the federation endpoint with keys enrolled for each,
//! and `fedpin run` then blocks a forged well-known served through a CA-valid
//! certificate for the server name, and raises `delegation_changed` when the
//! genuine front starts answering another delegation.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, process};
use common::{leaf, net, pem, root, Leaf};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const SERVER: &str = "deleg.fedpin.test";
const FED: &str = "fed.deleg.fedpin.test";
const STEP: Duration = Duration::from_secs(15);

/// A TLS server answering every request with `body()` (HTTP/1.1, one
/// request per connection).
async fn https(cert: &Leaf, status: &'static str, body: Arc<Mutex<String>>) -> SocketAddr {
    net::serve_tls(net::acceptor(cert, &[]), move |mut tls| {
        let body = body.clone();
        async move {
            // The request head, line by line up to the empty line.
            let mut head = tokio::io::BufReader::new(&mut tls);
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                if !matches!(head.read_line(&mut line).await, Ok(n) if n > 0) {
                    return;
                }
            }
            let b = body.lock().unwrap().clone();
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            );
            let _ = tls.write_all(resp.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    })
    .await
}

struct World {
    dir: tempfile::TempDir,
    public: common::Ca,
    front: Leaf,
    front_addr: SocketAddr,
    front_body: Arc<Mutex<String>>,
    fed_addr: SocketAddr,
}

/// A genuine peer: front (well-known) and endpoint with different keys,
/// both from the same public CA; enrolled with `pinctl add`.
async fn enrolled() -> World {
    let dir = tempfile::tempdir().unwrap();
    let public = root("fedpin test public root");
    let front = leaf(&public, &[SERVER]);
    let fed = leaf(&public, &[FED]);
    let fed_addr = https(&fed, "200 OK", Arc::new(Mutex::new("{}".into()))).await;
    let delegation = format!("{FED}:{}", fed_addr.port());
    let front_body = Arc::new(Mutex::new(format!(r#"{{"m.server": "{delegation}"}}"#)));
    let front_addr = https(&front, "200 OK", front_body.clone()).await;
    std::fs::write(
        dir.path().join("public.pem"),
        pem("CERTIFICATE", public.cert.as_ref()),
    )
    .unwrap();
    std::fs::write(dir.path().join("pins.toml"), "version = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pinctl"))
        .arg("--pins")
        .arg(dir.path().join("pins.toml"))
        .args(["add", SERVER, "--yes", "--roots"])
        .arg(dir.path().join("public.pem"))
        .arg("--connect-to")
        .arg(format!("{SERVER}:443:{front_addr}"))
        .arg("--connect-to")
        .arg(format!("{FED}:{}:{fed_addr}", fed_addr.port()))
        .env("PINCTL_LOG", "fedpin=debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pinctl add: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both chains were shown, and the entry records the delegation with
    // keys enrolled for each name.
    assert!(
        stdout.contains(&format!("Served chain of {FED}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Served chain of {SERVER}")),
        "{stdout}"
    );
    let set = fedpin::pins::PinSet::load(&dir.path().join("pins.toml")).unwrap();
    let peer = set.by_server_name(SERVER).expect("enrolled");
    assert_eq!(peer.delegation.as_deref(), Some(delegation.as_str()));
    assert_eq!(peer.pins, vec![common::pin(&fed.cert)]);
    assert_eq!(
        peer.host_pins,
        vec![(SERVER.to_string(), vec![common::pin(&front.cert)])]
    );
    assert_eq!(
        set.lookup(SERVER).unwrap().pins,
        vec![common::pin(&front.cert)]
    );
    assert!(
        set.warnings.iter().all(|w| !w.key.contains("delegation")),
        "{:?}",
        set.warnings
    );
    World {
        dir,
        public,
        front,
        front_addr,
        front_body,
        fed_addr,
    }
}

struct Fedpin {
    _child: process::Reaped,
    outbound: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Fedpin {
    fn alerts(&self, event: &str) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let a = v.get("fields")?.get("alert")?.as_str()?.to_owned();
                serde_json::from_str::<serde_json::Value>(&a).ok()
            })
            .filter(|a| a["event"] == event)
            .collect()
    }
}

/// `fedpin run` with the outbound proxy; `SERVER:443` reaches `front`.
fn run_fedpin(w: &World, front: SocketAddr) -> Fedpin {
    fedpin::tls::ca::init_ca(&w.dir.path().join("ca")).unwrap();
    let cfg = process::outbound_config(
        w.dir.path(),
        &format!(
            r#"extra_roots = "public.pem"
allow_ips = ["127.0.0.0/8"]
resolve = {{ "{FED}" = "127.0.0.1" }}
connect_to = {{ "{SERVER}:443" = "{front}" }}
"#
        ),
    );
    let mut child = process::fedpin_run(&cfg, &[])
        .env("FEDPIN_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log2.lock().unwrap().push(line);
        }
    });
    let rx = process::stdout_lines(&mut child);
    let [outbound] = process::listening(&rx, &["outbound"])[..] else {
        unreachable!()
    };
    Fedpin {
        _child: process::Reaped(child),
        outbound,
        log,
    }
}

/// [`well_known_through`] `w`'s fedpin, trusting its interception CA, within [`STEP`].
async fn well_known_now(w: &World, fp: &Fedpin) -> (u16, String) {
    tokio::time::timeout(
        STEP,
        well_known_through(fp, &w.dir.path().join("ca/fedpin-ca.pem")),
    )
    .await
    .unwrap()
}

/// What Synapse does for a well-known lookup through `https_proxy`:
/// CONNECT SERVER:443, TLS trusting only fedpin's CA, GET the document.
async fn well_known_through(fp: &Fedpin, ca_pem: &std::path::Path) -> (u16, String) {
    let ica = fedpin::tls::load_certs(ca_pem).unwrap();
    let target = format!("{SERVER}:443");
    let mut tls = connect::tunnel_tls(fp.outbound, &target, &ica[0], SERVER).await;
    // The caller bounds the whole exchange by STEP, which ends first.
    let text =
        connect::get_what_arrives(&mut tls, SERVER, "/.well-known/matrix/server", STEP).await;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn wait_alert(fp: &Fedpin, event: &str) -> Vec<serde_json::Value> {
    let ok = common::wait_until(STEP, || !fp.alerts(event).is_empty()).await;
    assert!(
        ok,
        "no {event} alert; log:\n{}",
        fp.log.lock().unwrap().join("\n")
    );
    fp.alerts(event)
}

/// fedpin with the front at `front`, and the well-known it answers now,
/// asserted to come with `status`: fedpin and the body.
async fn well_known_via(w: &World, front: SocketAddr, status: u16) -> (Fedpin, String) {
    let fp = run_fedpin(w, front);
    let (got, body) = well_known_now(w, &fp).await;
    assert_eq!(got, status, "{body}");
    (fp, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_delegation_passes_through_the_watching_tunnel() {
    let w = enrolled().await;
    let (fp, body) = well_known_via(&w, w.front_addr, 200).await;
    assert!(
        body.contains(&format!("{FED}:{}", w.fed_addr.port())),
        "{body}"
    );
    assert!(fp.alerts("delegation_changed").is_empty());
    assert!(fp.alerts("pin_mismatch").is_empty());
}

/// The review's first bypass: an interceptor with a CA-valid certificate for
/// the server name answers the well-known with its own host. The front is
/// pinned now, so the handshake itself fails the pin check: Synapse gets a
/// 502 naming it, never the forged JSON, and a critical alert is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_well_known_through_a_ca_valid_certificate_is_blocked() {
    let w = enrolled().await;
    let impostor = leaf(&w.public, &[SERVER]);
    let forged = Arc::new(Mutex::new(
        r#"{"m.server": "evil.fedpin.test:443"}"#.to_string(),
    ));
    let evil = https(&impostor, "200 OK", forged).await;
    let (fp, body) = well_known_via(&w, evil, 502).await;
    assert!(!body.contains("evil.fedpin.test"), "{body}");
    assert!(body.contains("pin_mismatch"), "{body}");
    let alerts = wait_alert(&fp, "pin_mismatch").await;
    assert_eq!(alerts[0]["severity"], "critical");
    assert_eq!(alerts[0]["host"], SERVER);
    assert_eq!(alerts[0]["server_name"], SERVER);
}

/// The genuine front (its pinned key) starts answering another delegation:
/// `delegation_changed`, critical, and in enforce mode a 502 instead of the
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_delegation_on_the_genuine_key_raises_delegation_changed() {
    let w = enrolled().await;
    *w.front_body.lock().unwrap() = r#"{"m.server": "elsewhere.fedpin.test:8448"}"#.into();
    let (fp, body) = well_known_via(&w, w.front_addr, 502).await;
    assert!(body.contains("delegation_changed"), "{body}");
    assert!(!body.contains("\"m.server\""), "{body}");
    let alerts = wait_alert(&fp, "delegation_changed").await;
    let a = &alerts[0];
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["action"], "blocked");
    assert_eq!(a["host"], SERVER);
    assert_eq!(a["server_name"], SERVER);
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("elsewhere.fedpin.test:8448"),
        "{a}"
    );
    assert_eq!(
        a["served_chain"][0]["pin"],
        common::pin(&w.front.cert).to_string()
    );
    let _: &CertificateDer<'static> = &w.front.cert;
}
