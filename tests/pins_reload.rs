//! SPEC 4.8 (reload), one test per clause, each named after invariant 8.
//!
//! Real pin files in a temporary directory (replaced the way editors, `pinctl`
//! and Kubernetes ConfigMaps replace them), the real directory watcher, and
//! real TLS on 127.0.0.1 with chains minted per test by rcgen. Every wait is
//! a bounded poll; nothing sleeps for a fixed time hoping a condition holds.

mod common;

use common::*;
use fedpin::alert::{Action, AlertEvent, AlertHub, Direction, Severity};
use fedpin::pin_store::{PinStore, ReloadOutcome};
use fedpin::pins::Pin;
use fedpin::tls::UpstreamTls;
use fedpin::verify::{PeerContext, VerifierCore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST: &str = "hs.fedpin.test";
const OTHER: &str = "other.fedpin.test";

/// The watcher's debounce in these tests.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// The watcher's periodic re-check: long, so that only file events can explain a pickup.
const POLL: Duration = Duration::from_secs(30);
/// How long a reload by the watcher may take before the test gives up.
const PICKUP: Duration = Duration::from_secs(5);
/// How often the tests poll a condition.
const TICK: Duration = Duration::from_millis(20);

/// A pin file with one peer for `HOST` pinning `pins`.
fn pins_toml(pins: &[&Pin]) -> String {
    let pins: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "version = 1\n\n[[peer]]\nserver_name = \"{HOST}\"\npins = [{}]\n",
        pins.join(", ")
    )
}

/// A pin that no test certificate carries.
fn unrelated_pin() -> Pin {
    Pin::of_spki(b"not the key of any test certificate")
}

