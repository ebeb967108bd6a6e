//! The resolution steps themselves, what they return and their options.

use super::*;

/// Which resolution step decided the endpoint (for display).
///
/// When a well-known delegation was followed *and* an SRV record of the
/// delegated name decided, the result is [`ResolvedVia::Srv`] with the
/// delegated name inside the record name, and [`Resolved::tls_name`] is the
/// delegated host rather than the asked one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedVia {
    /// Step 1: the server name is an IP literal.
    IpLiteral,
    /// Step 2: the server name is a hostname with an explicit port.
    ExplicitPort,
    /// Step 3: `/.well-known/matrix/server` delegated to `delegated`, and the
    /// delegated name itself decided the endpoint (it is an IP literal, has an
    /// explicit port, or has no SRV record so port 8448 is used).
    WellKnown {
        /// The delegated server name in canonical form, e.g. `matrix.example.org:443`.
        delegated: String,
    },
    /// An SRV record decided: either of the delegated name (step 3) or of the
    /// asked hostname (steps 4 and 5).
    Srv {
        /// The SRV record name, e.g. `_matrix-fed._tcp.example.org`.
        record: String,
    },
    /// Step 6: nothing else applied; the hostname on port 8448.
    DefaultPort,
}

impl fmt::Display for ResolvedVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvedVia::IpLiteral => f.write_str("IP literal"),
            ResolvedVia::ExplicitPort => f.write_str("explicit port"),
            ResolvedVia::WellKnown { delegated } => {
                write!(f, "well-known delegation to {delegated}")
            }
            ResolvedVia::Srv { record } => write!(f, "SRV record {record}"),
            ResolvedVia::DefaultPort => write!(f, "default port {DEFAULT_FEDERATION_PORT}"),
        }
    }
}

/// Where to connect and what TLS name to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The server name that was asked about.
    pub server_name: ServerName,
    /// The name to send as SNI and verify the certificate against: a hostname,
    /// or the IP address text (IPv6 without brackets) for IP literals.
    pub tls_name: String,
    /// The host to dial: a DNS name or IP address text (IPv6 without brackets).
    pub connect_host: String,
    /// The port to dial.
    pub port: u16,
    /// Which step decided.
    pub via: ResolvedVia,
    /// The well-known fetch that delegated, when one did (step 3): the
    /// delegation and every host that answered on the way.
    pub well_known: Option<WellKnown>,
}

impl Resolved {
    /// Dial `host:port` itself, with `host` as the TLS name.
    pub fn direct(name: &ServerName, host: &str, port: u16, via: ResolvedVia) -> Self {
        Resolved {
            server_name: name.clone(),
            tls_name: host.to_owned(),
            connect_host: host.to_owned(),
            port,
            via,
            well_known: None,
        }
    }

    /// Dial the SRV target found for `record`, with `tls_name` as the TLS
    /// name (the name the SRV record was looked up for, not the target).
    fn srv(name: &ServerName, tls_name: &str, record: String, target: SrvTarget) -> Self {
        Resolved {
            connect_host: target.target,
            port: target.port,
            ..Resolved::direct(name, tls_name, 0, ResolvedVia::Srv { record })
        }
    }
}

/// Knobs for [`resolve`].
#[derive(Clone)]
pub struct DiscoveryOptions {
    /// Extra trust anchors added to `webpki_roots::TLS_SERVER_ROOTS` for the
    /// `.well-known` HTTPS fetch.
    pub extra_roots: Vec<TrustAnchor<'static>>,
    /// Time limit for each step (the whole well-known fetch; each SRV lookup).
    pub timeout: Duration,
    /// SRV lookup backend; `None` means the system DNS via [`HickorySrv`].
    pub resolver: Option<Arc<dyn SrvLookup>>,
    /// Port for the `.well-known` HTTPS fetch: 443 normally.
    pub well_known_port: u16,
    /// If set, the well-known fetch dials this address instead of resolving
    /// the hostname (SNI and `Host` are still the server name). For tests.
    pub well_known_addr_override: Option<SocketAddr>,
    /// Dial these addresses for these `host:port` pairs instead of resolving
    /// them (like curl's `--connect-to`); TLS names stay the hosts.
    pub connect_to: Vec<ConnectTo>,
}

