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

    /// Asserts of each of `needles` that `text` (standard `stream`) holds
    /// it (`want`) or not.
    #[track_caller]
    fn holds(&self, stream: &str, text: &str, needles: &[&str], want: bool) -> &Self {
        for needle in needles {
            let verb = if want { "lacks" } else { "has" };
            let msg = format!("std{stream} {verb} {needle:?}\n{}", self.describe());
            assert_eq!(text.contains(needle), want, "{msg}");
        }
        self
    }

    #[track_caller]
    fn stdout_has(&self, needles: &[&str]) -> &Self {
        self.holds("out", &self.stdout, needles, true)
    }

    #[track_caller]
    fn stdout_lacks(&self, needles: &[&str]) -> &Self {
        self.holds("out", &self.stdout, needles, false)
    }

    #[track_caller]
    fn stderr_has(&self, needles: &[&str]) -> &Self {
        self.holds("err", &self.stderr, needles, true)
    }

    /// Asserts that standard output is empty.
    #[track_caller]
    fn no_stdout(&self) -> &Self {
        assert!(self.stdout.is_empty(), "{}", self.describe());
        self
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e})\n{}", self.describe()))
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

    /// `pinctl --pins <the fixture's pin file>` with the words of `cmd`
    /// (split at white space), standard input closed.
    async fn run(&self, cmd: &str) -> Run {
        self.run_fed(cmd, &[], None).await
    }

    /// [`Fixture::run`] with `tail` after the words of `cmd`, as they are
    /// (paths, arguments with spaces), feeding `stdin`.
    async fn run_fed(&self, cmd: &str, tail: &[&str], stdin: Option<&[u8]>) -> Run {
        pinctl(&argv(self.pins(), cmd, tail), stdin).await
    }

    /// `add NAME --connect ADDR --yes --roots <the fixture's CA>`.
    async fn add_live(&self, name: &str, connect: &str) -> Run {
        let cmd = format!("add {name} --connect {connect} --yes --roots");
        self.run_fed(&cmd, &[self.ca()], None).await
    }

    /// `verify NAME --connect ADDR`, then `extra`, then `--roots <the fixture's CA>`.
    async fn verify(&self, name: &str, connect: &str, extra: &str) -> Run {
        let cmd = format!("verify {name} --connect {connect} {extra} --roots");
        self.run_fed(&cmd, &[self.ca()], None).await
    }
}

/// `--pins PINS`, the words of `cmd` (split at white space), then `tail`
/// as it is (paths, arguments with spaces).
fn argv<'a>(pins: &'a str, cmd: &'a str, tail: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--pins", pins];
    args.extend(cmd.split_whitespace());
    args.extend_from_slice(tail);
    args
}