/// Writes `content` to a temporary name in `path`'s directory and renames it
/// over `path` (what editors and `pinctl` do).
fn replace_by_rename(path: &Path, content: &str) {
    let tmp = path.with_file_name(".pins.toml.tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `cond` every `TICK` until it holds or `limit` passes; returns the
/// time it took, or `None` if it never held.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Waits for the store to reach generation `generation` (set by the watcher).
async fn wait_for_generation(store: &PinStore, generation: u64, what: &str) {
    let took = wait_until(PICKUP, || store.current().generation == generation).await;
    let Some(took) = took else {
        panic!(
            "{what}: the watcher did not pick up the change within {PICKUP:?} (still at generation {})",
            store.current().generation
        );
    };
    // The periodic re-check is 30 s away: a pickup within PICKUP came from a file event.
    eprintln!("{what}: generation {generation} in force after {took:?}");
}

/// Asserts that `cond` holds at every poll for `window` (for "nothing changes"
/// outcomes that have no event to wait for).
async fn holds_throughout(window: Duration, mut cond: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while start.elapsed() < window {
        assert!(cond(), "{what}");
        tokio::time::sleep(TICK).await;
    }
    assert!(cond(), "{what}");
}

fn outbound(addr: SocketAddr) -> PeerContext {
    PeerContext {
        direction: Some(Direction::Outbound),
        server_name: None,
        port: Some(addr.port()),
        peer_addr: Some(addr),
    }
}

/// One upstream connection through `tls`, as the proxy makes it: a fresh
/// connector per connection. Returns the greeting or error, whether the
/// session resumed, and the generation the connector enforced.
async fn upstream(tls: &UpstreamTls, addr: SocketAddr) -> (Result<String, String>, bool, u64) {
    let c = tls
        .connector(outbound(addr), vec![b"http/1.1".to_vec()])
        .unwrap();
    let generation = c.generation();
    let (result, resumed) = c
        .state
        .scope(connect_with(c.config.clone(), addr, HOST))
        .await;
    (result, resumed, generation)
}

/// The pin_mismatch alerts raised so far.
fn mismatches(hub: &AlertHub) -> Vec<fedpin::alert::Alert> {
    alerts(hub)
        .into_iter()
        .filter(|a| a.event == AlertEvent::PinMismatch)
        .collect()
}

/// A genuine server and a CA-valid impostor for `HOST`, a core trusting
/// their CA, and a pin file in a fresh directory pinning the genuine key.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    path: PathBuf,
    core: Arc<VerifierCore>,
    hub: AlertHub,
    genuine: Leaf,
    impostor: Leaf,
    good: SocketAddr,
    bad: SocketAddr,
}

impl Fixture {
    async fn new() -> Self {
        let ca = root("Public CA");
        let genuine = leaf(&ca, &[HOST]);
        let impostor = leaf(&ca, &[HOST]);
        // No dedup window: every check that raises an alert shows up in `recent()`.
        let hub = AlertHub::with_window(Duration::ZERO);
        let core = net::only_anchor(&ca.cert, &hub);
        let good = serve(vec![genuine.cert.clone()], genuine.key_der()).await;
        let bad = serve(vec![impostor.cert.clone()], impostor.key_der()).await;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let path = dir.join("pins.toml");
        std::fs::write(&path, pins_toml(&[&pin(&genuine.cert)])).unwrap();
        Fixture {
            _dir: tmp,
            dir,
            path,
            core,
            hub,
            genuine,
            impostor,
            good,
            bad,
        }
    }

    fn open(&self) -> Arc<PinStore> {
        self.open_at(&self.path)
    }

    fn open_at(&self, path: &Path) -> Arc<PinStore> {
        let store = Arc::new(PinStore::open(path, self.hub.clone()).unwrap());
        assert_eq!(store.current().generation, 1);
        store
    }

    /// The pin store of the fixture's file, watched, and upstream TLS with it.
    fn watched(&self) -> (Arc<PinStore>, UpstreamTls, fedpin::pin_store::WatchHandle) {
        let store = self.open();
        let tls = self.upstream_tls(&store);
        let watch = store.watch(DEBOUNCE, POLL).unwrap();
        (store, tls, watch)
    }

    fn upstream_tls(&self, store: &Arc<PinStore>) -> UpstreamTls {
        UpstreamTls::new(self.core.clone(), store.clone(), fedpin::tls::provider())
    }

    /// Whether the set in force pins exactly `expected` for `HOST`.
    fn pins_are(store: &PinStore, expected: &[&Pin]) -> bool {
        let set = store.current();
        set.lookup(HOST).is_some_and(|p| {
            p.pins.len() == expected.len() && expected.iter().all(|e| p.has_pin(e))
        })
    }

    /// Over real TLS: the genuine server is accepted and the impostor is
    /// rejected with a pin_mismatch alert naming `generation`.
    async fn old_pins_enforced(&self, tls: &UpstreamTls, generation: u64) {
        let before = mismatches(&self.hub).len();
        let (r, _, g) = upstream(tls, self.good).await;
        assert_eq!(g, generation);
        assert_eq!(r.as_deref(), Ok("hello\n"), "genuine server must pass");
        let (r, _, g) = upstream(tls, self.bad).await;
        assert_eq!(g, generation);
        let err = r.expect_err("a CA-valid impostor must be rejected");
        assert!(err.contains("pin check failed for hs.fedpin.test"), "{err}");
        let m = mismatches(&self.hub);
        assert_eq!(m.len(), before + 1, "{m:?}");
        let a = m.last().unwrap();
        assert_eq!(a.pin_generation, generation);
        assert_eq!(a.action, Action::Blocked);
        assert_eq!(a.known_pins, vec![pin(&self.genuine.cert).to_string()]);
        assert_eq!(
            a.served_chain[0].pin.as_deref(),
            Some(pin(&self.impostor.cert).to_string().as_str())
        );
    }
}

/// Invariant 8: a file that fails to parse or validate is rejected whole; the
/// previous set stays in force and `pin_reload_failed` is raised.
#[tokio::test]
async fn inv8_broken_file_keeps_previous_set() {
    let f = Fixture::new().await;
    let store = f.open();
    let tls = f.upstream_tls(&store);
    let genuine = pin(&f.genuine.cert);
    let broken = [
        (
            "malformed pin",
            format!(
                "version = 1\n\n[[peer]]\nserver_name = \"{HOST}\"\npins = [\"sha256/not-base64!\"]\n"
            ),
        ),
        (
            "TOML syntax error",
            format!(
                "version = 1\n\n[[peer]\nserver_name = \"{HOST}\"\npins = [\"{}\"]\n",
                pin(&f.impostor.cert)
            ),
        ),
        (
            // A valid peer that pins the impostor followed by a broken one:
            // nothing of the file may be taken.
            "one good peer, one bad",
            format!(
                "{}\n[[peer]]\nserver_name = \"{OTHER}\"\npins = [\"{}\"]\nexpires = \"soon\"\n",
                pins_toml(&[&pin(&f.impostor.cert)]),
                unrelated_pin()
            ),
        ),
    ];
    for (i, (what, text)) in broken.iter().enumerate() {
        std::fs::write(&f.path, text).unwrap();
        let out = store.reload();
        let ReloadOutcome::Failed(e) = &out else {
            panic!("{what}: expected Failed, got {out:?}");
        };
        assert!(!e.errors.is_empty(), "{what}");
        assert_eq!(
            e.path.as_deref(),
            Some(f.path.display().to_string().as_str())
        );
        let set = store.current();
        assert_eq!(set.generation, 1, "{what}: generation must not change");
        assert!(Fixture::pins_are(&store, &[&genuine]), "{what}");
        assert!(
            set.lookup(OTHER).is_none(),
            "{what}: nothing of a bad file is taken"
        );
        assert_eq!(store.reload_counts(), (0, i as u64 + 1));

        let failed: Vec<_> = alerts(&f.hub)
            .into_iter()
            .filter(|a| a.event == AlertEvent::PinReloadFailed)
            .collect();
        assert_eq!(failed.len(), i + 1, "{what}: {failed:?}");
        let a = failed.last().unwrap();
        assert_eq!(a.event.as_str(), "pin_reload_failed");
        assert_eq!(a.pin_generation, 1);
        assert_eq!(a.direction, Direction::Local);
        assert_eq!(a.severity, Severity::Warning);
        assert!(
            a.reason.contains("generation 1 stays in force"),
            "{}",
            a.reason
        );

        // A connection made after the failed reload still uses the old pins.
        f.old_pins_enforced(&tls, 1).await;
    }
}

/// Invariant 8 (watch the directory): a file replaced by rename is picked up
/// by the watcher, and the new pins are in force for new connections.
#[tokio::test]
async fn inv8_rename_replace_is_picked_up_by_watcher() {
    let f = Fixture::new().await;
    let (store, tls, _watch) = f.watched();
    f.old_pins_enforced(&tls, 1).await;

    // Rotate: the impostor's key becomes the pinned one.
    let rotated = pin(&f.impostor.cert);
    replace_by_rename(&f.path, &pins_toml(&[&rotated]));
    wait_for_generation(&store, 2, "rename-replace").await;
    assert!(Fixture::pins_are(&store, &[&rotated]));
    assert_eq!(store.reload_counts(), (1, 0));

    let (r, _, g) = upstream(&tls, f.bad).await;
    assert_eq!(g, 2);
    assert_eq!(r.as_deref(), Ok("hello\n"), "the newly pinned key passes");
    let (r, _, g) = upstream(&tls, f.good).await;
    assert_eq!(g, 2);
    assert!(r.is_err(), "the key no longer pinned is rejected");
    let a = mismatches(&f.hub);
    assert_eq!(a.last().unwrap().pin_generation, 2);

    // A second rename-replace is seen too (the watch survives the first one).
    let both = [&rotated, &pin(&f.genuine.cert)];
    replace_by_rename(&f.path, &pins_toml(&both));
    wait_for_generation(&store, 3, "second rename-replace").await;
    assert!(Fixture::pins_are(&store, &both));
}

/// Invariant 8 (Kubernetes ConfigMap): `pins.toml -> ..data/pins.toml`,
/// `..data -> ..<timestamp>`; an update swaps `..data` atomically by renaming
/// a new symlink over it. The watcher must pick up every swap.
#[cfg(unix)]
#[tokio::test]
async fn inv8_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    let f = Fixture::new().await;
    // Lay out the ConfigMap volume; the fixture's plain pins.toml is replaced by the link.
    std::fs::remove_file(&f.path).unwrap();
    let genuine = pin(&f.genuine.cert);
    let write_version = |name: &str, content: &str| {
        let d = f.dir.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("pins.toml"), content).unwrap();
    };
    let swap_data_to = |name: &str| {
        let tmp = f.dir.join("..data_tmp");
        symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, f.dir.join("..data")).unwrap();
    };
    write_version("..2026_a", &pins_toml(&[&genuine]));
    symlink("..2026_a", f.dir.join("..data")).unwrap();
    symlink("..data/pins.toml", &f.path).unwrap();

    let store = f.open_at(&f.path);
    let tls = f.upstream_tls(&store);
    let _watch = store.watch(DEBOUNCE, POLL).unwrap();
    f.old_pins_enforced(&tls, 1).await;

    // Update 1: the impostor's key becomes the pinned one.
    let rotated = pin(&f.impostor.cert);
    write_version("..2026_b", &pins_toml(&[&rotated]));
    swap_data_to("..2026_b");
    std::fs::remove_dir_all(f.dir.join("..2026_a")).unwrap();
    wait_for_generation(&store, 2, "symlink swap a -> b").await;
    assert!(Fixture::pins_are(&store, &[&rotated]));
    let (r, _, g) = upstream(&tls, f.bad).await;
    assert_eq!((r.as_deref(), g), (Ok("hello\n"), 2));
    let (r, _, g) = upstream(&tls, f.good).await;
    assert!(r.is_err());
    assert_eq!(g, 2);

    // Update 2: the directory that was the link target at watch time is gone;
    // the swap must still be seen.
    write_version("..2026_c", &pins_toml(&[&genuine, &rotated]));
    swap_data_to("..2026_c");
    std::fs::remove_dir_all(f.dir.join("..2026_b")).unwrap();
    wait_for_generation(&store, 3, "symlink swap b -> c").await;
    assert!(Fixture::pins_are(&store, &[&genuine, &rotated]));
    assert_eq!(store.reload_counts(), (2, 0));
}

