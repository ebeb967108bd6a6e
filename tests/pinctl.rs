//! End-to-end tests of the `pinctl` binary (SPEC sections 3 and 6): the real
//! executable against real TLS servers on 127.0.0.1, minted per test, with
//! every pin file in its own temporary directory.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{intermediate, leaf, pem, pin, root, self_signed, serve, Ca};
use fedpin::pins::{Mode, Pin, PinSet, Trust};
use rustls::pki_types::CertificateDer;

/// A child process is killed after this long.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// What one `pinctl` run produced.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "{}", self.describe());
        self
    }

    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the real `pinctl` with `args`, feeding `stdin` (closed when `None`),
/// and kills it if it runs longer than [`CHILD_TIMEOUT`].
fn pinctl_blocking(args: &[String], stdin: Option<&[u8]>) -> Run {
    pinctl_blocking_env(args, stdin, &[])
}

/// [`pinctl_blocking`] with extra environment variables.
fn pinctl_blocking_env(args: &[String], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinctl"))
        .args(args)
        .env_remove("FEDPIN_PINS")
        .env_remove("PINCTL_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinctl");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.map(|s| s.to_vec());
    let writer = std::thread::spawn(move || {
        if let Some(d) = data {
            // The child may exit without reading: a broken pipe is fine.
            let _ = input.write_all(&d);
        }
        drop(input);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("wait for pinctl") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait for killed pinctl");
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let _ = writer.join();
    let run = Run {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    assert!(
        !timed_out,
        "pinctl {args:?} ran longer than {CHILD_TIMEOUT:?} and was killed\n{}",
        run.describe()
    );
    run
}

/// Runs `pinctl` off the async runtime, so the test's TLS servers keep serving.
async fn pinctl(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.map(|s| s.to_vec());
    tokio::task::spawn_blocking(move || pinctl_blocking(&args, stdin.as_deref()))
        .await
        .expect("pinctl runner panicked")
}

fn cert_pem(certs: &[&CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_ref()))
        .collect()
}

fn spki_pin(cert: &CertificateDer<'_>) -> String {
    fedpin::verify::spki_of_der(cert.as_ref())
        .expect("cert parses")
        .to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A temp directory holding the pin file path (not created) and a CA PEM.
struct Fixture {
    dir: tempfile::TempDir,
    pins: PathBuf,
    ca_pem: PathBuf,
    root: Ca,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = root("pinctl test root");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, cert_pem(&[&root.cert])).unwrap();
        Fixture {
            pins: dir.path().join("pins.toml"),
            dir,
            ca_pem,
            root,
        }
    }

    fn pins(&self) -> &str {
        s(&self.pins)
    }

    fn ca(&self) -> &str {
        s(&self.ca_pem)
    }

    fn load(&self) -> PinSet {
        PinSet::load(&self.pins)
            .unwrap_or_else(|e| panic!("pin file does not load: {e}\n{}", self.text()))
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.pins).unwrap_or_default()
    }

    /// Starts a server for "localhost" with a fresh leaf from the root CA.
    async fn genuine(&self) -> (std::net::SocketAddr, CertificateDer<'static>) {
        let l = leaf(&self.root, &["localhost"]);
        let addr = serve(vec![l.cert.clone()], l.key_der()).await;
        (addr, l.cert)
    }
}

/// `pinctl check` on a pin file `name`, written with `text` in the fixture's directory.
async fn check_file(fx: &Fixture, name: &str, text: &str) -> Run {
    let path = fx.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    pinctl(&["--pins", s(&path), "check"], None).await
}

fn a_pin(n: u8) -> String {
    Pin::of_spki(&[n, 0xA5, n]).to_string()
}

// ---------------------------------------------------------------- hash

