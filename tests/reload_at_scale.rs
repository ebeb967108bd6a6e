//! Reload at scale (issue 13, item 2), the soak variant: the real `fedpin
//! run` binary with a 10,000-peer pin file, reloaded [`RELOADS`] times while
//! tunnels and inbound handshakes run.
//!
//! Run: `cargo test --test reload_at_scale -- --ignored --nocapture`
//! (`.ci/run` runs it so). Knobs: `FEDPIN_SCALE_RELOADS` (default 100),
//! `FEDPIN_SCALE_PHASE_SECS` (default 5, the length of each measured phase
//! without reloads), `FEDPIN_SCALE_KEEP=1` keeps the temp dir.
//!
//! Everything is minted per run by rcgen and lives on 127.0.0.1: a test
//! root (fedpin's `extra_roots`), a GENUINE peer (pinned, one of the 10,000
//! entries), an IMPOSTOR (a CA-valid leaf whose entry pins keys it does not
//! hold: Web PKI accepts it, the pins must not), a stand-in homeserver behind
//! the inbound edge. `policy.unpinned = "deny"`: a genuine entry missing
//! from a published set, even for one handshake, is a failed handshake.
//!
//! Phases, with the same workers running ([`TUNNEL_WORKERS`] CONNECT + TLS
//! inside + GET to GENUINE, now and then one to IMPOSTOR;
//! [`INBOUND_WORKERS`] TLS to the edge + GET):
//! 1. a 10-peer file, no reloads: fedpin's CPU time per legitimate handshake;
//! 2. the 10,000-peer file (one reload to it), no reloads: the same figure
//!    (the per-handshake lookup must not depend on the number of peers);
//! 3. workers paused: [`QUIET_RELOADS`] reloads of the 10,000-peer file,
//!    fedpin's CPU time per reload;
//! 4. RELOADS reloads of 10,000-peer revisions (each replaces the file as
//!    `pinctl` does; every other one also sends SIGHUP; each removes 10
//!    peers and adds 10, and moves the genuine peer's pin between its leaf
//!    key and the root's), each waited for on the admin metrics, while the
//!    workers run.
//!
//! Asserts: no failed legitimate handshake in any phase, no impostor
//! accepted, every reload published and none rejected, fedpin alive and
//! exiting 0 on SIGTERM. Prints the figures; asserts no timing. Every loop is
//! bounded by count and time, every network step by [`STEP`].

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{env_flag, env_knob, leaf, net, pin, process, root, Leaf};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const GENUINE: &str = "genuine.scale.test";
const IMPOSTOR: &str = "impostor.scale.test";
const SERVER: &str = "hs.scale.test";
const VERSION_PATH: &str = "/_matrix/federation/v1/version";
const HS_BODY: &str = r#"{"server":{"name":"scale-homeserver","version":"0"}}"#;
/// Peers in the large file (GENUINE and IMPOSTOR included).
const PEERS: u64 = 10_000;
/// Default number of reloads under load.
const RELOADS: u64 = 100;
/// Reloads measured with the workers paused.
const QUIET_RELOADS: u64 = 5;
const TUNNEL_WORKERS: usize = 4;
const INBOUND_WORKERS: usize = 4;
/// Upper bound for any single client operation, and for one reload to show.
const STEP: Duration = Duration::from_secs(20);
/// Per worker and phase: iterations are bounded by this as well as by time.
const MAX_ITERATIONS: u64 = 100_000;

// ---------------------------------------------------------------------------
// Stand-ins
// ---------------------------------------------------------------------------

/// A TLS HTTP/1.1 server answering every request 200 "{label}\n".
async fn peer(leaf: &Leaf, label: &'static str) -> SocketAddr {
    net::serve_tls(net::acceptor(leaf, &[b"http/1.1"]), move |tls| async move {
        let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
            let body = Bytes::from(format!("{label}\n"));
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
        });
        net::serve_http_by_alpn(tls, svc).await;
    })
    .await
}

/// The homeserver's plain-HTTP federation listener.
async fn homeserver() -> SocketAddr {
    net::plain_http(|_req| async {
        Response::new(Full::new(Bytes::from_static(HS_BODY.as_bytes())))
    })
    .await
}

