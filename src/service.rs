//! Running a started [`Daemon`] as a service until it is told to stop: the
//! systemd notifications (`Type=notify` or `notify-reload`), config reloads
//! on SIGHUP and on file change, and the drain on SIGTERM or Ctrl-C.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::daemon::{self, Daemon};

/// Serves until SIGTERM or Ctrl-C, then stops accepting and waits up to
/// `drain` for open connections. Signal handlers are in place before the
/// service manager hears READY=1, so a queued reload or stop is not lost.
/// Returns the number of connections still open at the deadline.
pub async fn serve(daemon: Daemon, config: &Path, drain: Duration) -> usize {
    let listening: Vec<String> = [
        daemon
            .outbound
            .as_ref()
            .map(|(_, a)| format!("outbound {a}")),
        daemon.inbound.as_ref().map(|(_, a)| format!("inbound {a}")),
        daemon.admin.map(|a| format!("admin {a}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let status = format!("serving: {}", listening.join(", "));
    // Signal handlers before READY=1: systemd may send a queued reload
    // (SIGHUP) or stop (SIGTERM) the moment it hears we are ready.
    let stop = StopSignal::register();
    let daemon = Arc::new(daemon);
    let _config_watch = match daemon::watch_config(daemon.clone(), config) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(target: "fedpin::daemon", error = %e, "cannot watch the config file; edit + SIGHUP to reload");
            None
        }
    };
    #[cfg(unix)]
    reload_on_sighup(daemon.clone(), config, status.clone());
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    stop.wait().await;
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    tracing::info!(target: "fedpin::daemon", drain_secs = drain.as_secs(), "stopping: no new connections; draining");
    daemon.stop();
    let left = daemon.drain(drain).await;
    if left > 0 {
        tracing::warn!(target: "fedpin::daemon", open = left, "drain deadline reached; exiting with connections still open");
    } else {
        tracing::info!(target: "fedpin::daemon", "drained; exiting");
    }
    left
}

/// Reloads the config on each SIGHUP, telling the service manager
/// RELOADING=1 then READY=1 around it.
#[cfg(unix)]
fn reload_on_sighup(daemon: Arc<Daemon>, config: &Path, status: String) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    let config = config.to_path_buf();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match NotifyState::monotonic_usec_now() {
                Ok(now) => notify(&[NotifyState::Reloading, now]),
                Err(_) => notify(&[NotifyState::Reloading]),
            }
            let _ = daemon::reload_config(&daemon, &config);
            notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    });
}

/// Tells the service manager what the daemon is doing; does nothing when
/// `NOTIFY_SOCKET` is not set.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(target: "fedpin::daemon", error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// SIGTERM or Ctrl-C, registered up front so a signal sent right after
/// start is not lost (or, for SIGTERM, fatal without a drain).
struct StopSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    fn register() -> Self {
        StopSignal {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some(mut term) = self.term {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