/// Invariant 8: a deleted file keeps the last set (reload says Missing, and
/// the watcher does not drop the set either); a file created again is picked up.
#[tokio::test]
async fn inv8_deleted_file_keeps_set() {
    let f = Fixture::new().await;
    let (store, tls, _watch) = f.watched();
    let genuine = pin(&f.genuine.cert);

    std::fs::remove_file(&f.path).unwrap();
    assert_eq!(store.reload(), ReloadOutcome::Missing);
    assert_eq!(store.current().generation, 1);
    assert!(Fixture::pins_are(&store, &[&genuine]));

    // The watcher sees the deletion too; give it several debounce periods and
    // check at every poll that the set never changes.
    holds_throughout(
        DEBOUNCE * 10,
        || store.current().generation == 1 && Fixture::pins_are(&store, &[&genuine]),
        "the pin set changed after the file was deleted",
    )
    .await;
    assert_eq!(
        store.reload_counts(),
        (0, 0),
        "a missing file is not a failure"
    );
    assert!(alerts(&f.hub)
        .iter()
        .all(|a| a.event != AlertEvent::PinReloadFailed));
    f.old_pins_enforced(&tls, 1).await;
    assert_eq!(store.reload(), ReloadOutcome::Missing);

    // Re-created (plain write, not rename) with new content: picked up.
    let rotated = pin(&f.impostor.cert);
    std::fs::write(&f.path, pins_toml(&[&rotated])).unwrap();
    wait_for_generation(&store, 2, "re-created file").await;
    assert!(Fixture::pins_are(&store, &[&rotated]));
    let (r, _, g) = upstream(&tls, f.bad).await;
    assert_eq!((r.as_deref(), g), (Ok("hello\n"), 2));
}

