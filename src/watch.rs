//! A small directory watcher for files that are replaced on disk (certbot
//! renewals, editors, ConfigMap symlink swaps): watches the files'
//! directories (and their symlink targets' directories), debounces, and calls
//! back on a background thread; a periodic re-check covers lost events.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

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
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            Ok(ev) => !matches!(
                ev.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
                    | notify::EventKind::Access(notify::event::AccessKind::Read)
                    | notify::EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Read
                    ))
            ),
            Err(_) => true,
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
                Err(mpsc::RecvTimeoutError::Timeout) => {}
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
