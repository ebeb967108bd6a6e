//! Matrix server-name resolution.
//!
//! Implements "Resolving server names" from the Matrix Server-Server API:
//! given a server name such as `example.org`, work out which host and port to
//! dial for federation traffic and which TLS name (SNI) the remote certificate
//! must be valid for. `pinctl add SERVER_NAME` uses this to find the endpoint
//! whose certificate it should pin.
//!
//! The steps, in order (see [`resolve`]):
//!
//! 1. An IP literal is dialled directly, on its explicit port or 8448; the TLS
//!    name is the IP address text.
//! 2. A hostname with an explicit port is dialled directly; the TLS name is
//!    the hostname.
//! 3. Otherwise `https://<hostname>/.well-known/matrix/server` is fetched. If it
//!    names a delegated server `D`:
//!    * `D` an IP literal: dial it on its port or 8448, TLS name the IP text;
//!    * `D` with an explicit port: dial `D:port`, TLS name `D`;
//!    * else the SRV records `_matrix-fed._tcp.D` then `_matrix._tcp.D` are
//!      tried: dial the target, TLS name `D`;
//!    * else dial `D:8448`, TLS name `D`.
//! 4. Without a usable well-known document (connection or TLS failure, non-200
//!    status, bad body, timeout: logged at debug level and treated as absent)
//!    the SRV record `_matrix-fed._tcp.<hostname>` is tried: dial the target,
//!    TLS name the hostname.
//! 5. Then the deprecated `_matrix._tcp.<hostname>`, likewise.
//! 6. Otherwise dial `<hostname>:8448`, TLS name the hostname.
//!
//! The step numbers follow the specification.
//!
//! DNS is abstracted behind [`SrvLookup`] and the well-known fetch can be
//! pointed at a fixed socket address, so everything is testable on loopback.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::config::ResolverConfig;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use rustls_pki_types::TrustAnchor;

/// The federation port used when nothing else names one (8448).
pub const DEFAULT_FEDERATION_PORT: u16 = 8448;

/// Path of the server delegation document fetched in step 3.
pub const WELL_KNOWN_PATH: &str = "/.well-known/matrix/server";

/// Largest accepted `/.well-known/matrix/server` body, in bytes (64 KiB).
pub const WELL_KNOWN_MAX_BODY: usize = 64 * 1024;

/// SRV service prefixes tried in order: the current one, then the deprecated one.
const SRV_PREFIXES: [&str; 2] = ["_matrix-fed._tcp.", "_matrix._tcp."];

/// Longest accepted server name, per the Matrix grammar.
const MAX_SERVER_NAME_LEN: usize = 255;

/// Longest DNS name (without the trailing dot).
const MAX_DNS_NAME_LEN: usize = 253;

/// Longest DNS label.
const MAX_DNS_LABEL_LEN: usize = 63;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Everything that can go wrong while parsing or resolving a server name.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A server name (typed by the user or found in a well-known document)
    /// does not follow the Matrix server-name grammar.
    #[error("invalid server name {input:?}: {reason}")]
    InvalidServerName {
        /// The text that was parsed.
        input: String,
        /// Which part is wrong and why.
        reason: String,
    },
    /// A `/.well-known/matrix/server` body is unusable (returned by
    /// [`parse_well_known`], which does not know where the body came from).
    #[error("invalid /.well-known/matrix/server body: {reason}")]
    WellKnownBody {
        /// What is wrong with the body.
        reason: String,
    },
    /// Fetching or interpreting the well-known document at `url` failed.
    #[error("well-known at {url}: {reason}")]
    WellKnown {
        /// The URL that was fetched, e.g. `https://example.org/.well-known/matrix/server`.
        url: String,
        /// What went wrong (connection, TLS, HTTP status, body).
        reason: String,
    },
    /// A DNS SRV lookup failed for a reason other than "no such records"
    /// (for example SERVFAIL or an unreachable name server).
    #[error("DNS SRV lookup for {name} failed: {reason}")]
    Srv {
        /// The SRV record name that was queried, e.g. `_matrix-fed._tcp.example.org`.
        name: String,
        /// The resolver's description of the failure.
        reason: String,
    },
    /// A resolution step took longer than [`DiscoveryOptions::timeout`].
    #[error("{step} timed out after {after:?}")]
    Timeout {
        /// The step that timed out, e.g. `DNS SRV lookup for _matrix-fed._tcp.example.org`.
        step: String,
        /// The configured per-step timeout.
        after: Duration,
    },
}

// ---------------------------------------------------------------------------
// Server names
// ---------------------------------------------------------------------------

/// The host part of a Matrix server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lowercased, without a trailing dot.
    Dns(String),
    /// An IPv4 or IPv6 address literal.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    /// Writes the bare host: the DNS name or the IP address text
    /// (IPv6 without brackets, as used for SNI and certificate checks).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A parsed Matrix server name: host (DNS name, IPv4, or IPv6 literal without
/// brackets) and optional explicit port.
///
/// Parsing ([`FromStr`]) follows the grammar of the Matrix specification
/// (appendix "Server Name"):
///
/// * a DNS name of letters, digits, `-` and `.`; it is lowercased and one
///   trailing dot is removed. Each label must be 1–63 characters and must not
///   start or end with `-`; the whole name must be at most 253 characters and
///   its last label must not be all digits;
/// * a dotted-quad IPv4 address (anything made only of digits and dots must
///   be one);
/// * an IPv6 address in brackets, e.g. `[::1]` (no zone identifier);
/// * optionally followed by `:PORT`, with PORT a decimal number in 1..=65535.
///
/// [`Display`](fmt::Display) writes the canonical form, e.g. `example.org`,
/// `example.org:8448`, `192.0.2.1`, `[::1]:8448`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName {
    /// The host part.
    pub host: Host,
    /// The explicit port, if the name carried one.
    pub port: Option<u16>,
}