#[tokio::test(flavor = "multi_thread")]
async fn hash_pem_with_two_certs_stdin_public_key_der() {
    let fx = Fixture::new();
    let l = leaf(&fx.root, &["localhost"]);
    let bundle = fx.dir.path().join("bundle.pem");
    std::fs::write(&bundle, cert_pem(&[&l.cert, &fx.root.cert])).unwrap();

    let run = pinctl(&["hash", s(&bundle)], None).await;
    run.expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.describe());
    assert!(
        lines[0].starts_with(&spki_pin(&l.cert)),
        "{}",
        run.describe()
    );
    assert!(lines[0].contains("localhost"), "{}", run.describe());
    assert!(
        lines[1].starts_with(&spki_pin(&fx.root.cert)),
        "{}",
        run.describe()
    );
    assert!(lines[1].contains("pinctl test root"), "{}", run.describe());
    assert_eq!(pin(&l.cert).to_string(), spki_pin(&l.cert));

    // `-` reads standard input.
    let text = cert_pem(&[&l.cert, &fx.root.cert]);
    let from_stdin = pinctl(&["hash", "-"], Some(text.as_bytes())).await;
    from_stdin.expect_code(0);
    assert_eq!(from_stdin.stdout, run.stdout, "{}", from_stdin.describe());

    // A PEM PUBLIC KEY (serialised by rcgen, not taken from the certificate).
    let pk = fx.dir.path().join("key.pub.pem");
    std::fs::write(&pk, l.key.public_key_pem()).unwrap();
    let run = pinctl(&["hash", s(&pk)], None).await;
    run.expect_code(0);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.describe());
    assert!(
        run.stdout.starts_with(&spki_pin(&l.cert)),
        "{}",
        run.describe()
    );

    // One DER certificate.
    let der = fx.dir.path().join("leaf.der");
    std::fs::write(&der, l.cert.as_ref()).unwrap();
    let run = pinctl(&["hash", s(&der)], None).await;
    run.expect_code(0);
    assert!(
        run.stdout.starts_with(&spki_pin(&l.cert)),
        "{}",
        run.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_rejects_garbage_private_keys_and_missing_files() {
    let fx = Fixture::new();
    let garbage = fx.dir.path().join("garbage.txt");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let run = pinctl(&["hash", s(&garbage)], None).await;
    run.expect_code(64);
    assert!(run.stdout.is_empty(), "{}", run.describe());
    assert!(
        run.stderr.contains("garbage.txt") && run.stderr.contains("no certificate or public key"),
        "{}",
        run.describe()
    );

    let run = pinctl(&["hash", "-"], Some(b"\x00\x01\x02 junk")).await;
    run.expect_code(64);
    assert!(
        run.stderr.contains("no certificate or public key"),
        "{}",
        run.describe()
    );

    // A private key is refused, never hashed or echoed.
    let l = leaf(&fx.root, &["localhost"]);
    let key = fx.dir.path().join("key.pem");
    std::fs::write(&key, l.key.serialize_pem()).unwrap();
    let run = pinctl(&["hash", s(&key)], None).await;
    run.expect_code(64);
    assert!(run.stderr.contains("PRIVATE KEY"), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());

    // A broken certificate block names the item.
    let broken = fx.dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        format!(
            "{}{}",
            cert_pem(&[&l.cert]),
            pem("CERTIFICATE", b"not der at all")
        ),
    )
    .unwrap();
    let run = pinctl(&["hash", s(&broken)], None).await;
    run.expect_code(64);
    assert!(run.stderr.contains("item 2"), "{}", run.describe());

    let missing = fx.dir.path().join("missing.pem");
    let run = pinctl(&["hash", s(&missing)], None).await;
    run.expect_code(64);
    assert!(
        run.stderr.contains("missing.pem") && run.stderr.contains("cannot read"),
        "{}",
        run.describe()
    );
}

// ---------------------------------------------------------------- add