/// Invariant 8: new connections use a new set at once, and a TLS session
/// resumed from an older set cannot skip the new set's checks.
#[tokio::test]
async fn inv8_new_connections_use_new_set_at_once_and_resumption_cannot_skip_it() {
    let f = Fixture::new().await;
    let store = f.open();
    let tls = f.upstream_tls(&store);

    // Generation 1: the first connection is a full handshake and leaves a
    // TLS 1.3 ticket in generation 1's session store.
    let c1 = tls
        .connector(outbound(f.good), vec![b"http/1.1".to_vec()])
        .unwrap();
    assert_eq!(c1.generation(), 1);
    let (r, resumed) = c1
        .state
        .scope(connect_with(c1.config.clone(), f.good, HOST))
        .await;
    assert_eq!(r.as_deref(), Ok("hello\n"));
    assert!(!resumed, "the first connection cannot resume");
    assert!(c1.record().unwrap().is_accept());

    // The second connection under generation 1 resumes: this proves the test
    // server issues tickets, the client stores them, and the same session
    // would be offered again. rustls (0.23.46 here) only resumes a session with
    // the very `Arc<dyn ServerCertVerifier>` that verified it, so this reuses
    // the first connector's config (same verifier, same session store).
    let (r, resumed) = c1
        .state
        .scope(connect_with(c1.config.clone(), f.good, HOST))
        .await;
    assert_eq!(r.as_deref(), Ok("hello\n"));
    assert!(
        resumed,
        "the second connection under generation 1 must resume"
    );

    // A fresh connector in the same generation shares the generation's
    // verifier and session store, so it resumes too (what the proxy does).
    let (r, resumed, g) = upstream(&tls, f.good).await;
    assert_eq!(r.as_deref(), Ok("hello\n"));
    assert!(resumed, "connections within one generation resume");
    assert_eq!(g, 1);

    // Reload: genuine's key is no longer pinned.
    replace_by_rename(&f.path, &pins_toml(&[&unrelated_pin()]));
    assert_eq!(store.reload(), ReloadOutcome::Reloaded(2));
    assert_eq!(store.current().generation, 2);

    // The very next connection uses generation 2, does a full handshake
    // (the ticket from generation 1 is not offered), and is rejected.
    let c2 = tls
        .connector(outbound(f.good), vec![b"http/1.1".to_vec()])
        .unwrap();
    assert_eq!(
        c2.generation(),
        2,
        "new connections use the new set at once"
    );
    let before = mismatches(&f.hub).len();
    let (r, resumed) = c2
        .state
        .scope(connect_with(c2.config.clone(), f.good, HOST))
        .await;
    assert!(
        !resumed,
        "a session from generation 1 must not be resumed under generation 2"
    );
    let err = r.expect_err("genuine's key is no longer pinned");
    assert!(err.contains("pin check failed for hs.fedpin.test"), "{err}");
    let rec = c2.record().expect("the certificate was checked");
    assert!(!rec.is_accept());
    assert_eq!(rec.alert_event(), Some(AlertEvent::PinMismatch));
    let m = mismatches(&f.hub);
    assert_eq!(m.len(), before + 1, "{m:?}");
    let a = m.last().unwrap();
    assert_eq!(a.pin_generation, 2);
    assert_eq!(a.action, Action::Blocked);
    assert_eq!(a.known_pins, vec![unrelated_pin().to_string()]);
    assert_eq!(
        a.served_chain[0].pin.as_deref(),
        Some(pin(&f.genuine.cert).to_string().as_str())
    );

    // And again: a rejected handshake leaves nothing to resume from.
    let (r, resumed, g) = upstream(&tls, f.good).await;
    assert!(r.is_err());
    assert!(!resumed);
    assert_eq!(g, 2);

    // Generation 1's ticket was still there all along: the connections above
    // did full handshakes because generation 2 cannot reach it, not because
    // there was nothing to resume. (Only the pre-reload connector, a snapshot
    // of generation 1 that the proxy never reuses, can still offer it.)
    let (r, resumed) = c1
        .state
        .scope(connect_with(c1.config.clone(), f.good, HOST))
        .await;
    assert_eq!(r.as_deref(), Ok("hello\n"));
    assert!(resumed, "generation 1's session store still holds a ticket");
    assert_eq!(mismatches(&f.hub).len(), before + 2);
}

