//! `fedpin.toml` (SPEC section 7), in two phases: raw `serde` structs with
//! `deny_unknown_fields` and spans, then [`Config::parse`] validates them into
//! a typed [`Config`] or returns every error with its line and key.
//!
//! Validation here looks at the text only. The files the config names (pin
//! file, certificates, keys, roots, token) are read and checked by
//! [`crate::prepare`], which is what both `fedpin check-config` and `fedpin
//! run` use.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::pins::Diagnostic;

/// A config file that failed to parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// Every problem, located.
    pub errors: Vec<Diagnostic>,
}

impl ConfigError {
    fn render(&self) -> String {
        self.errors
            .iter()
            .map(|d| format!("{}: {d}", self.path))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pins: Option<Spanned<String>>,
    outbound: Option<RawOutbound>,
    inbound: Option<RawInbound>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    alerts: RawAlerts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    listen: Option<Spanned<String>>,
    ca_cert: Spanned<String>,
    ca_key: Spanned<String>,
    extra_roots: Option<Spanned<String>>,
    #[serde(default)]
    resolve: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    connect_to: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    allow_ips: Vec<Spanned<String>>,
    #[serde(default)]
    deny_ips: Vec<Spanned<String>>,
    #[serde(default)]
    deny_destinations: Vec<Spanned<String>>,
    allowed_ports: Option<Vec<u16>>,
    proxy_auth: Option<Spanned<String>>,
    max_tunnels: Option<usize>,
    connect_timeout_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    upstream_keepalive_secs: Option<u64>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: Option<Spanned<String>>,
    cert: Spanned<String>,
    key: Spanned<String>,
    upstream: Spanned<String>,
    #[serde(default)]
    deny_origins: Vec<String>,
    #[serde(default)]
    allow_origins: Vec<String>,
    client_auth: Option<ClientAuth>,
    rate_per_origin: Option<u32>,
    burst_per_origin: Option<u32>,
    rate_per_ip: Option<u32>,
    burst_per_ip: Option<u32>,
    max_body: Option<u64>,
    max_header_bytes: Option<usize>,
    header_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    client_roots: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    verify_signatures: Option<SignatureMode>,
    #[serde(default)]
    key_servers: Vec<Spanned<RawKeyServer>>,
}

/// One `[[inbound.key_servers]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyServer {
    server_name: Spanned<String>,
    #[serde(default)]
    verify_keys: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    command: Option<Spanned<String>>,
    webhook: Option<Spanned<String>>,
    extra_roots: Option<Spanned<String>>,
    matrix_homeserver: Option<Spanned<String>>,
    matrix_room: Option<Spanned<String>>,
    matrix_token_file: Option<Spanned<String>>,
}

/// Whether inbound asks peers for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    Off,
    /// Ask; peers without one are still served.
    Request,
    /// Require one.
    Require,
}

/// Whether the edge verifies X-Matrix request signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureMode {
    /// A request whose signature does not verify is refused (401).
    Enforce,
    /// It is logged and counted, and forwarded; rules use origin + address.
    Report,
    /// Not checked; rules use origin + address.
    Off,
}

/// The validated `[outbound]` section.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Where Synapse's `https_proxy` points.
    pub listen: SocketAddr,
    /// Interception CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// Interception CA key (PEM, mode 0600).
    pub ca_key: PathBuf,
    /// Extra trust anchors for upstream Web PKI.
    pub extra_roots: Option<PathBuf>,
    /// Static name → address overrides.
    pub resolve: BTreeMap<String, IpAddr>,
    /// Static `host:port` → socket address overrides (like curl's
    /// `--connect-to`; the TLS name stays the host).
    pub connect_to: BTreeMap<(String, u16), std::net::SocketAddr>,
    /// Egress ranges allowed despite being special-purpose.
    pub allow_ips: Vec<IpNet>,
    /// Egress ranges refused.
    pub deny_ips: Vec<IpNet>,
    /// Server names refused at CONNECT time.
    pub deny_destinations: Vec<String>,
    /// Ports that may be dialled (None: any).
    pub allowed_ports: Option<Vec<u16>>,
    /// Required proxy credentials `user:password` (Basic).
    pub proxy_auth: Option<String>,
    /// Concurrent tunnel cap.
    pub max_tunnels: usize,
    /// Upstream TCP connect timeout.
    pub connect_timeout: std::time::Duration,
    /// TLS handshake timeout.
    pub handshake_timeout: std::time::Duration,
    /// Idle tunnel timeout.
    pub idle_timeout: std::time::Duration,
    /// How long a pinned upstream connection is kept for a later tunnel to
    /// the same peer once its tunnel ended (zero: never; tunnels then relay
    /// bytes and are not read as HTTP).
    pub upstream_keepalive: std::time::Duration,
    /// Client certificate presented upstream (mutual pinned TLS).
    pub client_cert: Option<PathBuf>,
    /// Its key.
    pub client_key: Option<PathBuf>,
}