#[tokio::test(flavor = "multi_thread")]
async fn add_connect_yes_pins_the_leaf_and_shows_the_chain() {
    let fx = Fixture::new();
    let (addr, leaf_cert) = fx.genuine().await;
    let name = format!("localhost:{}", addr.port());
    let connect = addr.to_string();
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            &name,
            "--connect",
            &connect,
            "--yes",
            "--roots",
            fx.ca(),
        ],
        None,
    )
    .await;
    run.expect_code(0);

    // The served chain, with subject, issuer, expiry and pin of each entry.
    let out = &run.stdout;
    for needle in [
        "subject:",
        "issuer:",
        "not after:",
        "CN=localhost",
        "CN=pinctl test root",
        &spki_pin(&leaf_cert),
        &spki_pin(&fx.root.cert),
        "Web PKI: valid",
    ] {
        assert!(
            out.contains(needle),
            "missing {needle:?}\n{}",
            run.describe()
        );
    }
    assert!(out.contains("added"), "{}", run.describe());
    assert!(out.contains("single pin"), "{}", run.describe());

    let set = fx.load();
    assert_eq!(set.len(), 1);
    let p = set.by_server_name(&name).expect("peer listed");
    assert_eq!(p.pins, vec![pin(&leaf_cert)]);
    assert_eq!(p.trust, Trust::Webpki);
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.hosts, vec!["localhost".to_string()]);
    assert!(set.lookup("localhost").is_some());
    assert!(
        p.note.as_deref().unwrap_or_default().contains("pinctl"),
        "{p:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn add_keeps_comments_of_an_existing_file() {
    let fx = Fixture::new();
    let other = a_pin(1);
    let original = format!(
        "# Pins for our federation -- reviewed by ops\nversion = 1\n\n[policy]\nunpinned = \"webpki\" # keep the default for now\non_expired = \"deny\"\n\n# hand-written entry\n[[peer]]\nserver_name = \"other.example\"\npins = [\"{other}\", \"{}\"] # two keys\n",
        a_pin(2)
    );
    std::fs::write(&fx.pins, &original).unwrap();
    let (addr, leaf_cert) = fx.genuine().await;
    let name = format!("localhost:{}", addr.port());
    let connect = addr.to_string();
    pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            &name,
            "--connect",
            &connect,
            "--yes",
            "--roots",
            fx.ca(),
        ],
        None,
    )
    .await
    .expect_code(0);
    let text = fx.text();
    for comment in [
        "# Pins for our federation -- reviewed by ops",
        "# keep the default for now",
        "# hand-written entry",
        "# two keys",
    ] {
        assert!(text.contains(comment), "lost {comment:?}:\n{text}");
    }
    assert!(
        text.starts_with(
            "# Pins for our federation -- reviewed by ops\nversion = 1\n\n[policy]\nunpinned = \"webpki\" # keep the default for now\n"
        ),
        "layout changed:\n{text}"
    );
    let set = fx.load();
    assert_eq!(set.len(), 2);
    assert_eq!(
        set.policy.on_expired,
        fedpin::pins::ExpiredPolicy::Deny,
        "{text}"
    );
    assert_eq!(
        set.by_server_name("other.example").unwrap().pins.len(),
        2,
        "{text}"
    );
    assert_eq!(
        set.by_server_name(&name).unwrap().pins,
        vec![pin(&leaf_cert)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn add_with_pin_and_from_cert() {
    let fx = Fixture::new();
    let (p1, p2) = (a_pin(1), a_pin(2));
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "a.example",
            "--pin",
            &p1,
            "--pin",
            &p2,
            "--mode",
            "report",
            "--expires",
            "2031-02-03",
            "--note",
            "from the ops ticket",
        ],
        None,
    )
    .await;
    run.expect_code(0);
    assert!(!run.stdout.contains("single pin"), "{}", run.describe());
    let set = fx.load();
    let a = set.by_server_name("a.example").unwrap();
    assert_eq!(
        a.pins,
        vec![p1.parse::<Pin>().unwrap(), p2.parse().unwrap()]
    );
    assert_eq!(a.mode, Mode::Report);
    assert_eq!(a.note.as_deref(), Some("from the ops ticket"));
    assert_eq!(
        a.expires.unwrap(),
        time::macros::datetime!(2031-02-03 00:00 UTC)
    );

    // Adding to an existing peer extends its pins (no duplicate entry).
    let p3 = a_pin(3);
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "A.example",
            "--pin",
            &p3,
            "--pin",
            &p1,
        ],
        None,
    )
    .await;
    run.expect_code(0);
    assert!(run.stdout.contains("already listed"), "{}", run.describe());
    let set = fx.load();
    assert_eq!(set.len(), 1);
    assert_eq!(set.by_server_name("a.example").unwrap().pins.len(), 3);

    // --from-cert: the first certificate (or public key) of each PEM file.
    let l = leaf(&fx.root, &["b.example"]);
    let bundle = fx.dir.path().join("b.pem");
    std::fs::write(&bundle, cert_pem(&[&l.cert, &fx.root.cert])).unwrap();
    let pubkey = fx.dir.path().join("next.pub.pem");
    let next = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&pubkey, next.public_key_pem()).unwrap();
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "b.example:8448",
            "--from-cert",
            s(&bundle),
            "--from-cert",
            s(&pubkey),
            "--trust",
            "webpki",
        ],
        None,
    )
    .await;
    run.expect_code(0);
    let set = fx.load();
    let b = set.by_server_name("b.example:8448").unwrap();
    assert_eq!(b.pins.len(), 2, "{:?}", b.pins);
    assert_eq!(b.pins[0], pin(&l.cert));
    assert_eq!(
        b.pins[1],
        Pin::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&next))
    );
    assert_eq!(b.hosts, vec!["b.example".to_string()]);

    // Bad input is refused and nothing is written.
    let before = fx.text();
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "c.example",
            "--pin",
            "sha256/nope",
        ],
        None,
    )
    .await;
    assert_ne!(run.code, Some(0), "{}", run.describe());
    assert!(run.stderr.contains("sha256/nope"), "{}", run.describe());
    let garbage = fx.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "nothing here").unwrap();
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "c.example",
            "--from-cert",
            s(&garbage),
        ],
        None,
    )
    .await;
    run.expect_code(64);
    assert!(run.stderr.contains("garbage.pem"), "{}", run.describe());
    // A host clash with an existing peer is not written either.
    let run = pinctl(
        &["--pins", fx.pins(), "add", "b.example", "--pin", &p1],
        None,
    )
    .await;
    run.expect_code(64);
    assert!(run.stderr.contains("b.example"), "{}", run.describe());
    assert_eq!(fx.text(), before, "a refused add changed the file");
}