/// Invariant 8: rewriting or touching the file with identical bytes is not a
/// reload (no new generation, no new session store, no alert).
#[tokio::test]
async fn inv8_unchanged_content_keeps_generation() {
    let f = Fixture::new().await;
    let store = f.open();
    let text = std::fs::read(&f.path).unwrap();

    assert_eq!(store.reload(), ReloadOutcome::Unchanged);
    std::fs::write(&f.path, &text).unwrap();
    assert_eq!(store.reload(), ReloadOutcome::Unchanged);
    // touch: only the modification time changes.
    let file = std::fs::File::options().append(true).open(&f.path).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(file);
    assert_eq!(store.reload(), ReloadOutcome::Unchanged);
    replace_by_rename(&f.path, std::str::from_utf8(&text).unwrap());
    assert_eq!(store.reload(), ReloadOutcome::Unchanged);
    assert_eq!(store.current().generation, 1);
    assert_eq!(store.reload_counts(), (0, 0));

    // With the watcher: the events from an identical rewrite change nothing.
    let _watch = store.watch(DEBOUNCE, POLL).unwrap();
    replace_by_rename(&f.path, std::str::from_utf8(&text).unwrap());
    holds_throughout(
        DEBOUNCE * 10,
        || store.current().generation == 1,
        "an identical rewrite made a new generation",
    )
    .await;
    assert_eq!(store.reload_counts(), (0, 0));
    assert!(alerts(&f.hub).is_empty());

    // Whereas a real change is a new generation.
    replace_by_rename(&f.path, &pins_toml(&[&unrelated_pin()]));
    wait_for_generation(&store, 2, "changed content").await;
}