// ---------------------------------------------------------------------------
// The fedpin child process
// ---------------------------------------------------------------------------

type Fedpin = process::Daemon;

/// Starts `fedpin run --config cfg` (JSON log to `log`, drain 5 s); waits
/// for its outbound, inbound and admin listeners.
fn start_fedpin(cfg: &Path, log: &Path) -> Fedpin {
    process::start_daemon(cfg, log, 5, Duration::from_secs(60))
}

/// fedpin's CPU time (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The admin listener's `fedpin_pin_reloads_total` (ok, failed).
async fn reload_counts(admin: SocketAddr) -> Result<(f64, f64), String> {
    let body = common::net::get_text(admin, "admin", "/metrics", STEP)
        .await
        .map_err(|e| format!("admin /metrics: {e}"))?;
    let get = |key: &str| {
        body.lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == key).then(|| v.parse::<f64>().ok())?
        })
    };
    match (
        get("fedpin_pin_reloads_total{result=\"ok\"}"),
        get("fedpin_pin_reloads_total{result=\"failed\"}"),
    ) {
        (Some(ok), failed) => Ok((ok, failed.unwrap_or(0.0))),
        _ => Err("no fedpin_pin_reloads_total in /metrics".into()),
    }
}

// ---------------------------------------------------------------------------
// The pin files
// ---------------------------------------------------------------------------

/// Pins the contents are made of.
struct Keys {
    genuine: String,
    root: String,
    backup: String,
    unrelated: [String; 2],
}

/// A pin that matches nothing.
fn decoy(n: u64, k: u8) -> String {
    let mut d = [k; 32];
    d[..8].copy_from_slice(&n.to_le_bytes());
    fedpin::pins::Pin::from_digest(d).to_string()
}

impl Keys {
    /// Revision `rev` with `peers` entries: GENUINE (pinned to a key it
    /// holds, which one depends on `rev`), IMPOSTOR (pinned to keys it does
    /// not hold) and `peers - 2` decoys from a window that moves by 10 per
    /// revision (each revision removes 10 peers and adds 10).
    fn file(&self, rev: u64, peers: u64) -> String {
        let genuine = match rev % 3 {
            0 => format!("\"{}\", \"{}\"", self.genuine, self.backup),
            1 => format!("\"{}\", \"{}\"", self.backup, self.genuine),
            _ => format!("\"{}\", \"{}\"", self.root, self.backup),
        };
        let mut s = String::with_capacity(peers as usize * 200 + 512);
        s.push_str(&format!(
            "# reload_at_scale revision {rev}\nversion = 1\n\n[policy]\nunpinned = \"deny\"\n\n\
             [[peer]]\nserver_name = \"{GENUINE}\"\npins = [{genuine}]\nnote = \"revision {rev}\"\n\n\
             [[peer]]\nserver_name = \"{IMPOSTOR}\"\npins = [\"{}\", \"{}\"]\nnote = \"keys the impostor does not hold\"\n",
            self.unrelated[0], self.unrelated[1]
        ));
        let first = rev * 10;
        for i in first..first + peers.saturating_sub(2) {
            s.push_str(&format!(
                "\n[[peer]]\nserver_name = \"peer{i}.example.org\"\npins = [\n  \"{}\",\n  \"{}\",\n]\n",
                decoy(i, 0x33),
                decoy(i, 0x44)
            ));
            if i.is_multiple_of(4) {
                s.push_str(&format!(
                    "hosts = [\"peer{i}.example.org\", \"matrix-federation.peer{i}.example.org\"]\n"
                ));
            }
            if i.is_multiple_of(3) {
                s.push_str(&format!(
                    "note = \"enrolled with pinctl add peer{i}.example.org\"\n"
                ));
            }
        }
        s
    }
}

