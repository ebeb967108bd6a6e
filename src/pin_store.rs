//! [`PinStore`]: the current [`PinSet`] behind an `ArcSwap`, reloaded when the
//! file changes (SPEC 4.8).
//!
//! A reload builds a new immutable set and swaps it in with a new generation
//! number; nothing edits a live set. A file that fails to parse or validate is
//! rejected whole (the previous set stays, a `pin_reload_failed` alert is
//! raised); a deleted file keeps the last set. The watcher watches the
//! *directory*, so rename-replace (editors, `pinctl`) and symlink swaps
//! (Kubernetes ConfigMap `..data`) are seen, and a periodic re-check catches
//! any event the OS dropped.
//!
//! Only a file that holds still is loaded: a tool that rewrites the file in
//! place (same inode, several writes) must not get its first half published,
//! or a peer missing from that half would fall back to `policy.unpinned` until
//! the next reload. A reload that finds new content waits a settle interval
//! ([`DEFAULT_SETTLE`]), reads the file it opened again, and loads only if
//! its size, modification time and content are unchanged; otherwise it
//! reads again, and after a few rounds gives up until the next event or
//! re-check ([`ReloadOutcome::Unsettled`]). The check follows the opened file,
//! not the path: a file swapped in by rename was complete when it was
//! renamed, and the copy being read does not change however often the path is
//! swapped again; a file written in place, or created and still being
//! written, changes under the reader. A reload that removes peers raises a
//! `pins_removed` warning naming them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::alert::{Action, Alert, AlertEvent, AlertHub, Direction};
use crate::pins::{Diagnostic, PinFileError, PinSet};

/// How long a reload waits for new content to hold still before loading it.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(300);

/// How many settle intervals a reload waits for a file that keeps changing.
const SETTLE_ROUNDS: u32 = 8;

/// At most this many removed peers are named in one `pins_removed` alert.
const NAMED_REMOVALS: usize = 20;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file is byte for byte the one in force; nothing swapped.
    Unchanged,
    /// A new set is in force with this generation.
    Reloaded(u64),
    /// The file is missing; the last set stays.
    Missing,
    /// The file is broken; the last set stays.
    Failed(PinFileError),
    /// The file kept changing while it was read (a writer is still at work);
    /// the last set stays and the next event or re-check tries again.
    Unsettled,
}

/// The last reload that loaded or rejected a file (the status page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadRecord {
    /// When it happened.
    pub at: time::OffsetDateTime,
    /// `Ok(generation)` published, or `Err(why)` the file was rejected (the
    /// previous set stayed in force).
    pub outcome: Result<u64, String>,
}

/// One read of the opened pin file and what the file looked like around it.
struct Snapshot {
    bytes: Vec<u8>,
    /// The file did not change while it was read.
    steady: bool,
    len: u64,
    modified: Option<SystemTime>,
}

impl Snapshot {
    /// Reads the whole of `file` (from its start): metadata, content,
    /// metadata again. A file that changed during the read is read as it is
    /// and never matches another snapshot.
    fn read(file: &mut std::fs::File) -> std::io::Result<Snapshot> {
        use std::io::{Read, Seek};
        let before = file.metadata()?;
        file.rewind()?;
        let mut bytes = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0));
        file.read_to_end(&mut bytes)?;
        let after = file.metadata()?;
        let steady = before.len() == after.len()
            && before.modified().ok() == after.modified().ok()
            && bytes.len() as u64 == after.len();
        Ok(Snapshot {
            bytes,
            steady,
            len: after.len(),
            modified: after.modified().ok(),
        })
    }

    /// Whether `next`, a later read, saw the same, unchanged file.
    fn settles(&self, next: &Snapshot) -> bool {
        self.steady
            && next.steady
            && self.len == next.len
            && self.modified == next.modified
            && self.bytes == next.bytes
    }
}

/// Drops a pin set that was replaced, on a thread of its own when this was
/// its last holder: freeing a 10,000-peer set whose memory has gone cold
/// in the cache took about as long as parsing the new one
/// (`benches/reload.rs`), and nothing needs to wait for it. A set still
/// held (a handshake in progress) is freed by its last holder.
fn retire(set: Arc<PinSet>) {
    if Arc::strong_count(&set) > 1 {
        return;
    }
    // If no thread can be started, the closure, and the set, drop here.
    let _ = std::thread::Builder::new()
        .name("fedpin-pins-retire".into())
        .spawn(move || drop(set));
}

