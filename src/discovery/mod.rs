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
use std::net::SocketAddr;
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

impl From<InvalidServerName> for DiscoveryError {
    fn from(e: InvalidServerName) -> Self {
        DiscoveryError::InvalidServerName {
            input: e.input,
            reason: e.reason,
        }
    }
}

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

mod resolve;
mod srv;
#[cfg(test)]
mod tests;
mod well_known;

pub use crate::matrix::server_name::{Host, InvalidServerName, ServerName};
pub use resolve::*;
pub use srv::*;
pub use well_known::*;