/// Invariant 8 (rejected whole), unit level: a host listed under two peers
/// makes the file invalid on reload; the old set stays, alert raised.
#[test]
fn inv8_duplicate_host_across_peers_is_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let old = Pin::of_spki(b"old key");
    std::fs::write(&path, pins_toml(&[&old])).unwrap();
    let hub = AlertHub::new();
    let store = PinStore::open(&path, hub.clone()).unwrap();

    let a = Pin::of_spki(b"key a");
    let b = Pin::of_spki(b"key b");
    let text = format!(
        "version = 1\n\n[[peer]]\nserver_name = \"{OTHER}\"\npins = [\"{a}\"]\n\n[[peer]]\nserver_name = \"{HOST}\"\nhosts = [\"{HOST}\", \"{OTHER}\"]\npins = [\"{b}\"]\n"
    );
    std::fs::write(&path, &text).unwrap();
    let ReloadOutcome::Failed(e) = store.reload() else {
        panic!("a duplicate host must be rejected");
    };
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].line, 9, "{e}");
    assert!(
        e.errors[0]
            .message
            .contains("already listed under the peer at line 4"),
        "{e}"
    );

    let set = store.current();
    assert_eq!(set.generation, 1);
    assert_eq!(set.len(), 1);
    assert!(set.lookup(HOST).unwrap().has_pin(&old));
    assert!(!set.lookup(HOST).unwrap().has_pin(&b));
    assert!(
        set.lookup(OTHER).is_none(),
        "no part of the rejected file is taken"
    );
    let failed: Vec<_> = hub
        .recent()
        .into_iter()
        .filter(|a| a.event == AlertEvent::PinReloadFailed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].reason.contains("already listed"),
        "{}",
        failed[0].reason
    );
}

/// Two peers, `HOST` pinning `a` and `OTHER` pinning `b`. The first half of
/// the text (up to the second `[[peer]]`) is itself a valid one-peer file.
/// Rewrites `path` in place: truncates it, writes `first`, pauses 150 ms,
/// writes `second`.
fn write_in_place_in_two_parts(path: &Path, first: &str, second: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    file.write_all(second.as_bytes()).unwrap();
}

