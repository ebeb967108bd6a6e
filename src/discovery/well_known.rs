//! `/.well-known/matrix/server`: the body's reading and the fetch, over
//! the crate's one HTTPS client (Web PKI plus extra roots, redirects
//! followed within a limit).

use super::*;

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
pub(super) fn well_known_url(host: &str, port: u16) -> String {
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
pub(super) async fn follow_well_known(
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
