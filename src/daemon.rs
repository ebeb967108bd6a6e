//! `fedpin run`: builds the configured listeners from a [`Prepared`] config
//! (every file already read and checked by [`crate::prepare`]); binds them;
//! applies config reloads that go through the same preparation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::alert::AlertHub;
use crate::config::{Config, ConfigError};
use crate::egress::EgressPolicy;
use crate::pin_store::{PinStore, WatchHandle};
use crate::prepare::{Baseline, Prepared};
use crate::proxy::inbound::{EdgeRules, InboundProxy, InboundSettings, RateLimit};
use crate::proxy::outbound::{OutboundProxy, OutboundSettings};
use crate::tls::UpstreamTls;
use crate::verify::VerifierCore;

/// Errors starting the daemon; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config, or a file it names, is unusable (every problem, located).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The pin file could not be loaded.
    #[error("{0}")]
    Pins(#[from] crate::pins::PinFileError),
    /// A TLS file (CA, roots, client certificate) is unusable.
    #[error("{0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
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
    /// The config the daemon started with, to judge reloads against.
    baseline: Baseline,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("outbound", &self.outbound.as_ref().map(|o| o.1))
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Prepares `config` ([`Config::prepare`]: every file it names is read
    /// and checked) and starts it ([`Daemon::start_prepared`]).
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        Self::start_prepared(config.prepare()?).await
    }

    /// Starts every configured listener of a prepared config on the current
    /// tokio runtime. Nothing here reads the config's files again except the
    /// pin store, which opens (and from then on watches) the pin file.
    pub async fn start_prepared(prepared: Prepared) -> Result<Daemon, StartError> {
        let baseline = prepared.baseline();
        let Prepared {
            config,
            outbound: outbound_material,
            inbound: inbound_material,
            alerts: sinks,
            ..
        } = prepared;
        let config = &config;
        let alerts = AlertHub::new();
        alerts.spawn_flusher();
        if let Some(s) = sinks.command {
            s.attach(&alerts);
        }
        if let Some(s) = sinks.webhook {
            s.attach(&alerts);
        }
        if let Some(s) = sinks.matrix {
            s.attach(&alerts);
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
        if let Err(e) = crate::pin_store::spawn_sighup_reload(pins.clone()) {
            tracing::warn!(target: "fedpin::pins", error = %e, "cannot hook SIGHUP");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let cx = StartContext {
            config,
            alerts: &alerts,
            pins: &pins,
            provider: crate::tls::provider(),
            shutdown: shutdown_rx,
        };
        let mut accept_loops = Vec::new();
        let fetch_roots = outbound_material
            .as_ref()
            .map(|m| m.extra_roots.clone())
            .unwrap_or_default();
        let (mut outbound, mut ca_watch) = (None, None);
        if let (Some(o), Some(m)) = (&config.outbound, outbound_material) {
            let started = cx.start_outbound(o, m).await?;
            accept_loops.push(("outbound", started.addr, started.task));
            ca_watch = started.watch;
            outbound = Some((started.proxy, started.addr));
        }
        let (mut inbound, mut cert_watch) = (None, None);
        if let (Some(i), Some(m)) = (&config.inbound, inbound_material) {
            let started = cx.start_inbound(i, m, &fetch_roots).await?;
            accept_loops.push(("inbound", started.addr, started.task));
            cert_watch = started.watch;
            inbound = Some((started.proxy, started.addr));
        }
        let mut admin = None;
        if let Some(listen) = config.admin {
            let sources = crate::proxy::admin::AdminSources {
                pins: pins.clone(),
                alerts: alerts.clone(),
                outbound: outbound.as_ref().map(|(p, _)| p.clone()),
                inbound: inbound.as_ref().map(|(p, _)| p.clone()),
                files: watched_files(config),
                listeners: accept_loops,
            };
            admin = Some(cx.start_admin(listen, sources).await?);
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
            baseline,
        })
    }

    /// Applies the hot-reloadable parts of a prepared config (edge rules;
    /// the server certificate is re-read too). Listeners and files named in
    /// the config are not changed without a restart ([`reload_config`] says
    /// which changed).
    pub fn apply(&self, prepared: &Prepared) {
        if let (Some((proxy, _)), Some(o)) = (&self.outbound, &prepared.config.outbound) {
            proxy.set_settings(outbound_settings(o));
        }
        if let (Some((proxy, _)), Some(i)) = (&self.inbound, &prepared.config.inbound) {
            proxy.set_rules(edge_rules(i));
            let _ = proxy.certs().reload();
        }
    }

    /// Open tunnels and inbound connections.
    pub fn open_connections(&self) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let tunnels = self
            .outbound
            .as_ref()
            .map(|(p, _)| &p.stats().active_tunnels);
        let conns = self.inbound.as_ref().map(|(p, _)| &p.stats().connections);
        [tunnels, conns]
            .into_iter()
            .flatten()
            .map(|n| n.load(Relaxed))
            .sum()
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

/// The outbound proxy's settings from its config section (at start and at
/// every reload).
fn outbound_settings(o: &crate::config::Outbound) -> OutboundSettings {
    OutboundSettings {
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
        upstream_keepalive: o.upstream_keepalive,
        ..OutboundSettings::default()
    }
}

/// What every listener of one start shares.
struct StartContext<'a> {
    config: &'a Config,
    alerts: &'a AlertHub,
    pins: &'a Arc<PinStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    shutdown: watch::Receiver<bool>,
}

/// A listener that started: the proxy, its address, its accept loop and
/// the watch on its files (if the watch could be set up).
struct Started<P> {
    proxy: Arc<P>,
    addr: SocketAddr,
    task: tokio::task::AbortHandle,
    watch: Option<crate::watch::FileWatch>,
}

/// Binds `addr`, naming it in the error.
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// The files `/healthz` checks (present and valid).
fn watched_files(config: &Config) -> Vec<(&'static str, std::path::PathBuf)> {
    let mut files: Vec<(&'static str, std::path::PathBuf)> = Vec::new();
    if let Some(o) = &config.outbound {
        files.push(("interception CA certificate", o.ca_cert.clone()));
        files.push(("interception CA key", o.ca_key.clone()));
    }
    if let Some(i) = &config.inbound {
        files.push(("server certificate", i.cert.clone()));
        files.push(("server key", i.key.clone()));
    }
    files
}

impl StartContext<'_> {
    /// The outbound proxy: pinned upstream TLS, the interception CA (its
    /// files watched), the listener.
    async fn start_outbound(
        &self,
        o: &crate::config::Outbound,
        m: crate::prepare::OutboundMaterial,
    ) -> Result<Started<OutboundProxy>, StartError> {
        let core = Arc::new(
            VerifierCore::new(&self.provider, &m.extra_roots, self.alerts.clone())
                .map_err(|e| StartError::Tls(e.to_string()))?,
        );
        let mut upstream = UpstreamTls::new(core, self.pins.clone(), self.provider.clone());
        if let Some((chain, key)) = m.client_auth {
            upstream = upstream.with_client_auth(chain, key);
        }
        let minter = Arc::new(m.minter);
        let (mi, hub) = (minter.clone(), self.alerts.clone());
        let (ca_cert, ca_key) = (o.ca_cert.clone(), o.ca_key.clone());
        let watch = match crate::watch::watch_files(
            &[o.ca_cert.as_path(), o.ca_key.as_path()],
            Duration::from_millis(200),
            Duration::from_secs(60),
            move || mi.recheck_files(&ca_cert, &ca_key, &hub),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(target: "fedpin::outbound", error = %e, "cannot watch the interception CA files; they are re-checked only at start");
                None
            }
        };
        let (listener, addr) = bind(o.listen).await?;
        let proxy = Arc::new(OutboundProxy::new(
            outbound_settings(o),
            Arc::new(upstream),
            minter,
        ));
        let task = tokio::spawn(proxy.clone().serve(listener, self.shutdown.clone()));
        tracing::info!(target: "fedpin::daemon", listen = %addr, "outbound proxy listening");
        Ok(Started {
            proxy,
            addr,
            task: task.abort_handle(),
            watch,
        })
    }

    /// The inbound edge: its certificate (files watched), client-certificate
    /// verifier, the signing-key fetcher when signatures are checked, the
    /// listener.
    async fn start_inbound(
        &self,
        i: &crate::config::Inbound,
        m: crate::prepare::InboundMaterial,
        fetch_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Started<InboundProxy>, StartError> {
        let certs = Arc::new(m.certs.with_alerts(self.alerts.clone()));
        let core = Arc::new(
            VerifierCore::new(&self.provider, &m.client_roots, self.alerts.clone())
                .map_err(|e| StartError::Tls(e.to_string()))?,
        );
        let settings = InboundSettings {
            upstream: m.upstream,
            client_auth: i.client_auth,
            max_body: i.max_body,
            max_header_bytes: i.max_header_bytes,
            header_timeout: i.header_timeout,
            request_timeout: i.request_timeout,
            idle_timeout: i.idle_timeout,
            max_connections: i.max_connections,
            server_name: i.server_name.clone(),
            verify_signatures: i.verify_signatures,
            // One lane per worker of this runtime: the connections run on
            // single-threaded runtimes (crate::proxy::lanes).
            lanes: tokio::runtime::Handle::current().metrics().num_workers(),
            ..InboundSettings::default()
        };
        let mut proxy = InboundProxy::new(
            settings,
            edge_rules(i),
            certs.clone(),
            self.pins.clone(),
            core,
        );
        if i.verify_signatures != crate::config::SignatureMode::Off {
            proxy = proxy.with_key_fetcher(Arc::new(key_fetcher(
                self.config,
                fetch_roots,
                &self.provider,
                self.alerts,
                self.pins,
            )?));
        } else {
            tracing::warn!(target: "fedpin::inbound", "request signatures are not verified at the edge (set inbound.server_name): origin rules use the claimed origin, rate limits origin and client address");
        }
        let proxy = Arc::new(proxy);
        let (listener, addr) = bind(i.listen).await?;
        let c = certs.clone();
        let watch = match crate::watch::watch_files(
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
        let task = tokio::spawn(proxy.clone().serve(listener, self.shutdown.clone()));
        tracing::info!(target: "fedpin::daemon", listen = %addr, "inbound edge listening");
        Ok(Started {
            proxy,
            addr,
            task: task.abort_handle(),
            watch,
        })
    }

    /// The admin listener (status page, `/metrics`, `/healthz`, `/pins`).
    async fn start_admin(
        &self,
        listen: SocketAddr,
        sources: crate::proxy::admin::AdminSources,
    ) -> Result<SocketAddr, StartError> {
        let (listener, addr) = bind(listen).await?;
        tokio::spawn(crate::proxy::admin::serve(
            sources,
            listener,
            self.shutdown.clone(),
        ));
        tracing::info!(target: "fedpin::daemon", listen = %addr, "admin listener (/ status page, /metrics /healthz /pins)");
        Ok(addr)
    }
}

/// The signing-key fetcher of the edge: the outbound proxy's trust anchors
/// and egress policy (or the defaults, which refuse special ranges), the
/// daemon's pin store for the pinned verifier.
fn key_fetcher(
    config: &Config,
    extra: &[rustls::pki_types::CertificateDer<'static>],
    provider: &Arc<rustls::crypto::CryptoProvider>,
    alerts: &AlertHub,
    pins: &Arc<PinStore>,
) -> Result<crate::keys::KeyFetcher, StartError> {
    let mut settings = crate::keys::KeyFetchSettings::default();
    if let Some(o) = &config.outbound {
        settings.egress = EgressPolicy::new(o.allow_ips.clone(), o.deny_ips.clone());
        settings.resolve = o.resolve.clone();
        settings.connect_to = o.connect_to.clone();
    }
    if let Some(i) = &config.inbound {
        settings.key_servers = i.key_servers.clone();
    }
    let core = Arc::new(
        VerifierCore::new(provider, extra, alerts.clone())
            .map_err(|e| StartError::Tls(e.to_string()))?,
    );
    let upstream = Arc::new(UpstreamTls::new(core, pins.clone(), provider.clone()));
    Ok(crate::keys::KeyFetcher::new(upstream, settings))
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
            let _ = reload_config(&daemon, &p);
        },
    )
}

/// What a config reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The new config prepared cleanly and its live parts (the inbound edge
    /// rules; the server certificate is re-read) are in force. The keys
    /// listed changed too but apply only after a restart; their running
    /// values stay.
    Applied {
        /// Keys (`outbound.listen`, `outbound.ca_key`, …) waiting for a restart.
        restart_needed: Vec<String>,
    },
    /// The new config (or a file it names) is unusable; nothing changed.
    Rejected(ConfigError),
}