/// `--from-cert` with a full chain (leaf, intermediate, root; what
/// `fullchain.pem` holds) pins the leaf only, as `--yes` does for a live
/// chain, and says per certificate what was and was not pinned; the others
/// are pinned only on the explicit `--from-cert-all`.
#[tokio::test(flavor = "multi_thread")]
async fn add_from_cert_with_a_full_chain_pins_only_the_leaf() {
    let fx = Fixture::new();
    let inter = intermediate(&fx.root, "pinctl issuing CA");
    let l = leaf(&inter, &["d.example"]);
    let chain = fx.dir.path().join("fullchain.pem");
    std::fs::write(&chain, cert_pem(&[&l.cert, &inter.cert, &fx.root.cert])).unwrap();

    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "d.example",
            "--from-cert",
            s(&chain),
        ],
        None,
    )
    .await;
    run.expect_code(0);
    let set = fx.load();
    let d = set.by_server_name("d.example").unwrap();
    assert_eq!(
        d.pins,
        vec![pin(&l.cert)],
        "only the leaf is pinned\n{}",
        run.describe()
    );
    // Each certificate is shown with its subject and pin, marked.
    let line_of = |p: &str| {
        run.stdout
            .lines()
            .find(|line| line.contains(p))
            .unwrap_or_else(|| panic!("{p} is not shown\n{}", run.describe()))
            .to_string()
    };
    let leaf_line = line_of(&spki_pin(&l.cert));
    assert!(
        leaf_line.contains("pinned") && !leaf_line.contains("not pinned"),
        "{leaf_line}"
    );
    for (cert, cn) in [
        (&inter.cert, "pinctl issuing CA"),
        (&fx.root.cert, "pinctl test root"),
    ] {
        let line = line_of(&spki_pin(cert));
        assert!(line.contains("not pinned"), "{line}");
        assert!(run.stdout.contains(cn), "{}", run.describe());
    }
    assert!(run.stdout.contains("--from-cert-all"), "{}", run.describe());

    // The explicit choice pins every certificate of the file.
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "e.example",
            "--from-cert",
            s(&chain),
            "--from-cert-all",
        ],
        None,
    )
    .await;
    run.expect_code(0);
    let set = fx.load();
    assert_eq!(
        set.by_server_name("e.example").unwrap().pins,
        vec![pin(&l.cert), pin(&inter.cert), pin(&fx.root.cert)],
        "{}",
        run.describe()
    );
    assert!(!run.stdout.contains("not pinned"), "{}", run.describe());
}

#[tokio::test(flavor = "multi_thread")]
async fn add_self_signed_needs_pin_only() {
    let fx = Fixture::new();
    let ss = self_signed(&["localhost"]);
    let addr = serve(vec![ss.cert.clone()], ss.key_der()).await;
    let name = format!("localhost:{}", addr.port());
    let connect = addr.to_string();

    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            &name,
            "--connect",
            &connect,
            "--yes",
            "--roots",
            fx.ca(),
        ],
        None,
    )
    .await;
    run.expect_code(64);
    assert!(run.stderr.contains("pin-only"), "{}", run.describe());
    assert!(run.stdout.contains("NOT valid"), "{}", run.describe());
    assert!(
        !fx.pins.exists(),
        "a refused add wrote the file:\n{}",
        fx.text()
    );

    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            &name,
            "--connect",
            &connect,
            "--yes",
            "--trust",
            "pin-only",
        ],
        None,
    )
    .await;
    run.expect_code(0);
    let set = fx.load();
    let p = set.by_server_name(&name).unwrap();
    assert_eq!(p.trust, Trust::PinOnly);
    assert_eq!(p.pins, vec![pin(&ss.cert)]);

    // The pin just written passes a live check.
    let run = pinctl(
        &["--pins", fx.pins(), "verify", &name, "--connect", &connect],
        None,
    )
    .await;
    run.expect_code(0);
    assert!(run.stdout.contains("OK"), "{}", run.describe());
}