/// The validated `[inbound]` section.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Federation listener.
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// Homeserver federation listener URL (http://).
    pub upstream: String,
    /// Origins refused.
    pub deny_origins: Vec<String>,
    /// Origins allowed (empty: all).
    pub allow_origins: Vec<String>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// Requests per second per origin, and burst (None: unlimited).
    pub per_origin: Option<(u32, u32)>,
    /// Requests per second per client IP, and burst (None: unlimited).
    pub per_ip: Option<(u32, u32)>,
    /// Request body cap, bytes.
    pub max_body: u64,
    /// Request head cap, bytes.
    pub max_header_bytes: usize,
    /// Time to receive a request head.
    pub header_timeout: std::time::Duration,
    /// Time for the homeserver to answer.
    pub request_timeout: std::time::Duration,
    /// Idle connection timeout.
    pub idle_timeout: std::time::Duration,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Extra trust anchors for client certificates (mutual TLS).
    pub client_roots: Option<PathBuf>,
    /// This homeserver's Matrix server name (the signed `destination`).
    pub server_name: Option<String>,
    /// Request-signature checking: `enforce` by default when `server_name`
    /// is set, `off` otherwise.
    pub verify_signatures: SignatureMode,
    /// Notaries asked for the keys of origins that have no pin entry
    /// (Synapse's `trusted_key_servers`), in order, before the origin itself.
    pub key_servers: Vec<crate::keys::KeyServer>,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The pin file.
    pub pins: PathBuf,
    /// Outbound proxy, if configured.
    pub outbound: Option<Outbound>,
    /// Inbound edge, if configured.
    pub inbound: Option<Inbound>,
    /// Admin listener address, if configured.
    pub admin: Option<SocketAddr>,
    /// Alert command sink.
    pub alert_command: Option<String>,
    /// Alert webhook sink.
    pub alert_webhook: Option<String>,
    /// Extra trust anchors for the webhook / Matrix sinks.
    pub alert_extra_roots: Option<PathBuf>,
    /// Matrix sink: homeserver URL, room ID, access-token file.
    pub alert_matrix: Option<(String, String, PathBuf)>,
    /// Where the config came from and where each key is in it.
    source: Source,
}

/// The config file and the line and column of each key that names a file or
/// an address, so that later checks (see [`crate::prepare`]) can point at it.
#[derive(Debug, Clone, Default)]
struct Source {
    file: Option<PathBuf>,
    at: BTreeMap<String, (usize, usize)>,
}

struct Ctx<'a> {
    text: &'a str,
    base: PathBuf,
    errors: Vec<Diagnostic>,
    at: BTreeMap<String, (usize, usize)>,
}

impl<'a> Ctx<'a> {
    /// A collector for `text`, whose relative paths resolve against `base`.
    fn new(text: &'a str, base: PathBuf) -> Self {
        Ctx {
            text,
            base,
            errors: Vec::new(),
            at: BTreeMap::new(),
        }
    }

    fn line_col(&self, span: &std::ops::Range<usize>) -> (usize, usize) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        (line, column)
    }

    /// Remembers where `key` is, for checks made after parsing.
    fn locate(&mut self, span: std::ops::Range<usize>, key: &str) {
        let lc = self.line_col(&span);
        self.at.insert(key.to_string(), lc);
    }

    fn err(&mut self, span: std::ops::Range<usize>, key: &str, message: String) {
        let (line, column) = self.line_col(&span);
        self.errors.push(Diagnostic {
            line,
            column,
            key: key.to_string(),
            message,
        });
    }

    fn path(&self, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn addr(&mut self, v: &Option<Spanned<String>>, key: &str, default: &str) -> SocketAddr {
        let fallback: SocketAddr = default
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        if let Some(s) = v {
            self.locate(s.span(), key);
        }
        match v {
            None => fallback,
            Some(s) => match s.get_ref().parse() {
                Ok(a) => a,
                Err(_) => {
                    self.err(
                        s.span(),
                        key,
                        format!("\"{}\" is not an address like 127.0.0.1:8449", s.get_ref()),
                    );
                    fallback
                }
            },
        }
    }

    /// A path key: resolved against the config's directory and located;
    /// the file itself is read by [`crate::prepare`].
    fn file(&mut self, v: &Spanned<String>, key: &str) -> PathBuf {
        self.locate(v.span(), key);
        self.path(v.get_ref())
    }

    fn nets(&mut self, list: &[Spanned<String>], key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let t = s.get_ref();
            match t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(n) => out.push(n),
                Err(_) => self.err(
                    s.span(),
                    &format!("{key}[{i}]"),
                    format!("\"{t}\" is not a CIDR range or IP address"),
                ),
            }
        }
        out
    }
}

