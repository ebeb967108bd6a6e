//! Soak: the real `fedpin run` binary (outbound + inbound + admin) under
//! churn, for `FEDPIN_SOAK_SECS` seconds (default 20).
//!
//! Run: `FEDPIN_SOAK_SECS=10 cargo test --test soak -- --ignored --nocapture`.
//!
//! Everything is minted per run by rcgen and lives on 127.0.0.1:
//! * a test root CA, given to fedpin as `extra_roots`;
//! * a GENUINE peer (leaf for `genuine.soak.test`, pinned), an IMPOSTOR
//!   (a CA-valid leaf for `impostor.soak.test` from the same root, whose pin
//!   entry names keys it does not hold: Web PKI accepts it, the pins must
//!   not), a SLOW peer (handshake delayed 0–300 ms) and a FLAKY peer (resets
//!   at once, mid-handshake or mid-request for half of its connections);
//! * a stand-in homeserver (plain HTTP) behind fedpin's inbound edge.
//!
//! Load: tunnel workers (CONNECT, then TLS inside the tunnel trusting
//! fedpin's CA, then HTTP/1.1 or h2), inbound workers (TLS to the edge, then
//! GET `/_matrix/federation/v1/version`), both with random client resets; and a
//! churner rewriting the pin file every 100 ms (write temp + rename),
//! alternating valid and broken contents. Broken files must be rejected whole
//! (several would, if half-applied, accept the impostor or refuse the
//! genuine peer).
//!
//! Every [`REVOKE_EVERY`] revisions the churner also runs a revocation
//! round: it opens tunnels to a REVOKED peer (a normal, pinned peer), then
//! writes a file whose entry for it no longer lists its key; fedpin must
//! close every one of those open tunnels (SPEC 4.13) and refuse new ones,
//! and the key is restored afterwards.
//!
//! Reports legit handshakes failed (must be 0), impostor handshakes accepted
//! (must be 0), revoked tunnels closed (must be all of them), RSS and open fds of the fedpin process at start, peak, end of
//! load and after a quiet period; checks fedpin is alive and exits 0 on
//! SIGTERM. Every loop is bounded by count and time; every network step by
//! [`STEP`]. On failure the temp dir (config, pin file, fedpin's JSON log)
//! is kept and its path printed; `FEDPIN_SOAK_KEEP=1` keeps it always.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{env_flag, env_knob, leaf, net, pin, process, root, Leaf};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const GENUINE: &str = "genuine.soak.test";
const IMPOSTOR: &str = "impostor.soak.test";
const SLOW: &str = "slow.soak.test";
const FLAKY: &str = "flaky.soak.test";
/// A peer whose pinned key is removed while tunnels to it are open (one
/// round every [`REVOKE_EVERY`] pin-file revisions).
const REVOKED: &str = "revoked.soak.test";
/// Tunnels held open per revocation round.
const REVOKE_TUNNELS: usize = 4;
/// Pin-file revisions between revocation rounds.
const REVOKE_EVERY: u64 = 40;
/// The protected homeserver's name (the inbound certificate's SAN).
const SERVER: &str = "hs.soak.test";
/// `Host` as a remote homeserver sends it to the inbound edge.
const SERVER_HOST: &str = "hs.soak.test:8448";
const VERSION_PATH: &str = "/_matrix/federation/v1/version";
const HS_BODY: &str = r#"{"server":{"name":"soak-homeserver","version":"0"}}"#;

/// Upper bound for any single client operation (connect → last response byte).
const STEP: Duration = Duration::from_secs(10);
const TUNNEL_WORKERS: usize = 24;
const INBOUND_WORKERS: usize = 16;
/// Per worker: iterations are bounded by this as well as by time.
const MAX_ITERATIONS: u64 = 1_000_000;
/// Pin-file rewrite period.
const CHURN_EVERY: Duration = Duration::from_millis(100);
/// Open fds allowed above the start figure after the quiet period.
const FD_SLACK: i64 = 8;
/// RSS allowed above the start figure after the quiet period (allocator retention).
const RSS_SLACK_KB: u64 = 64 * 1024;
/// Failure reasons kept per category.
const KEEP_REASONS: usize = 10;

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// xorshift64*: no `rand` dependency; quality is irrelevant here.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// An error with its whole `source()` chain (hyper's Display alone is terse).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    net::error_chain(e)
}

fn utc_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Runs `fut` within [`STEP`]; a timeout is an error naming `what`.
async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what}: no outcome within {STEP:?}")),
    }
}

// ---------------------------------------------------------------------------
// Tally
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    tunnel_ok: AtomicU64,
    tunnel_failed: AtomicU64,
    tunnel_requests: AtomicU64,
    inbound_ok: AtomicU64,
    inbound_failed: AtomicU64,
    inbound_requests: AtomicU64,
    impostor_blocked: AtomicU64,
    impostor_accepted: AtomicU64,
    impostor_other: AtomicU64,
    tunnel_resets: AtomicU64,
    inbound_resets: AtomicU64,
    slow_ok: AtomicU64,
    slow_failed: AtomicU64,
    flaky_served: AtomicU64,
    flaky_refused: AtomicU64,
    flaky_cut: AtomicU64,
    flaky_odd: AtomicU64,
    reset_anomalies: AtomicU64,
    /// category → first reasons (UTC time, reason).
    reasons: Mutex<BTreeMap<&'static str, Vec<String>>>,
}

/// Where a legitimate round trip went: through a tunnel, or to the edge.
#[derive(Clone, Copy)]
enum Legit {
    Tunnel,
    Inbound,
}

impl Tally {
    /// The `(ok, requests, failed)` counters of `side`, and the category
    /// its failures' reasons are kept under.
    fn side(&self, side: Legit) -> (&AtomicU64, &AtomicU64, &AtomicU64, &'static str) {
        match side {
            Legit::Tunnel => (
                &self.tunnel_ok,
                &self.tunnel_requests,
                &self.tunnel_failed,
                "legit_tunnel",
            ),
            Legit::Inbound => (
                &self.inbound_ok,
                &self.inbound_requests,
                &self.inbound_failed,
                "legit_inbound",
            ),
        }
    }

    /// `ok=N failed=N requests=N` of `side`, for the report.
    fn side_counts(&self, side: Legit) -> String {
        let (ok, requests, failed, _) = self.side(side);
        counts("ok failed requests", [ok, failed, requests])
    }