#[tokio::test(flavor = "multi_thread")]
async fn add_interactive_choice_pins_the_intermediate() {
    let fx = Fixture::new();
    let inter = intermediate(&fx.root, "pinctl test intermediate");
    let l = leaf(&inter, &["localhost"]);
    let addr = serve(vec![l.cert.clone(), inter.cert.clone()], l.key_der()).await;
    let name = format!("localhost:{}", addr.port());
    let connect = addr.to_string();
    let args = [
        "--pins",
        fx.pins(),
        "add",
        &name,
        "--connect",
        &connect,
        "--roots",
        fx.ca(),
    ];

    // No answer (stdin closed) and no --yes: a usage error, nothing written.
    let run = pinctl(&args, Some(b"")).await;
    run.expect_code(2);
    assert!(run.stderr.contains("--yes"), "{}", run.describe());
    assert!(!fx.pins.exists());

    // Out of range: refused.
    let run = pinctl(&args, Some(b"7\n")).await;
    run.expect_code(2);
    assert!(!fx.pins.exists());

    let run = pinctl(&args, Some(b"2\n")).await;
    run.expect_code(0);
    assert!(run.stdout.contains("Pin which"), "{}", run.describe());
    for needle in [
        "[1] leaf",
        "[2] intermediate",
        "CN=pinctl test intermediate",
        &spki_pin(&l.cert),
        &spki_pin(&inter.cert),
    ] {
        assert!(
            run.stdout.contains(needle),
            "missing {needle:?}\n{}",
            run.describe()
        );
    }
    let set = fx.load();
    let p = set.by_server_name(&name).unwrap();
    assert_eq!(p.pins, vec![pin(&inter.cert)], "{}", fx.text());

    // The intermediate pin survives a leaf rotation under the same intermediate.
    let l2 = leaf(&inter, &["localhost"]);
    let addr2 = serve(vec![l2.cert.clone(), inter.cert.clone()], l2.key_der()).await;
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "verify",
            &name,
            "--connect",
            &addr2.to_string(),
            "--roots",
            fx.ca(),
        ],
        None,
    )
    .await;
    run.expect_code(0);

    // Several choices, including the trust anchor that was not sent.
    let second = fx.dir.path().join("second.toml");
    let run = pinctl(
        &[
            "--pins",
            s(&second),
            "add",
            &name,
            "--connect",
            &connect,
            "--roots",
            fx.ca(),
        ],
        Some(b"1, 3\n"),
    )
    .await;
    run.expect_code(0);
    assert!(run.stdout.contains("trust anchor"), "{}", run.describe());
    let set = PinSet::load(&second).unwrap();
    assert_eq!(
        set.by_server_name(&name).unwrap().pins,
        vec![pin(&l.cert), pin(&fx.root.cert)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn add_refuses_a_sent_certificate_that_is_not_on_the_validated_path() {
    let fx = Fixture::new();
    let l = leaf(&fx.root, &["localhost"]);
    // An unrelated CA certificate rides along; the leaf chains to the root directly.
    let stray = root("stray ca");
    let addr = serve(vec![l.cert.clone(), stray.cert.clone()], l.key_der()).await;
    let name = format!("localhost:{}", addr.port());
    let connect = addr.to_string();
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            &name,
            "--connect",
            &connect,
            "--roots",
            fx.ca(),
        ],
        Some(b"2\n"),
    )
    .await;
    run.expect_code(2);
    assert!(
        run.stdout.contains("[2] sent, not on the validated path"),
        "{}",
        run.describe()
    );
    assert!(run.stderr.contains("never match"), "{}", run.describe());
    assert!(!fx.pins.exists(), "{}", fx.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn pins_option_after_the_subcommand_and_from_the_environment() {
    let fx = Fixture::new();
    let p1 = a_pin(1);
    // The global --pins after the subcommand (and next to add's own --pin).
    pinctl(
        &["add", "a.example", "--pin", &p1, "--pins", fx.pins()],
        None,
    )
    .await
    .expect_code(0);
    assert_eq!(fx.load().len(), 1);
    let args = vec!["list".to_string(), "--json".to_string()];
    let pins = fx.pins().to_string();
    let run = tokio::task::spawn_blocking(move || {
        pinctl_blocking_env(&args, None, &[("FEDPIN_PINS", pins.as_str())])
    })
    .await
    .unwrap();
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["peers"][0]["server_name"], "a.example", "{v}");
}

// ---------------------------------------------------------------- verify

#[tokio::test(flavor = "multi_thread")]
async fn verify_genuine_ok_impostor_mismatch_and_json() {
    let fx = Fixture::new();
    let (addr, _) = fx.genuine().await;
    let name = format!("localhost:{}", addr.port());
    let connect = addr.to_string();
    pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            &name,
            "--connect",
            &connect,
            "--yes",
            "--roots",
            fx.ca(),
        ],
        None,
    )
    .await
    .expect_code(0);

    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "verify",
            &name,
            "--connect",
            &connect,
            "--roots",
            fx.ca(),
        ],
        None,
    )
    .await;
    run.expect_code(0);
    assert!(run.stdout.contains("OK"), "{}", run.describe());
    assert!(run.stdout.contains(&name), "{}", run.describe());

    // A CA-valid impostor: another leaf for the same name from the same CA.
    let (impostor, _) = fx.genuine().await;
    let imp = impostor.to_string();
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "verify",
            &name,
            "--connect",
            &imp,
            "--roots",
            fx.ca(),
        ],
        None,
    )
    .await;
    run.expect_code(1);
    assert!(run.stdout.contains("MISMATCH"), "{}", run.describe());
    assert!(!run.stdout.contains("OK "), "{}", run.describe());

    // JSON, both ways.
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "verify",
            &name,
            "--connect",
            &connect,
            "--roots",
            fx.ca(),
            "--json",
        ],
        None,
    )
    .await;
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e})\n{}", run.describe()));
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["status"], "ok", "{v}");
    assert_eq!(arr[0]["server_name"], name.as_str(), "{v}");
    assert!(arr[0]["cert_days_left"].as_i64().unwrap() > 0, "{v}");
    assert!(arr[0].get("pins_days_left").is_some(), "{v}");

    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "verify",
            &name,
            "--connect",
            &imp,
            "--roots",
            fx.ca(),
            "--json",
        ],
        None,
    )
    .await;
    run.expect_code(1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e})\n{}", run.describe()));
    assert_eq!(v[0]["status"], "mismatch", "{v}");
    assert!(
        !v[0]["detail"].as_str().unwrap_or_default().is_empty(),
        "{v}"
    );

    // Without the CA the genuine peer does not validate: not OK either.
    let run = pinctl(
        &["--pins", fx.pins(), "verify", &name, "--connect", &connect],
        None,
    )
    .await;
    run.expect_code(1);
    assert!(!run.stdout.contains("OK "), "{}", run.describe());

    // A dead port is an error, not a pass.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "verify",
            &name,
            "--connect",
            &dead.to_string(),
            "--roots",
            fx.ca(),
            "--timeout",
            "5",
        ],
        None,
    )
    .await;
    run.expect_code(1);
    assert!(run.stdout.contains("ERROR"), "{}", run.describe());

    // An unknown server name.
    let run = pinctl(&["--pins", fx.pins(), "verify", "nobody.example"], None).await;
    run.expect_code(1);
    assert!(run.stderr.contains("nobody.example"), "{}", run.describe());
}