impl Config {
    /// Reads and validates a config file; relative paths are relative to its
    /// directory. The files it names are not read: see [`Config::prepare`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (config, errors) = Self::load_partial(path)?;
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                path: path.display().to_string(),
                errors,
            })
        }
    }

    /// Reads a config file and validates it, returning the config together
    /// with the problems found (the config holds defaults where a value was
    /// bad), so that the files it names can still be checked and every
    /// problem reported at once. Errs only when there is no config at all
    /// (unreadable file, not TOML, unknown or missing keys).
    pub(crate) fn load_partial(path: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            errors: vec![Diagnostic {
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let (mut config, errors) = Self::validate(&text, &base).map_err(|mut e| {
            e.path = path.display().to_string();
            e
        })?;
        config.source.file = Some(path.to_path_buf());
        Ok((config, errors))
    }

    /// Validates config text; `base` resolves relative paths. The files it
    /// names are not read: see [`Config::prepare`].
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let (config, errors) = Self::validate(text, base)?;
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                path: "<config>".into(),
                errors,
            })
        }
    }

    /// The config file, when it was read from one.
    pub fn file(&self) -> Option<&Path> {
        self.source.file.as_deref()
    }

    /// The name errors about this config carry: its file, or `<config>`.
    pub(crate) fn display_name(&self) -> String {
        self.file()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<config>".into())
    }

    /// A problem about `key`, located at the key's line when the config
    /// names it (line 0 for a default, such as the default pin file).
    pub(crate) fn diagnostic(&self, key: &str, message: String) -> Diagnostic {
        let (line, column) = self.source.at.get(key).copied().unwrap_or((0, 0));
        Diagnostic {
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    /// Parses `text` and validates every section, collecting each problem
    /// (key, line, message) instead of stopping at the first. Errs only when
    /// the text is not a config at all (see [`parse_raw`]).
    fn validate(text: &str, base: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        let mut cx = Ctx::new(text, base.to_path_buf());
        let raw = parse_raw(text)?;
        let pins = match &raw.pins {
            Some(p) => cx.file(p, "pins"),
            None => cx.path("pins/pins.toml"),
        };
        let outbound = raw.outbound.as_ref().map(|o| cx.outbound(o));
        let inbound = raw.inbound.as_ref().map(|i| cx.inbound(i));
        let admin = raw
            .admin
            .as_ref()
            .map(|a| cx.addr(&a.listen, "admin.listen", "127.0.0.1:9448"));
        cx.alert_command(&raw.alerts.command);
        cx.alert_webhook(&raw.alerts.webhook);
        let alert_extra_roots = raw
            .alerts
            .extra_roots
            .as_ref()
            .map(|r| cx.file(r, "alerts.extra_roots"));
        let alert_matrix = cx.alert_matrix(&raw.alerts);
        check_listeners(
            &mut cx,
            &[
                ("outbound.listen", outbound.as_ref().map(|o| o.listen)),
                ("inbound.listen", inbound.as_ref().map(|i| i.listen)),
                ("admin.listen", admin),
            ],
        );
        let config = Config {
            pins,
            outbound,
            inbound,
            admin,
            alert_command: raw.alerts.command.map(|c| c.into_inner()),
            alert_webhook: raw.alerts.webhook.map(|w| w.into_inner()),
            alert_extra_roots,
            alert_matrix,
            source: Source {
                file: None,
                at: cx.at,
            },
        };
        Ok((config, cx.errors))
    }
}

/// The TOML layer: syntax, unknown keys (`deny_unknown_fields`), missing
/// required keys and wrong value types. Such a text is no config at all, so
/// its one error is returned as the whole [`ConfigError`].
fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let mut c = Ctx::new(text, PathBuf::new());
        c.err(e.span().unwrap_or(0..0), "", e.message().trim().to_string());
        ConfigError {
            path: "<config>".into(),
            errors: c.errors,
        }
    })
}

/// A timeout in whole seconds: `default` when unset, and never below one
/// second (a zero timeout would fail every connection at once).
fn secs(v: Option<u64>, default: u64) -> std::time::Duration {
    std::time::Duration::from_secs(v.unwrap_or(default).max(1))
}

/// A rate limit `(per second, burst)`: `None` (unlimited) when the rate is
/// unset or 0; the burst defaults to twice the rate and is at least 1.
fn rate_limit(rate: Option<u32>, burst: Option<u32>) -> Option<(u32, u32)> {
    rate.filter(|r| *r > 0)
        .map(|r| (r, burst.unwrap_or(r.saturating_mul(2)).max(1)))
}