impl FromStr for ServerName {
    type Err = DiscoveryError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse_server_name(input).map_err(|reason| DiscoveryError::InvalidServerName {
            input: input.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Dns(name) => f.write_str(name)?,
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Parses a server name; the error is the reason (without the input, which
/// the caller adds).
fn parse_server_name(input: &str) -> Result<ServerName, String> {
    if input.is_empty() {
        return Err("it is empty".to_owned());
    }
    if input.len() > MAX_SERVER_NAME_LEN {
        return Err(format!(
            "it is {} bytes long; the maximum is {MAX_SERVER_NAME_LEN}",
            input.len()
        ));
    }

    if let Some(rest) = input.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err("the IPv6 literal is missing its closing ']'".to_owned());
        };
        let ip = parse_ipv6_literal(inner)?;
        let port = if after.is_empty() {
            None
        } else if let Some(port) = after.strip_prefix(':') {
            Some(parse_port(port)?)
        } else {
            return Err(format!(
                "unexpected {after:?} after the IPv6 literal; expected \":PORT\" or nothing"
            ));
        };
        return Ok(ServerName {
            host: Host::Ip(IpAddr::V6(ip)),
            port,
        });
    }

    if input.matches(':').count() > 1 {
        return Err(
            "an IPv6 address must be enclosed in brackets, e.g. \"[::1]\" or \"[::1]:8448\""
                .to_owned(),
        );
    }
    let (host, port) = match input.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (input, None),
    };
    Ok(ServerName {
        host: parse_host(host)?,
        port,
    })
}

/// Parses the text between `[` and `]`.
fn parse_ipv6_literal(inner: &str) -> Result<Ipv6Addr, String> {
    if inner.is_empty() {
        return Err("the IPv6 literal between the brackets is empty".to_owned());
    }
    if let Some(bad) = inner
        .chars()
        .find(|c| !(c.is_ascii_hexdigit() || *c == ':' || *c == '.'))
    {
        return Err(format!(
            "invalid character {bad:?} in IPv6 literal {inner:?} \
             (allowed: hex digits, ':' and '.'; zone identifiers are not allowed)"
        ));
    }
    Ipv6Addr::from_str(inner).map_err(|_| format!("{inner:?} is not a valid IPv6 address"))
}

/// Parses the text after `:`.
fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("the port after ':' is empty".to_owned());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a decimal number"));
    }
    match port.parse::<u16>() {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("port {port:?} is out of range (1-65535)")),
    }
}

/// Parses an unbracketed host: IPv4 dotted quad or DNS name.
fn parse_host(host: &str) -> Result<Host, String> {
    if host.is_empty() {
        return Err("the host part is empty".to_owned());
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "invalid character {bad:?} in host {host:?} (allowed: letters, digits, '-' and '.')"
        ));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Ipv4Addr::from_str(host)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| {
                format!("{host:?} looks like an IPv4 address but is not a valid dotted quad")
            });
    }

    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(format!("host {host:?} has no labels"));
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(format!(
            "host is {} characters long; a DNS name is at most {MAX_DNS_NAME_LEN}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "host {host:?} has an empty label (leading dot or \"..\")"
            ));
        }
        if label.len() > MAX_DNS_LABEL_LEN {
            return Err(format!(
                "label {label:?} in host {host:?} is longer than {MAX_DNS_LABEL_LEN} characters"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "label {label:?} in host {host:?} starts or ends with '-'"
            ));
        }
    }
    if let Some(last) = name.rsplit('.').next() {
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "the last label {last:?} of host {host:?} is all digits, which is not a valid host name"
            ));
        }
    }
    Ok(Host::Dns(name.to_ascii_lowercase()))
}

// ---------------------------------------------------------------------------
// Results and options
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// SRV
// ---------------------------------------------------------------------------

/// The future returned by [`SrvLookup::lookup_srv`].
pub type SrvFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<SrvTarget>, DiscoveryError>> + Send + 'a>>;

/// SRV lookup abstraction so tests can stub DNS.
pub trait SrvLookup: Send + Sync {
    /// Looks up the SRV records named `name` (e.g. `_matrix-fed._tcp.example.org`).
    ///
    /// Must return `Ok(vec![])` when the name does not exist or has no SRV
    /// records, and `Err` only for real failures (which stop resolution).
    fn lookup_srv<'a>(&'a self, name: &'a str) -> SrvFuture<'a>;
}

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Priority: lower is preferred.
    pub priority: u16,
    /// Weight among records of equal priority: higher is preferred here.
    pub weight: u16,
    /// Port to dial.
    pub port: u16,
    /// Host to dial, lowercased, without trailing dot (`.` means "service not
    /// available").
    pub target: String,
}

/// [`SrvLookup`] backed by hickory's Tokio resolver.
#[derive(Clone)]
pub struct HickorySrv {
    resolver: TokioResolver,
}

impl HickorySrv {
    /// Builds a resolver from the system configuration (`/etc/resolv.conf`);
    /// if that cannot be read, logs a warning and falls back to hickory's
    /// default configuration (Google public DNS).
    pub fn from_system() -> Self {
        let builder = match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot read system DNS configuration; using hickory's default resolvers"
                );
                TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioConnectionProvider::default(),
                )
            }
        };
        Self {
            resolver: builder.build(),
        }
    }

    /// Wraps an already configured resolver.
    pub fn with_resolver(resolver: TokioResolver) -> Self {
        Self { resolver }
    }
}

impl fmt::Debug for HickorySrv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickorySrv").finish_non_exhaustive()
    }
}