/// A `HOST:PORT:ADDR:PORT` rule: connections meant for `host:port` dial
/// `addr` instead (TLS name and `Host` unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    /// The host as named (lowercase, no trailing dot, IPv6 without brackets).
    pub host: String,
    /// The port as named.
    pub port: u16,
    /// Where to connect instead.
    pub addr: SocketAddr,
}

impl FromStr for ConnectTo {
    type Err = String;

    /// Parses `HOST:PORT:ADDR:PORT` (IPv6 in brackets, e.g.
    /// `example.org:443:[::1]:8443`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not HOST:PORT:ADDR:PORT (e.g. example.org:443:127.0.0.1:8443)");
        let (left, addr) = if let Some(i) = s.find(":[") {
            (&s[..i], &s[i + 1..])
        } else {
            let mut parts = s.rsplitn(3, ':');
            let _port = parts.next().ok_or_else(bad)?;
            let _ip = parts.next().ok_or_else(bad)?;
            let left = parts.next().ok_or_else(bad)?;
            (left, &s[left.len() + 1..])
        };
        let (host, port) = left.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
        let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
        let host = crate::pins::normalize_tls_name(host).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(ConnectTo { host, port, addr })
    }
}

impl Default for DiscoveryOptions {
    /// No extra roots, 10 s per step, system DNS, port 443, no override.
    fn default() -> Self {
        Self {
            extra_roots: Vec::new(),
            timeout: Duration::from_secs(10),
            resolver: None,
            well_known_port: 443,
            well_known_addr_override: None,
            connect_to: Vec::new(),
        }
    }
}

impl fmt::Debug for DiscoveryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryOptions")
            .field("extra_roots", &self.extra_roots.len())
            .field("timeout", &self.timeout)
            .field(
                "resolver",
                &if self.resolver.is_some() {
                    "custom"
                } else {
                    "system"
                },
            )
            .field("well_known_port", &self.well_known_port)
            .field("well_known_addr_override", &self.well_known_addr_override)
            .finish()
    }
}

/// Resolves `name` following the Matrix "Resolving server names" steps (see
/// the [module documentation](crate::discovery)).
///
/// Well-known failures of any kind are logged at debug level and treated as
/// "no delegation". SRV lookups that fail for reasons other than "no records"
/// (including timeouts) are returned as errors rather than silently falling
/// back to port 8448, so a flaky resolver cannot make `pinctl` pin the wrong
/// endpoint.
pub async fn resolve(
    name: &ServerName,
    opts: &DiscoveryOptions,
) -> Result<Resolved, DiscoveryError> {
    resolve_via(name, opts, &WebPkiWellKnown(opts)).await
}

/// The future a [`WellKnownSource`] returns.
pub type WellKnownFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WellKnown, DiscoveryError>> + Send + 'a>>;

/// Where step 3 gets the well-known document: [`fetch_well_known`] (Web PKI,
/// for `pinctl`), or the daemon's pinned HTTPS client (key fetches).
pub trait WellKnownSource: Send + Sync {
    /// Fetches and parses `https://<host>/.well-known/matrix/server`.
    fn fetch<'a>(&'a self, host: &'a str) -> WellKnownFuture<'a>;
}

pub(super) struct WebPkiWellKnown<'o>(&'o DiscoveryOptions);

impl WellKnownSource for WebPkiWellKnown<'_> {
    fn fetch<'a>(&'a self, host: &'a str) -> WellKnownFuture<'a> {
        Box::pin(fetch_well_known(host, self.0))
    }
}