/// The server name `localhost:PORT` and the `--connect` address of `addr`.
fn target(addr: std::net::SocketAddr) -> (String, String) {
    (format!("localhost:{}", addr.port()), addr.to_string())
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
    for (line, cert, name) in [
        (lines[0], &l.cert, "localhost"),
        (lines[1], &fx.root.cert, "pinctl test root"),
    ] {
        assert!(line.starts_with(&spki_pin(cert)), "{}", run.describe());
        assert!(line.contains(name), "{}", run.describe());
    }
    assert_eq!(pin(&l.cert).to_string(), spki_pin(&l.cert));

    // `-` reads standard input.
    let text = cert_pem(&[&l.cert, &fx.root.cert]);
    let from_stdin = pinctl(&["hash", "-"], Some(text.as_bytes())).await;
    from_stdin.expect_code(0);
    assert_eq!(from_stdin.stdout, run.stdout, "{}", from_stdin.describe());

    // A PEM PUBLIC KEY (serialised by rcgen, not taken from the certificate),
    // then one DER certificate: one line each, the leaf's pin.
    let pk = fx.dir.path().join("key.pub.pem");
    std::fs::write(&pk, l.key.public_key_pem()).unwrap();
    let der = fx.dir.path().join("leaf.der");
    std::fs::write(&der, l.cert.as_ref()).unwrap();
    for file in [&pk, &der] {
        let run = pinctl(&["hash", s(file)], None).await;
        run.expect_code(0);
        assert_eq!(run.stdout.lines().count(), 1, "{}", run.describe());
        let leaf_pin = spki_pin(&l.cert);
        assert!(run.stdout.starts_with(&leaf_pin), "{}", run.describe());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_rejects_garbage_private_keys_and_missing_files() {
    let fx = Fixture::new();
    let garbage = fx.dir.path().join("garbage.txt");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let not_cert = "no certificate or public key";
    let run = pinctl(&["hash", s(&garbage)], None).await;
    run.expect_code(64)
        .no_stdout()
        .stderr_has(&["garbage.txt", not_cert]);

    let run = pinctl(&["hash", "-"], Some(b"\x00\x01\x02 junk")).await;
    run.expect_code(64).stderr_has(&[not_cert]);

    // A private key is refused, never hashed or echoed.
    let l = leaf(&fx.root, &["localhost"]);
    let key = fx.dir.path().join("key.pem");
    std::fs::write(&key, l.key.serialize_pem()).unwrap();
    let run = pinctl(&["hash", s(&key)], None).await;
    run.expect_code(64).stderr_has(&["PRIVATE KEY"]).no_stdout();

    // A broken certificate block names the item.
    let broken = fx.dir.path().join("broken.pem");
    let text = cert_pem(&[&l.cert]) + &pem("CERTIFICATE", b"not der at all");
    std::fs::write(&broken, text).unwrap();
    let run = pinctl(&["hash", s(&broken)], None).await;
    run.expect_code(64).stderr_has(&["item 2"]);

    let missing = fx.dir.path().join("missing.pem");
    let run = pinctl(&["hash", s(&missing)], None).await;
    run.expect_code(64)
        .stderr_has(&["missing.pem", "cannot read"]);
}

// ---------------------------------------------------------------- add

#[tokio::test(flavor = "multi_thread")]
async fn add_connect_yes_pins_the_leaf_and_shows_the_chain() {
    let fx = Fixture::new();
    let (addr, leaf_cert) = fx.genuine().await;
    let (name, connect) = target(addr);
    let run = fx.add_live(&name, &connect).await;
    run.expect_code(0);

    // The served chain, with subject, issuer, expiry and pin of each entry.
    run.stdout_has(&[
        "subject:",
        "issuer:",
        "not after:",
        "CN=localhost",
        "CN=pinctl test root",
        &spki_pin(&leaf_cert),
        &spki_pin(&fx.root.cert),
        "Web PKI: valid",
    ]);
    run.stdout_has(&["added", "single pin"]);

    let set = fx.load();
    assert_eq!(set.len(), 1);
    let p = set.by_server_name(&name).expect("peer listed");
    assert_eq!(p.pins, vec![pin(&leaf_cert)]);
    assert_eq!(p.trust, Trust::Webpki);
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.hosts, vec!["localhost".to_string()]);
    assert!(set.lookup("localhost").is_some());
    let note = p.note.as_deref().unwrap_or_default();
    assert!(note.contains("pinctl"), "{p:?}");
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
    let (name, connect) = target(addr);
    fx.add_live(&name, &connect).await.expect_code(0);
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
    let on_expired = set.policy.on_expired;
    assert_eq!(on_expired, fedpin::pins::ExpiredPolicy::Deny, "{text}");
    let other_pins = set.by_server_name("other.example").unwrap().pins.len();
    assert_eq!(other_pins, 2, "{text}");
    let added = &set.by_server_name(&name).unwrap().pins;
    assert_eq!(added, &vec![pin(&leaf_cert)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_with_pin_and_from_cert() {
    let fx = Fixture::new();
    let (p1, p2) = (a_pin(1), a_pin(2));
    let cmd = format!("add a.example --pin {p1} --pin {p2} --mode report --expires 2031-02-03");
    let run = fx
        .run_fed(&cmd, &["--note", "from the ops ticket"], None)
        .await;
    run.expect_code(0).stdout_lacks(&["single pin"]);
    let set = fx.load();
    let a = set.by_server_name("a.example").unwrap();
    let want: Vec<Pin> = vec![p1.parse().unwrap(), p2.parse().unwrap()];
    assert_eq!(a.pins, want);
    assert_eq!(a.mode, Mode::Report);
    assert_eq!(a.note.as_deref(), Some("from the ops ticket"));
    let expires = time::macros::datetime!(2031-02-03 00:00 UTC);
    assert_eq!(a.expires.unwrap(), expires);

    // Adding to an existing peer extends its pins (no duplicate entry).
    let p3 = a_pin(3);
    let run = fx
        .run(&format!("add A.example --pin {p3} --pin {p1}"))
        .await;
    run.expect_code(0).stdout_has(&["already listed"]);
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
    let tail = ["--from-cert", s(&bundle), "--from-cert", s(&pubkey)];
    let run = fx
        .run_fed("add b.example:8448 --trust webpki", &tail, None)
        .await;
    run.expect_code(0);
    let set = fx.load();
    let b = set.by_server_name("b.example:8448").unwrap();
    assert_eq!(b.pins.len(), 2, "{:?}", b.pins);
    assert_eq!(b.pins[0], pin(&l.cert));
    let next_spki = rcgen::PublicKeyData::subject_public_key_info(&next);
    assert_eq!(b.pins[1], Pin::of_spki(&next_spki));
    assert_eq!(b.hosts, vec!["b.example".to_string()]);

    // Bad input is refused and nothing is written.
    let before = fx.text();
    let run = fx.run("add c.example --pin sha256/nope").await;
    assert_ne!(run.code, Some(0), "{}", run.describe());
    run.stderr_has(&["sha256/nope"]);
    let garbage = fx.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "nothing here").unwrap();
    let run = fx
        .run_fed("add c.example --from-cert", &[s(&garbage)], None)
        .await;
    run.expect_code(64).stderr_has(&["garbage.pem"]);
    // A host clash with an existing peer is not written either.
    let run = fx.run(&format!("add b.example --pin {p1}")).await;
    run.expect_code(64).stderr_has(&["b.example"]);
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

    let run = fx
        .run_fed("add d.example --from-cert", &[s(&chain)], None)
        .await;
    run.expect_code(0);
    let set = fx.load();
    let d = set.by_server_name("d.example").unwrap();
    let only_leaf = vec![pin(&l.cert)];
    assert_eq!(
        d.pins,
        only_leaf,
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
        run.stdout_has(&[cn]);
    }
    run.stdout_has(&["--from-cert-all"]);

    // The explicit choice pins every certificate of the file.
    let tail = [s(&chain), "--from-cert-all"];
    let run = fx.run_fed("add e.example --from-cert", &tail, None).await;
    run.expect_code(0);
    let set = fx.load();
    let all = vec![pin(&l.cert), pin(&inter.cert), pin(&fx.root.cert)];
    let e = &set.by_server_name("e.example").unwrap().pins;
    assert_eq!(e, &all, "{}", run.describe());
    run.stdout_lacks(&["not pinned"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_self_signed_needs_pin_only() {
    let fx = Fixture::new();
    let ss = self_signed(&["localhost"]);
    let addr = serve(vec![ss.cert.clone()], ss.key_der()).await;
    let (name, connect) = target(addr);

    let run = fx.add_live(&name, &connect).await;
    run.expect_code(64)
        .stderr_has(&["pin-only"])
        .stdout_has(&["NOT valid"]);
    let wrote = fx.pins.exists();
    assert!(!wrote, "a refused add wrote the file:\n{}", fx.text());

    let cmd = format!("add {name} --connect {connect} --yes --trust pin-only");
    fx.run(&cmd).await.expect_code(0);
    let set = fx.load();
    let p = set.by_server_name(&name).unwrap();
    assert_eq!(p.trust, Trust::PinOnly);
    assert_eq!(p.pins, vec![pin(&ss.cert)]);

    // The pin just written passes a live check.
    let run = fx.run(&format!("verify {name} --connect {connect}")).await;
    run.expect_code(0).stdout_has(&["OK"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_interactive_choice_pins_the_intermediate() {
    let fx = Fixture::new();
    let inter = intermediate(&fx.root, "pinctl test intermediate");
    let l = leaf(&inter, &["localhost"]);
    let addr = serve(vec![l.cert.clone(), inter.cert.clone()], l.key_der()).await;
    let (name, connect) = target(addr);
    let cmd = format!("add {name} --connect {connect} --roots");
    let roots = [fx.ca()];
    let choose = |answer: &'static [u8]| fx.run_fed(&cmd, &roots, Some(answer));

    // No answer (stdin closed) and no --yes: a usage error, nothing written.
    let run = choose(b"").await;
    run.expect_code(2).stderr_has(&["--yes"]);
    assert!(!fx.pins.exists());

    // Out of range: refused.
    let run = choose(b"7\n").await;
    run.expect_code(2);
    assert!(!fx.pins.exists());

    let run = choose(b"2\n").await;
    run.expect_code(0).stdout_has(&["Pin which"]);
    run.stdout_has(&[
        "[1] leaf",
        "[2] intermediate",
        "CN=pinctl test intermediate",
        &spki_pin(&l.cert),
        &spki_pin(&inter.cert),
    ]);
    let set = fx.load();
    let p = set.by_server_name(&name).unwrap();
    assert_eq!(p.pins, vec![pin(&inter.cert)], "{}", fx.text());

    // The intermediate pin survives a leaf rotation under the same intermediate.
    let l2 = leaf(&inter, &["localhost"]);
    let addr2 = serve(vec![l2.cert.clone(), inter.cert.clone()], l2.key_der()).await;
    let run = fx.verify(&name, &addr2.to_string(), "").await;
    run.expect_code(0);

    // Several choices, including the trust anchor that was not sent.
    let second = fx.dir.path().join("second.toml");
    let run = pinctl(&argv(s(&second), &cmd, &[fx.ca()]), Some(b"1, 3\n")).await;
    run.expect_code(0).stdout_has(&["trust anchor"]);
    let set = PinSet::load(&second).unwrap();
    let both = vec![pin(&l.cert), pin(&fx.root.cert)];
    assert_eq!(set.by_server_name(&name).unwrap().pins, both);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_refuses_a_sent_certificate_that_is_not_on_the_validated_path() {
    let fx = Fixture::new();
    let l = leaf(&fx.root, &["localhost"]);
    // An unrelated CA certificate rides along; the leaf chains to the root directly.
    let stray = root("stray ca");
    let addr = serve(vec![l.cert.clone(), stray.cert.clone()], l.key_der()).await;
    let (name, connect) = target(addr);
    let cmd = format!("add {name} --connect {connect} --roots");
    let run = fx.run_fed(&cmd, &[fx.ca()], Some(b"2\n")).await;
    run.expect_code(2);
    run.stdout_has(&["[2] sent, not on the validated path"]);
    run.stderr_has(&["never match"]);
    assert!(!fx.pins.exists(), "{}", fx.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn pins_option_after_the_subcommand_and_from_the_environment() {
    let fx = Fixture::new();
    let p1 = a_pin(1);
    // The global --pins after the subcommand (and next to add's own --pin).
    let args = ["add", "a.example", "--pin", &p1, "--pins", fx.pins()];
    pinctl(&args, None).await.expect_code(0);
    assert_eq!(fx.load().len(), 1);
    let args = vec!["list".to_string(), "--json".to_string()];
    let pins = fx.pins().to_string();
    let run = tokio::task::spawn_blocking(move || {
        pinctl_blocking_env(&args, None, &[("FEDPIN_PINS", pins.as_str())])
    })
    .await
    .unwrap();
    run.expect_code(0);
    let v = run.json();
    assert_eq!(v["peers"][0]["server_name"], "a.example", "{v}");
}

// ---------------------------------------------------------------- verify

#[tokio::test(flavor = "multi_thread")]
async fn verify_genuine_ok_impostor_mismatch_and_json() {
    let fx = Fixture::new();
    let (addr, _) = fx.genuine().await;
    let (name, connect) = target(addr);
    fx.add_live(&name, &connect).await.expect_code(0);

    let run = fx.verify(&name, &connect, "").await;
    run.expect_code(0).stdout_has(&["OK", &name]);

    // A CA-valid impostor: another leaf for the same name from the same CA.
    let (impostor, _) = fx.genuine().await;
    let imp = impostor.to_string();
    let run = fx.verify(&name, &imp, "").await;
    run.expect_code(1)
        .stdout_has(&["MISMATCH"])
        .stdout_lacks(&["OK "]);

    // JSON, both ways.
    let run = fx.verify(&name, &connect, "--json").await;
    run.expect_code(0);
    let v = run.json();
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["status"], "ok", "{v}");
    assert_eq!(arr[0]["server_name"], name.as_str(), "{v}");
    assert!(arr[0]["cert_days_left"].as_i64().unwrap() > 0, "{v}");
    assert!(arr[0].get("pins_days_left").is_some(), "{v}");

    let run = fx.verify(&name, &imp, "--json").await;
    run.expect_code(1);
    let v = run.json();
    assert_eq!(v[0]["status"], "mismatch", "{v}");
    let detail = v[0]["detail"].as_str().unwrap_or_default();
    assert!(!detail.is_empty(), "{v}");

    // Without the CA the genuine peer does not validate: not OK either.
    let run = fx.run(&format!("verify {name} --connect {connect}")).await;
    run.expect_code(1).stdout_lacks(&["OK "]);

    // A dead port is an error, not a pass.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let run = fx.verify(&name, &dead.to_string(), "--timeout 5").await;
    run.expect_code(1).stdout_has(&["ERROR"]);

    // An unknown server name.
    let run = fx.run("verify nobody.example").await;
    run.expect_code(1).stderr_has(&["nobody.example"]);
}

// ---------------------------------------------------------------- remove, list

#[tokio::test(flavor = "multi_thread")]
async fn remove_and_list() {
    let fx = Fixture::new();
    let run = fx.run("list").await;
    run.expect_code(64).stderr_has(&["pins.toml"]);

    let (p1, p2, p3) = (a_pin(1), a_pin(2), a_pin(3));
    let add_a = format!("add a.example --pin {p1} --pin {p2}");
    fx.run(&add_a).await.expect_code(0);
    let add_b = format!("add b.example:8448 --pin {p3} --trust pin-only");
    let expiry = ["--expires", "2030-01-01T00:00:00Z"];
    fx.run_fed(&add_b, &expiry, None).await.expect_code(0);

    let run = fx.run("list").await;
    run.expect_code(0).stdout_has(&[
        "a.example",
        "b.example:8448",
        &p1,
        &p2,
        &p3,
        "trust=pin-only",
        "mode=enforce",
        "expires=2030-01-01T00:00:00Z",
    ]);

    let run = fx.run("list --json").await;
    run.expect_code(0);
    let v = run.json();
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

    fx.run("remove A.EXAMPLE").await.expect_code(0);
    let set = fx.load();
    assert_eq!(set.len(), 1);
    assert!(set.by_server_name("a.example").is_none());
    assert!(set.by_server_name("b.example:8448").is_some());

    let before = fx.text();
    let run = fx.run("remove a.example").await;
    run.expect_code(1).stderr_has(&["a.example"]);
    assert_eq!(fx.text(), before);

    fx.run("remove b.example:8448").await.expect_code(0);
    fx.run("list")
        .await
        .expect_code(0)
        .stdout_has(&["no peers"]);
    let run = fx.run("list --json").await;
    run.expect_code(0);
    assert_eq!(run.json()["peers"], serde_json::json!([]));
}

// ---------------------------------------------------------------- check

#[tokio::test(flavor = "multi_thread")]
async fn check_valid_warns_on_single_pin_and_broken_names_the_line() {
    let fx = Fixture::new();
    let p1 = a_pin(1);
    fx.run(&format!("add a.example --pin {p1}"))
        .await
        .expect_code(0);
    let run = fx.run("check").await;
    run.expect_code(0)
        .stdout_has(&["warning", "single pin", "a.example"]);

    // Two pins: no warning.
    let p2 = a_pin(2);
    fx.run(&format!("add a.example --pin {p2}"))
        .await
        .expect_code(0);
    fx.run("check")
        .await
        .expect_code(0)
        .stdout_has(&["0 warning"]);

    // Broken: a malformed pin on line 5; an unknown key on line 6; a host
    // listed under two peers (lines 8 and 3).
    let peer_a = format!("[[peer]]\nserver_name = \"a.example\"\npins = [\"{p1}\", \"{p2}\"]\n");
    let broken = [
        (
            "broken.toml",
            format!("version = 1\n\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{p1}\", \"sha256/short\"]\n"),
            &["line 5", "sha256/short"][..],
        ),
        (
            "broken2.toml",
            format!("version = 1\n{peer_a}[[peer]]\nsrever_name = \"b.example\"\n"),
            &["line 6"][..],
        ),
        (
            "dup.toml",
            format!("version = 1\n{peer_a}\n[[peer]]\nserver_name = \"b.example\"\nhosts = [\"a.example\"]\npins = [\"{p1}\", \"{p2}\"]\n"),
            &["line 8", "line 3"][..],
        ),
    ];
    for (name, text, needles) in &broken {
        let run = check_file(&fx, name, text).await;
        run.expect_code(1);
        for needle in *needles {
            assert!(run.all().contains(needle), "{}", run.describe());
        }
    }

    // A missing file is an error, not an empty pass.
    let missing = fx.dir.path().join("nope.toml");
    let run = pinctl(&["--pins", s(&missing), "check"], None).await;
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
    run.expect_code(0).stdout_has(&["ok"]);
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
    // Without and with `--pins <the pin file>` in front.
    let bare: [&[&str]; 3] = [&["frobnicate"], &[], &["hash"]];
    let with_pins = [
        "list --bogus",
        "add localhost --connect nope --yes",
        "add localhost --connect 127.0.0.1:0 --yes",
        "add localhost --connect 127.0.0.1:http --yes",
        "add localhost --connect :8448 --yes",
        &format!("add x.example --pin {p1} --trust sometimes"),
        &format!("add x.example --pin {p1} --mode loud"),
        &format!("add x.example --pin {p1} --expires soon"),
        "add x.example --pin md5/abc",
        "verify --connect 127.0.0.1:1",
        "verify --timeout x",
    ];
    let mut cases: Vec<Vec<&str>> = bare.iter().map(|a| a.to_vec()).collect();
    cases.extend(with_pins.iter().map(|cmd| argv(fx.pins(), cmd, &[])));
    cases.push(argv(fx.pins(), "add", &["bad name!", "--pin", &p1]));
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
                    let cmd = format!("add {name} --pin {pa} --pin {pb}");
                    let args: Vec<String> = argv(&pins, &cmd, &[])
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
    let (name, connect) = target(addr);
    let add = format!("add {name} --pin {} --mode report", a_pin(7));
    fx.run(&add).await.expect_code(0);
    let run = fx.verify(&name, &connect, "").await;
    run.expect_code(1).stdout_has(&["MISMATCH", "report"]);
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
        for (addr, code, verdict) in [(genuine, 0, "OK"), (impostor, 1, "MISMATCH")] {
            let run = fx.verify(&name, &addr.to_string(), "").await;
            run.expect_code(code);
            let starts = run.stdout.starts_with(verdict);
            assert!(starts, "{mode}: {}", run.describe());
        }
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
    for cmd in ["list", "list --json", "verify", "verify a.example"] {
        let run = fx.run(cmd).await;
        run.expect_code(64);
        assert!(run.stdout.is_empty(), "{cmd}: {}", run.describe());
        assert!(
            run.stderr.contains("line 5") && run.stderr.contains("sha256/short"),
            "{cmd}: {}",
            run.describe()
        );
    }
    let run = fx.run("check").await;
    run.expect_code(1);
    assert!(run.stderr.is_empty(), "{}", run.describe());
    run.stdout_has(&["error", "line 5"]);

    let missing = fx.dir.path().join("missing.toml");
    for cmd in ["check", "list", "verify"] {
        let run = pinctl(&argv(s(&missing), cmd, &[]), None).await;
        run.expect_code(64);
        assert!(run.stdout.is_empty(), "{cmd}: {}", run.describe());
        let named = run.stderr.contains("missing.toml");
        assert!(named, "{cmd}: {}", run.describe());
    }

    // The convention is in the help text.
    let run = pinctl(&["--help"], None).await;
    run.expect_code(0).stdout_has(&["64", "stderr"]);
}