    /// Counts one legitimate round trip of `side`: `k` requests served, or a
    /// failure with its reason kept.
    fn legit(&self, r: Result<usize, String>, h2: bool, side: Legit) {
        let (ok, requests, failed, category) = self.side(side);
        match r {
            Ok(k) => {
                bump(ok);
                requests.fetch_add(k as u64, Ordering::Relaxed);
            }
            Err(e) => {
                bump(failed);
                self.note(category, format!("{} {e}", if h2 { "h2" } else { "h1" }));
            }
        }
    }

    /// Counts an outcome in `counter` and notes `reason` under `category`.
    fn count(&self, counter: &AtomicU64, category: &'static str, reason: String) {
        bump(counter);
        self.note(category, reason);
    }

    fn note(&self, category: &'static str, reason: String) {
        let mut r = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        let list = r.entry(category).or_default();
        if list.len() < KEEP_REASONS {
            list.push(format!("{} {reason}", utc_now()));
        }
    }
    fn reasons(&self, category: &str) -> Vec<String> {
        self.reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(category)
            .cloned()
            .unwrap_or_default()
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The counters as `name=value`, space-separated; `names` space-separated.
fn counts<const N: usize>(names: &str, counters: [&AtomicU64; N]) -> String {
    let parts: Vec<String> = names
        .split(' ')
        .zip(counters)
        .map(|(n, c)| format!("{n}={}", get(c)))
        .collect();
    parts.join(" ")
}

/// Whether each of `replies` is a 200 with `body`; how many there were.
fn all_ok(replies: &[Reply], body: &str) -> Result<usize, String> {
    match replies.iter().find(|r| r.status != 200 || r.body != body) {
        Some(r) => Err(format!("unexpected reply: {r}")),
        None => Ok(replies.len()),
    }
}

/// One GET through a tunnel to `(host, port)`, within [`STEP`] (`what` on a timeout).
async fn one_through(
    ctx: &Ctx,
    what: &str,
    (host, port): (&str, u16),
    h2: bool,
) -> Result<Reply, String> {
    bounded(what, async {
        let mut replies = through_tunnel(ctx, host, port, h2, 1).await?;
        Ok(replies.remove(0))
    })
    .await
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// Stand-ins: TLS peers and the homeserver
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Serves every connection.
    Normal,
    /// Delays the TLS handshake by 0–300 ms.
    Slow,
    /// Half of the connections: RST at once, RST after the ClientHello, or RST on the request.
    Flaky,
}

/// A TLS HTTP server (h2 or HTTP/1.1 by ALPN) answering every request 200 "{label}\n".
async fn peer(leaf: &Leaf, label: &'static str, behaviour: Behaviour) -> SocketAddr {
    let acceptor = net::acceptor(leaf, &[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = seed();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((tcp, _)) = listener.accept().await {
            n += 1;
            let rng = Rng::new(base ^ n.wrapping_mul(0x1000_0001));
            tokio::spawn(serve_peer_conn(
                acceptor.clone(),
                tcp,
                label,
                behaviour,
                rng,
            ));
        }
    });
    addr
}

async fn serve_peer_conn(
    acceptor: TlsAcceptor,
    mut tcp: TcpStream,
    label: &'static str,
    behaviour: Behaviour,
    mut rng: Rng,
) {
    let _ = tcp.set_nodelay(true);
    match behaviour {
        Behaviour::Normal => {}
        Behaviour::Slow => tokio::time::sleep(rng.millis(300)).await,
        Behaviour::Flaky => {
            let roll = rng.below(100);
            if roll < 25 {
                // Reset at once.
                let _ = tcp.set_zero_linger();
                return;
            }
            if roll < 40 {
                // Reset after reading (part of) the ClientHello.
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(STEP, tcp.read(&mut buf)).await;
                let _ = tcp.set_zero_linger();
                return;
            }
            if roll < 50 {
                // Complete the handshake, then reset on the request.
                let Ok(Ok(mut tls)) = tokio::time::timeout(STEP, acceptor.accept(tcp)).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(STEP, tls.read(&mut buf)).await;
                let _ = tls.get_ref().0.set_zero_linger();
                return;
            }
        }
    }
    let Ok(Ok(tls)) = tokio::time::timeout(STEP, acceptor.accept(tcp)).await else {
        return;
    };
    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{label}\n")))))
    });
    net::serve_http_by_alpn(tls, svc).await;
}

/// The homeserver's plain-HTTP federation listener; `live` counts its open
/// connections (fedpin's pooled upstream connections, for the fd figures).
async fn homeserver(live: Arc<AtomicUsize>) -> SocketAddr {
    net::plain_http_counted(live, |req| async move {
        if req.uri().path() == VERSION_PATH {
            Response::new(Full::new(Bytes::from_static(HS_BODY.as_bytes())))
        } else {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// The fedpin child process
// ---------------------------------------------------------------------------

type Fedpin = process::Daemon;

/// Starts `fedpin run --config cfg` (JSON log to `log`, drain 10 s); waits
/// for its outbound, inbound and admin listeners.
fn start_fedpin(cfg: &Path, log: &Path) -> Fedpin {
    process::start_daemon(cfg, log, 10, Duration::from_secs(30))
}

/// (VmRSS, VmHWM) in kB.
fn proc_mem(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn fd_count(pid: u32) -> i64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as i64)
        .unwrap_or(-1)
}

/// GET `path` on the admin listener; the body.
async fn admin_get(admin: SocketAddr, path: &str) -> Result<String, String> {
    bounded("admin request", async {
        let mut tcp = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => Err(format!("admin {path}: {text}")),
        }
    })
    .await
}

/// One sample of a Prometheus text exposition, by its exact `name{labels}`.
fn metric(body: &str, key: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        if k == key {
            v.parse().ok()
        } else {
            None
        }
    })
}

/// The non-zero `fedpin_*` samples that are not histogram series.
fn nonzero_samples(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| l.starts_with("fedpin_"))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            !(name.ends_with("_bucket") || name.ends_with("_sum") || name.ends_with("_count"))
        })
        .filter(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.parse::<f64>().ok())
                .is_some_and(|v| v != 0.0)
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// The pin file and its churner
// ---------------------------------------------------------------------------

/// Pins (as "sha256/...") the contents are built from.
struct Keys {
    genuine: String,
    root: String,
    slow: String,
    flaky: String,
    revoked: String,
    impostor_real: String,
    unrelated: [String; 3],
}

