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
use crate::proxy::inbound::{EdgeRules, InboundProxy, InboundSettings, RateLimit};
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
}

/// A running daemon.
pub struct Daemon {
    /// The alert hub.
    pub alerts: AlertHub,
    /// The pin store.
    pub pins: Arc<PinStore>,
    /// The outbound proxy and its bound address, if configured.
    pub outbound: Option<(Arc<OutboundProxy>, SocketAddr)>,
    /// The inbound edge and its bound address, if configured.
    pub inbound: Option<(Arc<InboundProxy>, SocketAddr)>,
    /// The admin listener's bound address, if configured.
    pub admin: Option<SocketAddr>,
    _cert_watch: Option<crate::watch::FileWatch>,
    _ca_watch: Option<crate::watch::FileWatch>,
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
        let alerts = AlertHub::new();
        alerts.spawn_flusher();
        if let Some(cmd) = &config.alert_command {
            CommandSink::new(cmd.clone()).attach(&alerts);
        }
        if config.alert_webhook.is_some() || config.alert_matrix.is_some() {
            let extra = match &config.alert_extra_roots {
                Some(p) => crate::tls::load_certs(p).map_err(|e| StartError::Tls(e.to_string()))?,
                None => Vec::new(),
            };
            let target = crate::alert::HttpTarget::new(&extra)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            if let Some(url) = &config.alert_webhook {
                crate::alert::WebhookSink::new(url, target.clone())
                    .map_err(|e| StartError::Tls(e.to_string()))?
                    .attach(&alerts);
            }
            if let Some((hs, room, token)) = &config.alert_matrix {
                crate::alert::MatrixSink::new(hs, room, token, target)
                    .map_err(|e| StartError::Tls(e.to_string()))?
                    .attach(&alerts);
            }
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
        let mut ca_watch = None;
        let mut accept_loops = Vec::new();
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
            let minter = Arc::new(
                LeafMinter::from_files(&o.ca_cert, &o.ca_key, 4096)
                    .map_err(|e| StartError::Tls(e.to_string()))?,
            );
            let (m, hub) = (minter.clone(), alerts.clone());
            let (ca_cert, ca_key) = (o.ca_cert.clone(), o.ca_key.clone());
            ca_watch = match crate::watch::watch_files(
                &[o.ca_cert.as_path(), o.ca_key.as_path()],
                Duration::from_millis(200),
                Duration::from_secs(60),
                move || m.recheck_files(&ca_cert, &ca_key, &hub),
            ) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(target: "fedpin::outbound", error = %e, "cannot watch the interception CA files; they are re-checked only at start");
                    None
                }
            };
            let settings = OutboundSettings {
                resolve: o.resolve.clone(),
                connect_to: o.connect_to.clone(),
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
            let proxy = Arc::new(OutboundProxy::new(settings, Arc::new(upstream), minter));
            let task = tokio::spawn(proxy.clone().serve(listener, shutdown_rx.clone()));
            tracing::info!(target: "fedpin::daemon", listen = %addr, "outbound proxy listening");
            accept_loops.push(("outbound", addr, task.abort_handle()));
            outbound = Some((proxy, addr));
        }
        let mut inbound = None;
        let mut cert_watch = None;
        if let Some(i) = &config.inbound {
            let certs = Arc::new(
                crate::tls::certs::CertStore::open(&i.cert, &i.key)
                    .map_err(|e| StartError::Tls(e.to_string()))?
                    .with_alerts(alerts.clone()),
            );
            let extra = match &i.client_roots {
                Some(p) => crate::tls::load_certs(p).map_err(|e| StartError::Tls(e.to_string()))?,
                None => Vec::new(),
            };
            let core = Arc::new(
                VerifierCore::new(&provider, &extra, alerts.clone())
                    .map_err(|e| StartError::Tls(e.to_string()))?,
            );
            let upstream: hyper::Uri = i
                .upstream
                .parse()
                .map_err(|e| StartError::Tls(format!("inbound.upstream: {e}")))?;
            let settings = InboundSettings {
                upstream,
                client_auth: i.client_auth,
                max_body: i.max_body,
                max_header_bytes: i.max_header_bytes,
                header_timeout: i.header_timeout,
                request_timeout: i.request_timeout,
                idle_timeout: i.idle_timeout,
                max_connections: i.max_connections,
                server_name: i.server_name.clone(),
                verify_signatures: i.verify_signatures,
                ..InboundSettings::default()
            };
            let mut proxy =
                InboundProxy::new(settings, edge_rules(i), certs.clone(), pins.clone(), core);
            if i.verify_signatures != crate::config::SignatureMode::Off {
                proxy = proxy
                    .with_key_fetcher(Arc::new(key_fetcher(config, &provider, &alerts, &pins)?));
            } else {
                tracing::warn!(target: "fedpin::inbound", "request signatures are not verified at the edge (set inbound.server_name): origin rules use the claimed origin, rate limits origin and client address");
            }
            let proxy = Arc::new(proxy);
            let listener = tokio::net::TcpListener::bind(i.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: i.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: i.listen,
                source,
            })?;
            let c = certs.clone();
            cert_watch = match crate::watch::watch_files(
                &[i.cert.as_path(), i.key.as_path()],
                Duration::from_millis(200),
                Duration::from_secs(60),
                move || {
                    let _ = c.reload();
                },
            ) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(target: "fedpin::inbound", error = %e, "cannot watch the certificate files; they are re-read on SIGHUP only");
                    None
                }
            };
            let task = tokio::spawn(proxy.clone().serve(listener, shutdown_rx.clone()));
            tracing::info!(target: "fedpin::daemon", listen = %addr, "inbound edge listening");
            accept_loops.push(("inbound", addr, task.abort_handle()));
            inbound = Some((proxy, addr));
        }
        let mut admin = None;
        if let Some(listen) = config.admin {
            let mut files: Vec<(&'static str, std::path::PathBuf)> = Vec::new();
            if let Some(o) = &config.outbound {
                files.push(("interception CA certificate", o.ca_cert.clone()));
                files.push(("interception CA key", o.ca_key.clone()));
            }
            if let Some(i) = &config.inbound {
                files.push(("server certificate", i.cert.clone()));
                files.push(("server key", i.key.clone()));
            }
            let sources = crate::proxy::admin::AdminSources {
                pins: pins.clone(),
                alerts: alerts.clone(),
                outbound: outbound.as_ref().map(|(p, _)| p.clone()),
                inbound: inbound.as_ref().map(|(p, _)| p.clone()),
                files,
                listeners: accept_loops,
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
            tokio::spawn(crate::proxy::admin::serve(
                sources,
                listener,
                shutdown_rx.clone(),
            ));
            tracing::info!(target: "fedpin::daemon", listen = %addr, "admin listener (/metrics /healthz /pins)");
            admin = Some(addr);
        }
        Ok(Daemon {
            alerts,
            pins,
            inbound,
            admin,
            _cert_watch: cert_watch,
            _ca_watch: ca_watch,
            outbound,
            shutdown,
            _watch: watch_handle,
        })
    }

    /// Applies the hot-reloadable parts of a new config (edge rules; the
    /// server certificate is re-read too). Listeners and files named in the
    /// config are not changed without a restart.
    pub fn apply(&self, config: &Config) {
        if let (Some((proxy, _)), Some(i)) = (&self.inbound, &config.inbound) {
            proxy.set_rules(edge_rules(i));
            let _ = proxy.certs().reload();
        }
    }

    /// Open tunnels and inbound connections.
    pub fn open_connections(&self) -> usize {
        let tunnels = self
            .outbound
            .as_ref()
            .map(|(p, _)| {
                p.stats()
                    .active_tunnels
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .unwrap_or(0);
        let conns = self
            .inbound
            .as_ref()
            .map(|(p, _)| {
                p.stats()
                    .connections
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .unwrap_or(0);
        tunnels + conns
    }

    /// After [`Daemon::stop`]: waits until no tunnel or connection is open, or
    /// `deadline` passes; returns how many were still open.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let open = self.open_connections();
            if open == 0 || tokio::time::Instant::now() >= until {
                self.alerts.flush_all();
                return open;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops accepting; in-flight tunnels finish on their own timeouts.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
        self.alerts.flush_all();
    }
}

/// The signing-key fetcher of the edge: the outbound proxy's trust anchors
/// and egress policy (or the defaults, which refuse special ranges), the
/// daemon's pin store for the pinned verifier.
fn key_fetcher(
    config: &Config,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    alerts: &AlertHub,
    pins: &Arc<PinStore>,
) -> Result<crate::matrix::keys::KeyFetcher, StartError> {
    let mut settings = crate::matrix::keys::KeyFetchSettings::default();
    let mut extra = Vec::new();
    if let Some(o) = &config.outbound {
        if let Some(p) = &o.extra_roots {
            extra = crate::tls::load_certs(p).map_err(|e| StartError::Tls(e.to_string()))?;
        }
        settings.egress = EgressPolicy::new(o.allow_ips.clone(), o.deny_ips.clone());
        settings.resolve = o.resolve.clone();
        settings.connect_to = o.connect_to.clone();
    }
    let core = Arc::new(
        VerifierCore::new(provider, &extra, alerts.clone())
            .map_err(|e| StartError::Tls(e.to_string()))?,
    );
    let upstream = Arc::new(UpstreamTls::new(core, pins.clone(), provider.clone()));
    Ok(crate::matrix::keys::KeyFetcher::new(upstream, settings))
}

/// The edge rules of an `[inbound]` section.
pub fn edge_rules(i: &crate::config::Inbound) -> EdgeRules {
    EdgeRules {
        deny_origins: i.deny_origins.iter().cloned().collect(),
        allow_origins: i.allow_origins.iter().cloned().collect(),
        per_origin: i
            .per_origin
            .map(|(per_second, burst)| RateLimit { per_second, burst }),
        per_ip: i
            .per_ip
            .map(|(per_second, burst)| RateLimit { per_second, burst }),
    }
}

/// Watches the config file and re-applies it on change (and returns the
/// watch); a config that fails to load is logged and the running one kept.
pub fn watch_config(
    daemon: Arc<Daemon>,
    path: &std::path::Path,
) -> notify::Result<crate::watch::FileWatch> {
    let p = path.to_path_buf();
    let last = std::sync::Mutex::new(std::fs::read(path).ok());
    crate::watch::watch_files(
        &[path],
        Duration::from_millis(200),
        Duration::from_secs(30),
        move || {
            let now = std::fs::read(&p).ok();
            {
                let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
                if *l == now {
                    return;
                }
                *l = now;
            }
            reload_config(&daemon, &p);
        },
    )
}

/// Re-reads the config and applies what can change at run time.
pub fn reload_config(daemon: &Daemon, path: &std::path::Path) {
    match Config::load(path) {
        Ok(c) => {
            daemon.apply(&c);
            tracing::info!(target: "fedpin::daemon", path = %path.display(), "config reloaded");
        }
        Err(e) => tracing::error!(
            target: "fedpin::daemon",
            event = "config_reload_failed",
            error = %e,
            "config rejected; the running config stays in force"
        ),
    }
}