fn two_peers(a: &Pin, b: &Pin) -> (String, String) {
    let first = format!("version = 1\n\n[[peer]]\nserver_name = \"{HOST}\"\npins = [\"{a}\"]\n");
    let second = format!("\n[[peer]]\nserver_name = \"{OTHER}\"\npins = [\"{b}\"]\n");
    (first, second)
}

/// Invariant 8 (reload takes only complete files): a tool that rewrites the
/// pin file in place (same inode, no rename) and pauses between its writes
/// never gets its half-written file published, neither by the periodic
/// re-check nor by the watcher: the store sees one new generation, with both
/// peers.
#[tokio::test]
async fn inv8_half_written_file_is_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let (old_a, old_b) = (Pin::of_spki(b"old a"), Pin::of_spki(b"old b"));
    let (new_a, new_b) = (Pin::of_spki(b"new a"), Pin::of_spki(b"new b"));
    let (h1, h2) = two_peers(&old_a, &old_b);
    std::fs::write(&path, format!("{h1}{h2}")).unwrap();
    let hub = AlertHub::new();
    let store = Arc::new(PinStore::open(&path, hub.clone()).unwrap());
    assert_eq!(store.current().len(), 2);
    // A re-check every 50 ms: one falls in the writer's pause for sure.
    let _watch = store.watch(DEBOUNCE, Duration::from_millis(50)).unwrap();

    // Every generation the store publishes, with its peer count.
    let seen = Arc::new(std::sync::Mutex::new(vec![(1u64, 2usize)]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let set = store.current();
                let mut seen = seen.lock().unwrap();
                if seen.last().map(|s| s.0) != Some(set.generation) {
                    seen.push((set.generation, set.len()));
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    // The slow in-place writer: truncate, first peer, pause, second peer.
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata(&path).unwrap().ino();
    let (n1, n2) = two_peers(&new_a, &new_b);
    // Three re-checks fall in the pause; it is shorter than the settle interval.
    write_in_place_in_two_parts(&path, &n1, &n2);
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "written in place"
    );

    let done = wait_until(PICKUP, || {
        store
            .current()
            .lookup(OTHER)
            .is_some_and(|p| p.has_pin(&new_b))
    })
    .await;
    // Let any later re-check run too: it must change nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        done.is_some(),
        "the complete file was never loaded: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, peers)| *peers == 2),
        "a half-written file was published (generation, peers): {seen:?}"
    );
    let set = store.current();
    assert_eq!(
        set.generation, 2,
        "exactly one new generation for one rewrite: {seen:?}"
    );
    assert!(set.lookup(HOST).unwrap().has_pin(&new_a));
    let removed: Vec<_> = hub
        .recent()
        .into_iter()
        .filter(|a| a.event.as_str() == "pins_removed")
        .collect();
    assert!(
        removed.is_empty(),
        "no peer was removed by the rewrite: {removed:?}"
    );
}

/// Invariant 8, the reload itself: a reload that starts while an in-place
/// writer is between its writes waits for the content to settle and never
/// returns the half file.
#[test]
fn inv8_reload_waits_for_the_file_to_settle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let (h1, h2) = two_peers(&Pin::of_spki(b"old a"), &Pin::of_spki(b"old b"));
    std::fs::write(&path, format!("{h1}{h2}")).unwrap();
    let store = PinStore::open(&path, AlertHub::new()).unwrap();
    let (n1, n2) = two_peers(&Pin::of_spki(b"new a"), &Pin::of_spki(b"new b"));
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || write_in_place_in_two_parts(&path, &n1, &n2))
    };
    // The reload starts while the writer pauses.
    std::thread::sleep(Duration::from_millis(50));
    let out = store.reload();
    writer.join().unwrap();
    let set = store.current();
    assert!(
        set.len() == 2,
        "reload published a half-written file ({out:?}): {} peers",
        set.len()
    );
}

