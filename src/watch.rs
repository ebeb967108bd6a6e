//! A small directory watcher for files that are replaced on disk (certbot
//! renewals, editors, ConfigMap symlink swaps): watches the files'
//! directories (and their symlink targets' directories), debounces, and calls
//! back on a background thread; a periodic re-check covers lost events.
//!
//! On Linux the watcher also knows when a file is being rewritten in place
//! (data written, file not yet closed): the periodic re-check then waits for
//! the writer to close it (bounded by [`MAX_OPEN_WRITE`]), so a slow writer's
//! first half is not what the re-check reads.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

/// Keeps a watch alive; dropping it stops the thread.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    stop: Option<(mpsc::Sender<()>, mpsc::Sender<()>)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

fn dirs_of(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut push = |d: PathBuf| {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    };
    for f in files {
        let dir = match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        push(dir);
        if let Ok(real) = std::fs::canonicalize(f) {
            if let Some(d) = real.parent() {
                push(d.to_path_buf());
            }
        }
    }
    dirs
}

/// Whether an event means a file in the directory is complete and may be
/// re-read. On Linux, in-place writes are acted on when the writer closes the
/// file (`Close(Write)`), not on each `Modify(Data)`, so a slow writer's
/// half-written prefix is never loaded; creates, removes and renames (editors,
/// `pinctl`, certbot, ConfigMap symlink swaps) always count.
fn is_complete_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Data(_)) => !cfg!(target_os = "linux"),
        _ => true,
    }
}

/// Whether an event means a watched file is being written in place and is not
/// closed yet (Linux only: elsewhere there is no close event to wait for).
fn is_open_write(kind: &notify::EventKind) -> bool {
    use notify::event::ModifyKind;
    cfg!(target_os = "linux") && matches!(kind, notify::EventKind::Modify(ModifyKind::Data(_)))
}

/// The periodic re-check waits at most this long after the last in-place
/// write for the writer to close the file (a writer that keeps it open longer
/// is read anyway, with the reader's own settle check).
pub const MAX_OPEN_WRITE: Duration = Duration::from_secs(120);

/// The file names in the watched directories whose changes matter: each
/// watched file, its symlink target, and the first component of a relative
/// symlink target (the ConfigMap `..data` link that is swapped).
fn interesting_names(files: &[PathBuf]) -> Vec<std::ffi::OsString> {
    let mut names = Vec::new();
    for f in files {
        if let Some(n) = f.file_name() {
            names.push(n.to_os_string());
        }
        if let Ok(target) = std::fs::read_link(f) {
            if let Some(first) = target.components().next() {
                names.push(first.as_os_str().to_os_string());
            }
            if let Some(n) = target.file_name() {
                names.push(n.to_os_string());
            }
        }
        if let Ok(real) = std::fs::canonicalize(f) {
            if let Some(n) = real.file_name() {
                names.push(n.to_os_string());
            }
        }
    }
    names
}

/// Whether an event is about one of the interesting names (events with no
/// path, e.g. a rescan request, always count). Busy unrelated files in the
/// same directory (logs) never trigger a re-read.
fn touches(paths: &[PathBuf], names: &[std::ffi::OsString]) -> bool {
    paths.is_empty()
        || paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
}

/// Watches the directories of `files`; calls `on_change` after each burst of
/// events (settled for `debounce`) and at least every `poll`.
pub fn watch_files(
    files: &[&Path],
    debounce: Duration,
    poll: Duration,
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<FileWatch> {
    let files: Vec<PathBuf> = files.iter().map(|p| p.to_path_buf()).collect();
    let (tx, rx) = mpsc::channel::<()>();
    let event_tx = tx.clone();
    let names = interesting_names(&files);
    // When a watched file was last written in place without being closed since.
    let writing: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let writing_ev = writing.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            Ok(ev) if touches(&ev.paths, &names) => {
                let complete = is_complete_change(&ev.kind);
                if complete {
                    *lock(&writing_ev) = None;
                } else if is_open_write(&ev.kind) {
                    *lock(&writing_ev) = Some(Instant::now());
                }
                complete
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(target: "fedpin::daemon", error = %e, "file watcher error; re-checking");
                *lock(&writing_ev) = None;
                true
            }
        };
        if relevant {
            let _ = event_tx.send(());
        }
    })?;
    for d in dirs_of(&files) {
        watcher.watch(&d, RecursiveMode::NonRecursive)?;
    }
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("fedpin-file-watch".into())
        .spawn(move || loop {
            match rx.recv_timeout(poll) {
                Ok(()) => {
                    std::thread::sleep(debounce);
                    while rx.try_recv().is_ok() {}
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // A writer has the file open mid-rewrite: its close is an
                    // event that re-reads it; the re-check waits for that.
                    let open = lock(&writing).is_some_and(|t| t.elapsed() < MAX_OPEN_WRITE);
                    if open {
                        tracing::debug!(target: "fedpin::daemon", "a watched file is being written in place; re-check deferred");
                        continue;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if stop_rx.try_recv().is_ok() {
                return;
            }
            on_change();
        })
        .map_err(|e| notify::Error::generic(&format!("cannot start the watcher thread: {e}")))?;
    Ok(FileWatch {
        _watcher: watcher,
        stop: Some((stop_tx, tx)),
        thread: Some(thread),
    })
}

/// Locks a mutex, recovering the data if a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        if let Some((stop, wake)) = self.stop.take() {
            let _ = stop.send(());
            let _ = wake.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn only_the_watched_files_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("pins.toml");
        std::fs::write(&watched, "a").unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let _w = watch_files(
            &[watched.as_path()],
            Duration::from_millis(20),
            Duration::from_secs(3600),
            move || {
                h.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        // A busy neighbour (a log file) never triggers a re-read.
        let log = dir.path().join("fedpin.log");
        for i in 0..50 {
            std::fs::write(&log, format!("line {i}\n")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "unrelated writes must not trigger"
        );
        // Replacing the watched file does.
        let tmp = dir.path().join(".pins.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &watched).unwrap();
        let start = std::time::Instant::now();
        while hits.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(hits.load(Ordering::SeqCst) >= 1);
    }
}