// ---------------------------------------------------------------- remove, list

#[tokio::test(flavor = "multi_thread")]
async fn remove_and_list() {
    let fx = Fixture::new();
    let run = pinctl(&["--pins", fx.pins(), "list"], None).await;
    run.expect_code(64);
    assert!(run.stderr.contains("pins.toml"), "{}", run.describe());

    let (p1, p2, p3) = (a_pin(1), a_pin(2), a_pin(3));
    pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "a.example",
            "--pin",
            &p1,
            "--pin",
            &p2,
        ],
        None,
    )
    .await
    .expect_code(0);
    pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            "b.example:8448",
            "--pin",
            &p3,
            "--trust",
            "pin-only",
            "--expires",
            "2030-01-01T00:00:00Z",
        ],
        None,
    )
    .await
    .expect_code(0);

    let run = pinctl(&["--pins", fx.pins(), "list"], None).await;
    run.expect_code(0);
    for needle in [
        "a.example",
        "b.example:8448",
        &p1,
        &p2,
        &p3,
        "trust=pin-only",
        "mode=enforce",
        "expires=2030-01-01T00:00:00Z",
    ] {
        assert!(
            run.stdout.contains(needle),
            "missing {needle:?}\n{}",
            run.describe()
        );
    }

    let run = pinctl(&["--pins", fx.pins(), "list", "--json"], None).await;
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e})\n{}", run.describe()));
    assert_eq!(v["policy"]["unpinned"], "webpki", "{v}");
    let peers = v["peers"].as_array().expect("peers array");
    assert_eq!(peers.len(), 2, "{v}");
    assert_eq!(peers[0]["server_name"], "a.example");
    assert_eq!(peers[0]["pins"], serde_json::json!([p1, p2]));
    assert_eq!(peers[0]["hosts"], serde_json::json!(["a.example"]));
    assert_eq!(peers[1]["server_name"], "b.example:8448");
    assert_eq!(peers[1]["hosts"], serde_json::json!(["b.example"]));
    assert_eq!(peers[1]["trust"], "pin-only");
    assert_eq!(peers[1]["mode"], "enforce");
    assert_eq!(peers[1]["expires"], "2030-01-01T00:00:00Z");

    let run = pinctl(&["--pins", fx.pins(), "remove", "A.EXAMPLE"], None).await;
    run.expect_code(0);
    let set = fx.load();
    assert_eq!(set.len(), 1);
    assert!(set.by_server_name("a.example").is_none());
    assert!(set.by_server_name("b.example:8448").is_some());

    let before = fx.text();
    let run = pinctl(&["--pins", fx.pins(), "remove", "a.example"], None).await;
    run.expect_code(1);
    assert!(run.stderr.contains("a.example"), "{}", run.describe());
    assert_eq!(fx.text(), before);

    pinctl(&["--pins", fx.pins(), "remove", "b.example:8448"], None)
        .await
        .expect_code(0);
    let run = pinctl(&["--pins", fx.pins(), "list"], None).await;
    run.expect_code(0);
    assert!(run.stdout.contains("no peers"), "{}", run.describe());
    let run = pinctl(&["--pins", fx.pins(), "list", "--json"], None).await;
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["peers"], serde_json::json!([]));
}

// ---------------------------------------------------------------- check

#[tokio::test(flavor = "multi_thread")]
async fn check_valid_warns_on_single_pin_and_broken_names_the_line() {
    let fx = Fixture::new();
    let p1 = a_pin(1);
    pinctl(
        &["--pins", fx.pins(), "add", "a.example", "--pin", &p1],
        None,
    )
    .await
    .expect_code(0);
    let run = pinctl(&["--pins", fx.pins(), "check"], None).await;
    run.expect_code(0);
    assert!(run.stdout.contains("warning"), "{}", run.describe());
    assert!(run.stdout.contains("single pin"), "{}", run.describe());
    assert!(run.stdout.contains("a.example"), "{}", run.describe());

    // Two pins: no warning.
    let p2 = a_pin(2);
    pinctl(
        &["--pins", fx.pins(), "add", "a.example", "--pin", &p2],
        None,
    )
    .await
    .expect_code(0);
    let run = pinctl(&["--pins", fx.pins(), "check"], None).await;
    run.expect_code(0);
    assert!(run.stdout.contains("0 warning"), "{}", run.describe());

    // Broken: a malformed pin on line 5.
    let run = check_file(
        &fx,
        "broken.toml",
        &format!(
            "version = 1\n\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{p1}\", \"sha256/short\"]\n"
        ),
    )
    .await;
    run.expect_code(1);
    assert!(run.all().contains("line 5"), "{}", run.describe());
    assert!(run.all().contains("sha256/short"), "{}", run.describe());

    // Broken: an unknown key on line 6, and a host listed under two peers.
    let run = check_file(
        &fx,
        "broken2.toml",
        &format!(
            "version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{p1}\", \"{p2}\"]\n[[peer]]\nsrever_name = \"b.example\"\n"
        ),
    )
    .await;
    run.expect_code(1);
    assert!(run.all().contains("line 6"), "{}", run.describe());

    let run = check_file(
        &fx,
        "dup.toml",
        &format!(
            "version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{p1}\", \"{p2}\"]\n\n[[peer]]\nserver_name = \"b.example\"\nhosts = [\"a.example\"]\npins = [\"{p1}\", \"{p2}\"]\n"
        ),
    )
    .await;
    run.expect_code(1);
    assert!(run.all().contains("line 8"), "{}", run.describe());
    assert!(run.all().contains("line 3"), "{}", run.describe());

    // A missing file is an error, not an empty pass.
    let run = pinctl(
        &["--pins", s(&fx.dir.path().join("nope.toml")), "check"],
        None,
    )
    .await;
    assert_ne!(run.code, Some(0), "{}", run.describe());
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_example_pin_file_passes_check() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("pins/pins.toml");
    if !example.exists() {
        eprintln!("skipping: {} does not exist yet", example.display());
        return;
    }
    let run = pinctl(&["--pins", s(&example), "check"], None).await;
    run.expect_code(0);
    assert!(run.stdout.contains("ok"), "{}", run.describe());
}