/// The current pin set, swapped atomically on reload.
pub struct PinStore {
    path: PathBuf,
    current: ArcSwap<PinSet>,
    next_generation: AtomicU64,
    alerts: AlertHub,
    reload_lock: Mutex<()>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    settle: Duration,
    published: tokio::sync::watch::Sender<u64>,
    /// When the set in force was published, and the last reload that
    /// loaded or rejected a file.
    history: Mutex<(time::OffsetDateTime, Option<ReloadRecord>)>,
}

impl std::fmt::Debug for PinStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinStore")
            .field("path", &self.path)
            .field("generation", &self.current.load().generation)
            .finish_non_exhaustive()
    }
}

impl PinStore {
    /// Loads the file; the first load must succeed.
    pub fn open(path: impl Into<PathBuf>, alerts: AlertHub) -> Result<Self, PinFileError> {
        let path = path.into();
        let mut set = PinSet::load(&path)?;
        set.generation = 1;
        Ok(PinStore {
            path,
            current: ArcSwap::from_pointee(set),
            next_generation: AtomicU64::new(2),
            alerts,
            reload_lock: Mutex::new(()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            settle: DEFAULT_SETTLE,
            published: tokio::sync::watch::Sender::new(1),
            history: Mutex::new((time::OffsetDateTime::now_utc(), None)),
        })
    }

    /// Sets how long new content must hold still before a reload loads it
    /// (default [`DEFAULT_SETTLE`]; zero loads whatever one read returns).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// A store with a fixed set and no file (tests, demo, `pinctl`).
    pub fn fixed(mut set: PinSet, alerts: AlertHub) -> Self {
        if set.generation == 0 {
            set.generation = 1;
        }
        let next = set.generation + 1;
        let published = tokio::sync::watch::Sender::new(set.generation);
        PinStore {
            path: PathBuf::new(),
            current: ArcSwap::from_pointee(set),
            next_generation: AtomicU64::new(next),
            alerts,
            reload_lock: Mutex::new(()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            settle: DEFAULT_SETTLE,
            published,
            history: Mutex::new((time::OffsetDateTime::now_utc(), None)),
        }
    }

    /// The generation in force, updated at every publish: holders of open
    /// connections re-check them against a new set (SPEC 4.13).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The set in force now. Cheap: one atomic load and an `Arc` clone.
    pub fn current(&self) -> Arc<PinSet> {
        self.current.load_full()
    }

    /// The pin file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Successful and failed reload counts.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// When the set in force was published (start or reload), and the last
    /// reload that loaded or rejected a file, if any.
    pub fn reload_history(&self) -> (time::OffsetDateTime, Option<ReloadRecord>) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn note_reload(&self, outcome: Result<u64, String>) {
        let at = time::OffsetDateTime::now_utc();
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if outcome.is_ok() {
            h.0 = at;
        }
        h.1 = Some(ReloadRecord { at, outcome });
    }

    /// Re-reads the file and swaps in a new set if it changed, holds still
    /// (see the module documentation) and is valid.
    pub fn reload(&self) -> ReloadOutcome {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        // The settle check watches the file that was opened, not the path: a
        // file replaced by rename is complete, and the one we hold stays as it
        // was; a file written in place (or created and still being written)
        // changes under us.
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) => return self.unreadable(e),
        };
        let mut snap = match Snapshot::read(&mut file) {
            Ok(s) => s,
            Err(e) => return self.unreadable(e),
        };
        if self.current.load().loaded_from(&snap.bytes) {
            return ReloadOutcome::Unchanged;
        }
        if !self.settle.is_zero() {
            let mut rounds = 0;
            loop {
                std::thread::sleep(self.settle);
                let next = match Snapshot::read(&mut file) {
                    Ok(s) => s,
                    Err(e) => return self.unreadable(e),
                };
                if snap.settles(&next) {
                    snap = next;
                    break;
                }
                // Changed: the next round compares against this read.
                snap = next;
                rounds += 1;
                if rounds >= SETTLE_ROUNDS {
                    return self.kept(
                        ReloadOutcome::Unsettled,
                        "pin file is still being written; not loaded yet, the last pin set stays",
                    );
                }
            }
            if self.current.load().loaded_from(&snap.bytes) {
                return ReloadOutcome::Unchanged;
            }
        }
        // The sections of the file that the current set parsed already
        // are not parsed again (a large file edited in one place).
        let parsed = PinSet::parse_source_after(snap.bytes.into(), Some(&self.current.load_full()));
        match parsed {
            Ok(mut set) => {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                set.generation = generation;
                let peers = set.len();
                let (sections, sections_reused) = set.sections_reused().unwrap_or((0, 0));
                let new = Arc::new(set);
                let old = self.current.swap(new.clone());
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.note_reload(Ok(generation));
                tracing::info!(
                    target: "fedpin::pins",
                    path = %self.path.display(),
                    generation,
                    peers,
                    sections,
                    sections_reused,
                    "pin file reloaded"
                );
                self.report_removed(&old, &new);
                self.published.send_replace(generation);
                retire(old);
                ReloadOutcome::Reloaded(generation)
            }
            Err(mut e) => {
                e.path = Some(self.path.display().to_string());
                self.fail(&e);
                ReloadOutcome::Failed(e)
            }
        }
    }

