//! The status page at `/` of the admin listener, against the real `fedpin`
//! binary: a genuine pinned peer and a CA-valid impostor of another pinned
//! peer are dialled through the outbound proxy, then a pin file with markup
//! in it is rejected; the page must show all of it, escaped.
//!
//! Always: the page's headers, the peers' rows (the impostor's critical
//! badge and alert row, the genuine peer's last result OK) and the escaping
//! are checked on the served HTML; the page is written to
//! `target/status-page/status.html`.
//!
//! With `FEDPIN_VNU=/path/to/vnu.jar` (the W3C Nu HTML checker, run with
//! `java`): the page must validate with no error and no warning.
//! With `FEDPIN_CHROMIUM=/usr/bin/chromium`: headless Chromium loads the
//! page; the same assertions are made on the DOM it rendered, and its
//! screenshot is written to `target/status-page/status.png`.
//! `.ci/run` installs both and sets both, so in CI neither part is skipped.
//!
//! A second test drives the inbound edge in-process with client
//! certificates: the per-peer table records the inbound direction too.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, leaf, net, pem, pin, process, root, Ca, Leaf};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const GENUINE: &str = "genuine.fedpin.test";
const VICTIM: &str = "victim.fedpin.test";
const STEP: Duration = Duration::from_secs(20);
const MARKUP: &str = "<script>alert(1)</script>";

/// fedpin with its proxy listener (outbound) and admin listener.
type Fedpin = process::ProxyAndAdmin;

fn run(pins: &str, roots_pem: &str, genuine: SocketAddr, impostor: SocketAddr) -> Fedpin {
    let dir = process::outbound_dir(roots_pem, pins);
    let d = dir.path();
    let cfg = process::outbound_admin_config(
        d,
        &format!(
            r#"allow_ips = ["127.0.0.0/8"]
resolve = {{ "{GENUINE}" = "127.0.0.1", "{VICTIM}" = "127.0.0.1" }}
connect_to = {{ "{GENUINE}:8448" = "{genuine}", "{VICTIM}:8448" = "{impostor}" }}
"#
        ),
    );
    process::run_proxy_and_admin(dir, &cfg, "outbound")
}

/// A leaf for `name` valid for a year, as a real peer's would be (rcgen's
/// default, the year 4096, is one the HTML checker rightly doubts).
fn leaf_for_a_year(ca: &Ca, name: &str) -> Leaf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert: cert.der().clone(),
        key,
    }
}

/// What Synapse does: CONNECT name:8448 through the outbound proxy, TLS
/// inside the tunnel trusting only fedpin's CA, one request; the answer.
async fn through(fp: &Fedpin, name: &str) -> String {
    let ica = fedpin::tls::load_certs(&fp.dir.path().join("ca/fedpin-ca.pem")).unwrap();
    let target = format!("{name}:8448");
    let mut tls = tokio::time::timeout(STEP, connect::tunnel_tls(fp.proxy, &target, &ica[0], name))
        .await
        .unwrap();
    connect::get_what_arrives(&mut tls, name, "/_matrix/federation/v1/version", STEP).await
}

