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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::file::{Diagnostic, PinFileError, PinSet};
use crate::alert::{Alert, AlertEvent, AlertHub, Direction};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file's content hash is unchanged; nothing swapped.
    Unchanged,
    /// A new set is in force with this generation.
    Reloaded(u64),
    /// The file is missing; the last set stays.
    Missing,
    /// The file is broken; the last set stays.
    Failed(PinFileError),
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
        })
    }

    /// A store with a fixed set and no file (tests, demo, `pinctl`).
    pub fn fixed(mut set: PinSet, alerts: AlertHub) -> Self {
        if set.generation == 0 {
            set.generation = 1;
        }
        let next = set.generation + 1;
        PinStore {
            path: PathBuf::new(),
            current: ArcSwap::from_pointee(set),
            next_generation: AtomicU64::new(next),
            alerts,
            reload_lock: Mutex::new(()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
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

    /// Re-reads the file and swaps in a new set if it changed and is valid.
    pub fn reload(&self) -> ReloadOutcome {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    target: "fedpin::pins",
                    path = %self.path.display(),
                    generation = self.current.load().generation,
                    "pin file is missing; keeping the last pin set"
                );
                return ReloadOutcome::Missing;
            }
            Err(e) => {
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
                return ReloadOutcome::Failed(err);
            }
        };
        let hash = {
            let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
            let mut h = [0u8; 32];
            h.copy_from_slice(d.as_ref());
            h
        };
        if hash == self.current.load().content_hash {
            return ReloadOutcome::Unchanged;
        }
        match PinSet::parse_bytes(&bytes) {
            Ok(mut set) => {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                set.generation = generation;
                let peers = set.len();
                self.current.store(Arc::new(set));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    target: "fedpin::pins",
                    path = %self.path.display(),
                    generation,
                    peers,
                    "pin file reloaded"
                );
                ReloadOutcome::Reloaded(generation)
            }
            Err(mut e) => {
                e.path = Some(self.path.display().to_string());
                self.fail(&e);
                ReloadOutcome::Failed(e)
            }
        }
    }

    fn fail(&self, e: &PinFileError) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
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