    /// A reload that kept the last pin set without an error (the file is
    /// missing or still being written): a warning, and `outcome`.
    fn kept(&self, outcome: ReloadOutcome, why: &'static str) -> ReloadOutcome {
        tracing::warn!(
            target: "fedpin::pins",
            path = %self.path.display(),
            generation = self.current.load().generation,
            "{why}"
        );
        outcome
    }

    /// The outcome of a reload that could not open or read the file.
    fn unreadable(&self, e: std::io::Error) -> ReloadOutcome {
        if e.kind() == std::io::ErrorKind::NotFound {
            return self.kept(
                ReloadOutcome::Missing,
                "pin file is missing; keeping the last pin set",
            );
        }
        let err = PinFileError {
            path: Some(self.path.display().to_string()),
            errors: vec![Diagnostic {
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read the pin file: {e}"),
            }],
        };
        self.fail(&err);
        ReloadOutcome::Failed(err)
    }

    /// Raises `pins_removed` (warning) naming the peers of `old` that `new`
    /// no longer has: from now on they fall under `policy.unpinned`.
    fn report_removed(&self, old: &PinSet, new: &PinSet) {
        let removed: Vec<&str> = old
            .peers()
            .iter()
            .filter(|p| new.by_server_name(&p.server_name).is_none())
            .map(|p| p.server_name.as_str())
            .collect();
        if removed.is_empty() {
            return;
        }
        let mut names = removed
            .iter()
            .take(NAMED_REMOVALS)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if removed.len() > NAMED_REMOVALS {
            names.push_str(&format!(" and {} more", removed.len() - NAMED_REMOVALS));
        }
        tracing::warn!(
            target: "fedpin::pins",
            event = "pins_removed",
            path = %self.path.display(),
            generation = new.generation,
            removed = removed.len(),
            peers = %names,
            "pin file reload removed peers"
        );
        let mut alert = Alert::local(
            AlertEvent::PinsRemoved,
            Direction::Local,
            new.generation,
            format!(
                "pin file reload (generation {} -> {}) removed {} peer(s), now under policy.unpinned: {names}",
                old.generation,
                new.generation,
                removed.len()
            ),
        );
        // The new set is in force: nothing was refused.
        alert.action = Action::Allowed;
        if let [only] = removed.as_slice() {
            alert.server_name = Some((*only).to_string());
        }
        self.alerts.raise(alert);
    }

    fn fail(&self, e: &PinFileError) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        self.note_reload(Err(e.to_string()));
        let set = self.current.load();
        tracing::error!(
            target: "fedpin::pins",
            event = "pin_reload_failed",
            path = %self.path.display(),
            generation = set.generation,
            error = %e,
            "pin file rejected; the previous pin set stays in force"
        );
        self.alerts.raise(Alert::local(
            AlertEvent::PinReloadFailed,
            Direction::Local,
            set.generation,
            format!(
                "pin file rejected, generation {} stays in force: {e}",
                set.generation
            ),
        ));
    }

    /// Starts watching the file's directory (and a symlink target's
    /// directory); reloads run on a background thread.
    ///
    /// Events are debounced by `debounce`; every `poll` the file is re-checked
    /// anyway (cheap: read + hash) in case an event was lost.
    pub fn watch(
        self: &Arc<Self>,
        debounce: Duration,
        poll: Duration,
    ) -> notify::Result<WatchHandle> {
        let store = Arc::downgrade(self);
        crate::watch::watch_files(&[self.path.as_path()], debounce, poll, move || {
            if let Some(store) = store.upgrade() {
                store.reload();
            }
        })
    }
}

/// Keeps the pin-file watcher alive; dropping it stops watching.
pub type WatchHandle = crate::watch::FileWatch;

/// Reloads the store whenever the process receives SIGHUP (runs until the
/// runtime shuts down). Returns an error if the signal cannot be hooked.
#[cfg(unix)]
pub fn spawn_sighup_reload(store: Arc<PinStore>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(target: "fedpin::pins", "SIGHUP: re-reading the pin file");
            let s = store.clone();
            let _ = tokio::task::spawn_blocking(move || s.reload()).await;
        }
    }))
}