/// The section checks of [`Config::validate`], one method per section or
/// group of related keys. Each records its problems with [`Ctx::err`] and
/// returns the validated value (a default where a value was bad), so that
/// every problem is reported at once. The order of the calls is the order
/// of the diagnostics, which callers and tests see: keep it.
impl Ctx<'_> {
    /// `[outbound]`: listen address, CA files, trust anchors, egress rules
    /// and overrides, limits, and the optional client certificate.
    fn outbound(&mut self, o: &RawOutbound) -> Outbound {
        let listen = self.addr(&o.listen, "outbound.listen", "127.0.0.1:8449");
        let ca_cert = self.file(&o.ca_cert, "outbound.ca_cert");
        let ca_key = self.file(&o.ca_key, "outbound.ca_key");
        let extra_roots = o
            .extra_roots
            .as_ref()
            .map(|r| self.file(r, "outbound.extra_roots"));
        let resolve = self.resolve(&o.resolve);
        let connect_to = self.connect_to(&o.connect_to);
        let deny_destinations = self.deny_destinations(&o.deny_destinations);
        let allow_ips = self.nets(&o.allow_ips, "outbound.allow_ips");
        let deny_ips = self.nets(&o.deny_ips, "outbound.deny_ips");
        self.outbound_limits(o);
        let (client_cert, client_key) = self.outbound_client_pair(o);
        Outbound {
            listen,
            ca_cert,
            ca_key,
            extra_roots,
            resolve,
            connect_to,
            allow_ips,
            deny_ips,
            deny_destinations,
            allowed_ports: o.allowed_ports.clone(),
            proxy_auth: o.proxy_auth.as_ref().map(|p| p.get_ref().clone()),
            max_tunnels: o.max_tunnels.unwrap_or(1024),
            connect_timeout: secs(o.connect_timeout_secs, 10),
            handshake_timeout: secs(o.handshake_timeout_secs, 15),
            idle_timeout: secs(o.idle_timeout_secs, 300),
            // Zero is meaningful here: no connection is kept.
            upstream_keepalive: std::time::Duration::from_secs(
                o.upstream_keepalive_secs.unwrap_or(30),
            ),
            client_cert,
            client_key,
        }
    }

    /// `outbound.resolve`: name → IP overrides. Names are normalised the way
    /// the CONNECT host is, so that an override written `"HS.example."`
    /// still applies to `hs.example`; a bad name or IP is refused.
    fn resolve(&mut self, raw: &BTreeMap<String, Spanned<String>>) -> BTreeMap<String, IpAddr> {
        let mut resolve = BTreeMap::new();
        for (name, ip) in raw {
            // Keys compare against the normalised CONNECT host, so they
            // are normalised the same way ("HS.example." = "hs.example").
            let key = match crate::pins::normalize_tls_name(name) {
                Ok(k) => k,
                Err(m) => {
                    self.err(ip.span(), &format!("outbound.resolve.{name}"), m);
                    continue;
                }
            };
            match ip.get_ref().parse::<IpAddr>() {
                Ok(a) => {
                    resolve.insert(key, a);
                }
                Err(_) => self.err(
                    ip.span(),
                    &format!("outbound.resolve.{name}"),
                    format!("\"{}\" is not an IP address", ip.get_ref()),
                ),
            }
        }
        resolve
    }

    /// `outbound.connect_to`: `"HOST:PORT" = "ADDR:PORT"` overrides (like
    /// curl's `--connect-to`), each parsed as a whole rule.
    fn connect_to(
        &mut self,
        raw: &BTreeMap<String, Spanned<String>>,
    ) -> BTreeMap<(String, u16), SocketAddr> {
        let mut connect_to = BTreeMap::new();
        for (from, to) in raw {
            let k = format!("outbound.connect_to.\"{from}\"");
            let rule = format!("{from}:{}", to.get_ref());
            match rule.parse::<crate::discovery::ConnectTo>() {
                Ok(c) => {
                    connect_to.insert((c.host, c.port), c.addr);
                }
                Err(_) => self.err(
                    to.span(),
                    &k,
                    format!(
                        "expected \"HOST:PORT\" = \"ADDR:PORT\" (e.g. \"hs.example:443\" = \"127.0.0.1:8443\"), got \"{from}\" = \"{}\"",
                        to.get_ref()
                    ),
                ),
            }
        }
        connect_to
    }

    /// `outbound.deny_destinations`: server names refused at CONNECT time,
    /// normalised like the CONNECT host so that a differently written name
    /// (case, trailing dot) cannot slip past the list.
    fn deny_destinations(&mut self, raw: &[Spanned<String>]) -> Vec<String> {
        let mut deny_destinations = Vec::new();
        for (i, d) in raw.iter().enumerate() {
            match crate::pins::normalize_tls_name(d.get_ref()) {
                Ok(n) => deny_destinations.push(n),
                Err(m) => self.err(d.span(), &format!("outbound.deny_destinations[{i}]"), m),
            }
        }
        deny_destinations
    }

    /// `outbound.proxy_auth` is `user:password`; `allowed_ports` holds no
    /// port 0; `max_tunnels` is at least 1 (0 would refuse every tunnel).
    fn outbound_limits(&mut self, o: &RawOutbound) {
        if let Some(p) = &o.proxy_auth {
            if !p.get_ref().contains(':') {
                self.err(
                    p.span(),
                    "outbound.proxy_auth",
                    "proxy_auth must be \"user:password\"".into(),
                );
            }
        }
        if let Some(ports) = &o.allowed_ports {
            if ports.contains(&0) {
                self.err(
                    0..0,
                    "outbound.allowed_ports",
                    "port 0 is not a port".into(),
                );
            }
        }
        if o.max_tunnels == Some(0) {
            self.err(
                0..0,
                "outbound.max_tunnels",
                "max_tunnels must be at least 1".into(),
            );
        }
    }

    /// `outbound.client_cert` and `client_key`: located and resolved; one
    /// without the other is refused (half a client identity).
    fn outbound_client_pair(&mut self, o: &RawOutbound) -> (Option<PathBuf>, Option<PathBuf>) {
        let client_cert = o
            .client_cert
            .as_ref()
            .map(|c| self.file(c, "outbound.client_cert"));
        let client_key = o
            .client_key
            .as_ref()
            .map(|c| self.file(c, "outbound.client_key"));
        if client_cert.is_some() != client_key.is_some() {
            self.err(
                0..0,
                "outbound",
                "client_cert and client_key go together".into(),
            );
        }
        (client_cert, client_key)
    }

    /// `[inbound]`: listen address, certificate pair, upstream URL, origin
    /// lists, client trust anchors, server name, signature checking and key
    /// servers; limits and timeouts take their defaults.
    fn inbound(&mut self, i: &RawInbound) -> Inbound {
        let listen = self.addr(&i.listen, "inbound.listen", "0.0.0.0:8448");
        let cert = self.file(&i.cert, "inbound.cert");
        let key = self.file(&i.key, "inbound.key");
        self.upstream_scheme(&i.upstream);
        self.origin_lists(i);
        let client_roots = i
            .client_roots
            .as_ref()
            .map(|r| self.file(r, "inbound.client_roots"));
        self.upstream_authority(&i.upstream);
        let server_name = self.server_name(&i.server_name);
        self.signatures_need_server_name(i.verify_signatures, &server_name);
        let key_servers = key_servers(self, &i.key_servers);
        Inbound {
            key_servers,
            per_origin: rate_limit(i.rate_per_origin, i.burst_per_origin),
            per_ip: rate_limit(i.rate_per_ip, i.burst_per_ip),
            max_body: i.max_body.unwrap_or(50 * 1024 * 1024),
            max_header_bytes: i.max_header_bytes.unwrap_or(64 * 1024),
            header_timeout: secs(i.header_timeout_secs, 10),
            request_timeout: secs(i.request_timeout_secs, 60),
            idle_timeout: secs(i.idle_timeout_secs, 120),
            max_connections: i.max_connections.unwrap_or(4096).max(1),
            client_roots,
            listen,
            cert,
            key,
            upstream: i.upstream.get_ref().clone(),
            deny_origins: i
                .deny_origins
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            allow_origins: i
                .allow_origins
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            client_auth: i.client_auth.unwrap_or(ClientAuth::Off),
            server_name: server_name.clone(),
            verify_signatures: match (i.verify_signatures, &server_name) {
                (Some(m), _) => m,
                (None, Some(_)) => SignatureMode::Enforce,
                (None, None) => SignatureMode::Off,
            },
        }
    }

    /// `inbound.upstream` (located) is a plain `http://` URL: the edge
    /// forwards to the homeserver's federation listener, not over TLS.
    fn upstream_scheme(&mut self, upstream: &Spanned<String>) {
        self.locate(upstream.span(), "inbound.upstream");
        if !upstream.get_ref().starts_with("http://") {
            self.err(
                upstream.span(),
                "inbound.upstream",
                format!(
                    "\"{}\" must be an http:// URL of the homeserver's federation listener",
                    upstream.get_ref()
                ),
            );
        }
    }

    /// `allow_origins` and `deny_origins` exclude each other: with both, it
    /// would be unclear which wins. (Reported at the `upstream` line: the
    /// origin lists carry no position.)
    fn origin_lists(&mut self, i: &RawInbound) {
        if !i.allow_origins.is_empty() && !i.deny_origins.is_empty() {
            self.err(
                i.upstream.span(),
                "inbound",
                "set allow_origins or deny_origins, not both".into(),
            );
        }
    }

    /// `inbound.upstream` parses as a URL with a host and port to dial.
    fn upstream_authority(&mut self, upstream: &Spanned<String>) {
        if let Ok(u) = upstream.get_ref().parse::<hyper::Uri>() {
            if u.authority().is_none() {
                self.err(
                    upstream.span(),
                    "inbound.upstream",
                    "the upstream URL needs a host and port".into(),
                );
            }
        } else {
            self.err(
                upstream.span(),
                "inbound.upstream",
                format!("\"{}\" is not a URL", upstream.get_ref()),
            );
        }
    }

    /// `inbound.server_name`: a Matrix server name written in canonical
    /// form, since it is compared as text with the signed `destination`.
    /// `None` when unset or refused.
    fn server_name(&mut self, raw: &Option<Spanned<String>>) -> Option<String> {
        match raw {
            None => None,
            Some(n) => match n.get_ref().parse::<crate::discovery::ServerName>() {
                Ok(parsed) if parsed.to_string() == *n.get_ref() => Some(parsed.to_string()),
                Ok(parsed) => {
                    self.err(
                        n.span(),
                        "inbound.server_name",
                        format!("write the server name in canonical form: \"{parsed}\""),
                    );
                    None
                }
                Err(e) => {
                    self.err(n.span(), "inbound.server_name", e.to_string());
                    None
                }
            },
        }
    }

    /// `inbound.verify_signatures = "enforce"` or `"report"` needs a valid
    /// `server_name`: without this homeserver's name, the signed
    /// destination cannot be checked.
    fn signatures_need_server_name(
        &mut self,
        mode: Option<SignatureMode>,
        server_name: &Option<String>,
    ) {
        if server_name.is_none()
            && matches!(mode, Some(SignatureMode::Enforce | SignatureMode::Report))
        {
            self.err(
                0..0,
                "inbound.verify_signatures",
                "checking request signatures needs inbound.server_name (this homeserver's Matrix server name, the signed destination)".into(),
            );
        }
    }

    /// `alerts.command` is not blank (an empty command cannot be run).
    fn alert_command(&mut self, command: &Option<Spanned<String>>) {
        if let Some(c) = command {
            if c.get_ref().trim().is_empty() {
                self.err(
                    c.span(),
                    "alerts.command",
                    "the alert command is empty".into(),
                );
            }
        }
    }

    /// `alerts.webhook` (located) passes [`check_alert_url`]: https, or
    /// http only to loopback, and no credentials in the URL.
    fn alert_webhook(&mut self, webhook: &Option<Spanned<String>>) {
        if let Some(w) = webhook {
            self.locate(w.span(), "alerts.webhook");
            if let Err(why) = check_alert_url(w.get_ref()) {
                self.err(w.span(), "alerts.webhook", why);
            }
        }
    }

    /// The Matrix sink: `matrix_homeserver`, `matrix_room` and
    /// `matrix_token_file` all set or none (the sink needs all three); the
    /// homeserver URL passes [`check_alert_url`] (the access token must not
    /// cross a network in clear) and the room looks like a room ID. Returns
    /// (homeserver, room, token file).
    fn alert_matrix(&mut self, a: &RawAlerts) -> Option<(String, String, PathBuf)> {
        match (&a.matrix_homeserver, &a.matrix_room, &a.matrix_token_file) {
            (None, None, None) => None,
            (Some(hs), Some(room), Some(token)) => {
                let u = hs.get_ref();
                self.locate(hs.span(), "alerts.matrix_homeserver");
                if let Err(why) = check_alert_url(u) {
                    self.err(hs.span(), "alerts.matrix_homeserver", why);
                }
                if !room.get_ref().starts_with('!') || !room.get_ref().contains(':') {
                    self.err(
                        room.span(),
                        "alerts.matrix_room",
                        "must be a room ID like !abc:example.org".into(),
                    );
                }
                let token_path = self.file(token, "alerts.matrix_token_file");
                Some((u.clone(), room.get_ref().clone(), token_path))
            }
            _ => {
                self.err(
                    0..0,
                    "alerts",
                    "matrix_homeserver, matrix_room and matrix_token_file go together".into(),
                );
                None
            }
        }
    }
}