/// `GET path` on the admin listener: the response head and body.
async fn admin_get(fp: &Fedpin, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(fp.admin).await.unwrap();
    let buf = net::get_close(&mut tcp, "127.0.0.1", path, STEP)
        .await
        .unwrap();
    let text = String::from_utf8(buf).expect("the admin listener answers UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// Polls the status page until `cond` holds for its body.
async fn page_until(fp: &Fedpin, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (_, body) = admin_get(fp, "/").await;
        if cond(&body) {
            return body;
        }
        assert!(
            start.elapsed() < STEP,
            "the status page never showed {what}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `<tr …>…</tr>` of `html` that starts with `open` (e.g. `<tr data-peer="x">`).
fn row<'a>(html: &'a str, open: &str) -> &'a str {
    let start = html
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in:\n{html}"));
    let end = start + html[start..].find("</tr>").expect("row closed");
    &html[start..end]
}

/// The assertions made on the served HTML and again on Chromium's DOM: the
/// impostor's peer has the critical badge and its alert row; the genuine
/// peer's last result is OK; markup in a value is text, never an element.
fn assert_page(html: &str, source: &str) {
    let victim = row(html, &format!("<tr data-peer=\"{VICTIM}\">"));
    assert!(
        victim.contains("<span class=\"badge b-crit\" data-critical=\"pin_mismatch\">critical: pin_mismatch</span>"),
        "{source}: the impostor's peer has no critical badge: {victim}"
    );
    assert!(
        victim.contains("<td class=\"last-out\" data-result=\"pin_mismatch\"><span class=\"badge b-bad\">pin mismatch</span>"),
        "{source}: {victim}"
    );
    let genuine = row(html, &format!("<tr data-peer=\"{GENUINE}\">"));
    assert!(
        genuine.contains(
            "<td class=\"last-out\" data-result=\"ok\"><span class=\"badge b-ok\">OK</span>"
        ),
        "{source}: the genuine peer's last result is not OK: {genuine}"
    );
    assert!(!genuine.contains("b-crit"), "{source}: {genuine}");
    // The served chain's expiry was seen (a year ahead, in whole days), and
    // the pins' (2099).
    assert!(!genuine.contains("not seen yet"), "{source}: {genuine}");
    assert!(
        genuine.contains(">364 d</span>") || genuine.contains(">365 d</span>"),
        "{source}: {genuine}"
    );
    assert!(
        genuine.contains(">2099-01-01</time>"),
        "{source}: {genuine}"
    );
    let alert = row(
        html,
        &format!("<tr data-event=\"pin_mismatch\" data-peer=\"{VICTIM}\">"),
    );
    assert!(alert.contains(">critical</span>"), "{source}: {alert}");
    assert!(alert.contains(">blocked<"), "{source}: {alert}");
    assert!(
        html.contains("1 pinned peer(s) with a critical alert in the last 24 hours"),
        "{source}"
    );
    // The rejected pin file named the unknown key: shown, as text.
    let reload = &html[html.find("id=\"last-reload\"").expect("last reload")..];
    assert!(reload.contains(">rejected</span>"), "{source}");
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    assert!(
        reload[..reload.find("</td>").unwrap()].contains(escaped),
        "{source}"
    );
    assert!(
        row(html, "<tr data-event=\"pin_reload_failed\"").contains(escaped),
        "{source}"
    );
    assert!(
        !html.contains("<script"),
        "{source}: a <script> element is on the page"
    );
    let outbound = row(html, "<tr data-listener=\"outbound\">");
    assert!(
        outbound.contains("upstream handshakes: 1 ok, 1 failed"),
        "{source}: {outbound}"
    );
    assert!(
        html.contains("<tr data-listener=\"admin\">"),
        "{source}: no admin listener row"
    );
}

/// Runs `cmd` for at most `limit`, killing it then; its status and stdout.
fn run_bounded(mut cmd: Command, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, reader.join().unwrap(), err_reader.join().unwrap())
}

fn chromium(bin: &str, profile: &Path, extra: &[String], url: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url);
    cmd
}