/// Replaces `path` as `pinctl` and editors do: write a temp file, rename over.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_file_name(".pins.toml.scale-tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    tunnel_ok: AtomicU64,
    tunnel_failed: AtomicU64,
    inbound_ok: AtomicU64,
    inbound_failed: AtomicU64,
    impostor_blocked: AtomicU64,
    impostor_accepted: AtomicU64,
    impostor_other: AtomicU64,
    first_failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, counter: &AtomicU64, why: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut f = self
            .first_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if f.len() < 10 {
            f.push(why);
        }
    }
    fn snapshot(&self) -> [u64; 7] {
        [
            &self.tunnel_ok,
            &self.tunnel_failed,
            &self.inbound_ok,
            &self.inbound_failed,
            &self.impostor_blocked,
            &self.impostor_accepted,
            &self.impostor_other,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

struct Ctx {
    outbound: SocketAddr,
    inbound: SocketAddr,
    genuine_port: u16,
    impostor_port: u16,
    inner: TlsConnector,
    edge: TlsConnector,
    tally: Tally,
    /// Workers run while this is set.
    running: AtomicBool,
    /// Workers end when this is set.
    stop: AtomicBool,
}

fn connector(root: &CertificateDer<'static>) -> TlsConnector {
    TlsConnector::from(net::client_config(&[root], &[b"http/1.1"]))
}

/// `fut` within [`STEP`]; running longer is an error.
async fn within_step<T>(
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no outcome in {STEP:?}")))
}

/// One GET over `io`: (status, x-fedpin-alert, body).
async fn get<IO>(io: IO, authority: &str) -> Result<(u16, Option<String>, String), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = net::get_request(VERSION_PATH, authority);
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    net::status_alert_body(resp).await
}

/// CONNECT host:port through fedpin, TLS inside (trusting fedpin's CA), one GET.
async fn tunnel(ctx: &Ctx, host: &str, port: u16) -> Result<(u16, Option<String>, String), String> {
    let mut tcp = TcpStream::connect(ctx.outbound)
        .await
        .map_err(|e| format!("connecting to the proxy: {e}"))?;
    let target = format!("{host}:{port}");
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("writing CONNECT: {e}"))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tcp.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => {
                return Err(format!(
                    "proxy closed after {:?}",
                    String::from_utf8_lossy(&head)
                ))
            }
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "CONNECT {target}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let tls = ctx
        .inner
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS inside the tunnel to {host}: {e}"))?;
    get(tls, host).await
}