/// Two listeners on one address: the second bind of `fedpin run` would fail.
/// Port 0 (any free port) never collides; a wildcard address collides with
/// every address of its family, and `[::]` (dual-stack) with IPv4 too.
fn check_listeners(cx: &mut Ctx<'_>, listeners: &[(&str, Option<SocketAddr>)]) {
    // An address that did not parse stands at its default; leave it out.
    let set: Vec<(&str, SocketAddr)> = listeners
        .iter()
        .filter(|(k, _)| !cx.errors.iter().any(|d| d.key == *k))
        .filter_map(|(k, a)| a.map(|a| (*k, a)))
        .collect();
    for (i, (key, a)) in set.iter().enumerate() {
        for (other, b) in &set[..i] {
            if a.port() == 0 || a.port() != b.port() {
                continue;
            }
            let (x, y) = (a.ip(), b.ip());
            let overlap = x == y
                || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified()))
                || (x.is_ipv6() && x.is_unspecified())
                || (y.is_ipv6() && y.is_unspecified());
            if overlap {
                let (line, column) = cx.at.get(*key).copied().unwrap_or((0, 0));
                cx.errors.push(Diagnostic {
                    line,
                    column,
                    key: key.to_string(),
                    message: format!(
                        "{a} is also {other} ({b}); two listeners cannot share an address"
                    ),
                });
            }
        }
    }
}

