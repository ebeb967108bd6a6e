//! `fedpin check-config` and `fedpin run` agree on every config: the ones
//! under `examples/`, the end-to-end template, and broken ones (each file or
//! value a run needs, broken one way). Both are the real binary; `run` gets
//! its listen addresses moved to 127.0.0.1:0 and is killed once it prints a
//! listening line for each configured listener, or when it exits.
#![cfg(unix)]

mod common;

use common::block_scalar;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FEDPIN: &str = env!("CARGO_BIN_EXE_fedpin");
/// How long `run` may take to print its listening lines or exit.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A self-signed CA certificate (PEM) and its key (PEM).
fn ca_pem(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A self-signed leaf for `name` (PEM) and its key (PEM).
fn leaf_pem(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// Every `listen = "…"` in a config moved to 127.0.0.1:0.
fn loopback_listens(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("listen =") {
                "listen = \"127.0.0.1:0\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The standard material of a case directory: interception CA (0600 key),
/// server certificate pair, client pair, a root file, an empty pin file.
fn material(d: &Path) {
    fedpin::tls::ca::init_ca(&d.join("ca")).unwrap();
    let (cert, key) = leaf_pem("hs.example");
    write(&d.join("tls/cert.pem"), &cert);
    write(&d.join("tls/key.pem"), &key);
    let (cert, key) = leaf_pem("client.hs.example");
    write(&d.join("tls/client.pem"), &cert);
    write(&d.join("tls/client.key"), &key);
    write(&d.join("roots.pem"), &ca_pem("private federation root").0);
    write(&d.join("matrix-token"), "syt_test_token\n");
    write(
        &d.join("pins.toml"),
        "version = 1\n[policy]\nunpinned = \"webpki\"\n",
    );
}

/// Everything configured (listen addresses on 127.0.0.1:0).
const FULL: &str = r#"pins = "pins.toml"

[outbound]
listen = "127.0.0.1:0"
ca_cert = "ca/fedpin-ca.pem"
ca_key = "ca/fedpin-ca.key"
extra_roots = "roots.pem"
client_cert = "tls/client.pem"
client_key = "tls/client.key"

[inbound]
listen = "127.0.0.1:0"
cert = "tls/cert.pem"
key = "tls/key.pem"
upstream = "http://127.0.0.1:9"
client_roots = "roots.pem"
client_auth = "request"
server_name = "hs.example"

[admin]
listen = "127.0.0.1:0"

[alerts]
webhook = "https://alerts.example/hook"
extra_roots = "roots.pem"
matrix_homeserver = "https://matrix.example"
matrix_room = "!ops:example"
matrix_token_file = "matrix-token"
"#;

/// A case: builds its files in the directory and returns the config path.
struct Case {
    name: &'static str,
    accept: bool,
    /// What check-config's errors must name (key, then file) when refused.
    names: &'static [&'static str],
    build: Box<dyn Fn(&Path) -> PathBuf>,
}

impl Case {
    /// A config both commands must accept, made by `build`.
    fn accepted(name: &'static str, build: impl Fn(&Path) -> PathBuf + 'static) -> Case {
        Case {
            name,
            accept: true,
            names: &[],
            build: Box::new(build),
        }
    }

    /// The material and [`FULL`], with `edit` applied to them: both commands
    /// must refuse it, check-config's errors naming `names`.
    fn refused(
        name: &'static str,
        names: &'static [&'static str],
        edit: impl Fn(&Path, &mut String) + 'static,
    ) -> Case {
        Case {
            name,
            accept: false,
            names,
            build: Box::new(full_with(edit)),
        }
    }
}

/// Writes the material and [`FULL`] with `edit` applied (to the directory
/// and to the config text); returns the config's path.
fn full_with(edit: impl Fn(&Path, &mut String)) -> impl Fn(&Path) -> PathBuf {
    move |d: &Path| {
        material(d);
        let mut text = FULL.to_string();
        edit(d, &mut text);
        let cfg = d.join("fedpin.toml");
        write(&cfg, &text);
        cfg
    }
}

fn set(text: &mut String, from: &str, to: &str) {
    assert!(text.contains(from), "{from:?} not in the base config");
    *text = text.replacen(from, to, 1);
}

/// The edit that replaces the config's first `from` with `to`.
fn setting(from: &'static str, to: &'static str) -> impl Fn(&Path, &mut String) {
    move |_, t| set(t, from, to)
}

/// The edit that writes `contents` to the material's file `rel`.
fn file(rel: &'static str, contents: impl AsRef<str> + 'static) -> impl Fn(&Path, &mut String) {
    move |d, _| write(&d.join(rel), contents.as_ref())
}

/// The edit that writes `contents` to a new file `rel` and points the
/// config's `key` (whose value is `was`) at it.
fn new_file(
    key: &'static str,
    was: &'static str,
    rel: &'static str,
    contents: &'static str,
) -> impl Fn(&Path, &mut String) {
    move |d, t| {
        write(&d.join(rel), contents);
        set(
            t,
            &format!("{key} = \"{was}\""),
            &format!("{key} = \"{rel}\""),
        );
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case::accepted("examples/fedpin.toml", |d| {
            material(d);
            let ex = d.join("examples");
            fedpin::tls::ca::init_ca(&ex.join("ca")).unwrap();
            std::fs::create_dir_all(d.join("pins")).unwrap();
            std::fs::copy(root().join("pins/pins.toml"), d.join("pins/pins.toml")).unwrap();
            let text = std::fs::read_to_string(root().join("examples/fedpin.toml")).unwrap();
            let cfg = ex.join("fedpin.toml");
            write(&cfg, &loopback_listens(&text));
            cfg
        }),
        Case::accepted(
            "examples/kubernetes/fedpin.yaml (fedpin.toml, pins.toml)",
            |d| {
                let yaml = std::fs::read_to_string(root().join("examples/kubernetes/fedpin.yaml"))
                    .unwrap();
                fedpin::tls::ca::init_ca(&d.join("ca")).unwrap();
                let (cert, key) = leaf_pem("matrix.example.org");
                write(&d.join("tls/tls.crt"), &cert);
                write(&d.join("tls/tls.key"), &key);
                let text = block_scalar(&yaml, "fedpin.toml")
                    .replace("/run/fedpin/ca/", &format!("{}/ca/", d.display()))
                    .replace("/etc/fedpin-tls/", &format!("{}/tls/", d.display()));
                write(&d.join("pins.toml"), &block_scalar(&yaml, "pins.toml"));
                let cfg = d.join("fedpin.toml");
                write(&cfg, &loopback_listens(&text));
                cfg
            },
        ),
        Case::accepted("tests/e2e/fedpin.toml.tmpl (placeholders filled)", |d| {
            material(d);
            let (cert, key) = leaf_pem("hs1.fedpin.test");
            write(&d.join("tls/server.pem"), &cert);
            write(&d.join("tls/server.key"), &key);
            std::fs::copy(root().join("tests/e2e/pins.toml.tmpl"), d.join("pins.toml")).unwrap();
            let text = std::fs::read_to_string(root().join("tests/e2e/fedpin.toml.tmpl"))
                .unwrap()
                .replace("@PROXY_PORT@", "0")
                .replace("@FED_PORT@", "0")
                .replace("@ADMIN_PORT@", "0")
                .replace("@SYNAPSE_FED_PORT@", "8008")
                .replace("@PUBLIC_CA@", &d.join("roots.pem").display().to_string())
                .replace("@DENY_ORIGINS@", "[\"spam.example\"]")
                .replace("@SERVER_NAME@", "hs1.fedpin.test");
            assert!(!text.contains('@'), "unfilled placeholder:\n{text}");
            let cfg = d.join("fedpin.toml");
            write(&cfg, &text);
            cfg
        }),
        Case::accepted("everything configured", full_with(|_, _| {})),
        Case::refused(
            "garbage inbound cert (a readable file that is not a certificate)",
            &["inbound.cert", "tls/cert.pem"],
            file("tls/cert.pem", "not a certificate\n"),
        ),
        Case::refused(
            "inbound key does not match the certificate",
            &["inbound.key", "tls/key.pem"],
            file("tls/key.pem", leaf_pem("other").1),
        ),
        Case::refused(
            "unreadable inbound key",
            &["inbound.key", "tls/key.pem"],
            |d, _| {
                let key = d.join("tls/key.pem");
                chmod(&key, 0o000);
                if std::fs::read(&key).is_ok() {
                    // Root reads anything: a directory in its place then.
                    std::fs::remove_file(&key).unwrap();
                    std::fs::create_dir(&key).unwrap();
                }
            },
        ),
        Case::refused(
            "inbound key file missing",
            &["inbound.key", "tls/missing.pem"],
            setting("key = \"tls/key.pem\"", "key = \"tls/missing.pem\""),
        ),
        Case::refused(
            "CA key with mode 0644",
            &["outbound.ca_key", "fedpin-ca.key", "chmod"],
            |d, _| chmod(&d.join("ca/fedpin-ca.key"), 0o644),
        ),
        Case::refused(
            "garbage CA certificate",
            &["outbound.ca_cert", "fedpin-ca.pem"],
            file("ca/fedpin-ca.pem", "garbage\n"),
        ),
        Case::refused(
            "CA key of another CA",
            &["outbound.ca_key", "fedpin-ca.key"],
            |d, _| {
                let key = d.join("ca/fedpin-ca.key");
                write(&key, &ca_pem("another CA").1);
                chmod(&key, 0o600);
            },
        ),
        Case::refused(
            "empty extra_roots file",
            &["outbound.extra_roots", "empty.pem"],
            new_file("extra_roots", "roots.pem", "empty.pem", ""),
        ),
        Case::refused(
            "garbage client_roots",
            &["inbound.client_roots", "junk.pem"],
            new_file(
                "client_roots",
                "roots.pem",
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
        ),
        Case::refused(
            "outbound client_key does not match client_cert",
            &["outbound.client_key", "tls/client.key"],
            file("tls/client.key", leaf_pem("x").1),
        ),
        Case::refused(
            "missing pin file",
            &["pins", "nope.toml"],
            setting("pins = \"pins.toml\"", "pins = \"nope.toml\""),
        ),
        Case::refused(
            "broken pin file",
            &["pins", "pins.toml", "line 4"],
            file(
                "pins.toml",
                "version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"sha256/x\"]\n",
            ),
        ),
        Case::refused(
            "bad upstream URL",
            &["inbound.upstream"],
            setting(
                "upstream = \"http://127.0.0.1:9\"",
                "upstream = \"http://\"",
            ),
        ),
        Case::refused(
            "http:// webhook to a non-loopback host",
            &["alerts.webhook"],
            setting(
                "webhook = \"https://alerts.example/hook\"",
                "webhook = \"http://alerts.example/hook\"",
            ),
        ),
        Case::refused(
            "empty Matrix token file",
            &["alerts.matrix_token_file", "matrix-token"],
            file("matrix-token", "\n"),
        ),
        Case::refused(
            "two listeners on one address",
            &["admin.listen", "inbound.listen"],
            |_, t| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let mut out = String::new();
                let mut section = "";
                for l in t.lines() {
                    if l.starts_with('[') {
                        section = if l == "[inbound]" || l == "[admin]" {
                            "same"
                        } else {
                            ""
                        };
                    }
                    if section == "same" && l.starts_with("listen =") {
                        out.push_str(&format!("listen = \"127.0.0.1:{port}\"\n"));
                    } else {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
                *t = out;
            },
        ),
    ]
}

/// What a command did.
#[derive(Debug)]
enum Outcome {
    /// `run` printed a listening line for every configured listener.
    Started,
    /// It exited (code, stderr).
    Exited(Option<i32>, String),
    /// Neither within [`RUN_LIMIT`] (stdout, stderr so far).
    Hung(String, String),
}

impl Outcome {
    fn accepted(&self) -> Option<bool> {
        match self {
            Outcome::Started => Some(true),
            Outcome::Exited(code, _) => Some(*code == Some(0)),
            Outcome::Hung(..) => None,
        }
    }
}

/// Spawns `fedpin ARGS`, collecting stderr; stdout lines go to the channel.
fn spawn(
    args: &[&str],
    cfg: &Path,
) -> (
    std::process::Child,
    mpsc::Receiver<String>,
    mpsc::Receiver<String>,
) {
    let mut child = Command::new(FEDPIN)
        .args(["--log-format", "json"])
        .args(args)
        .arg(cfg)
        .env("FEDPIN_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (etx, err) = mpsc::channel();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = etx.send(s);
    });
    (child, lines, err)
}

/// `fedpin check-config`: (exit code, stdout, stderr), bounded.
fn check_config(cfg: &Path) -> (Option<i32>, String, String) {
    let (mut child, lines, err) = spawn(&["check-config", "--config"], cfg);
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check-config {} did not exit", cfg.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout: Vec<String> = lines.iter().collect();
    let stderr = err.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    (status.code(), stdout.join("\n"), stderr)
}

/// How many listeners a config names (sections `[outbound]`, `[inbound]`, `[admin]`).
fn listeners(cfg: &Path) -> usize {
    let v: toml::Table = std::fs::read_to_string(cfg).unwrap().parse().unwrap();
    ["outbound", "inbound", "admin"]
        .iter()
        .filter(|k| v.contains_key(**k))
        .count()
}

/// `fedpin run`, killed once it listens on everything or when it exits.
fn run(cfg: &Path) -> Outcome {
    let want = listeners(cfg);
    let (mut child, lines, err) = spawn(&["run", "--drain-secs", "0", "--config"], cfg);
    let deadline = Instant::now() + RUN_LIMIT;
    let mut seen = Vec::new();
    let outcome = loop {
        while let Ok(l) = lines.try_recv() {
            seen.push(l);
        }
        let listening = seen.iter().filter(|l| l.contains(" listening on ")).count();
        if listening >= want {
            break Outcome::Started;
        }
        if let Some(s) = child.try_wait().unwrap() {
            let stderr = err.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            return Outcome::Exited(s.code(), stderr);
        }
        if Instant::now() > deadline {
            break Outcome::Hung(seen.join("\n"), String::new());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    match outcome {
        Outcome::Hung(out, _) => Outcome::Hung(
            out,
            err.recv_timeout(Duration::from_secs(5)).unwrap_or_default(),
        ),
        o => o,
    }
}

#[test]
fn check_config_and_run_agree_on_every_config() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = (case.build)(dir.path());
        let (code, stdout, stderr) = check_config(&cfg);
        let ran = run(&cfg);
        let checked = code == Some(0);
        report.push(format!(
            "{:<70} check-config exit {:<4} run {}",
            case.name,
            code.map_or("-".into(), |c| c.to_string()),
            match &ran {
                Outcome::Started => "started".to_string(),
                Outcome::Exited(c, _) => format!("refused (exit {c:?})"),
                Outcome::Hung(..) => "neither started nor exited".to_string(),
            }
        ));
        let detail = format!(
            "{}\n--- check-config exit {code:?}\n{stdout}\n{stderr}\n--- run: {ran:?}\n--- config\n{}",
            case.name,
            std::fs::read_to_string(&cfg).unwrap_or_default()
        );
        if let Outcome::Hung(out, err) = &ran {
            failures.push(format!(
                "run neither started nor exited:\n{out}\n{err}\n{detail}"
            ));
        } else if ran.accepted() != Some(checked) {
            failures.push(format!("DISAGREE: {detail}"));
        } else if checked != case.accept {
            failures.push(format!("expected accept={}: {detail}", case.accept));
        } else if !checked {
            if code != Some(64) {
                failures.push(format!("check-config must exit 64: {detail}"));
            }
            for n in case.names {
                if !stderr.contains(n) {
                    failures.push(format!("check-config's errors do not name {n:?}: {detail}"));
                }
            }
            // run refuses with the same list, before binding anything.
            match &ran {
                Outcome::Exited(Some(64), run_err) if run_err.trim() == stderr.trim() => {}
                _ => failures.push(format!(
                    "run must exit 64 with check-config's errors: {detail}"
                )),
            }
        }
        // Let the directory go even if a case made something unreadable.
        let _ = std::fs::set_permissions(
            dir.path().join("tls/key.pem"),
            std::fs::Permissions::from_mode(0o600),
        );
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A reload goes through the same preparation: a broken file named by the
/// config is refused whole (the running rules stay); a change the daemon
/// cannot apply live is named key by key; edge rules apply at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_prepares_and_names_the_keys_that_need_a_restart() {
    use fedpin::daemon::{reload_config, Daemon, ReloadOutcome};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    material(d);
    let base = "pins = \"pins.toml\"\n\
        [outbound]\nlisten = \"127.0.0.1:0\"\nca_cert = \"ca/fedpin-ca.pem\"\nca_key = \"ca/fedpin-ca.key\"\n\
        [inbound]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\nupstream = \"http://127.0.0.1:9\"\n";
    let cfg = d.join("fedpin.toml");
    write(&cfg, base);
    let prepared = fedpin::prepare::Prepared::load(&cfg).unwrap();
    let daemon = Daemon::start_prepared(prepared).await.unwrap();

    // Only a live key changed.
    write(
        &cfg,
        &base.replace(
            "upstream =",
            "deny_origins = [\"spam.example\"]\nupstream =",
        ),
    );
    match reload_config(&daemon, &cfg) {
        ReloadOutcome::Applied { restart_needed } => {
            assert!(restart_needed.is_empty(), "{restart_needed:?}")
        }
        ReloadOutcome::Rejected(e) => panic!("{e}"),
    }

    // A new CA path and a new listen address: applied partly, both named.
    fedpin::tls::ca::init_ca(&d.join("ca2")).unwrap();
    write(
        &cfg,
        &base.replace("ca/fedpin-ca.", "ca2/fedpin-ca.").replace(
            "[outbound]\nlisten = \"127.0.0.1:0\"",
            "[outbound]\nlisten = \"127.0.0.1:1\"",
        ),
    );
    match reload_config(&daemon, &cfg) {
        ReloadOutcome::Applied { restart_needed } => assert_eq!(
            restart_needed,
            ["outbound.listen", "outbound.ca_cert", "outbound.ca_key"]
        ),
        ReloadOutcome::Rejected(e) => panic!("{e}"),
    }

    // The same config, but the certificate file it names is garbage: refused.
    write(&cfg, base);
    write(&d.join("tls/cert.pem"), "not a certificate\n");
    match reload_config(&daemon, &cfg) {
        ReloadOutcome::Rejected(e) => assert!(e.to_string().contains("inbound.cert"), "{e}"),
        other => panic!("a garbage certificate was accepted on reload: {other:?}"),
    }
    daemon.stop();
}

/// Issue 11: outbound egress rules and destination lists apply on reload
/// (they were silently ignored), without a restart and without being listed
/// as restart-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_outbound_egress_rules_live() {
    use fedpin::daemon::{reload_config, Daemon, ReloadOutcome};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    material(d);
    // Something to CONNECT to on loopback.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    tokio::spawn(async move { while target.accept().await.is_ok() {} });
    let config = |extra: &str| {
        format!(
            "pins = \"pins.toml\"\n[outbound]\nlisten = \"127.0.0.1:0\"\nca_cert = \"ca/fedpin-ca.pem\"\nca_key = \"ca/fedpin-ca.key\"\nresolve = {{ \"dest.fedpin.test\" = \"127.0.0.1\" }}\n{extra}\n"
        )
    };
    let cfg = d.join("fedpin.toml");
    write(&cfg, &config("allow_ips = [\"127.0.0.0/8\"]"));
    let daemon = Daemon::start_prepared(fedpin::prepare::Prepared::load(&cfg).unwrap())
        .await
        .unwrap();
    let (_, proxy) = daemon.outbound.clone().unwrap();
    let connect = || async move {
        let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let req = format!(
            "CONNECT dest.fedpin.test:{port} HTTP/1.1\r\nHost: dest.fedpin.test:{port}\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(connect().await.starts_with("HTTP/1.1 200"));

    let applied = |o: ReloadOutcome| match o {
        ReloadOutcome::Applied { restart_needed } => {
            assert!(restart_needed.is_empty(), "{restart_needed:?}")
        }
        ReloadOutcome::Rejected(e) => panic!("{e}"),
    };
    write(
        &cfg,
        &config("allow_ips = [\"127.0.0.0/8\"]\ndeny_destinations = [\"dest.fedpin.test\"]"),
    );
    applied(reload_config(&daemon, &cfg));
    let r = connect().await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("deny_destinations"),
        "{r}"
    );

    // allow_ips removed: loopback is refused by the default egress policy.
    write(&cfg, &config(""));
    applied(reload_config(&daemon, &cfg));
    let r = connect().await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("refusing to dial"),
        "{r}"
    );
    daemon.stop();
}