impl SrvLookup for HickorySrv {
    fn lookup_srv<'a>(&'a self, name: &'a str) -> SrvFuture<'a> {
        Box::pin(async move {
            // Fully qualify so resolv.conf search domains are never appended.
            let fqdn = if name.ends_with('.') {
                name.to_owned()
            } else {
                format!("{name}.")
            };
            match self.resolver.srv_lookup(fqdn.as_str()).await {
                Ok(lookup) => Ok(lookup
                    .iter()
                    .map(|srv| SrvTarget {
                        priority: srv.priority(),
                        weight: srv.weight(),
                        port: srv.port(),
                        target: normalize_srv_target(&srv.target().to_ascii()),
                    })
                    .collect()),
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(DiscoveryError::Srv {
                    name: name.to_owned(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}

/// Lowercases and drops the trailing dot, keeping the root name as `.`.
fn normalize_srv_target(target: &str) -> String {
    if target == "." {
        return ".".to_owned();
    }
    target
        .strip_suffix('.')
        .unwrap_or(target)
        .to_ascii_lowercase()
}

/// Pure choice among SRV answers.
///
/// Records whose target is `.` (RFC 2782: service explicitly unavailable) or
/// empty, or whose port is 0, are ignored; if nothing is left the result is
/// `None`, which callers treat as "no records". Among the rest, the lowest
/// priority wins, then the highest weight; remaining ties go to the record
/// listed first. This is deterministic (no RFC 2782 weighted random choice),
/// so repeated `pinctl add` runs pick the same endpoint.
pub fn pick_srv(records: &[SrvTarget]) -> Option<&SrvTarget> {
    records
        .iter()
        .filter(|r| {
            let t = r.target.trim_end_matches('.');
            !t.is_empty() && r.port != 0
        })
        .min_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| b.weight.cmp(&a.weight))
        })
}

// ---------------------------------------------------------------------------
// Well-known
// ---------------------------------------------------------------------------

/// Pure parse of a /.well-known/matrix/server body: returns the delegated
/// server name (validated with [`ServerName::from_str`]).
///
/// The body must be a JSON object whose `m.server` member is a string; other
/// members are ignored.
pub fn parse_well_known(body: &[u8]) -> Result<ServerName, DiscoveryError> {
    let bad = |reason: String| DiscoveryError::WellKnownBody { reason };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("body is not a JSON object".to_owned()))?;
    let server = object
        .get("m.server")
        .ok_or_else(|| bad("m.server is missing".to_owned()))?;
    let server = server
        .as_str()
        .ok_or_else(|| bad("m.server is not a string".to_owned()))?;
    ServerName::from_str(server).map_err(|e| bad(format!("m.server is not usable: {e}")))
}

/// Most redirects a well-known fetch follows (Synapse's agent follows them
/// too; the Matrix specification says to follow 30x, avoiding loops).
pub const WELL_KNOWN_MAX_REDIRECTS: usize = 10;

/// One HTTPS response seen while fetching the well-known document: a
/// redirect or the final answer. Every hop is a TLS name the peer's
/// federation depends on, so `pinctl add` pins each one; its chain was
/// validated under the Web PKI for its host before the request was sent.
pub use crate::https::Hop as WellKnownHop;

/// A well-known fetch that named a delegation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellKnown {
    /// `m.server`, parsed.
    pub delegated: ServerName,
    /// Every response on the way, the final `200 OK` last.
    pub hops: Vec<WellKnownHop>,
}

/// The URL of the well-known document for `host` on `port`.
fn well_known_url(host: &str, port: u16) -> String {
    if port == 443 {
        format!("https://{host}{WELL_KNOWN_PATH}")
    } else {
        format!("https://{host}:{port}{WELL_KNOWN_PATH}")
    }
}

/// Fetches and parses `https://<host>/.well-known/matrix/server`.
///
/// `host` must be a DNS name. Each server certificate is verified against
/// the Web PKI (`webpki_roots`) plus [`DiscoveryOptions::extra_roots`], with
/// the request's host as the TLS name. The request uses HTTP/1.1; redirects
/// (301, 302, 303, 307, 308) to `https://` URLs or absolute paths are
/// followed up to [`WELL_KNOWN_MAX_REDIRECTS`] times, never to the same URL
/// twice; only a final status 200 is accepted, and each body is capped at
/// [`WELL_KNOWN_MAX_BODY`]. The whole fetch is limited by
/// [`DiscoveryOptions::timeout`].
///
/// [`resolve`] treats any error from here as "no well-known document"; this
/// function is public so callers can show why.
pub async fn fetch_well_known(
    host: &str,
    opts: &DiscoveryOptions,
) -> Result<WellKnown, DiscoveryError> {
    let url = well_known_url(host, opts.well_known_port);
    match tokio::time::timeout(opts.timeout, follow_well_known(host, opts)).await {
        Ok(Ok((body, hops))) => match parse_well_known(&body) {
            Ok(delegated) => Ok(WellKnown { delegated, hops }),
            Err(DiscoveryError::WellKnownBody { reason }) => {
                Err(DiscoveryError::WellKnown { url, reason })
            }
            Err(other) => Err(DiscoveryError::WellKnown {
                url,
                reason: other.to_string(),
            }),
        },
        Ok(Err(reason)) => Err(DiscoveryError::WellKnown { url, reason }),
        Err(_) => Err(DiscoveryError::Timeout {
            step: format!("fetching {url}"),
            after: opts.timeout,
        }),
    }
}

pub(crate) use crate::https::redirect_target;

/// Follows the well-known fetch to its final `200 OK` with the crate's one
/// HTTPS client (Web PKI plus the extra roots, `connect_to` rules, the
/// test override); returns the body and every hop. Errors are reasons.
async fn follow_well_known(
    host: &str,
    opts: &DiscoveryOptions,
) -> Result<(Bytes, Vec<WellKnownHop>), String> {
    let dialer = crate::https::Dialer {
        connect_to: opts
            .connect_to
            .iter()
            .map(|c| ((c.host.clone(), c.port), c.addr))
            .collect(),
        fixed: opts.well_known_addr_override,
        ..crate::https::Dialer::default()
    };
    let client = crate::https::HttpsClient::webpki(&opts.extra_roots)?
        .with_dialer(dialer)
        // The caller limits the whole fetch to `opts.timeout` (and reports
        // it as a timeout); no single hop may take longer either.
        .with_timeout(opts.timeout + Duration::from_secs(1))
        .with_max_body(WELL_KNOWN_MAX_BODY);
    let (answer, hops) = client
        .get_following(
            host,
            opts.well_known_port,
            WELL_KNOWN_PATH,
            crate::https::Redirects {
                max: WELL_KNOWN_MAX_REDIRECTS,
                other_hosts: true,
            },
            &[("accept", "application/json")],
        )
        .await?;
    Ok((answer.body, hops))
}

// ---------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------

/// Resolves `name` following the Matrix "Resolving server names" steps (see
/// the [module documentation](self)).
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

struct WebPkiWellKnown<'o>(&'o DiscoveryOptions);

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
            return Ok(Resolved {
                server_name: name.clone(),
                tls_name: ip.to_string(),
                connect_host: ip.to_string(),
                port: name.port.unwrap_or(DEFAULT_FEDERATION_PORT),
                via: ResolvedVia::IpLiteral,
                well_known: None,
            })
        }
        Host::Dns(host) => host,
    };
    if let Some(port) = name.port {
        return Ok(Resolved {
            server_name: name.clone(),
            tls_name: host.clone(),
            connect_host: host.clone(),
            port,
            via: ResolvedVia::ExplicitPort,
            well_known: None,
        });
    }

    let mut srv = SrvBackend::new(opts);
    match source.fetch(host).await {
        Ok(wk) => {
            tracing::debug!(server_name = %name, delegated = %wk.delegated, "well-known delegation");
            let mut r = resolve_delegated(name, wk.delegated.clone(), &mut srv).await?;
            r.well_known = Some(wk);
            Ok(r)
        }
        Err(e) => {
            tracing::debug!(
                server_name = %name,
                error = %e,
                "no usable well-known document; trying SRV"
            );
            if let Some((record, target)) = srv.lookup_chain(host).await? {
                return Ok(Resolved {
                    server_name: name.clone(),
                    tls_name: host.clone(),
                    connect_host: target.target,
                    port: target.port,
                    via: ResolvedVia::Srv { record },
                    well_known: None,
                });
            }
            Ok(Resolved {
                server_name: name.clone(),
                tls_name: host.clone(),
                connect_host: host.clone(),
                port: DEFAULT_FEDERATION_PORT,
                via: ResolvedVia::DefaultPort,
                well_known: None,
            })
        }
    }
}