/// Re-reads the config through [`Prepared::load`] (the same checks as
/// `fedpin check-config` and `fedpin run`) and applies what can change at
/// run time. A config that fails is logged (`config_reload_failed`) and the
/// running one kept; keys that changed but need a restart are each logged
/// by name, and the reload is then reported as partial.
pub fn reload_config(daemon: &Daemon, path: &std::path::Path) -> ReloadOutcome {
    let prepared = match Prepared::load(path) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(
                target: "fedpin::daemon",
                event = "config_reload_failed",
                error = %e,
                "config rejected; the running config stays in force"
            );
            return ReloadOutcome::Rejected(e);
        }
    };
    let restart_needed = daemon.baseline.restart_needed(&prepared);
    daemon.apply(&prepared);
    if restart_needed.is_empty() {
        tracing::info!(target: "fedpin::daemon", path = %path.display(), "config reloaded");
    } else {
        for key in &restart_needed {
            tracing::warn!(
                target: "fedpin::daemon",
                path = %path.display(),
                key = %key,
                "{key} changed; it takes effect only when fedpin restarts, the running value stays in force"
            );
        }
        tracing::warn!(
            target: "fedpin::daemon",
            path = %path.display(),
            restart_needed = %restart_needed.join(", "),
            "config partly applied: what can change at run time is in force; restart fedpin to apply {}",
            restart_needed.join(", ")
        );
    }
    ReloadOutcome::Applied { restart_needed }
}
