//! Running the real binaries: a child that is killed when the test ends,
//! its stdout as a channel of lines, and the listening lines `fedpin run`
//! prints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A finished command's exit code, stdout and stderr, for a failure message.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The real `fedpin` binary.
pub fn fedpin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedpin"))
}

/// `fedpin ca init --dir DIR`, run to the end.
pub fn ca_init(dir: &Path) -> Output {
    fedpin()
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

/// `fedpin CMD --config CFG` (e.g. `check-config`, `run`), run to the end.
pub fn with_config(cmd: &str, cfg: &Path) -> Output {
    fedpin().args([cmd, "--config"]).arg(cfg).output().unwrap()
}

/// How long `fedpin run` may take to print its listening lines.
pub const STARTUP: Duration = Duration::from_secs(30);

/// A child process, killed (if still running) and reaped when dropped.
pub struct Reaped(pub Child);

impl Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The child's stdout (which must be piped) as lines on a channel, from a
/// thread that keeps draining it for the child's whole life.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// The address a "… listening on ADDR" line ends with.
pub fn addr_at_end(line: &str) -> SocketAddr {
    line.rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Waits (at most [`STARTUP`]) until `fedpin run` has printed a
/// "KIND listening" line for each of `kinds` ("outbound", "inbound",
/// "admin"); their addresses, in the order of `kinds`.
pub fn listening(lines: &mpsc::Receiver<String>, kinds: &[&str]) -> Vec<SocketAddr> {
    let deadline = Instant::now() + STARTUP;
    let mut found: Vec<Option<SocketAddr>> = vec![None; kinds.len()];
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("fedpin prints its listening lines ({kinds:?})"));
        for (k, slot) in kinds.iter().zip(found.iter_mut()) {
            if line.contains(&format!("{k} listening")) {
                *slot = Some(addr_at_end(&line));
            }
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

/// Spawns `cmd` (a [`fedpin_run`]) and waits for its listening lines for
/// `kinds` (see [`listening`]): the child, the addresses in the order of
/// `kinds`, and the rest of its stdout lines.
pub fn spawn_listening(
    mut cmd: Command,
    kinds: &[&str],
) -> (Reaped, Vec<SocketAddr>, mpsc::Receiver<String>) {
    let mut child = cmd.spawn().unwrap();
    let lines = stdout_lines(&mut child);
    let addrs = listening(&lines, kinds);
    (Reaped(child), addrs, lines)
}

/// A `fedpin run` child with its three listeners, logging to `log`.
pub struct Daemon {
    pub child: Reaped,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The admin listener's address, from fedpin's JSON log ("admin listener" line).
pub fn admin_addr_in(log: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("admin listener"))
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let listen = v["fields"]["listen"]
                .as_str()
                .or_else(|| v["listen"].as_str())?;
            listen.parse().ok()
        })
}

/// Starts `fedpin --log-format json run --drain-secs DRAIN --config CFG`
/// (`FEDPIN_LOG=info`, its JSON log to `log`) and waits, `within` at most,
/// for its outbound and inbound listening lines and the admin listener in
/// its log.
pub fn start_daemon(cfg: &Path, log: &Path, drain_secs: u64, within: Duration) -> Daemon {
    let log_file = std::fs::File::create(log).unwrap();
    let mut child = fedpin()
        .args(["--log-format", "json", "run", "--drain-secs"])
        .arg(drain_secs.to_string())
        .arg("--config")
        .arg(cfg)
        .env("FEDPIN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    // Keeps draining stdout for the child's whole life.
    let rx = stdout_lines(&mut child);
    let deadline = Instant::now() + within;
    let (mut outbound, mut inbound) = (None, None);
    while outbound.is_none() || inbound.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "fedpin did not print its listening lines within {within:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        if line.starts_with("fedpin: outbound listening on ") {
            outbound = Some(addr_at_end(&line));
        } else if line.starts_with("fedpin: inbound listening on ") {
            inbound = Some(addr_at_end(&line));
        }
    }
    let admin = loop {
        if let Some(a) = admin_addr_in(log) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no admin listener line in fedpin's log"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Daemon {
        child: Reaped(child),
        outbound: outbound.unwrap(),
        inbound: inbound.unwrap(),
        admin,
        log: log.to_path_buf(),
    }
}