// ---------------------------------------------------------------- usage

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2() {
    let fx = Fixture::new();
    let p1 = a_pin(1);
    std::fs::write(
        &fx.pins,
        format!("version = 1\n[[peer]]\nserver_name = \"localhost\"\npins = [\"{p1}\"]\n"),
    )
    .unwrap();
    let before = fx.text();
    let cases: Vec<Vec<&str>> = vec![
        vec!["frobnicate"],
        vec![],
        vec!["hash"],
        vec!["--pins", fx.pins(), "list", "--bogus"],
        vec![
            "--pins",
            fx.pins(),
            "add",
            "localhost",
            "--connect",
            "nope",
            "--yes",
        ],
        vec![
            "--pins",
            fx.pins(),
            "add",
            "localhost",
            "--connect",
            "127.0.0.1:0",
            "--yes",
        ],
        vec![
            "--pins",
            fx.pins(),
            "add",
            "localhost",
            "--connect",
            "127.0.0.1:http",
            "--yes",
        ],
        vec![
            "--pins",
            fx.pins(),
            "add",
            "localhost",
            "--connect",
            ":8448",
            "--yes",
        ],
        vec![
            "--pins",
            fx.pins(),
            "add",
            "x.example",
            "--pin",
            &p1,
            "--trust",
            "sometimes",
        ],
        vec![
            "--pins",
            fx.pins(),
            "add",
            "x.example",
            "--pin",
            &p1,
            "--mode",
            "loud",
        ],
        vec![
            "--pins",
            fx.pins(),
            "add",
            "x.example",
            "--pin",
            &p1,
            "--expires",
            "soon",
        ],
        vec!["--pins", fx.pins(), "add", "x.example", "--pin", "md5/abc"],
        vec!["--pins", fx.pins(), "add", "bad name!", "--pin", &p1],
        vec!["--pins", fx.pins(), "verify", "--connect", "127.0.0.1:1"],
        vec!["--pins", fx.pins(), "verify", "--timeout", "x"],
    ];
    for args in cases {
        let run = pinctl(&args, None).await;
        assert_eq!(run.code, Some(2), "pinctl {args:?}\n{}", run.describe());
        assert!(!run.stderr.trim().is_empty(), "pinctl {args:?}: no message");
    }
    assert_eq!(fx.text(), before, "a usage error changed the pin file");
}

// ---------------------------------------------------------------- concurrency