impl Keys {
    /// A valid file: genuine (and slow, flaky) pinned to keys they hold, the
    /// impostor to keys it does not; unpinned names denied.
    fn valid(&self, rev: u64) -> String {
        let backup = &self.unrelated[2];
        let genuine = match rev % 3 {
            0 => format!("\"{}\", \"{backup}\"", self.genuine),
            1 => format!("\"{backup}\", \"{}\"", self.genuine),
            // The root CA's key is on the genuine peer's validated path too.
            _ => format!("\"{}\", \"{backup}\"", self.root),
        };
        format!(
            "# fedpin soak pin file, revision {rev}\nversion = 1\n\n[policy]\nunpinned = \"deny\"\n\n\
             [[peer]]\nserver_name = \"{GENUINE}\"\npins = [{genuine}]\nnote = \"soak revision {rev}\"\n\n\
             [[peer]]\nserver_name = \"{IMPOSTOR}\"\npins = [\"{}\", \"{}\"]\nnote = \"keys the impostor does not hold\"\n\n\
             [[peer]]\nserver_name = \"{SLOW}\"\npins = [\"{}\", \"{backup}\"]\n\n\
             [[peer]]\nserver_name = \"{FLAKY}\"\npins = [\"{}\", \"{backup}\"]\n\n\
             [[peer]]\nserver_name = \"{REVOKED}\"\npins = [\"{}\", \"{backup}\"]\n",
            self.unrelated[0], self.unrelated[1], self.slow, self.flaky, self.revoked
        )
    }

    /// [`Keys::valid`] with the REVOKED peer's key removed from its entry
    /// (replaced by a key it does not hold).
    fn revoking(&self, rev: u64) -> String {
        self.valid(rev)
            .replacen(&self.revoked, &self.unrelated[0], 1)
    }

    /// Broken contents, rotating over `BROKEN_KINDS`; several would accept
    /// the impostor or refuse the genuine peer if applied even in part.
    fn broken(&self, rev: u64, kind: u64) -> (&'static str, Vec<u8>) {
        let valid = self.valid(rev);
        match kind % BROKEN_KINDS {
            0 => (
                "bad TOML",
                valid
                    .replacen(&format!("server_name = \"{SLOW}\""), "server_name = ", 1)
                    .into_bytes(),
            ),
            1 => (
                "malformed pin",
                valid
                    .replacen(&self.genuine, "sha256/not-a-pin", 1)
                    .replacen(&self.root, "sha256/not-a-pin", 1)
                    .into_bytes(),
            ),
            2 => {
                // A duplicate impostor entry pinning its real key, placed first:
                // half-applied (first entry wins) it would accept the impostor.
                let dup = format!(
                    "[[peer]]\nserver_name = \"{IMPOSTOR}\"\npins = [\"{}\", \"{}\"]\n\n",
                    self.impostor_real, self.unrelated[2]
                );
                let at = valid.find("[[peer]]").unwrap();
                let mut s = valid.clone();
                s.insert_str(at, &dup);
                ("duplicate host", s.into_bytes())
            }
            3 => (
                // Would refuse the genuine peer if applied.
                "unknown field + genuine pinned to a wrong key",
                format!(
                    "version = 1\nbogus = true\n\n[[peer]]\nserver_name = \"{GENUINE}\"\npins = [\"{}\", \"{}\"]\n",
                    self.unrelated[0], self.unrelated[1]
                )
                .into_bytes(),
            ),
            4 => (
                // Would let everything through on Web PKI if applied.
                "unsupported version, no peers",
                b"version = 2\n\n[policy]\nunpinned = \"webpki\"\n".to_vec(),
            ),
            5 => ("empty file", Vec::new()),
            6 => {
                let mut b = valid.into_bytes();
                b.extend_from_slice(b"\n# \xff\xfe not UTF-8\n");
                ("not UTF-8", b)
            }
            _ => {
                let cut = valid.len() / 2;
                ("truncated", valid.as_bytes()[..cut].to_vec())
            }
        }
    }
}

const BROKEN_KINDS: u64 = 8;