/// Writes the `fedpin.toml` of a daemon laid out by [`daemon_files`] in
/// `dir`, and returns its path: the pin file `pins/pins.toml`; an outbound
/// proxy (interception CA, `roots.pem`, loopback allowed, each of `names`
/// resolved to 127.0.0.1, then the `outbound` lines); an inbound edge in
/// front of `upstream` (then the `inbound` lines); an admin listener. All
/// listen on 127.0.0.1:0.
pub fn daemon_config(
    dir: &Path,
    names: &[&str],
    outbound: &str,
    upstream: SocketAddr,
    inbound: &str,
) -> PathBuf {
    let resolve: Vec<String> = names
        .iter()
        .map(|n| format!("\"{n}\" = \"127.0.0.1\""))
        .collect();
    let resolve = resolve.join(", ");
    let cfg = dir.join("fedpin.toml");
    std::fs::write(
        &cfg,
        format!(
            "pins = \"pins/pins.toml\"\n\n\
             [outbound]\nlisten = \"127.0.0.1:0\"\nca_cert = \"ca/fedpin-ca.pem\"\nca_key = \"ca/fedpin-ca.key\"\n\
             extra_roots = \"roots.pem\"\nallow_ips = [\"127.0.0.0/8\"]\n\
             resolve = {{ {resolve} }}\n{outbound}\n\
             [inbound]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\nupstream = \"http://{upstream}\"\n{inbound}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    cfg
}

/// The end of a long run in `dir`: keeps `dir` (and says where) when
/// `keep` is asked for or anything went wrong, then asserts that nothing
/// did (`what` failed: each of `problems`).
pub fn keep_or_pass(dir: tempfile::TempDir, keep: bool, problems: &[String], what: &str) {
    if keep || !problems.is_empty() {
        let kept = dir.keep();
        println!("kept {} (fedpin.toml, pins/, fedpin.log)", kept.display());
    }
    let all = problems.join("\n  ");
    assert!(problems.is_empty(), "{what} failed:\n  {all}");
}

/// A `fedpin run` with one proxy listener and the admin listener, and the
/// directory it runs in.
pub struct ProxyAndAdmin {
    pub child: Reaped,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// `fedpin run --config CFG` ([`fedpin_run`]) in `dir`, once it listens
/// as the `proxy` kind ("inbound", "outbound") and as admin.
pub fn run_proxy_and_admin(dir: tempfile::TempDir, cfg: &Path, proxy: &str) -> ProxyAndAdmin {
    let (child, addrs, _) = spawn_listening(fedpin_run(cfg, &[]), &[proxy, "admin"]);
    ProxyAndAdmin {
        child,
        proxy: addrs[0],
        admin: addrs[1],
        dir,
    }
}

/// A new temporary directory for [`outbound_config`]: an interception CA
/// in `ca/` (`fedpin::tls::ca::init_ca`), `roots.pem` and `pins.toml`.
pub fn outbound_dir(roots_pem: &str, pins: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fedpin::tls::ca::init_ca(&d.join("ca")).unwrap();
    std::fs::write(d.join("roots.pem"), roots_pem).unwrap();
    std::fs::write(d.join("pins.toml"), pins).unwrap();
    dir
}

/// [`outbound_config`] for a directory from [`outbound_dir`]: trusting
/// `roots.pem`, then `rest`, then an admin listener on 127.0.0.1:0.
pub fn outbound_admin_config(dir: &Path, rest: &str) -> PathBuf {
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    outbound_config(
        dir,
        &format!("extra_roots = \"roots.pem\"\n{rest}\n{admin}"),
    )
}

/// Writes `DIR/fedpin.toml`: the pin file `pins.toml`, an `[outbound]`
/// proxy on 127.0.0.1:0 with the interception CA in `DIR/ca` (made by
/// `fedpin::tls::ca::init_ca`), then `rest` (more outbound keys, sections).
pub fn outbound_config(dir: &Path, rest: &str) -> PathBuf {
    let cfg = dir.join("fedpin.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"pins = "pins.toml"

[outbound]
listen = "127.0.0.1:0"
ca_cert = "ca/fedpin-ca.pem"
ca_key = "ca/fedpin-ca.key"
{rest}"#
        ),
    )
    .unwrap();
    cfg
}

/// `fedpin --log-format json run [run_args] --config CFG`, stdout piped
/// (for [`stdout_lines`]) and stderr dropped unless the caller says otherwise.
pub fn fedpin_run(cfg: &Path, run_args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedpin"));
    cmd.args(["--log-format", "json", "run"])
        .args(run_args)
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// The files a `fedpin run` with both proxies needs, under `dir`: its
/// interception CA from `fedpin ca init` (`ca/`), `roots.pem` trusting
/// `root`, the edge's certificate and key (`tls/cert.pem`, `tls/key.pem`),
/// and an empty `pins/` directory. Returns the interception CA's
/// certificates (what the homeserver side trusts).
pub fn daemon_files(
    dir: &Path,
    root: &super::Ca,
    edge: &super::Leaf,
) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let init = ca_init(&dir.join("ca"));
    assert!(init.status.success(), "fedpin ca init: {}", describe(&init));
    let fedpin_ca = fedpin::tls::load_certs(&dir.join("ca/fedpin-ca.pem")).unwrap();
    std::fs::write(
        dir.join("roots.pem"),
        super::pem("CERTIFICATE", root.cert.as_ref()),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    edge.write_pem(&dir.join("tls/cert.pem"), &dir.join("tls/key.pem"));
    std::fs::create_dir_all(dir.join("pins")).unwrap();
    fedpin_ca
}