fn out_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_the_impostor_and_the_genuine_peer_escaped() {
    let ca = root("fedpin status page test CA");
    let genuine = leaf_for_a_year(&ca, GENUINE);
    let victim_real = leaf(&ca, &[VICTIM]);
    let impostor = leaf_for_a_year(&ca, VICTIM);
    let backup = leaf(&ca, &["backup.fedpin.test"]);
    let genuine_addr = common::serve(vec![genuine.cert.clone()], genuine.key_der()).await;
    let impostor_addr = common::serve(vec![impostor.cert.clone()], impostor.key_der()).await;
    let pins = format!(
        r#"version = 1

[[peer]]
server_name = "{GENUINE}"
pins = ["{}", "{}"]
expires = "2099-01-01T00:00:00Z"

[[peer]]
server_name = "{VICTIM}"
pins = ["{}", "{}"]
"#,
        pin(&genuine.cert),
        pin(&backup.cert),
        pin(&victim_real.cert),
        pin(&backup.cert),
    );
    let fp = run(
        &pins,
        &pem("CERTIFICATE", ca.cert.as_ref()),
        genuine_addr,
        impostor_addr,
    );

    // Before any handshake: both peers listed, nothing seen, no badge.
    let (head, body) = admin_get(&fp, "/").await;
    let head_l = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head_l.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head_l.contains("content-security-policy: default-src 'none'; style-src 'unsafe-inline'"),
        "{head}"
    );
    assert!(head_l.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head_l.contains("cache-control: no-store"), "{head}");
    assert!(row(&body, &format!("<tr data-peer=\"{GENUINE}\">")).contains("none since start"));
    assert!(!body.contains("badge b-crit"), "{body}");
    assert!(body.contains("No critical alert about a pinned peer"));
    // The machine endpoints are unchanged.
    let (pins_head, pins_json) = admin_get(&fp, "/pins").await;
    assert!(pins_head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    let v: serde_json::Value = serde_json::from_str(&pins_json).unwrap();
    assert_eq!(v["peers"].as_array().unwrap().len(), 2);

    // A genuine handshake, then the impostor (CA-valid for VICTIM, not its key).
    let ok = through(&fp, GENUINE).await;
    assert!(
        ok.contains("hello"),
        "the genuine peer was not reached: {ok}"
    );
    let blocked = through(&fp, VICTIM).await;
    assert!(
        blocked.starts_with("HTTP/1.1 502"),
        "the impostor was not blocked: {blocked}"
    );
    page_until(&fp, "both handshakes and the critical badge", |b| {
        b.contains("data-result=\"ok\"") && b.contains("data-critical=\"pin_mismatch\"")
    })
    .await;

    // A pin file carrying markup is rejected; its error names the key.
    std::fs::write(
        fp.dir.path().join("pins.toml"),
        format!("{pins}\n\"{MARKUP}\" = 1\n"),
    )
    .unwrap();
    let html = page_until(&fp, "the rejected reload", |b| {
        b.contains(">rejected</span>")
    })
    .await;
    assert_page(&html, "served HTML");
    assert!(
        html.contains("Generation</th><td>1<"),
        "the failed reload changed the generation"
    );

    let dir = out_dir();
    let html_path = dir.join("status.html");
    std::fs::write(&html_path, &html).unwrap();
    println!("status page written to {}", html_path.display());

    // The W3C Nu HTML checker: no error, no warning.
    match std::env::var("FEDPIN_VNU") {
        Ok(jar) => {
            let mut cmd = Command::new("java");
            cmd.args(["-jar", &jar, "--Werror", "--format", "text"])
                .arg(&html_path);
            let (status, out, err) = run_bounded(cmd, Duration::from_secs(120));
            assert!(
                status.success(),
                "the Nu HTML checker rejects the page:\n{out}{err}"
            );
            println!("Nu HTML checker: {}{}", out.trim(), err.trim());
        }
        Err(_) => println!("FEDPIN_VNU is not set: HTML validation skipped (CI sets it)"),
    }

    // Headless Chromium: the rendered DOM, and a screenshot.
    match std::env::var("FEDPIN_CHROMIUM") {
        Ok(bin) => {
            let url = format!("http://{}/", fp.admin);
            let profile = tempfile::tempdir().unwrap();
            let (status, dom, err) = run_bounded(
                chromium(&bin, profile.path(), &["--dump-dom".into()], &url),
                Duration::from_secs(120),
            );
            assert!(status.success(), "chromium --dump-dom failed: {err}");
            assert!(
                dom.contains("<title>fedpin status</title>"),
                "no page in the DOM:\n{dom}\n{err}"
            );
            assert_page(&dom, "Chromium DOM");
            std::fs::write(dir.join("status.dom.html"), &dom).unwrap();
            let png = dir.join("status.png");
            let _ = std::fs::remove_file(&png);
            let profile = tempfile::tempdir().unwrap();
            let (status, _, err) = run_bounded(
                chromium(
                    &bin,
                    profile.path(),
                    &[
                        format!("--screenshot={}", png.display()),
                        "--window-size=1280,1600".into(),
                    ],
                    &url,
                ),
                Duration::from_secs(120),
            );
            assert!(status.success(), "chromium --screenshot failed: {err}");
            let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
                "not a PNG screenshot"
            );
            println!("screenshot written to {}", png.display());
        }
        Err(_) => println!("FEDPIN_CHROMIUM is not set: browser check skipped (CI sets it)"),
    }
}