/// A reload that removes a peer raises a `pins_removed` warning naming it
/// (the operator learns that a peer is no longer pinned, whoever edited the
/// file).
#[test]
fn reload_that_removes_a_peer_raises_a_warning_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let (a, b) = (Pin::of_spki(b"a"), Pin::of_spki(b"b"));
    let (h1, h2) = two_peers(&a, &b);
    std::fs::write(&path, format!("{h1}{h2}")).unwrap();
    let hub = AlertHub::new();
    let store = PinStore::open(&path, hub.clone()).unwrap();

    // Changing a pin removes no peer: no warning.
    let (h1b, h2b) = two_peers(&Pin::of_spki(b"a2"), &b);
    replace_by_rename(&path, &format!("{h1b}{h2b}"));
    assert_eq!(store.reload(), ReloadOutcome::Reloaded(2));
    assert!(hub
        .recent()
        .iter()
        .all(|al| al.event.as_str() != "pins_removed"));

    // Dropping OTHER does.
    replace_by_rename(&path, &h1b);
    assert_eq!(store.reload(), ReloadOutcome::Reloaded(3));
    let removed: Vec<_> = hub
        .recent()
        .into_iter()
        .filter(|al| al.event.as_str() == "pins_removed")
        .collect();
    assert_eq!(removed.len(), 1, "{:?}", hub.recent());
    let al = &removed[0];
    assert_eq!(al.severity, Severity::Warning);
    assert_eq!(al.direction, Direction::Local);
    assert_eq!(al.pin_generation, 3);
    assert_eq!(al.server_name.as_deref(), Some(OTHER));
    assert!(al.reason.contains(OTHER), "{}", al.reason);
    assert!(!al.reason.contains(&format!("{HOST},")), "{}", al.reason);
    let v: serde_json::Value = serde_json::from_str(&al.to_json()).unwrap();
    assert_eq!(v["event"], "pins_removed");
    assert_eq!(v["severity"], "warning");
}

/// Invariant 8: the settle check follows the opened file, so complete files
/// swapped in by rename faster than the settle interval still load (each one
/// was complete when it was renamed).
#[test]
fn inv8_rename_swaps_faster_than_the_settle_interval_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    std::fs::write(&path, pins_toml(&[&Pin::of_spki(b"rev 0")])).unwrap();
    let store = PinStore::open(&path, AlertHub::new()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churner = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rev = 1u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let pin = Pin::of_spki(format!("rev {rev}").as_bytes());
                replace_by_rename(&path, &pins_toml(&[&pin]));
                rev += 1;
                std::thread::sleep(fedpin::pin_store::DEFAULT_SETTLE / 6);
            }
        })
    };
    std::thread::sleep(fedpin::pin_store::DEFAULT_SETTLE / 3);
    let out = store.reload();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churner.join().unwrap();
    assert!(
        matches!(out, ReloadOutcome::Reloaded(2)),
        "a renamed-in file must load under churn: {out:?}"
    );
}

// ----------------------------------------------------------------------
// Moved unchanged from tests/sinks_signals_mtls.rs:
// SIGHUP reload.
// ----------------------------------------------------------------------

/// SPEC 4.8 / issue: SIGHUP re-reads the pin file.
#[tokio::test]
async fn sighup_reloads_the_pin_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    let p1 = fedpin::pins::Pin::of_spki(b"one");
    let p2 = fedpin::pins::Pin::of_spki(b"two");
    std::fs::write(
        &path,
        format!("version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{p1}\"]\n"),
    )
    .unwrap();
    let store = Arc::new(PinStore::open(&path, AlertHub::new()).unwrap());
    fedpin::pin_store::spawn_sighup_reload(store.clone()).unwrap();
    std::fs::write(
        &path,
        format!("version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{p2}\"]\n"),
    )
    .unwrap();
    assert_eq!(
        store.current().generation,
        1,
        "no watcher: nothing changes without the signal"
    );
    // The shell's builtin kill: no dependency on a kill binary being installed.
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("kill -HUP {}", std::process::id())])
        .status()
        .unwrap();
    assert!(status.success());
    let s = store.clone();
    assert!(common::wait_until(Duration::from_secs(10), move || s.current().generation == 2).await);
    assert!(store.current().lookup("a.example").unwrap().has_pin(&p2));
}