/// Step 3 once the well-known document named `delegated`.
async fn resolve_delegated(
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
            return Ok(Resolved {
                server_name: name.clone(),
                tls_name: host,
                connect_host: target.target,
                port: target.port,
                via: ResolvedVia::Srv { record },
                well_known: None,
            });
        }
    }
    Ok(Resolved {
        server_name: name.clone(),
        tls_name: host.clone(),
        connect_host: host,
        port: delegated.port.unwrap_or(DEFAULT_FEDERATION_PORT),
        via,
        well_known: None,
    })
}

/// The SRV backend, created on first use so that names decided without DNS
/// never read the system resolver configuration.
struct SrvBackend<'o> {
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
                tracing::debug!(record = %record, target = %target.target, port = target.port, "SRV hit");
                let target = SrvTarget {
                    target: normalize_srv_target(&target.target),
                    ..target.clone()
                };
                return Ok(Some((record, target)));
            }
            tracing::debug!(record = %record, "no usable SRV records");
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const WK_HOST: &str = "wk.fedpin.test";

    // ----- server-name parsing ------------------------------------------

    fn sn(s: &str) -> ServerName {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn dns(host: &str, port: Option<u16>) -> ServerName {
        ServerName {
            host: Host::Dns(host.to_owned()),
            port,
        }
    }

    fn bad(s: &str) -> String {
        match s.parse::<ServerName>() {
            Ok(v) => panic!("{s:?} should not parse, got {v:?}"),
            Err(e @ DiscoveryError::InvalidServerName { .. }) => e.to_string(),
            Err(e) => panic!("{s:?}: wrong error kind {e:?}"),
        }
    }

    #[test]
    fn parses_dns_names() {
        assert_eq!(sn("example.org"), dns("example.org", None));
        assert_eq!(sn("example.org:8448"), dns("example.org", Some(8448)));
        assert_eq!(sn("localhost"), dns("localhost", None));
        assert_eq!(sn("a-b.c0"), dns("a-b.c0", None));
        assert_eq!(
            sn("matrix.example.org:1"),
            dns("matrix.example.org", Some(1))
        );
        assert_eq!(sn("x.y:65535"), dns("x.y", Some(65535)));
        assert_eq!(sn("x.y:08448"), dns("x.y", Some(8448)));
        assert_eq!(sn("1.2.3.example"), dns("1.2.3.example", None));
    }

    #[test]
    fn lowercases_and_strips_trailing_dot() {
        assert_eq!(sn("EXAMPLE.Org"), dns("example.org", None));
        assert_eq!(sn("example.org."), dns("example.org", None));
        assert_eq!(sn("Example.ORG.:443"), dns("example.org", Some(443)));
    }

    #[test]
    fn parses_ip_literals() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            sn("192.0.2.1"),
            ServerName {
                host: Host::Ip(v4),
                port: None
            }
        );
        assert_eq!(
            sn("192.0.2.1:8449"),
            ServerName {
                host: Host::Ip(v4),
                port: Some(8449)
            }
        );
        assert_eq!(
            sn("[::1]"),
            ServerName {
                host: Host::Ip(lo6),
                port: None
            }
        );
        assert_eq!(
            sn("[::1]:8448"),
            ServerName {
                host: Host::Ip(lo6),
                port: Some(8448)
            }
        );
        assert_eq!(
            sn("[2001:DB8::1]:443"),
            ServerName {
                host: Host::Ip(v6),
                port: Some(443)
            }
        );
        assert!(matches!(
            sn("[::ffff:192.0.2.1]").host,
            Host::Ip(IpAddr::V6(_))
        ));
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (input, canonical) in [
            ("example.org", "example.org"),
            ("EXAMPLE.org.:8448", "example.org:8448"),
            ("x.y:08448", "x.y:8448"),
            ("192.0.2.1", "192.0.2.1"),
            ("192.0.2.1:80", "192.0.2.1:80"),
            ("[::1]:8448", "[::1]:8448"),
            ("[2001:DB8:0::1]", "[2001:db8::1]"),
        ] {
            let parsed = sn(input);
            assert_eq!(parsed.to_string(), canonical, "{input}");
            assert_eq!(sn(canonical), parsed, "{canonical} round trip");
        }
        assert_eq!(Host::Ip("::1".parse().unwrap()).to_string(), "::1");
    }

    #[test]
    fn rejects_bad_names_with_clear_messages() {
        let cases: &[(&str, &str)] = &[
            ("", "it is empty"),
            (":8448", "host part is empty"),
            ("example.org:", "port after ':' is empty"),
            ("example.org:0", "\"0\" is out of range"),
            ("example.org:65536", "\"65536\" is out of range"),
            ("example.org:99999999", "out of range"),
            ("example.org:80a", "\"80a\" is not a decimal number"),
            ("example.org:-1", "not a decimal number"),
            ("a b", "invalid character ' ' in host \"a b\""),
            ("exa_mple.org", "invalid character '_'"),
            ("ex\u{e4}mple.org", "invalid character '\u{e4}'"),
            ("::1", "must be enclosed in brackets"),
            ("2001:db8::1:8448", "must be enclosed in brackets"),
            ("[::1", "missing its closing ']'"),
            ("[::1]x", "unexpected \"x\" after the IPv6 literal"),
            ("[::1]:", "port after ':' is empty"),
            ("[::1]:0", "out of range"),
            ("[]", "between the brackets is empty"),
            ("[fe80::1%eth0]", "invalid character '%' in IPv6 literal"),
            ("[1.2.3.4]", "\"1.2.3.4\" is not a valid IPv6 address"),
            ("[::g]", "invalid character 'g'"),
            ("256.1.1.1", "not a valid dotted quad"),
            ("1.2.3", "not a valid dotted quad"),
            ("1.2.3.4.", "not a valid dotted quad"),
            (".", "not a valid dotted quad"),
            ("a..b", "empty label"),
            (".example.org", "empty label"),
            ("example.org..", "empty label"),
            ("-a.org", "label \"-a\""),
            ("a-.org", "starts or ends with '-'"),
            ("example.123", "last label \"123\""),
        ];
        for (input, needle) in cases {
            let msg = bad(input);
            assert!(
                msg.starts_with(&format!("invalid server name {input:?}: ")),
                "{input:?}: {msg}"
            );
            assert!(msg.contains(needle), "{input:?}: {msg:?} lacks {needle:?}");
        }
        let long_label = format!("{}.org", "a".repeat(64));
        assert!(bad(&long_label).contains("longer than 63"));
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        assert!(bad(&long_name).contains("at most 253"));
        let too_long = "a".repeat(256);
        assert!(bad(&too_long).contains("maximum is 255"));
    }

    // ----- parse_well_known ---------------------------------------------

    fn wk_err(body: &[u8]) -> String {
        match parse_well_known(body) {
            Ok(v) => panic!("{:?} should fail, got {v:?}", String::from_utf8_lossy(body)),
            Err(e @ DiscoveryError::WellKnownBody { .. }) => e.to_string(),
            Err(e) => panic!("wrong error kind {e:?}"),
        }
    }

    #[test]
    fn parse_well_known_accepts_valid_bodies() {
        assert_eq!(
            parse_well_known(br#"{"m.server": "matrix.example.org:443"}"#).unwrap(),
            dns("matrix.example.org", Some(443))
        );
        assert_eq!(
            parse_well_known(br#"{"other": [1, 2], "m.server": "Matrix.Example.org", "x": null}"#)
                .unwrap(),
            dns("matrix.example.org", None)
        );
        assert_eq!(
            parse_well_known(b" {\"m.server\":\"[::1]:8448\"}\n").unwrap(),
            sn("[::1]:8448")
        );
    }

    #[test]
    fn parse_well_known_rejects_bad_bodies() {
        assert!(wk_err(b"").contains("not valid JSON"));
        assert!(wk_err(b"<html>").contains("not valid JSON"));
        assert!(wk_err(b"\xff\xfe").contains("not valid JSON"));
        assert!(wk_err(br#"["m.server"]"#).contains("not a JSON object"));
        assert!(wk_err(br#""example.org""#).contains("not a JSON object"));
        assert!(wk_err(br#"{}"#).contains("m.server is missing"));
        assert!(wk_err(br#"{"m.server": 8448}"#).contains("m.server is not a string"));
        assert!(wk_err(br#"{"m.server": null}"#).contains("m.server is not a string"));
        assert!(wk_err(br#"{"m.server": {"a": 1}}"#).contains("m.server is not a string"));
        let msg = wk_err(br#"{"m.server": "bad host:1"}"#);
        assert!(
            msg.contains("invalid server name \"bad host:1\": invalid character ' '"),
            "{msg}"
        );
        assert!(wk_err(br#"{"m.server": ""}"#).contains("it is empty"));
        assert!(wk_err(br#"{"m.server": "example.org:0"}"#).contains("out of range"));
    }

    // ----- pick_srv -------------------------------------------------------

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port,
            target: target.to_owned(),
        }
    }

    #[test]
    fn pick_srv_orders_by_priority_then_weight() {
        assert_eq!(pick_srv(&[]), None);
        let recs = [
            srv(20, 100, 1, "low-prio.test"),
            srv(10, 5, 2, "light.test"),
            srv(10, 50, 3, "heavy.test"),
            srv(10, 50, 4, "heavy-tie.test"),
        ];
        assert_eq!(pick_srv(&recs), Some(&recs[2]));
        let recs = [srv(5, 0, 1, "a.test"), srv(5, 0, 2, "b.test")];
        assert_eq!(pick_srv(&recs), Some(&recs[0]), "ties go to the first");
        let recs = [srv(65535, 65535, 9, "only.test")];
        assert_eq!(pick_srv(&recs), Some(&recs[0]));
    }

    #[test]
    fn pick_srv_ignores_unavailable_targets() {
        assert_eq!(pick_srv(&[srv(0, 0, 0, ".")]), None);
        assert_eq!(pick_srv(&[srv(0, 0, 8448, ".")]), None);
        assert_eq!(pick_srv(&[srv(0, 0, 8448, "")]), None);
        assert_eq!(pick_srv(&[srv(0, 0, 0, "a.test")]), None, "port 0");
        let recs = [srv(0, 0, 8448, "."), srv(10, 0, 8449, "real.test")];
        assert_eq!(pick_srv(&recs), Some(&recs[1]));
    }

    #[test]
    fn normalizes_srv_targets() {
        assert_eq!(normalize_srv_target("."), ".");
        assert_eq!(normalize_srv_target("Fed.Example.ORG."), "fed.example.org");
        assert_eq!(normalize_srv_target("fed.example.org"), "fed.example.org");
    }

    // ----- misc -------------------------------------------------------------

    #[test]
    fn default_options() {
        let o = DiscoveryOptions::default();
        assert_eq!(o.timeout, Duration::from_secs(10));
        assert_eq!(o.well_known_port, 443);
        assert!(o.extra_roots.is_empty());
        assert!(o.resolver.is_none());
        assert!(o.well_known_addr_override.is_none());
        assert!(format!("{o:?}").contains("system"));
    }

    #[test]
    fn error_and_via_messages() {
        let e = DiscoveryError::WellKnown {
            url: well_known_url("example.org", 443),
            reason: "m.server is not a string".into(),
        };
        assert_eq!(
            e.to_string(),
            "well-known at https://example.org/.well-known/matrix/server: m.server is not a string"
        );
        let e = DiscoveryError::Timeout {
            step: "DNS SRV lookup for _matrix-fed._tcp.x.test".into(),
            after: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "DNS SRV lookup for _matrix-fed._tcp.x.test timed out after 1.5s"
        );
        assert_eq!(
            well_known_url("x.test", 8443),
            "https://x.test:8443/.well-known/matrix/server"
        );
        assert_eq!(
            ResolvedVia::WellKnown {
                delegated: "m.x.test:443".into()
            }
            .to_string(),
            "well-known delegation to m.x.test:443"
        );
        assert_eq!(ResolvedVia::DefaultPort.to_string(), "default port 8448");
    }

    #[test]
    fn resolve_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let name = sn("example.org");
        let opts = DiscoveryOptions::default();
        let fut = resolve(&name, &opts);
        assert_send(&fut);
        let fut = fetch_well_known("example.org", &opts);
        assert_send(&fut);
    }

    // ----- stub DNS ---------------------------------------------------------

    /// Answers from a table; unknown names have no records. Records queries.
    #[derive(Default)]
    struct StubSrv {
        answers: HashMap<String, Result<Vec<SrvTarget>, String>>,
        hang: bool,
        calls: Mutex<Vec<String>>,
    }

    impl StubSrv {
        fn with(mut self, name: &str, records: Vec<SrvTarget>) -> Self {
            self.answers.insert(name.to_owned(), Ok(records));
            self
        }
        fn failing(mut self, name: &str, reason: &str) -> Self {
            self.answers.insert(name.to_owned(), Err(reason.to_owned()));
            self
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl SrvLookup for StubSrv {
        fn lookup_srv<'a>(&'a self, name: &'a str) -> SrvFuture<'a> {
            Box::pin(async move {
                self.calls.lock().unwrap().push(name.to_owned());
                if self.hang {
                    std::future::pending::<()>().await;
                }
                match self.answers.get(name) {
                    Some(Ok(records)) => Ok(records.clone()),
                    Some(Err(reason)) => Err(DiscoveryError::Srv {
                        name: name.to_owned(),
                        reason: reason.clone(),
                    }),
                    None => Ok(Vec::new()),
                }
            })
        }
    }

    // ----- local HTTPS well-known server ------------------------------------

    struct TestPki {
        ca_anchor: TrustAnchor<'static>,
        chain: Vec<CertificateDer<'static>>,
        key_der: Vec<u8>,
    }

    fn mint(ca_cn: &str, leaf_name: &str) -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_cn);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec![leaf_name.to_owned()]).unwrap();
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let ca_anchor = webpki::anchor_from_trusted_cert(ca_cert.der())
            .unwrap()
            .to_owned();
        TestPki {
            ca_anchor,
            chain: vec![leaf.der().clone()],
            key_der: leaf_key.serialize_der(),
        }
    }

    /// What the well-known server saw.
    #[derive(Default)]
    struct Seen {
        sni: Vec<Option<String>>,
        requests: Vec<String>,
    }

    /// Serves one canned HTTP response (or nothing if `response` is None)
    /// over TLS on 127.0.0.1:0, for any number of connections.
    async fn serve(pki: &TestPki, response: Option<String>) -> (SocketAddr, Arc<Mutex<Seen>>) {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let response = response.clone();
                let seen = Arc::clone(&seen2);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    seen.lock().unwrap().sni.push(sni);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .requests
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    match response {
                        Some(r) => {
                            let _ = tls.write_all(r.as_bytes()).await;
                            let _ = tls.shutdown().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        (addr, seen)
    }

    fn http(status: &str, body: &str) -> Option<String> {
        Some(format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    }

    fn redirect(location: &str) -> Option<String> {
        Some(format!(
            "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ))
    }

    #[tokio::test]
    async fn well_known_redirects_are_followed_and_every_hop_is_reported() {
        let pki = mint("fedpin test CA", WK_HOST);
        let (front, _) = serve(
            &pki,
            redirect("https://wk.fedpin.test:4443/elsewhere/server.json"),
        )
        .await;
        let (second, seen) = serve(
            &pki,
            http("200 OK", r#"{"m.server": "fed.wk.fedpin.test:8448"}"#),
        )
        .await;
        let stub = Arc::new(StubSrv::default());
        let mut o = opts(&pki, front, &stub);
        o.connect_to = vec![format!("wk.fedpin.test:4443:{second}").parse().unwrap()];
        let wk = fetch_well_known(WK_HOST, &o).await.unwrap();
        assert_eq!(wk.delegated.to_string(), "fed.wk.fedpin.test:8448");
        let hops: Vec<_> = wk
            .hops
            .iter()
            .map(|h| (h.host.as_str(), h.port, h.path.as_str(), h.status))
            .collect();
        assert_eq!(
            hops,
            vec![
                (WK_HOST, front.port(), WELL_KNOWN_PATH, 301),
                (WK_HOST, 4443, "/elsewhere/server.json", 200),
            ]
        );
        assert!(wk.hops.iter().all(|h| !h.chain.is_empty()));
        assert!(seen.lock().unwrap().requests[0].starts_with("GET /elsewhere/server.json "));
    }

    #[test]
    fn connect_to_rules_parse() {
        let c: ConnectTo = "Example.ORG.:443:127.0.0.1:8443".parse().unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.addr),
            ("example.org", 443, "127.0.0.1:8443".parse().unwrap())
        );
        let c: ConnectTo = "example.org:443:[::1]:8443".parse().unwrap();
        assert_eq!(c.addr, "[::1]:8443".parse().unwrap());
        for bad in [
            "example.org:443",
            "example.org:0:127.0.0.1:1",
            "a:1:nope:1",
            "",
        ] {
            assert!(bad.parse::<ConnectTo>().is_err(), "{bad}");
        }
    }

    fn opts(pki: &TestPki, addr: SocketAddr, stub: &Arc<StubSrv>) -> DiscoveryOptions {
        DiscoveryOptions {
            extra_roots: vec![pki.ca_anchor.clone()],
            timeout: Duration::from_secs(5),
            resolver: Some(Arc::clone(stub) as Arc<dyn SrvLookup>),
            well_known_port: addr.port(),
            well_known_addr_override: Some(addr),
            connect_to: Vec::new(),
        }
    }

    /// An address on which nothing listens.
    async fn closed_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    fn fed(host: &str) -> String {
        format!("_matrix-fed._tcp.{host}")
    }

    fn legacy(host: &str) -> String {
        format!("_matrix._tcp.{host}")
    }

    // ----- resolve end to end -------------------------------------------------

    #[tokio::test]
    async fn ip_literals_and_explicit_ports_skip_discovery() {
        let stub = Arc::new(StubSrv::default());
        let pki = mint("fedpin test CA", WK_HOST);
        let o = opts(&pki, closed_addr().await, &stub);

        let r = resolve(&sn("[::1]"), &o).await.unwrap();
        assert_eq!(
            (r.connect_host.as_str(), r.tls_name.as_str(), r.port, &r.via),
            ("::1", "::1", 8448, &ResolvedVia::IpLiteral)
        );
        let r = resolve(&sn("192.0.2.7:8449"), &o).await.unwrap();
        assert_eq!(
            (r.connect_host.as_str(), r.tls_name.as_str(), r.port, &r.via),
            ("192.0.2.7", "192.0.2.7", 8449, &ResolvedVia::IpLiteral)
        );
        let r = resolve(&sn("Example.ORG:443"), &o).await.unwrap();
        assert_eq!(r.server_name, dns("example.org", Some(443)));
        assert_eq!(
            (r.connect_host.as_str(), r.tls_name.as_str(), r.port, &r.via),
            (
                "example.org",
                "example.org",
                443,
                &ResolvedVia::ExplicitPort
            )
        );
        assert!(stub.calls().is_empty());
    }

    #[tokio::test]
    async fn well_known_delegation_with_port() {
        let pki = mint("fedpin test CA", WK_HOST);
        let (addr, seen) = serve(
            &pki,
            http(
                "200 OK",
                r#"{"m.server": "Matrix.wk.fedpin.test:8449", "extra": true}"#,
            ),
        )
        .await;
        let stub = Arc::new(
            StubSrv::default().with(&fed(WK_HOST), vec![srv(0, 0, 1, "must-not-be-used.test")]),
        );
        let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
            .await
            .unwrap();
        assert_eq!(
            r,
            Resolved {
                server_name: dns(WK_HOST, None),
                tls_name: "matrix.wk.fedpin.test".into(),
                connect_host: "matrix.wk.fedpin.test".into(),
                port: 8449,
                via: ResolvedVia::WellKnown {
                    delegated: "matrix.wk.fedpin.test:8449".into()
                },
                well_known: r.well_known.clone(),
            }
        );
        assert!(
            stub.calls().is_empty(),
            "no SRV after explicit delegated port"
        );
        let wk = r.well_known.as_ref().expect("the delegation is reported");
        assert_eq!(wk.hops.len(), 1);
        assert_eq!(
            (wk.hops[0].host.as_str(), wk.hops[0].status),
            (WK_HOST, 200)
        );
        assert!(
            !wk.hops[0].chain.is_empty(),
            "the front's chain is captured"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.sni, vec![Some(WK_HOST.to_owned())]);
        let req = &seen.requests[0];
        assert!(
            req.starts_with("GET /.well-known/matrix/server HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.to_ascii_lowercase()
                .contains(&format!("\r\nhost: {WK_HOST}:{}\r\n", addr.port())),
            "{req}"
        );
    }

    #[tokio::test]
    async fn well_known_delegation_without_port_uses_srv_of_delegated_name() {
        let pki = mint("fedpin test CA", WK_HOST);
        let (addr, _) = serve(&pki, http("200 OK", r#"{"m.server": "deleg.fedpin.test"}"#)).await;
        let stub = Arc::new(
            StubSrv::default()
                .with(
                    &fed("deleg.fedpin.test"),
                    vec![
                        srv(20, 100, 1111, "backup.fedpin.test"),
                        srv(10, 1, 2222, "light.fedpin.test"),
                        srv(10, 9, 3333, "fed1.fedpin.test"),
                    ],
                )
                .with(&fed(WK_HOST), vec![srv(0, 0, 1, "wrong.test")]),
        );
        let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
            .await
            .unwrap();
        assert_eq!(r.connect_host, "fed1.fedpin.test");
        assert_eq!(r.port, 3333);
        assert_eq!(r.tls_name, "deleg.fedpin.test");
        assert_eq!(
            r.via,
            ResolvedVia::Srv {
                record: fed("deleg.fedpin.test")
            }
        );
        assert_eq!(stub.calls(), vec![fed("deleg.fedpin.test")]);
    }

    #[tokio::test]
    async fn well_known_delegation_falls_back_to_legacy_srv_then_8448() {
        let pki = mint("fedpin test CA", WK_HOST);
        let (addr, _) = serve(&pki, http("200 OK", r#"{"m.server": "deleg.fedpin.test"}"#)).await;

        let stub = Arc::new(StubSrv::default().with(
            &legacy("deleg.fedpin.test"),
            vec![srv(0, 0, 4444, "old.fedpin.test.")],
        ));
        let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
            .await
            .unwrap();
        assert_eq!(
            (r.connect_host.as_str(), r.port, r.tls_name.as_str()),
            ("old.fedpin.test", 4444, "deleg.fedpin.test")
        );
        assert_eq!(
            r.via,
            ResolvedVia::Srv {
                record: legacy("deleg.fedpin.test")
            }
        );
        assert_eq!(
            stub.calls(),
            vec![fed("deleg.fedpin.test"), legacy("deleg.fedpin.test")]
        );

        // "." target on the new name means unavailable: treated as no records.
        let stub =
            Arc::new(StubSrv::default().with(&fed("deleg.fedpin.test"), vec![srv(0, 0, 0, ".")]));
        let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
            .await
            .unwrap();
        assert_eq!(
            r,
            Resolved {
                server_name: dns(WK_HOST, None),
                tls_name: "deleg.fedpin.test".into(),
                connect_host: "deleg.fedpin.test".into(),
                port: 8448,
                via: ResolvedVia::WellKnown {
                    delegated: "deleg.fedpin.test".into()
                },
                well_known: r.well_known.clone(),
            }
        );
    }

    #[tokio::test]
    async fn well_known_delegation_to_ip_literal() {
        let pki = mint("fedpin test CA", WK_HOST);
        let (addr, _) = serve(&pki, http("200 OK", r#"{"m.server": "[::1]"}"#)).await;
        let stub = Arc::new(StubSrv::default());
        let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
            .await
            .unwrap();
        assert_eq!(
            (r.connect_host.as_str(), r.tls_name.as_str(), r.port),
            ("::1", "::1", 8448)
        );
        assert_eq!(
            r.via,
            ResolvedVia::WellKnown {
                delegated: "[::1]".into()
            }
        );
        assert!(stub.calls().is_empty());
    }

    #[tokio::test]
    async fn no_well_known_and_no_srv_gives_8448() {
        let pki = mint("fedpin test CA", WK_HOST);
        let stub = Arc::new(StubSrv::default());
        let o = opts(&pki, closed_addr().await, &stub);
        let r = resolve(&sn(WK_HOST), &o).await.unwrap();
        assert_eq!(
            r,
            Resolved {
                server_name: dns(WK_HOST, None),
                tls_name: WK_HOST.into(),
                connect_host: WK_HOST.into(),
                port: 8448,
                via: ResolvedVia::DefaultPort,
                well_known: None,
            }
        );
        assert_eq!(stub.calls(), vec![fed(WK_HOST), legacy(WK_HOST)]);
        let err = fetch_well_known(WK_HOST, &o).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "well-known at https://{WK_HOST}:{}",
                o.well_known_port
            )) && err.contains("TCP connect"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn well_known_404_falls_back_to_srv_of_hostname() {
        let pki = mint("fedpin test CA", WK_HOST);
        let (addr, _) = serve(&pki, http("404 Not Found", "nope")).await;
        let stub = Arc::new(
            StubSrv::default().with(&fed(WK_HOST), vec![srv(1, 1, 8450, "Host1.fedpin.test")]),
        );
        let o = opts(&pki, addr, &stub);
        let r = resolve(&sn(WK_HOST), &o).await.unwrap();
        assert_eq!(
            (r.connect_host.as_str(), r.port, r.tls_name.as_str()),
            ("host1.fedpin.test", 8450, WK_HOST)
        );
        assert_eq!(
            r.via,
            ResolvedVia::Srv {
                record: fed(WK_HOST)
            }
        );
        let err = fetch_well_known(WK_HOST, &o).await.unwrap_err().to_string();
        assert!(
            err.contains("HTTP status 404 Not Found, expected 200 OK"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn well_known_from_untrusted_ca_is_treated_as_absent() {
        let trusted = mint("fedpin trusted CA", WK_HOST);
        let rogue = mint("fedpin rogue CA", WK_HOST);
        let (addr, seen) = serve(&rogue, http("200 OK", r#"{"m.server": "evil.test:1"}"#)).await;
        let stub = Arc::new(StubSrv::default());
        let o = opts(&trusted, addr, &stub);
        let r = resolve(&sn(WK_HOST), &o).await.unwrap();
        assert_eq!(r.via, ResolvedVia::DefaultPort);
        assert_eq!((r.connect_host.as_str(), r.port), (WK_HOST, 8448));
        assert!(seen.lock().unwrap().requests.is_empty(), "no request sent");
        let err = fetch_well_known(WK_HOST, &o).await.unwrap_err().to_string();
        assert!(err.contains("TLS handshake with"), "{err}");
    }

    #[tokio::test]
    async fn well_known_cert_for_other_name_is_treated_as_absent() {
        let pki = mint("fedpin test CA", "other.fedpin.test");
        let (addr, _) = serve(&pki, http("200 OK", r#"{"m.server": "evil.test:1"}"#)).await;
        let stub = Arc::new(StubSrv::default());
        let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
            .await
            .unwrap();
        assert_eq!(r.via, ResolvedVia::DefaultPort);
    }

    #[tokio::test]
    async fn well_known_bad_bodies_are_treated_as_absent() {
        let pki = mint("fedpin test CA", WK_HOST);
        for (response, needle) in [
            (http("200 OK", "not json"), "body is not valid JSON"),
            (
                http("200 OK", r#"{"m.server": 1}"#),
                "m.server is not a string",
            ),
            (
                http("200 OK", r#"{"m.server": "a b"}"#),
                "invalid server name \"a b\"",
            ),
            (http("302 Found", ""), "without a Location"),
            (
                redirect("http://wk.fedpin.test/.well-known/matrix/server"),
                "only https:// locations are followed",
            ),
            (redirect("/.well-known/matrix/server"), "redirect loop"),
            (
                http("200 OK", &" ".repeat(WELL_KNOWN_MAX_BODY + 1)),
                "larger than 64 KiB",
            ),
            (
                Some(format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}",
                    " ".repeat(WELL_KNOWN_MAX_BODY + 1)
                )),
                "larger than 64 KiB",
            ),
        ] {
            let (addr, _) = serve(&pki, response).await;
            let stub = Arc::new(StubSrv::default());
            let o = opts(&pki, addr, &stub);
            let r = resolve(&sn(WK_HOST), &o).await.unwrap();
            assert_eq!(r.via, ResolvedVia::DefaultPort, "{needle}");
            let err = fetch_well_known(WK_HOST, &o).await.unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "well-known at https://{WK_HOST}:{}/.well-known/matrix/server: ",
                    addr.port()
                )),
                "{err}"
            );
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }

    #[tokio::test]
    async fn well_known_timeout_is_treated_as_absent() {
        let pki = mint("fedpin test CA", WK_HOST);
        let (addr, _) = serve(&pki, None).await;
        let stub = Arc::new(StubSrv::default());
        let mut o = opts(&pki, addr, &stub);
        o.timeout = Duration::from_millis(300);
        let r = resolve(&sn(WK_HOST), &o).await.unwrap();
        assert_eq!(r.via, ResolvedVia::DefaultPort);
        let err = fetch_well_known(WK_HOST, &o).await.unwrap_err();
        assert!(matches!(err, DiscoveryError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("timed out after 300ms"), "{err}");
    }

    #[tokio::test]
    async fn srv_failures_are_errors() {
        let pki = mint("fedpin test CA", WK_HOST);
        let stub = Arc::new(StubSrv::default().failing(&fed(WK_HOST), "SERVFAIL"));
        let o = opts(&pki, closed_addr().await, &stub);
        let err = resolve(&sn(WK_HOST), &o).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("DNS SRV lookup for {} failed: SERVFAIL", fed(WK_HOST))
        );

        let stub = Arc::new(StubSrv {
            hang: true,
            ..StubSrv::default()
        });
        let mut o = opts(&pki, closed_addr().await, &stub);
        o.timeout = Duration::from_millis(200);
        let err = resolve(&sn(WK_HOST), &o).await.unwrap_err();
        assert!(
            matches!(&err, DiscoveryError::Timeout { step, .. } if step.contains(&fed(WK_HOST))),
            "{err:?}"
        );
    }
}