/// Checks `[[inbound.key_servers]]`: each a canonical server name with at
/// least one valid ed25519 key. Keys are required (Synapse fetches a
/// notary's own keys when they are missing; here a notary vouches for
/// every unpinned origin, so its keys are configuration, never fetched).
fn key_servers(cx: &mut Ctx<'_>, raw: &[Spanned<RawKeyServer>]) -> Vec<crate::keys::KeyServer> {
    let mut out: Vec<crate::keys::KeyServer> = Vec::new();
    for ks in raw {
        let k = ks.get_ref();
        let name = k.server_name.get_ref();
        let server_name = match name.parse::<crate::discovery::ServerName>() {
            Ok(parsed) if parsed.to_string() == *name => name.clone(),
            Ok(parsed) => {
                cx.err(
                    k.server_name.span(),
                    "inbound.key_servers.server_name",
                    format!("write the server name in canonical form: \"{parsed}\""),
                );
                continue;
            }
            Err(e) => {
                cx.err(
                    k.server_name.span(),
                    "inbound.key_servers.server_name",
                    e.to_string(),
                );
                continue;
            }
        };
        if out.iter().any(|o| o.server_name == server_name) {
            cx.err(
                k.server_name.span(),
                "inbound.key_servers.server_name",
                format!("{server_name} is listed twice"),
            );
            continue;
        }
        if k.verify_keys.is_empty() {
            cx.err(
                ks.span(),
                "inbound.key_servers.verify_keys",
                format!("key server {server_name} needs verify_keys = {{ \"ed25519:ID\" = \"BASE64\" }}: a notary's own keys are configured, never fetched"),
            );
            continue;
        }
        let mut verify_keys = Vec::new();
        for (id, b64) in &k.verify_keys {
            match crate::matrix::signing::VerifyKey::from_base64(id, b64.get_ref()) {
                Ok(key) => verify_keys.push(key),
                Err(e) => cx.err(
                    b64.span(),
                    "inbound.key_servers.verify_keys",
                    format!("key {id} of {server_name}: {e}"),
                ),
            }
        }
        if verify_keys.len() == k.verify_keys.len() {
            out.push(crate::keys::KeyServer {
                server_name,
                verify_keys,
            });
        }
    }
    out
}