#[test]
fn concurrent_adds_all_land() {
    let fx = Fixture::new();
    const PAIRS: usize = 8;
    let runs: Vec<(String, Run)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..PAIRS * 2)
            .map(|i| {
                let name = format!("peer{i}.example");
                let pins = fx.pins().to_string();
                let (pa, pb) = (a_pin(i as u8), a_pin(100 + i as u8));
                scope.spawn(move || {
                    let args: Vec<String> =
                        ["--pins", &pins, "add", &name, "--pin", &pa, "--pin", &pb]
                            .iter()
                            .map(|s| s.to_string())
                            .collect();
                    (name, pinctl_blocking(&args, None))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (name, run) in &runs {
        assert_eq!(run.code, Some(0), "add {name}\n{}", run.describe());
    }
    let set = fx.load();
    assert_eq!(set.len(), PAIRS * 2, "{}", fx.text());
    for i in 0..PAIRS * 2 {
        let p = set
            .by_server_name(&format!("peer{i}.example"))
            .unwrap_or_else(|| panic!("peer{i}.example lost:\n{}", fx.text()));
        assert_eq!(p.pins.len(), 2);
        assert_eq!(p.pins[0].to_string(), a_pin(i as u8));
    }
    // Atomic writes leave no temporary files behind.
    let debris: Vec<String> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(debris.is_empty(), "temporary files left: {debris:?}");
    let run = pinctl_blocking(&["--pins".into(), fx.pins().into(), "check".into()], None);
    run.expect_code(0);
}

/// A report-mode peer whose served key matches no pin is a MISMATCH for
/// `pinctl verify` (exit 1), even though fedpin lets it through on Web PKI.
#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_a_report_mode_mismatch() {
    let fx = Fixture::new();
    let (addr, _) = fx.genuine().await;
    let name = format!("localhost:{}", addr.port());
    let connect = addr.to_string();
    pinctl(
        &[
            "--pins",
            fx.pins(),
            "add",
            &name,
            "--pin",
            &a_pin(7),
            "--mode",
            "report",
        ],
        None,
    )
    .await
    .expect_code(0);
    let run = pinctl(
        &[
            "--pins",
            fx.pins(),
            "verify",
            &name,
            "--connect",
            &connect,
            "--roots",
            fx.ca(),
        ],
        None,
    )
    .await;
    run.expect_code(1);
    assert!(run.stdout.contains("MISMATCH"), "{}", run.describe());
    assert!(run.stdout.contains("report"), "{}", run.describe());
}

/// Invariant 10 through `pinctl verify`: a peer whose pins have expired
/// (`on_expired = "webpki"`) is still compared. The genuine key is OK; a
/// CA-valid impostor is a MISMATCH with exit 1, in enforce and report mode.
#[tokio::test(flavor = "multi_thread")]
async fn verify_compares_expired_pins_and_reports_an_impostor() {
    let fx = Fixture::new();
    let (genuine, cert) = fx.genuine().await;
    let (impostor, _) = fx.genuine().await;
    let name = format!("localhost:{}", genuine.port());
    for mode in ["enforce", "report"] {
        std::fs::write(
            &fx.pins,
            format!(
                "version = 1\n[policy]\non_expired = \"webpki\"\n\n[[peer]]\nserver_name = \"{name}\"\npins = [\"{}\", \"{}\"]\nmode = \"{mode}\"\nexpires = \"2020-01-01T00:00:00Z\"\n",
                spki_pin(&cert),
                a_pin(9)
            ),
        )
        .unwrap();
        let verify = |addr: std::net::SocketAddr| {
            let connect = addr.to_string();
            let name = name.clone();
            let pins = fx.pins().to_string();
            let ca = fx.ca().to_string();
            async move {
                pinctl(
                    &[
                        "--pins",
                        &pins,
                        "verify",
                        &name,
                        "--connect",
                        &connect,
                        "--roots",
                        &ca,
                    ],
                    None,
                )
                .await
            }
        };
        let run = verify(genuine).await;
        run.expect_code(0);
        assert!(run.stdout.starts_with("OK"), "{mode}: {}", run.describe());
        let run = verify(impostor).await;
        run.expect_code(1);
        assert!(
            run.stdout.starts_with("MISMATCH"),
            "{mode}: {}",
            run.describe()
        );
    }
}

/// One convention for a pin file that does not parse: it is bad input for
/// `list` and `verify` (message on stderr, exit 64, nothing on stdout);
/// `check` is the linter, so its findings go to stdout with exit 1. A file
/// that cannot be read at all is bad input for every command, `check` too.
#[tokio::test(flavor = "multi_thread")]
async fn broken_pin_file_is_bad_input_for_list_and_verify_and_a_finding_for_check() {
    let fx = Fixture::new();
    std::fs::write(
        &fx.pins,
        "version = 1\n\n[[peer]]\nserver_name = \"a.example\"\npins = [\"sha256/short\"]\n",
    )
    .unwrap();
    for args in [
        vec!["--pins", fx.pins(), "list"],
        vec!["--pins", fx.pins(), "list", "--json"],
        vec!["--pins", fx.pins(), "verify"],
        vec!["--pins", fx.pins(), "verify", "a.example"],
    ] {
        let run = pinctl(&args, None).await;
        run.expect_code(64);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.describe());
        assert!(
            run.stderr.contains("line 5") && run.stderr.contains("sha256/short"),
            "{args:?}: {}",
            run.describe()
        );
    }
    let run = pinctl(&["--pins", fx.pins(), "check"], None).await;
    run.expect_code(1);
    assert!(run.stderr.is_empty(), "{}", run.describe());
    assert!(
        run.stdout.contains("error") && run.stdout.contains("line 5"),
        "{}",
        run.describe()
    );

    let missing = fx.dir.path().join("missing.toml");
    for cmd in ["check", "list", "verify"] {
        let run = pinctl(&["--pins", s(&missing), cmd], None).await;
        run.expect_code(64);
        assert!(run.stdout.is_empty(), "{cmd}: {}", run.describe());
        assert!(
            run.stderr.contains("missing.toml"),
            "{cmd}: {}",
            run.describe()
        );
    }

    // The convention is in the help text.
    let run = pinctl(&["--help"], None).await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("64") && run.stdout.contains("stderr"),
        "{}",
        run.describe()
    );
}
