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
//!    the SRV records `_matrix-fed._tcp.<hostname>` then
//!    `_matrix._tcp.<hostname>` are tried: dial the target, TLS name the
//!    hostname.
//! 5. Otherwise dial `<hostname>:8448`, TLS name the hostname.
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
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::TrustAnchor;
use tokio::net::TcpStream;

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
    /// asked hostname (step 4).
    Srv {
        /// The SRV record name, e.g. `_matrix-fed._tcp.example.org`.
        record: String,
    },
    /// Step 5: nothing else applied; the hostname on port 8448.
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
    target.strip_suffix('.').unwrap_or(target).to_ascii_lowercase()
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
/// `host` must be a DNS name. The server certificate is verified against the
/// Web PKI (`webpki_roots`) plus [`DiscoveryOptions::extra_roots`], with
/// `host` as the TLS name. The request uses HTTP/1.1; redirects are **not**
/// followed (a 3xx is an error), only status 200 is accepted, and the body
/// is capped at [`WELL_KNOWN_MAX_BODY`]. The whole fetch is limited by
/// [`DiscoveryOptions::timeout`].
///
/// [`resolve`] treats any error from here as "no well-known document"; this
/// function is public so callers can show why.
pub async fn fetch_well_known(
    host: &str,
    opts: &DiscoveryOptions,
) -> Result<ServerName, DiscoveryError> {
    let url = well_known_url(host, opts.well_known_port);
    match tokio::time::timeout(opts.timeout, fetch_well_known_body(host, opts)).await {
        Ok(Ok(body)) => parse_well_known(&body).map_err(|e| match e {
            DiscoveryError::WellKnownBody { reason } => DiscoveryError::WellKnown { url, reason },
            other => DiscoveryError::WellKnown {
                url,
                reason: other.to_string(),
            },
        }),
        Ok(Err(reason)) => Err(DiscoveryError::WellKnown { url, reason }),
        Err(_) => Err(DiscoveryError::Timeout {
            step: format!("fetching {url}"),
            after: opts.timeout,
        }),
    }
}

/// Aborts the wrapped task when dropped (so the HTTP connection driver never
/// outlives the fetch, e.g. on timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// TLS client configuration for the well-known fetch.
fn well_known_tls_config(extra_roots: &[TrustAnchor<'static>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    roots.extend(extra_roots.iter().cloned());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot build TLS client configuration: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Connects, performs the GET, and returns the body; errors are reasons.
async fn fetch_well_known_body(host: &str, opts: &DiscoveryOptions) -> Result<Bytes, String> {
    let sni = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
    let config = well_known_tls_config(&opts.extra_roots)?;

    let tcp = match opts.well_known_addr_override {
        Some(addr) => TcpStream::connect(addr)
            .await
            .map_err(|e| format!("TCP connect to {addr} failed: {e}"))?,
        None => TcpStream::connect((host, opts.well_known_port))
            .await
            .map_err(|e| format!("TCP connect failed: {e}"))?,
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(sni, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "well-known HTTP connection ended with an error");
        }
    }));

    let host_header = if opts.well_known_port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{}", opts.well_known_port)
    };
    let request = Request::builder()
        .method(Method::GET)
        .uri(WELL_KNOWN_PATH)
        .header(HOST, host_header)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("fedpin/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build HTTP request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request failed: {e}"))?;

    let status = response.status();
    if status.is_redirection() {
        return Err(format!(
            "HTTP status {status}; redirects are not followed"
        ));
    }
    if status != StatusCode::OK {
        return Err(format!("HTTP status {status}, expected 200 OK"));
    }
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_big = || format!("body is larger than {} KiB", WELL_KNOWN_MAX_BODY / 1024);
    if declared.is_some_and(|len| len > WELL_KNOWN_MAX_BODY as u64) {
        return Err(too_big());
    }
    let body = Limited::new(response.into_body(), WELL_KNOWN_MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_big()
            } else {
                format!("reading the body failed: {e}")
            }
        })?;
    Ok(body.to_bytes())
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
    let host = match &name.host {
        Host::Ip(ip) => {
            return Ok(Resolved {
                server_name: name.clone(),
                tls_name: ip.to_string(),
                connect_host: ip.to_string(),
                port: name.port.unwrap_or(DEFAULT_FEDERATION_PORT),
                via: ResolvedVia::IpLiteral,
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
        });
    }

    let mut srv = SrvBackend::new(opts);
    match fetch_well_known(host, opts).await {
        Ok(delegated) => {
            tracing::debug!(server_name = %name, delegated = %delegated, "well-known delegation");
            resolve_delegated(name, delegated, &mut srv).await
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
                });
            }
            Ok(Resolved {
                server_name: name.clone(),
                tls_name: host.clone(),
                connect_host: host.clone(),
                port: DEFAULT_FEDERATION_PORT,
                via: ResolvedVia::DefaultPort,
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
            });
        }
    }
    Ok(Resolved {
        server_name: name.clone(),
        tls_name: host.clone(),
        connect_host: host,
        port: delegated.port.unwrap_or(DEFAULT_FEDERATION_PORT),
        via,
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
                return Ok(Some((record, target.clone())));
            }
            tracing::debug!(record = %record, "no usable SRV records");
        }
        Ok(None)
    }
}