/// The inbound side of the per-peer table: a client certificate checked by
/// the edge (client_auth = "require") is recorded under the peer's server
/// name, a pinned client as OK (a resumed session too, by its certificate's
/// name), an impostor of it as pin_mismatch; the page's inbound column shows
/// the last one.
#[tokio::test]
async fn inbound_client_certificates_are_recorded_per_peer() {
    use fedpin::alert::AlertHub;
    use fedpin::config::ClientAuth;
    use fedpin::metrics::HandshakeResult;
    use fedpin::pin_store::PinStore;
    use fedpin::pins::PinSet;
    use fedpin::proxy::admin::AdminSources;
    use fedpin::proxy::inbound::{EdgeRules, InboundProxy, InboundSettings};

    const A: &str = "a.fedpin.test";
    const B: &str = "b.fedpin.test";
    let public = root("public CA");
    let b_server = leaf(&public, &[B]);
    let a_client = leaf_for_a_year(&public, A);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("b.pem"), dir.path().join("b.key"));
    std::fs::write(&cert, pem("CERTIFICATE", b_server.cert.as_ref())).unwrap();
    std::fs::write(&key, b_server.key.serialize_pem()).unwrap();
    let hub = AlertHub::new();
    let core = Arc::new(
        fedpin::verify::VerifierCore::with_only_anchors(
            &fedpin::tls::provider(),
            std::slice::from_ref(&public.cert),
            hub.clone(),
        )
        .unwrap(),
    );
    let mut set = PinSet::parse(&format!(
        "version = 1\n[[peer]]\nserver_name = \"{A}:8448\"\nhosts = [\"{A}\"]\npins = [\"{}\", \"{}\"]\n",
        pin(&a_client.cert),
        pin(&b_server.cert)
    ))
    .unwrap();
    set.generation = 1;
    let pins = Arc::new(PinStore::fixed(set, hub.clone()));
    let inbound = Arc::new(InboundProxy::new(
        InboundSettings {
            upstream: "http://127.0.0.1:9".parse().unwrap(),
            client_auth: ClientAuth::Require,
            ..InboundSettings::default()
        },
        EdgeRules::default(),
        Arc::new(fedpin::tls::certs::CertStore::open(&cert, &key).unwrap()),
        pins.clone(),
        core,
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(inbound.clone().serve(l, rx));

    let client_config = |client: &Leaf| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(public.cert.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![client.cert.clone()], client.key_der())
                .unwrap(),
        )
    };
    // Connects, waits for the server's verdict (under TLS 1.3 a refusal
    // arrives after the client's side of the handshake), returns how the
    // handshake went.
    let connect = |cfg: Arc<rustls::ClientConfig>| async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let res = async {
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from(B).unwrap(), tcp)
                .await?;
            let _ = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut [0u8; 1]))
                .await
                .unwrap_or(Ok(0))?;
            Ok::<_, std::io::Error>(tls.get_ref().1.handshake_kind())
        };
        tokio::time::timeout(STEP, res).await.expect("bounded")
    };
    let last = || inbound.stats().peers.pinned(&format!("{A}:8448"));
    let wait_for = |want: HandshakeResult, n: u64| {
        let inbound = inbound.clone();
        async move {
            let start = Instant::now();
            while inbound.stats().handshakes.get(want) < n {
                assert!(start.elapsed() < STEP, "no {want:?} handshake counted");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let genuine = client_config(&a_client);
    assert!(connect(genuine.clone()).await.is_ok());
    wait_for(HandshakeResult::Ok, 1).await;
    let l = last().expect("the pinned client is recorded");
    assert_eq!((l.result, l.host.as_str()), (HandshakeResult::Ok, A));
    assert!(l.nearest_cert_expiry.is_some(), "{l:?}");

    let impostor = leaf(&public, &[A]);
    assert!(connect(client_config(&impostor)).await.is_err());
    wait_for(HandshakeResult::PinMismatch, 1).await;
    assert_eq!(last().unwrap().result, HandshakeResult::PinMismatch);
    assert!(
        last().unwrap().nearest_cert_expiry.is_some(),
        "kept from the last OK"
    );

    // A resumed session runs no check; it is recorded by the certificate's name.
    let kind = connect(genuine).await.unwrap();
    assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
    wait_for(HandshakeResult::Ok, 2).await;
    assert_eq!(last().unwrap().result, HandshakeResult::Ok);
    assert_eq!(inbound.stats().peers.len(), (1, 0));

    let sources = AdminSources {
        pins,
        alerts: hub,
        outbound: None,
        inbound: Some(inbound.clone()),
        files: Vec::new(),
        listeners: Vec::new(),
    };
    let html = fedpin::proxy::status_page::render(&sources, None, time::OffsetDateTime::now_utc());
    let a_row = row(&html, &format!("<tr data-peer=\"{A}:8448\">"));
    assert!(
        a_row.contains(
            "<td class=\"last-in\" data-result=\"ok\"><span class=\"badge b-ok\">OK</span>"
        ),
        "{a_row}"
    );
    assert!(a_row.contains("critical: pin_mismatch"), "{a_row}");
    assert!(
        !a_row.contains("last-out"),
        "no outbound column without an outbound proxy: {a_row}"
    );
}
