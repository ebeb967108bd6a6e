//! The `command` sink: runs a program with the alert JSON on stdin.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::alert::{Alert, AlertHub, SinkQueue};

/// Runs `/bin/sh -c COMMAND` once per alert record with the JSON on stdin.
///
/// At most `max_concurrent` commands run at once; a command that runs past
/// `timeout` is killed. A queue of `queue` alerts absorbs bursts; beyond that
/// alerts are dropped for this sink and counted (the log line is always
/// written); critical alerts have room of their own and jump the queue.
#[derive(Debug, Clone)]
pub struct CommandSink {
    /// The shell command.
    pub command: String,
    /// Kill the command after this long.
    pub timeout: Duration,
    /// Commands running at once.
    pub max_concurrent: usize,
    /// Alerts waiting for a free slot.
    pub queue: usize,
}

impl CommandSink {
    /// A sink with defaults: 10 s timeout, 4 concurrent, queue of 256.
    pub fn new(command: impl Into<String>) -> Self {
        CommandSink {
            command: command.into(),
            timeout: Duration::from_secs(10),
            max_concurrent: 4,
            queue: 256,
        }
    }

    /// Attaches the sink to `hub`, spawning its worker on the current runtime.
    pub fn attach(self, hub: &AlertHub) -> tokio::task::JoinHandle<()> {
        let rx = hub.sink_queue(self.queue);
        let hub = hub.clone();
        tokio::spawn(self.run(rx, hub))
    }

    async fn run(self, mut rx: SinkQueue, hub: AlertHub) {
        let slots = Arc::new(Semaphore::new(self.max_concurrent.max(1)));
        let this = Arc::new(self);
        while let Some(alert) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let this = this.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = this.deliver(&alert).await {
                    hub.counters().sink_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        target: "fedpin::alert",
                        sink = "command",
                        event = alert.event.as_str(),
                        error = %e,
                        "alert command failed"
                    );
                }
            });
        }
    }

    async fn deliver(&self, alert: &Alert) -> Result<(), String> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            // The command must not be able to speak for fedpin to systemd.
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", self.command))?;
        let json = alert.to_json();
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A command that does not read stdin is not an error.
                let _ = stdin.write_all(json.as_bytes()).await;
                let _ = stdin.write_all(b"\n").await;
                drop(stdin);
            }
            child.wait().await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Err(_) => {
                let _ = child.kill().await;
                Err(format!(
                    "`{}` timed out after {:?} and was killed",
                    self.command, self.timeout
                ))
            }
            Ok(Err(e)) => Err(format!("waiting for `{}`: {e}", self.command)),
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("`{}` exited with {status}", self.command)),
        }
    }
}