/// [`resolve`] with the well-known document taken from `source`.
pub async fn resolve_via(
    name: &ServerName,
    opts: &DiscoveryOptions,
    source: &dyn WellKnownSource,
) -> Result<Resolved, DiscoveryError> {
    let host = match &name.host {
        Host::Ip(ip) => {
            return Ok(Resolved::direct(
                name,
                &ip.to_string(),
                name.port.unwrap_or(DEFAULT_FEDERATION_PORT),
                ResolvedVia::IpLiteral,
            ))
        }
        Host::Dns(host) => host,
    };
    if let Some(port) = name.port {
        return Ok(Resolved::direct(
            name,
            host,
            port,
            ResolvedVia::ExplicitPort,
        ));
    }

    let mut srv = SrvBackend::new(opts);
    match source.fetch(host).await {
        Ok(wk) => {
            tracing::debug!(target: "fedpin::discovery", server_name = %name, delegated = %wk.delegated, "well-known delegation");
            let mut r = resolve_delegated(name, wk.delegated.clone(), &mut srv).await?;
            r.well_known = Some(wk);
            Ok(r)
        }
        Err(e) => {
            tracing::debug!(
                target: "fedpin::discovery",
                server_name = %name,
                error = %e,
                "no usable well-known document; trying SRV"
            );
            if let Some((record, target)) = srv.lookup_chain(host).await? {
                return Ok(Resolved::srv(name, host, record, target));
            }
            Ok(Resolved::direct(
                name,
                host,
                DEFAULT_FEDERATION_PORT,
                ResolvedVia::DefaultPort,
            ))
        }
    }
}

/// Step 3 once the well-known document named `delegated`.
pub(super) async fn resolve_delegated(
    name: &ServerName,
    delegated: ServerName,
    srv: &mut SrvBackend<'_>,
) -> Result<Resolved, DiscoveryError> {
    let via = ResolvedVia::WellKnown {
        delegated: delegated.to_string(),
    };
    let host = delegated.host.to_string();
    if matches!(delegated.host, Host::Dns(_)) && delegated.port.is_none() {
        if let Some((record, target)) = srv.lookup_chain(&host).await? {
            return Ok(Resolved::srv(name, &host, record, target));
        }
    }
    let port = delegated.port.unwrap_or(DEFAULT_FEDERATION_PORT);
    Ok(Resolved::direct(name, &host, port, via))
}

/// The SRV backend, created on first use so that names decided without DNS
/// never read the system resolver configuration.
pub(super) struct SrvBackend<'o> {
    opts: &'o DiscoveryOptions,
    lookup: Option<Arc<dyn SrvLookup>>,
}

impl<'o> SrvBackend<'o> {
    fn new(opts: &'o DiscoveryOptions) -> Self {
        Self {
            opts,
            lookup: opts.resolver.clone(),
        }
    }

    fn get(&mut self) -> Arc<dyn SrvLookup> {
        match &self.lookup {
            Some(lookup) => Arc::clone(lookup),
            None => {
                let lookup: Arc<dyn SrvLookup> = Arc::new(HickorySrv::from_system());
                self.lookup = Some(Arc::clone(&lookup));
                lookup
            }
        }
    }

    /// Tries `_matrix-fed._tcp.<host>` then `_matrix._tcp.<host>`; returns the
    /// record name and chosen target of the first that has a usable answer.
    async fn lookup_chain(
        &mut self,
        host: &str,
    ) -> Result<Option<(String, SrvTarget)>, DiscoveryError> {
        let lookup = self.get();
        for prefix in SRV_PREFIXES {
            let record = format!("{prefix}{host}");
            let answers =
                match tokio::time::timeout(self.opts.timeout, lookup.lookup_srv(&record)).await {
                    Ok(answers) => answers?,
                    Err(_) => {
                        return Err(DiscoveryError::Timeout {
                            step: format!("DNS SRV lookup for {record}"),
                            after: self.opts.timeout,
                        })
                    }
                };
            if let Some(target) = pick_srv(&answers) {
                tracing::debug!(target: "fedpin::discovery", record = %record, target = %target.target, port = target.port, "SRV hit");
                let target = SrvTarget {
                    target: normalize_srv_target(&target.target),
                    ..target.clone()
                };
                return Ok(Some((record, target)));
            }
            tracing::debug!(target: "fedpin::discovery", record = %record, "no usable SRV records");
        }
        Ok(None)
    }
}
