//! `fedpin run`: builds the configured listeners from a validated [`Config`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::alert::{AlertHub, CommandSink};
use crate::config::Config;
use crate::pins::{PinStore, WatchHandle};
use crate::proxy::egress::EgressPolicy;
use crate::proxy::outbound::{OutboundProxy, OutboundSettings};
use crate::tls::mint::LeafMinter;
use crate::tls::UpstreamTls;
use crate::verify::VerifierCore;

/// Errors starting the daemon; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The pin file could not be loaded.
    #[error("{0}")]
    Pins(#[from] crate::pins::PinFileError),
    /// A TLS file (CA, roots, client certificate) is unusable.
    #[error("{0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The config asks for something this build does not run.
    #[error("{0}")]
    Unsupported(String),
}

/// A running daemon.
pub struct Daemon {
    /// The alert hub.
    pub alerts: AlertHub,
    /// The pin store.
    pub pins: Arc<PinStore>,
    /// The outbound proxy and its bound address, if configured.
    pub outbound: Option<(Arc<OutboundProxy>, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    _watch: Option<WatchHandle>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("outbound", &self.outbound.as_ref().map(|o| o.1))
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Starts every configured listener on the current tokio runtime.
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        if config.inbound.is_some() {
            return Err(StartError::Unsupported(
                "[inbound] is configured, but this build of fedpin does not run the inbound listener yet; remove the section (see README)".into(),
            ));
        }
        if config.admin.is_some() {
            return Err(StartError::Unsupported(
                "[admin] is configured, but this build of fedpin does not run the admin listener yet; remove the section (see README)".into(),
            ));
        }
        if config.alert_webhook.is_some() {
            return Err(StartError::Unsupported(
                "alerts.webhook is configured, but this build of fedpin has only the command sink; use alerts.command (see README)".into(),
            ));
        }
        let alerts = AlertHub::new();
        alerts.spawn_flusher();
        if let Some(cmd) = &config.alert_command {
            CommandSink::new(cmd.clone()).attach(&alerts);
        }
        let pins = Arc::new(PinStore::open(&config.pins, alerts.clone())?);
        let watch_handle = match pins.watch(Duration::from_millis(100), Duration::from_secs(30)) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(target: "fedpin::pins", error = %e, "cannot watch the pin file; it is re-read on SIGHUP only");
                None
            }
        };
        #[cfg(unix)]
        if let Err(e) = crate::pins::spawn_sighup_reload(pins.clone()) {
            tracing::warn!(target: "fedpin::pins", error = %e, "cannot hook SIGHUP");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let provider = crate::tls::provider();
        let mut outbound = None;
        if let Some(o) = &config.outbound {
            let extra = match &o.extra_roots {
                Some(p) => crate::tls::load_certs(p).map_err(|e| StartError::Tls(e.to_string()))?,
                None => Vec::new(),
            };
            let core = Arc::new(
                VerifierCore::new(&provider, &extra, alerts.clone())
                    .map_err(|e| StartError::Tls(e.to_string()))?,
            );
            let mut upstream = UpstreamTls::new(core, pins.clone(), provider.clone());
            if let (Some(c), Some(k)) = (&o.client_cert, &o.client_key) {
                let chain =
                    crate::tls::load_certs(c).map_err(|e| StartError::Tls(e.to_string()))?;
                let key = crate::tls::load_key(k).map_err(|e| StartError::Tls(e.to_string()))?;
                upstream = upstream.with_client_auth(chain, key);
            }
            let minter = LeafMinter::from_files(&o.ca_cert, &o.ca_key, 4096)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            let settings = OutboundSettings {
                resolve: o.resolve.clone(),
                egress: EgressPolicy::new(o.allow_ips.clone(), o.deny_ips.clone()),
                deny_destinations: o.deny_destinations.iter().cloned().collect::<HashSet<_>>(),
                allowed_ports: o.allowed_ports.clone(),
                proxy_auth: o.proxy_auth.clone(),
                max_tunnels: o.max_tunnels,
                connect_timeout: o.connect_timeout,
                handshake_timeout: o.handshake_timeout,
                idle_timeout: o.idle_timeout,
                ..OutboundSettings::default()
            };
            let listener = tokio::net::TcpListener::bind(o.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: o.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: o.listen,
                source,
            })?;
            let proxy = Arc::new(OutboundProxy::new(
                settings,
                Arc::new(upstream),
                Arc::new(minter),
            ));
            tokio::spawn(proxy.clone().serve(listener, shutdown_rx.clone()));
            tracing::info!(target: "fedpin::daemon", listen = %addr, "outbound proxy listening");
            outbound = Some((proxy, addr));
        }
        Ok(Daemon {
            alerts,
            pins,
            outbound,
            shutdown,
            _watch: watch_handle,
        })
    }

    /// Stops accepting; in-flight tunnels finish on their own timeouts.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
        self.alerts.flush_all();
    }
}