/// Waits while the workers are paused; counts the turn in `i`, or says
/// (false) that the workers must stop.
async fn next_turn(ctx: &Ctx, i: &mut u64) -> bool {
    loop {
        if ctx.stop.load(Ordering::Relaxed) || *i >= MAX_ITERATIONS * 10 {
            return false;
        }
        if ctx.running.load(Ordering::Relaxed) {
            *i += 1;
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn tunnel_worker(ctx: Arc<Ctx>, id: u64) {
    let mut i = 0u64;
    while next_turn(&ctx, &mut i).await {
        let t = &ctx.tally;
        if (i + id).is_multiple_of(8) {
            match within_step(tunnel(&ctx, IMPOSTOR, ctx.impostor_port)).await {
                Ok((s, _, body)) if (200..300).contains(&s) => t.fail(
                    &t.impostor_accepted,
                    format!("impostor accepted: {s} {body:?}"),
                ),
                Ok((502, Some(alert), _)) if alert == "pin_mismatch" => {
                    t.impostor_blocked.fetch_add(1, Ordering::Relaxed);
                }
                Ok((s, alert, body)) => t.fail(
                    &t.impostor_other,
                    format!("impostor: {s} {alert:?} {body:?}"),
                ),
                Err(e) => t.fail(&t.impostor_other, format!("impostor: {e}")),
            }
            continue;
        }
        let what = format!("tunnel to {GENUINE}");
        match within_step(tunnel(&ctx, GENUINE, ctx.genuine_port)).await {
            Ok((200, _, body)) if body == "genuine\n" => {
                t.tunnel_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((s, alert, body)) => {
                t.fail(&t.tunnel_failed, format!("{what}: {s} {alert:?} {body:?}"))
            }
            Err(e) => t.fail(&t.tunnel_failed, format!("{what}: {e}")),
        }
    }
}

async fn inbound_worker(ctx: Arc<Ctx>) {
    let mut i = 0u64;
    while next_turn(&ctx, &mut i).await {
        let t = &ctx.tally;
        let r = within_step(async {
            let tcp = TcpStream::connect(ctx.inbound)
                .await
                .map_err(|e| format!("connecting to the edge: {e}"))?;
            let tls = ctx
                .edge
                .connect(ServerName::try_from(SERVER).unwrap(), tcp)
                .await
                .map_err(|e| format!("TLS with the edge: {e}"))?;
            get(tls, "hs.scale.test:8448").await
        })
        .await;
        match r {
            Ok((200, _, body)) if body == HS_BODY => {
                t.inbound_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((s, _, body)) => t.fail(&t.inbound_failed, format!("inbound: {s} {body:?}")),
            Err(e) => t.fail(&t.inbound_failed, format!("inbound: {e}")),
        }
    }
}

/// Replaces the pin file (and sends SIGHUP when `hup`), then waits until
/// fedpin's metrics show the reload `ok_before + 1`; how long that took.
async fn reload_to(
    fedpin: &Fedpin,
    path: &Path,
    text: &str,
    hup: bool,
    ok_before: f64,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    replace_file(path, text);
    if hup {
        let sent = Command::new("kill")
            .args(["-HUP", &fedpin.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            return Err("kill -HUP failed".into());
        }
    }
    while t0.elapsed() < STEP {
        let (ok, failed) = reload_counts(fedpin.admin).await?;
        if failed > 0.0 {
            return Err(format!(
                "fedpin rejected a pin file ({failed} failed reloads)"
            ));
        }
        if ok >= ok_before + 1.0 {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("the reload did not show within {STEP:?}"))
}

/// Runs the workers for `secs`; (handshakes that did their work: tunnels and
/// inbound served, impostors blocked; legitimate ones failed; fedpin CPU ticks).
async fn phase(ctx: &Ctx, pid: u32, secs: u64) -> (u64, u64, u64) {
    let before = ctx.tally.snapshot();
    let c0 = cpu_ticks(pid);
    ctx.running.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    ctx.running.store(false, Ordering::SeqCst);
    // Let the handshakes in flight finish (each bounded by STEP).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c1 = cpu_ticks(pid);
    let after = ctx.tally.snapshot();
    let d = |i: usize| after[i] - before[i];
    (d(0) + d(2) + d(4), d(1) + d(3), c1 - c0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reload at scale: run by .ci/run (FEDPIN_SCALE_RELOADS, default 100)"]
async fn reload_at_scale() {
    let reloads = env_knob("FEDPIN_SCALE_RELOADS", RELOADS, 10_000);
    let phase_secs = env_knob("FEDPIN_SCALE_PHASE_SECS", 5, 600);
    let keep = env_flag("FEDPIN_SCALE_KEEP");
    let wall = Instant::now();
    let hz = clock_ticks_per_sec();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();

    let ca = root("fedpin reload-at-scale root");
    let [genuine, impostor, edge] = [GENUINE, IMPOSTOR, SERVER].map(|name| leaf(&ca, &[name]));
    let unrelated = [1, 2].map(|i| leaf(&ca, &[&format!("unrelated-{i}.scale.test")]));
    let keys = Keys {
        genuine: pin(&genuine.cert).to_string(),
        root: pin(&ca.cert).to_string(),
        backup: pin(&leaf(&ca, &["backup.scale.test"]).cert).to_string(),
        unrelated: unrelated.each_ref().map(|l| pin(&l.cert).to_string()),
    };
    // The contents are what they claim: valid, and of the right size.
    for (rev, peers) in [(0, 10), (1, PEERS), (2, PEERS), (3, PEERS)] {
        let set = fedpin::pins::PinSet::parse(&keys.file(rev, peers))
            .unwrap_or_else(|e| panic!("revision {rev} ({peers} peers) rejected: {e}"));
        assert_eq!(set.len() as u64, peers);
        assert!(set.lookup(GENUINE).is_some() && set.lookup(IMPOSTOR).is_some());
    }

    let genuine_addr = peer(&genuine, "genuine").await;
    let impostor_addr = peer(&impostor, "impostor").await;
    let hs_addr = homeserver().await;

    // fedpin's files: CA from `fedpin ca init`, roots, edge cert, pins/.
    let fedpin_ca = common::process::daemon_files(&d, &ca, &edge);
    let pins_path: PathBuf = d.join("pins/pins.toml");
    replace_file(&pins_path, &keys.file(0, 10));
    let outbound = "connect_timeout_secs = 5\nhandshake_timeout_secs = 15\n";
    let cfg = process::daemon_config(&d, &[GENUINE, IMPOSTOR], outbound, hs_addr, "");
    let mut fedpin = start_fedpin(&cfg, &d.join("fedpin.log"));
    let pid = fedpin.child.id();

    let ctx = Arc::new(Ctx {
        outbound: fedpin.outbound,
        inbound: fedpin.inbound,
        genuine_port: genuine_addr.port(),
        impostor_port: impostor_addr.port(),
        inner: connector(&fedpin_ca[0]),
        edge: connector(&ca.cert),
        tally: Tally::default(),
        running: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let mut workers = Vec::new();
    for i in 0..TUNNEL_WORKERS as u64 {
        workers.push(tokio::spawn(tunnel_worker(ctx.clone(), i)));
    }
    for _ in 0..INBOUND_WORKERS {
        workers.push(tokio::spawn(inbound_worker(ctx.clone())));
    }

    // Warm-up (caches, pools, runtime threads), then phase 1: 10 peers.
    let _ = phase(&ctx, pid, 1).await;
    let (ok10, failed10, cpu10) = phase(&ctx, pid, phase_secs).await;

    // Phase 2: the 10,000-peer file, no reloads.
    let (ok_start, _) = reload_counts(fedpin.admin).await.unwrap();
    let mut ok_now = ok_start;
    let to_large = reload_to(&fedpin, &pins_path, &keys.file(1, PEERS), false, ok_now).await;
    to_large.unwrap_or_else(|e| panic!("reload to the {PEERS}-peer file: {e}"));
    ok_now += 1.0;
    let (ok10k, failed10k, cpu10k) = phase(&ctx, pid, phase_secs).await;

    // Phase 3: reloads with the workers paused: fedpin's CPU per reload.
    let mut rev = 2;
    let c0 = cpu_ticks(pid);
    for _ in 0..QUIET_RELOADS {
        reload_to(&fedpin, &pins_path, &keys.file(rev, PEERS), false, ok_now)
            .await
            .unwrap_or_else(|e| panic!("quiet reload {rev}: {e}"));
        ok_now += 1.0;
        rev += 1;
    }
    let quiet_cpu_ms = (cpu_ticks(pid) - c0) as f64 / hz * 1000.0 / QUIET_RELOADS as f64;

    // Phase 4: reloads under load.
    let before = ctx.tally.snapshot();
    let c0 = cpu_ticks(pid);
    let loaded = Instant::now();
    ctx.running.store(true, Ordering::SeqCst);
    let mut latencies = Vec::new();
    let mut reload_error = None;
    let limit = STEP * (reloads as u32).min(100) + Duration::from_secs(600);
    for n in 0..reloads {
        if loaded.elapsed() > limit {
            reload_error = Some(format!("stopped after {n} reloads: over {limit:?}"));
            break;
        }
        match reload_to(
            &fedpin,
            &pins_path,
            &keys.file(rev, PEERS),
            n % 2 == 1,
            ok_now,
        )
        .await
        {
            Ok(t) => latencies.push(t),
            Err(e) => {
                reload_error = Some(format!("reload {n} (revision {rev}): {e}"));
                break;
            }
        }
        ok_now += 1.0;
        rev += 1;
    }
    ctx.running.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load_secs = loaded.elapsed().as_secs_f64();
    let load_cpu = cpu_ticks(pid) - c0;
    let after = ctx.tally.snapshot();
    let d_ = |i: usize| after[i] - before[i];
    let (ok_load, failed_load) = (d_(0) + d_(2) + d_(4), d_(1) + d_(3));
    let (reloads_ok, reloads_failed) = reload_counts(fedpin.admin)
        .await
        .unwrap_or((f64::NAN, f64::NAN));

    ctx.stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = tokio::time::timeout(STEP * 2, w).await;
    }
    let alive = matches!(fedpin.child.try_wait(), Ok(None));
    let mut exit = None;
    if alive {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) && exit.is_none() {
            exit = fedpin.child.try_wait().ok().flatten();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Report.
    let per = |ticks: u64, n: u64| -> String {
        if n == 0 {
            "-".into()
        } else {
            format!("{:.0} us", ticks as f64 / hz * 1e6 / n as f64)
        }
    };
    latencies.sort();
    let ms =
        |t: Option<&Duration>| t.map_or("-".into(), |t| format!("{:.0} ms", t.as_secs_f64() * 1e3));
    let t = ctx.tally.snapshot();
    println!();
    println!(
        "reload at scale: fedpin ({} build) with a {PEERS}-peer pin file; {TUNNEL_WORKERS} tunnel + {INBOUND_WORKERS} inbound workers",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!(
        "phase 1, 10 peers, {phase_secs} s: handshakes={ok10} (legitimate failed={failed10}); fedpin CPU per handshake {}",
        per(cpu10, ok10)
    );
    println!(
        "phase 2, {PEERS} peers, {phase_secs} s: handshakes={ok10k} (legitimate failed={failed10k}); fedpin CPU per handshake {} (ratio to 10 peers: {})",
        per(cpu10k, ok10k),
        if ok10 > 0 && ok10k > 0 && cpu10 > 0 {
            format!("{:.2}", (cpu10k as f64 / ok10k as f64) / (cpu10 as f64 / ok10 as f64))
        } else {
            "-".into()
        }
    );
    println!(
        "phase 3, workers paused: fedpin CPU per reload of the {PEERS}-peer file {quiet_cpu_ms:.0} ms (mean of {QUIET_RELOADS})"
    );
    println!(
        "phase 4: {} of {reloads} reloads published in {load_secs:.1} s under load (every other one by SIGHUP); file replaced -> published (100 ms debounce + 300 ms settle included): median {}, max {}",
        latencies.len(),
        ms(latencies.get(latencies.len() / 2)),
        ms(latencies.last()),
    );
    println!(
        "phase 4: handshakes={ok_load} (legitimate failed={failed_load}); fedpin CPU per handshake {} (reload work included)",
        per(load_cpu, ok_load)
    );
    println!(
        "all phases: tunnels ok={} failed={}, inbound ok={} failed={}, impostor blocked={} accepted={} other={}",
        t[0], t[1], t[2], t[3], t[4], t[5], t[6]
    );
    println!(
        "pin reloads (metrics): ok={reloads_ok} failed={reloads_failed}; fedpin alive at end={alive}, exit on SIGTERM={exit:?}; wall {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    let failures = ctx
        .tally
        .first_failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for f in &failures {
        println!("  failure: {f}");
    }

    let mut problems = Vec::new();
    if t[1] + t[3] != 0 {
        problems.push(format!("{} legitimate handshakes failed", t[1] + t[3]));
    }
    if t[5] != 0 || t[6] != 0 {
        problems.push(format!(
            "impostor: {} accepted, {} other outcomes",
            t[5], t[6]
        ));
    }
    if ok10 == 0 || ok10k == 0 || ok_load == 0 || t[4] == 0 {
        problems.push("a phase ran no handshakes".into());
    }
    if let Some(e) = reload_error {
        problems.push(e);
    }
    if latencies.len() as u64 != reloads || reloads_failed != 0.0 {
        problems.push(format!(
            "{} of {reloads} reloads published, {reloads_failed} rejected",
            latencies.len()
        ));
    }
    if !alive || !exit.is_some_and(|s| s.success()) {
        problems.push(format!(
            "fedpin alive at end={alive}, exit on SIGTERM={exit:?}"
        ));
    }
    process::keep_or_pass(dir, keep, &problems, "reload at scale");
}