/// Checks an alert sink URL (`alerts.webhook`, `alerts.matrix_homeserver`)
/// on its parsed form: `https://`, or plain `http://` only when the host is
/// a loopback IP address (127.0.0.0/8, `::1`) or exactly `localhost`, so the
/// alert (and the Matrix sink's access token) never crosses a network in
/// clear. A user name or password in the URL is refused: credentials belong
/// in files, not in a URL that ends up in logs. Returns the reason on refusal.
fn check_alert_url(u: &str) -> Result<(), String> {
    let uri: hyper::Uri = u
        .parse()
        .map_err(|e| format!("\"{u}\" is not a URL ({e})"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("\"{u}\" is not an absolute URL with a host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "\"{u}\" carries a user name or password (userinfo); put credentials elsewhere"
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("\"{u}\" has no host"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = match bare.parse::<IpAddr>() {
                // 127.0.0.0/8 and ::1 only (not IPv4-mapped forms).
                Ok(ip) => ip.is_loopback(),
                Err(_) => host.eq_ignore_ascii_case("localhost"),
            };
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "\"{u}\": plain http:// is allowed only to a loopback host (127.0.0.0/8, [::1] or localhost), not \"{host}\"; use https://"
                ))
            }
        }
        _ => Err(format!(
            "\"{u}\" must be an https:// URL (plain http only to loopback)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_urls_are_judged_on_the_parsed_host() {
        for ok in [
            "https://alerts.example/hook",
            "http://127.0.0.1:9/x",
            "http://127.255.0.9/x",
            "http://[::1]:9/x",
            "http://localhost/x",
            "http://LocalHost:8008",
        ] {
            assert_eq!(check_alert_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://127.attacker.example/hook",
            "http://localhost.attacker.example/",
            "http://127.0.0.1.nip.io/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://10.0.0.1/",
            "http://user:pw@127.0.0.1/",
            "https://token@alerts.example/",
            "/relative/path",
            "ftp://127.0.0.1/",
            "",
        ] {
            assert!(check_alert_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn destination_names_are_normalised_like_connect_hosts() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::ca::init_ca(&dir.path().join("ca")).unwrap();
        let base = "pins = \"p.toml\"\n[outbound]\nca_cert = \"ca/fedpin-ca.pem\"\nca_key = \"ca/fedpin-ca.key\"\n";
        let c = Config::parse(
            &format!("{base}deny_destinations = [\"Abuse.Example.\", \"[0:0::1]\"]\nresolve = {{ \"HS.Example.\" = \"127.0.0.1\" }}\n"),
            dir.path(),
        )
        .unwrap();
        let o = c.outbound.unwrap();
        assert_eq!(o.deny_destinations, vec!["abuse.example", "::1"]);
        assert!(o.resolve.contains_key("hs.example"), "{:?}", o.resolve);
        let e = Config::parse(
            &format!("{base}deny_destinations = [\"ok.example\", \"a..example\"]\n"),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.errors[0].key, "outbound.deny_destinations[1]");
        assert_eq!(e.errors[0].line, 5);
    }

    #[test]
    fn minimal_and_errors_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::parse("pins = \"p.toml\"\n", dir.path()).unwrap();
        assert_eq!(c.pins, dir.path().join("p.toml"));
        let e = Config::parse(
            "pins = \"p.toml\"\n[admin]\nlisten = \"nope\"\n",
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.errors[0].line, 3);
        assert_eq!(e.errors[0].key, "admin.listen");
        let text = "pins = \"p.toml\"\n[outbound]\nca_cert = \"missing.pem\"\nca_key = \"missing.key\"\nallow_ips = [\"10.0.0.0/33\"]\n";
        // The text alone: one bad value. The files are prepare's to read
        // (prepare's tests check that it names all four).
        let e = Config::parse(text, dir.path()).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        let e = Config::parse("bogus = 1\n", dir.path()).unwrap_err();
        assert!(e.errors[0].message.contains("unknown field"), "{e}");
    }

    #[test]
    fn key_servers_need_canonical_names_and_valid_keys() {
        let dir = tempfile::tempdir().unwrap();
        let base = "pins = \"p.toml\"\n[inbound]\nlisten = \"127.0.0.1:8448\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nupstream = \"http://127.0.0.1:8008\"\nserver_name = \"hs.example\"\n";
        // matrix.org's published notary key.
        let good = "[[inbound.key_servers]]\nserver_name = \"matrix.org\"\nverify_keys = { \"ed25519:auto\" = \"Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw\" }\n";
        let c = Config::parse(&format!("{base}{good}"), dir.path()).unwrap();
        let ks = &c.inbound.unwrap().key_servers;
        assert_eq!(ks.len(), 1);
        assert_eq!(ks[0].server_name, "matrix.org");
        assert_eq!(ks[0].verify_keys[0].id, "ed25519:auto");
        for (bad, key, line) in [
            ("[[inbound.key_servers]]\nserver_name = \"notary.example\"\n", "inbound.key_servers.verify_keys", 11),
            ("[[inbound.key_servers]]\nserver_name = \"Matrix.Org:443\"\nverify_keys = { \"ed25519:a\" = \"Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw\" }\n", "inbound.key_servers.server_name", 12),
            ("[[inbound.key_servers]]\nserver_name = \"notary.example\"\nverify_keys = { \"ed25519:a\" = \"not base64!\" }\n", "inbound.key_servers.verify_keys", 13),
            ("[[inbound.key_servers]]\nserver_name = \"notary.example\"\nverify_keys = { \"rsa:a\" = \"Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw\" }\n", "inbound.key_servers.verify_keys", 13),
            ("[[inbound.key_servers]]\nserver_name = \"notary.example\"\nverify_keys = { \"ed25519:a\" = \"Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw\" }\nnotary = true\n", "", 0),
        ] {
            let e = Config::parse(&format!("{base}{good}{bad}"), dir.path()).unwrap_err();
            if key.is_empty() {
                assert!(e.errors[0].message.contains("unknown field"), "{e}");
                continue;
            }
            assert_eq!(e.errors.len(), 1, "{e}");
            assert_eq!(e.errors[0].key, key, "{e}");
            assert_eq!(e.errors[0].line, line, "{bad}: {e}");
        }
        let e = Config::parse(&format!("{base}{good}{good}"), dir.path()).unwrap_err();
        assert!(e.errors[0].message.contains("listed twice"), "{e}");
    }
}