/// Replaces `path` the way editors do: write a temp file, rename over.
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(".pins.toml.soak-tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Rewrites `path` in place, slowly, as a config-management tool or an
/// editor without atomic saves does: the first half of `bytes`, a pause
/// (shorter than the store's settle interval), then the rest. The half file
/// must never be published (issue 11: it once dropped a peer, and that
/// peer's impostor was accepted).
async fn rewrite_in_place_slowly(path: &Path, bytes: &[u8], pause: Duration) {
    use std::io::Write as _;
    let half = bytes.len() / 2;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(&bytes[..half]).unwrap();
    f.flush().unwrap();
    tokio::time::sleep(pause).await;
    f.write_all(&bytes[half..]).unwrap();
    f.flush().unwrap();
}

#[derive(Default)]
struct Churn {
    valid: AtomicU64,
    broken: AtomicU64,
    in_place: AtomicU64,
    revoke_rounds: AtomicU64,
    /// Tunnels open to REVOKED when its key was removed.
    revoked_open: AtomicU64,
    /// Of those, closed by fedpin within [`STEP`].
    revoked_closed: AtomicU64,
    /// New tunnels to REVOKED accepted after the removal (must be 0).
    revoked_reaccepted: AtomicU64,
    /// Tunnels that could not be opened before the removal (must be 0).
    revoked_setup_failed: AtomicU64,
}

/// One tunnel to REVOKED, verified and kept open after one request: the
/// sender and the task driving the connection (it ends when fedpin closes
/// the tunnel).
async fn open_revocable(
    ctx: &Ctx,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let tcp = connect(ctx, REVOKED, ctx.revoked_port).await?;
    let tls = tls_to(&ctx.inner_h1, tcp, REVOKED).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {}", chain(&e)))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = net::get_request(VERSION_PATH, REVOKED);
    let r = reply(
        send.send_request(req)
            .await
            .map_err(|e| format!("request: {}", chain(&e)))?,
    )
    .await?;
    if r.status != 200 || r.body != "revoked\n" {
        return Err(format!("unexpected reply before the removal: {r}"));
    }
    Ok((send, driver))
}

/// Opens [`REVOKE_TUNNELS`] tunnels to REVOKED, removes its key from the
/// pin file, counts the tunnels fedpin closes and whether a new one is
/// still accepted, then restores the key.
async fn revocation_round(ctx: &Ctx, pins: &Path, keys: &Keys, rev: u64, churn: &Churn) {
    bump(&churn.revoke_rounds);
    let mut open = Vec::new();
    for _ in 0..REVOKE_TUNNELS {
        match bounded(
            "tunnel to the peer about to be revoked",
            open_revocable(ctx),
        )
        .await
        {
            Ok(t) => open.push(t),
            Err(e) => {
                bump(&churn.revoked_setup_failed);
                ctx.tally.note("revoked_setup", e);
            }
        }
    }
    replace_file(pins, keys.revoking(rev).as_bytes());
    for (send, driver) in open {
        bump(&churn.revoked_open);
        match tokio::time::timeout(STEP, driver).await {
            Ok(_) => bump(&churn.revoked_closed),
            Err(_) => ctx.tally.note(
                "revoked_still_open",
                format!("a tunnel to {REVOKED} was still open {STEP:?} after its key was removed"),
            ),
        }
        drop(send);
    }
    // The new generation is in place (it closed the tunnels): a new tunnel
    // is refused.
    match bounded(
        "tunnel after the removal",
        through_tunnel(ctx, REVOKED, ctx.revoked_port, false, 1),
    )
    .await
    {
        Ok(r) if r.iter().any(|r| (200..300).contains(&r.status)) => {
            bump(&churn.revoked_reaccepted);
            ctx.tally.note("revoked_reaccepted", format!("{}", r[0]));
        }
        _ => {}
    }
    replace_file(pins, keys.valid(rev).as_bytes());
}

async fn churner(
    ctx: Arc<Ctx>,
    pins: PathBuf,
    keys: Arc<Keys>,
    churn: Arc<Churn>,
    deadline: Instant,
) {
    let mut tick = tokio::time::interval(CHURN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rev = 1u64;
    let limit = 100_000u64;
    while Instant::now() < deadline && rev < limit {
        tick.tick().await;
        rev += 1;
        if rev % REVOKE_EVERY == 1 {
            revocation_round(&ctx, &pins, &keys, rev, &churn).await;
            bump(&churn.valid);
        } else if rev.is_multiple_of(2) {
            let (_, bytes) = keys.broken(rev, rev / 2);
            replace_file(&pins, &bytes);
            bump(&churn.broken);
        } else if rev % 10 == 3 {
            rewrite_in_place_slowly(&pins, keys.valid(rev).as_bytes(), Duration::from_millis(60))
                .await;
            bump(&churn.valid);
            bump(&churn.in_place);
        } else {
            replace_file(&pins, keys.valid(rev).as_bytes());
            bump(&churn.valid);
        }
    }
    // Leave a valid file in place.
    replace_file(&pins, keys.valid(rev + 1).as_bytes());
    bump(&churn.valid);
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

struct Ctx {
    outbound: SocketAddr,
    inbound: SocketAddr,
    genuine_port: u16,
    impostor_port: u16,
    slow_port: u16,
    flaky_port: u16,
    revoked_port: u16,
    /// Inner TLS (trusts only fedpin's CA): HTTP/1.1 and h2.
    inner_h1: TlsConnector,
    inner_h2: TlsConnector,
    /// TLS to the inbound edge (trusts the test root).
    edge_h1: TlsConnector,
    edge_h2: TlsConnector,
    tally: Tally,
    deadline: Instant,
    stop: AtomicBool,
}

fn connector(root: &CertificateDer<'static>, alpn: &[u8]) -> TlsConnector {
    TlsConnector::from(net::client_config(&[root], &[alpn]))
}

struct Reply {
    status: u16,
    alert: Option<String>,
    body: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {} x-fedpin-alert {:?} body {:?}",
            self.status, self.alert, self.body
        )
    }
}

/// Reads one response head byte by byte (nothing of the tunnel is consumed).
async fn read_head(tcp: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            Ok(_) => {
                return Err(format!(
                    "proxy closed after {:?}",
                    String::from_utf8_lossy(&head)
                ))
            }
            Err(e) => return Err(format!("reading the CONNECT reply: {e}")),
        }
        if head.len() > 16 * 1024 {
            return Err("CONNECT reply head too long".into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// CONNECT host:port through fedpin's outbound proxy; the tunnel on 200.
async fn connect(ctx: &Ctx, host: &str, port: u16) -> Result<TcpStream, String> {
    let mut tcp = TcpStream::connect(ctx.outbound)
        .await
        .map_err(|e| format!("connecting to the proxy: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let target = format!("{host}:{port}");
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("writing CONNECT: {e}"))?;
    let head = read_head(&mut tcp).await?;
    let status_line = head.lines().next().unwrap_or_default().to_string();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("CONNECT {target}: {status_line}"));
    }
    Ok(tcp)
}

async fn tls_to(
    connector: &TlsConnector,
    tcp: TcpStream,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS with {name}: {}", chain(&e)))
}

async fn reply(resp: Response<Incoming>) -> Result<Reply, String> {
    let (status, alert, body) = net::status_alert_body(resp).await?;
    Ok(Reply {
        status,
        alert,
        body,
    })
}

/// `n` GETs of [`VERSION_PATH`] on one connection (h2 or HTTP/1.1 keep-alive).
async fn requests<IO>(io: IO, h2: bool, authority: &str, n: usize) -> Result<Vec<Reply>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let mut out = Vec::with_capacity(n);
    if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {}", chain(&e)))?;
        tokio::spawn(conn);
        for _ in 0..n {
            let req = Request::get(format!("https://{authority}{VERSION_PATH}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("h2 request: {}", chain(&e)))?;
            out.push(reply(resp).await?);
        }
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {}", chain(&e)))?;
        tokio::spawn(conn);
        for i in 0..n {
            send.ready().await.map_err(|e| {
                format!(
                    "HTTP/1.1 connection before request {}: {}",
                    i + 1,
                    chain(&e)
                )
            })?;
            let req = net::get_request(VERSION_PATH, authority);
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP/1.1 request {}: {}", i + 1, chain(&e)))?;
            out.push(reply(resp).await?);
        }
    }
    Ok(out)
}

/// CONNECT + inner TLS + `n` requests to `host`.
async fn through_tunnel(
    ctx: &Ctx,
    host: &str,
    port: u16,
    h2: bool,
    n: usize,
) -> Result<Vec<Reply>, String> {
    let tcp = connect(ctx, host, port).await?;
    let inner = if h2 { &ctx.inner_h2 } else { &ctx.inner_h1 };
    let tls = tls_to(inner, tcp, host).await?;
    requests(tls, h2, host, n).await
}

/// A genuine round trip: must always succeed.
async fn genuine_tunnel(ctx: &Ctx, rng: &mut Rng) {
    let h2 = rng.one_in(4);
    let n = 1 + rng.below(3) as usize;
    let r = bounded("genuine tunnel", async {
        let replies = through_tunnel(ctx, GENUINE, ctx.genuine_port, h2, n).await?;
        all_ok(&replies, "genuine\n")
    })
    .await;
    ctx.tally.legit(r, h2, Legit::Tunnel);
}

/// The impostor: must get 502 with x-fedpin-alert: pin_mismatch.
async fn impostor_tunnel(ctx: &Ctx, rng: &mut Rng) {
    let h2 = rng.one_in(4);
    let r = one_through(ctx, "impostor tunnel", (IMPOSTOR, ctx.impostor_port), h2).await;
    let t = &ctx.tally;
    match r {
        Ok(rep) if (200..300).contains(&rep.status) => {
            t.count(&t.impostor_accepted, "impostor_accepted", rep.to_string())
        }
        Ok(rep) if rep.status == 502 && rep.alert.as_deref() == Some("pin_mismatch") => {
            bump(&t.impostor_blocked)
        }
        Ok(rep) => t.count(&t.impostor_other, "impostor_other", rep.to_string()),
        Err(e) => t.count(&t.impostor_other, "impostor_other", e),
    }
}

/// The client walks away abruptly (RST) at a random point of a tunnel.
async fn tunnel_client_reset(ctx: &Ctx, rng: &mut Rng) {
    let (host, port) = if rng.one_in(2) {
        (GENUINE, ctx.genuine_port)
    } else {
        (IMPOSTOR, ctx.impostor_port)
    };
    let variant = rng.below(5);
    let pause = rng.millis(30);
    bump(&ctx.tally.tunnel_resets);
    let r = bounded("tunnel client reset", async {
        match variant {
            0 => {
                // Half a CONNECT head.
                let mut tcp = TcpStream::connect(ctx.outbound)
                    .await
                    .map_err(|e| format!("connecting to the proxy: {e}"))?;
                let _ = tcp.set_zero_linger();
                let _ = tcp.write_all(format!("CONNECT {host}:").as_bytes()).await;
                tokio::time::sleep(pause).await;
            }
            1 => {
                // Right after the 200.
                let tcp = connect(ctx, host, port).await?;
                let _ = tcp.set_zero_linger();
            }
            2 => {
                // Mid inner handshake.
                let tcp = connect(ctx, host, port).await?;
                let _ = tcp.set_zero_linger();
                let _ = tokio::time::timeout(pause, tls_to(&ctx.inner_h1, tcp, host)).await;
            }
            3 => {
                // Half a request head.
                let tcp = connect(ctx, host, port).await?;
                let _ = tcp.set_zero_linger();
                let mut tls = tls_to(&ctx.inner_h1, tcp, host).await?;
                let _ = tls.write_all(b"GET /_matrix/federation/v1/ver").await;
                tokio::time::sleep(pause).await;
            }
            _ => {
                // A whole request, gone before the response.
                let tcp = connect(ctx, host, port).await?;
                let _ = tcp.set_zero_linger();
                let mut tls = tls_to(&ctx.inner_h1, tcp, host).await?;
                let _ = tls
                    .write_all(
                        format!("GET {VERSION_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
                    )
                    .await;
                let _ = tls.flush().await;
                tokio::time::sleep(pause).await;
            }
        }
        Ok(())
    })
    .await;
    if let Err(e) = r {
        // Failed before the client's own reset point.
        bump(&ctx.tally.reset_anomalies);
        ctx.tally.note(
            "reset_anomaly",
            format!("tunnel {host} variant {variant}: {e}"),
        );
    }
}

/// A slow or flaky upstream.
async fn troubled_upstream(ctx: &Ctx, rng: &mut Rng) {
    let h2 = rng.one_in(4);
    let t = &ctx.tally;
    if rng.one_in(2) {
        let r = one_through(ctx, "slow peer", (SLOW, ctx.slow_port), h2).await;
        match r {
            Ok(rep) if rep.status == 200 && rep.body == "slow\n" => bump(&t.slow_ok),
            Ok(rep) => t.count(&t.slow_failed, "slow_failed", rep.to_string()),
            Err(e) => t.count(&t.slow_failed, "slow_failed", e),
        }
    } else {
        let r = one_through(ctx, "flaky peer", (FLAKY, ctx.flaky_port), h2).await;
        match r {
            Ok(rep) if rep.status == 200 && rep.body == "flaky\n" => bump(&t.flaky_served),
            Ok(rep) if rep.status == 502 && rep.alert.as_deref() == Some("none") => {
                bump(&t.flaky_refused)
            }
            Ok(rep) => t.count(&t.flaky_odd, "flaky_odd", rep.to_string()),
            // The peer reset after the handshake: the tunnel is cut.
            Err(_) => bump(&t.flaky_cut),
        }
    }
}

/// One worker of `side`, until the deadline, a stop or [`MAX_ITERATIONS`]
/// rounds. Each round: a client that walks away (1 in 5) or a legitimate
/// round trip; through tunnels also an impostor (1 in 3) and a troubled
/// upstream (1 in 6).
async fn worker(ctx: Arc<Ctx>, id: u64, side: Legit) {
    let salt = match side {
        Legit::Tunnel => id << 40,
        Legit::Inbound => (id << 48) ^ 0xabcd,
    };
    let mut rng = Rng::new(seed() ^ salt);
    let mut i = 0;
    while Instant::now() < ctx.deadline && !ctx.stop.load(Ordering::Relaxed) && i < MAX_ITERATIONS {
        i += 1;
        match (side, rng.one_in(5)) {
            (Legit::Tunnel, true) => tunnel_client_reset(&ctx, &mut rng).await,
            (Legit::Tunnel, false) => genuine_tunnel(&ctx, &mut rng).await,
            (Legit::Inbound, true) => inbound_client_reset(&ctx, &mut rng).await,
            (Legit::Inbound, false) => inbound_legit(&ctx, &mut rng).await,
        }
        if let Legit::Inbound = side {
            continue;
        }
        if rng.one_in(3) {
            impostor_tunnel(&ctx, &mut rng).await;
        }
        if rng.one_in(6) {
            troubled_upstream(&ctx, &mut rng).await;
        }
    }
}

/// TLS to the inbound edge + 1–3 GETs: must always succeed.
async fn inbound_legit(ctx: &Ctx, rng: &mut Rng) {
    let h2 = rng.one_in(4);
    let n = 1 + rng.below(3) as usize;
    let r = bounded("inbound request", async {
        let tcp = TcpStream::connect(ctx.inbound)
            .await
            .map_err(|e| format!("connecting to the edge: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let edge = if h2 { &ctx.edge_h2 } else { &ctx.edge_h1 };
        let tls = tls_to(edge, tcp, SERVER).await?;
        let replies = requests(tls, h2, SERVER_HOST, n).await?;
        all_ok(&replies, HS_BODY)
    })
    .await;
    ctx.tally.legit(r, h2, Legit::Inbound);
}

/// A client that walks away from the edge at a random point.
async fn inbound_client_reset(ctx: &Ctx, rng: &mut Rng) {
    let variant = rng.below(5);
    let pause = rng.millis(30);
    bump(&ctx.tally.inbound_resets);
    let r = bounded("inbound client reset", async {
        let tcp = TcpStream::connect(ctx.inbound)
            .await
            .map_err(|e| format!("connecting to the edge: {e}"))?;
        if variant != 4 {
            let _ = tcp.set_zero_linger();
        }
        match variant {
            0 => {}
            1 => {
                let _ = tokio::time::timeout(pause, tls_to(&ctx.edge_h1, tcp, SERVER)).await;
            }
            2 => {
                let mut tls = tls_to(&ctx.edge_h1, tcp, SERVER).await?;
                let _ = tls.write_all(b"GET /_matrix/federation/v1/vers").await;
                tokio::time::sleep(pause).await;
            }
            3 => {
                let mut tls = tls_to(&ctx.edge_h1, tcp, SERVER).await?;
                let _ = tls
                    .write_all(
                        format!("GET {VERSION_PATH} HTTP/1.1\r\nHost: {SERVER_HOST}\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
                let _ = tls.flush().await;
                tokio::time::sleep(pause).await;
            }
            _ => {
                // Half a head, then an orderly close (FIN, not RST).
                let mut tls = tls_to(&ctx.edge_h1, tcp, SERVER).await?;
                let _ = tls.write_all(b"GET /_matrix/federation/v1/ver").await;
                tokio::time::sleep(pause).await;
                let _ = tls.shutdown().await;
            }
        }
        Ok(())
    })
    .await;
    if let Err(e) = r {
        bump(&ctx.tally.reset_anomalies);
        ctx.tally
            .note("reset_anomaly", format!("inbound variant {variant}: {e}"));
    }
}

// ---------------------------------------------------------------------------
// Log summary
// ---------------------------------------------------------------------------

/// WARN/ERROR lines of fedpin's JSON log grouped by (level, message), most frequent first.
fn log_summary(log: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            *groups.entry(format!("(not JSON) {line:.120}")).or_default() += 1;
            continue;
        };
        let level = v["level"].as_str().unwrap_or("?");
        if level != "WARN" && level != "ERROR" {
            continue;
        }
        // Alerts carry per-peer text: group them by event.
        let what = match v["fields"]["event"].as_str() {
            Some(event) => format!("event={event}"),
            None => v["fields"]["message"].as_str().unwrap_or("?").to_string(),
        };
        *groups
            .entry(format!(
                "{level} {} {what}",
                v["target"].as_str().unwrap_or("?")
            ))
            .or_default() += 1;
    }
    let mut out: Vec<(usize, String)> = groups.into_iter().map(|(k, n)| (n, k)).collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    out
}

/// WARN/ERROR log lines that name `needle` (the first `max`), leaving out the
/// resets the test's own clients cause.
fn log_lines_naming(log: &Path, needle: &str, max: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(needle) && (l.contains("\"WARN\"") || l.contains("\"ERROR\"")))
        .filter(|l| !l.contains("Connection reset by peer"))
        .take(max)
        .map(|l| format!("{l:.600}"))
        .collect()
}

// ---------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: run by .ci/run (FEDPIN_SOAK_SECS, default 20)"]
async fn soak_under_churn() {
    let secs = env_knob("FEDPIN_SOAK_SECS", 20, 3600);
    let keep = env_flag("FEDPIN_SOAK_KEEP");
    let wall = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();

    // PKI: one root for every peer (the impostor's leaf is CA-valid too).
    let ca = root("fedpin soak root");
    let [genuine, impostor, slow, flaky, revoked, edge] =
        [GENUINE, IMPOSTOR, SLOW, FLAKY, REVOKED, SERVER].map(|name| leaf(&ca, &[name]));
    let unrelated = [1, 2, 3].map(|i| leaf(&ca, &[&format!("unrelated-{i}.soak.test")]));
    let keys = Arc::new(Keys {
        genuine: pin(&genuine.cert).to_string(),
        root: pin(&ca.cert).to_string(),
        slow: pin(&slow.cert).to_string(),
        flaky: pin(&flaky.cert).to_string(),
        revoked: pin(&revoked.cert).to_string(),
        impostor_real: pin(&impostor.cert).to_string(),
        unrelated: unrelated.each_ref().map(|l| pin(&l.cert).to_string()),
    });
    assert!(keys.genuine.starts_with("sha256/"), "{}", keys.genuine);
    // Every broken kind really is rejected, and every valid revision accepted.
    for k in 0..BROKEN_KINDS {
        let (what, bytes) = keys.broken(7, k);
        assert!(
            fedpin::pins::PinSet::parse_bytes(&bytes).is_err(),
            "broken kind {k} ({what}) parses"
        );
    }
    for rev in 0..3 {
        if let Err(e) = fedpin::pins::PinSet::parse(&keys.valid(rev)) {
            panic!("valid revision {rev} rejected: {e}");
        }
        let revoking = keys.revoking(rev);
        assert!(
            !revoking.contains(&keys.revoked),
            "revision {rev} keeps the key"
        );
        if let Err(e) = fedpin::pins::PinSet::parse(&revoking) {
            panic!("revoking revision {rev} rejected: {e}");
        }
    }

    // Stand-ins.
    let genuine_addr = peer(&genuine, "genuine", Behaviour::Normal).await;
    let impostor_addr = peer(&impostor, "impostor", Behaviour::Normal).await;
    let slow_addr = peer(&slow, "slow", Behaviour::Slow).await;
    let flaky_addr = peer(&flaky, "flaky", Behaviour::Flaky).await;
    let revoked_addr = peer(&revoked, "revoked", Behaviour::Normal).await;
    let hs_live = Arc::new(AtomicUsize::new(0));
    let hs_addr = homeserver(hs_live.clone()).await;

    // fedpin's files: CA from `fedpin ca init`, roots, edge cert, pins/.
    let fedpin_ca = process::daemon_files(&d, &ca, &edge);
    let pins_path = d.join("pins/pins.toml");
    replace_file(&pins_path, keys.valid(0).as_bytes());
    let names = [GENUINE, IMPOSTOR, SLOW, FLAKY, REVOKED];
    let outbound =
        "connect_timeout_secs = 5\nhandshake_timeout_secs = 10\nidle_timeout_secs = 30\n";
    let inbound = "header_timeout_secs = 10\n";
    let cfg = process::daemon_config(&d, &names, outbound, hs_addr, inbound);

    let mut daemon = start_fedpin(&cfg, &d.join("fedpin.log"));
    let pid = daemon.pid();

    let ctx = Arc::new(Ctx {
        outbound: daemon.outbound,
        inbound: daemon.inbound,
        genuine_port: genuine_addr.port(),
        impostor_port: impostor_addr.port(),
        slow_port: slow_addr.port(),
        flaky_port: flaky_addr.port(),
        revoked_port: revoked_addr.port(),
        inner_h1: connector(&fedpin_ca[0], b"http/1.1"),
        inner_h2: connector(&fedpin_ca[0], b"h2"),
        edge_h1: connector(&ca.cert, b"http/1.1"),
        edge_h2: connector(&ca.cert, b"h2"),
        tally: Tally::default(),
        // Replaced below once warm-up is done.
        deadline: Instant::now(),
        stop: AtomicBool::new(false),
    });

    // Warm-up at full concurrency (fills fedpin's upstream pool, caches,
    // runtime threads), and proves the setup: every legit request passes,
    // the impostor is blocked.
    let mut warm = Vec::new();
    for i in 0..INBOUND_WORKERS.max(TUNNEL_WORKERS) as u64 {
        let c = ctx.clone();
        warm.push(tokio::spawn(async move {
            let mut rng = Rng::new(i + 1);
            for _ in 0..3 {
                genuine_tunnel(&c, &mut rng).await;
                inbound_legit(&c, &mut rng).await;
            }
            impostor_tunnel(&c, &mut rng).await;
        }));
    }
    for w in warm {
        w.await.unwrap();
    }
    {
        let t = &ctx.tally;
        let failed = get(&t.tunnel_failed)
            + get(&t.inbound_failed)
            + get(&t.impostor_accepted)
            + get(&t.impostor_other);
        if failed != 0 {
            let kept = dir.keep();
            panic!(
                "warm-up failed: {:?} {:?} {:?} {:?}\nkept {} (fedpin.log)",
                t.reasons("legit_tunnel"),
                t.reasons("legit_inbound"),
                t.reasons("impostor_accepted"),
                t.reasons("impostor_other"),
                kept.display()
            );
        }
    }
    let warm_metrics = admin_get(daemon.admin, "/metrics").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_start, _) = proc_mem(pid);
    let fds_start = fd_count(pid);
    let hs_live_start = hs_live.load(Ordering::SeqCst) as i64;
    let (reloads_ok_start, reloads_failed_start) = (
        metric(&warm_metrics, "fedpin_pin_reloads_total{result=\"ok\"}").unwrap_or(0.0),
        metric(&warm_metrics, "fedpin_pin_reloads_total{result=\"failed\"}").unwrap_or(0.0),
    );
    // Start from zero for the load phase.
    let ctx = {
        let mut c = Arc::into_inner(ctx).expect("warm-up tasks are done");
        c.tally = Tally::default();
        c.deadline = Instant::now() + Duration::from_secs(secs);
        Arc::new(c)
    };

    // Load.
    let load_started = Instant::now();
    let churn = Arc::new(Churn::default());
    let churn_task = tokio::spawn(churner(
        ctx.clone(),
        pins_path.clone(),
        keys.clone(),
        churn.clone(),
        ctx.deadline,
    ));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0u64;
            let mut samples = 0u64;
            while sampling.load(Ordering::Relaxed) && samples < 100_000 {
                samples += 1;
                peak = peak.max(proc_mem(pid).0);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            peak.max(proc_mem(pid).0)
        })
    };
    let mut workers = Vec::new();
    for i in 0..TUNNEL_WORKERS as u64 {
        workers.push(tokio::spawn(worker(ctx.clone(), i, Legit::Tunnel)));
    }
    for i in 0..INBOUND_WORKERS as u64 {
        workers.push(tokio::spawn(worker(ctx.clone(), 1000 + i, Legit::Inbound)));
    }
    // Every op is bounded by STEP, so the workers end by deadline + STEP.
    let join_limit = Duration::from_secs(secs) + STEP * 3;
    let mut stuck_workers = 0;
    for w in workers {
        let left = join_limit.saturating_sub(load_started.elapsed());
        match tokio::time::timeout(left.max(Duration::from_millis(1)), w).await {
            Ok(r) => r.unwrap(),
            Err(_) => {
                ctx.stop.store(true, Ordering::Relaxed);
                stuck_workers += 1;
            }
        }
    }
    churn_task.await.unwrap();
    let load_secs = load_started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let rss_peak_sampled = sampler.await.unwrap();
    let (rss_end, hwm_end) = proc_mem(pid);
    let fds_end = fd_count(pid);

    // Quiet: wait (bounded) until fedpin reports nothing open, then 3 s more.
    let quiet_started = Instant::now();
    let mut open = (f64::NAN, f64::NAN);
    while quiet_started.elapsed() < Duration::from_secs(30) {
        if let Ok(m) = admin_get(daemon.admin, "/metrics").await {
            open = (
                metric(&m, "fedpin_outbound_active_tunnels").unwrap_or(f64::NAN),
                metric(&m, "fedpin_inbound_connections").unwrap_or(f64::NAN),
            );
            if open == (0.0, 0.0) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_after = quiet_started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_quiet, hwm_quiet) = proc_mem(pid);
    let fds_quiet = fd_count(pid);
    let hs_live_quiet = hs_live.load(Ordering::SeqCst) as i64;
    let metrics = admin_get(daemon.admin, "/metrics")
        .await
        .unwrap_or_default();
    let m = |k: &str| metric(&metrics, k).unwrap_or(f64::NAN);
    let reloads_ok = m("fedpin_pin_reloads_total{result=\"ok\"}") - reloads_ok_start;
    let reloads_failed = m("fedpin_pin_reloads_total{result=\"failed\"}") - reloads_failed_start;

    // Is fedpin still up, and does it stop cleanly?
    let alive_at_end = matches!(daemon.child.try_wait(), Ok(None));
    let mut exit = None;
    if alive_at_end {
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM {pid}");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(s)) = daemon.child.try_wait() {
                exit = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Report.
    let t = &ctx.tally;
    let legit_failed = get(&t.tunnel_failed) + get(&t.inbound_failed);
    let legit_ok = get(&t.tunnel_ok) + get(&t.inbound_ok);
    let upstream_trouble = get(&t.slow_ok)
        + get(&t.slow_failed)
        + get(&t.flaky_served)
        + get(&t.flaky_refused)
        + get(&t.flaky_cut)
        + get(&t.flaky_odd);
    // fedpin's pooled connections to the homeserver are fds it may keep (≤ 64 idle, 60 s).
    let pool_growth = (hs_live_quiet - hs_live_start).max(0);
    println!();
    println!(
        "soak: {secs} s ({load_secs:.1} s of load), {TUNNEL_WORKERS} tunnel workers, {INBOUND_WORKERS} inbound workers, pin file rewritten {} times ({} valid, {} of them slowly in place; {} broken)",
        get(&churn.valid) + get(&churn.broken),
        get(&churn.valid),
        get(&churn.in_place),
        get(&churn.broken)
    );
    println!(
        "legit handshakes: ok={legit_ok} failed={legit_failed} (tunnels {}; inbound {})",
        t.side_counts(Legit::Tunnel),
        t.side_counts(Legit::Inbound),
    );
    let revocation = format!(
        "{} rounds, open tunnels closed after their key was removed: {} of {}; new tunnels accepted after removal: {}; setup failures: {}",
        get(&churn.revoke_rounds),
        get(&churn.revoked_closed),
        get(&churn.revoked_open),
        get(&churn.revoked_reaccepted),
        get(&churn.revoked_setup_failed)
    );
    println!("revocation: {revocation}");
    println!(
        "impostor handshakes: {}",
        counts(
            "blocked accepted other",
            [&t.impostor_blocked, &t.impostor_accepted, &t.impostor_other]
        )
    );
    println!(
        "client resets: {} (tunnel {}, inbound {}; failed before the reset point: {}), upstream resets/slow: {upstream_trouble} (slow {}; flaky {})",
        get(&t.tunnel_resets) + get(&t.inbound_resets),
        get(&t.tunnel_resets),
        get(&t.inbound_resets),
        get(&t.reset_anomalies),
        counts("ok failed", [&t.slow_ok, &t.slow_failed]),
        counts(
            "served refused cut odd",
            [&t.flaky_served, &t.flaky_refused, &t.flaky_cut, &t.flaky_odd]
        ),
    );
    println!(
        "rss kB: start={rss_start} peak={} (sampled {rss_peak_sampled}, VmHWM {hwm_end}) end={rss_end} after_quiet={rss_quiet} (VmHWM {hwm_quiet})",
        rss_peak_sampled.max(hwm_end)
    );
    println!(
        "fds: start={fds_start} end={fds_end} after_quiet={fds_quiet} (homeserver pool conns: start={hs_live_start} after_quiet={hs_live_quiet})"
    );
    println!("pin reloads (metrics): ok={reloads_ok} failed={reloads_failed}");
    println!(
        "open after load: tunnels={} inbound={} (settled after {:.1} s)",
        open.0,
        open.1,
        drained_after.as_secs_f64()
    );
    println!("fedpin metrics (non-zero counters and gauges, all runs since start):");
    for line in nonzero_samples(&metrics) {
        println!("  {line}");
    }
    println!(
        "fedpin: alive at end={alive_at_end}, exit on SIGTERM={exit:?}; wall time {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    println!("fedpin WARN/ERROR log lines by message:");
    for (n, what) in log_summary(&daemon.log).iter().take(20) {
        println!("  {n:>7}  {what}");
    }
    for category in [
        "legit_tunnel",
        "legit_inbound",
        "impostor_accepted",
        "impostor_other",
        "slow_failed",
        "flaky_odd",
        "reset_anomaly",
        "revoked_setup",
        "revoked_still_open",
        "revoked_reaccepted",
    ] {
        let r = t.reasons(category);
        if !r.is_empty() {
            println!("first {category} reasons:");
            for line in r {
                println!("  {line}");
            }
        }
    }

    // Verdict.
    let mut problems = Vec::new();
    if legit_failed != 0 {
        problems.push(format!("{legit_failed} legit handshakes failed"));
    }
    if get(&t.impostor_accepted) != 0 {
        problems.push(format!(
            "{} impostor handshakes accepted",
            get(&t.impostor_accepted)
        ));
    }
    if get(&churn.revoke_rounds) == 0
        || get(&churn.revoked_open) == 0
        || get(&churn.revoked_closed) != get(&churn.revoked_open)
        || get(&churn.revoked_reaccepted) != 0
        || get(&churn.revoked_setup_failed) != 0
    {
        problems.push(format!("revocation: {revocation}"));
    }
    if get(&t.impostor_other) != 0 {
        problems.push(format!(
            "{} impostor attempts ended without the 502 pin_mismatch answer",
            get(&t.impostor_other)
        ));
    }
    if get(&t.impostor_blocked) == 0 || get(&t.tunnel_ok) == 0 || get(&t.inbound_ok) == 0 {
        problems.push("the load did not run (no successes counted)".into());
    }
    if stuck_workers != 0 {
        problems.push(format!("{stuck_workers} workers did not finish in time"));
    }
    // NaN (metrics unreadable) fails these comparisons too.
    if !(reloads_ok > 0.0 && reloads_failed > 0.0) {
        problems.push(format!(
            "no pin churn seen: reloads ok={reloads_ok} failed={reloads_failed}"
        ));
    }
    if open != (0.0, 0.0) {
        problems.push(format!(
            "connections still open 30 s after the load: tunnels={} inbound={}",
            open.0, open.1
        ));
    }
    if fds_quiet < 0 || fds_quiet > fds_start + FD_SLACK + pool_growth {
        problems.push(format!(
            "fds grew: start={fds_start} after_quiet={fds_quiet} (slack {FD_SLACK}, homeserver pool growth {pool_growth})"
        ));
    }
    if rss_quiet > rss_start + RSS_SLACK_KB {
        problems.push(format!(
            "RSS grew: start={rss_start} kB after_quiet={rss_quiet} kB (slack {RSS_SLACK_KB} kB)"
        ));
    }
    if !alive_at_end {
        problems.push(format!(
            "fedpin died during the soak: {:?}",
            daemon.child.try_wait()
        ));
    } else if !exit.is_some_and(|s| s.success()) {
        problems.push(format!("fedpin did not exit 0 on SIGTERM: {exit:?}"));
    }
    if !problems.is_empty() {
        for who in [GENUINE, SERVER] {
            let lines = log_lines_naming(&daemon.log, who, 10);
            if !lines.is_empty() {
                println!("fedpin WARN/ERROR lines naming {who}:");
                for l in lines {
                    println!("  {l}");
                }
            }
        }
    }
    process::keep_or_pass(dir, keep, &problems, "soak");
}
