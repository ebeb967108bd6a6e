//! The destination of a `CONNECT` request: the request-target (authority
//! form, `host:port`) turned into a normalised host and a port, before any
//! policy (allowed ports, deny list, egress IP policy) looks at it.

use std::net::IpAddr;

/// A CONNECT destination: normalised host (lowercase, no trailing dot, IPv6
/// without brackets, canonical IP text) and a non-zero port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The host: a lowercase DNS name without a trailing dot, or the
    /// canonical text of an IP address (IPv6 without brackets).
    pub host: String,
    /// The port, never 0.
    pub port: u16,
}

/// Why a CONNECT request-target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectTargetError {
    /// The request-target has no authority (e.g. a path).
    #[error("CONNECT needs host:port")]
    NoAuthority,
    /// The port is missing, not a number, out of range or 0.
    #[error("CONNECT {0}: missing or invalid port")]
    BadPort(String),
    /// The host is empty (e.g. `:8448` or `.:8448`).
    #[error("CONNECT with an empty host")]
    EmptyHost,
    /// The host is neither an IP address nor a DNS name (e.g. an empty
    /// label as in `example.org..`, brackets outside an IPv6 literal, or a
    /// percent sign).
    #[error("CONNECT {0}: invalid host")]
    BadHost(String),
}

/// Turns a CONNECT request-target into a destination.
///
/// The host is normalised with [`crate::pins::normalize_lookup`] (one
/// trailing dot dropped, IPv6 brackets removed, IP literals in canonical
/// text, DNS names lowercased). What is left must be an IP address or a
/// name of letters, digits, `-` and `_` in non-empty dot-separated labels
/// whose last label is not a number (resolvers read `127.1`, `2130706433`
/// or `0x7f.1` as addresses; those are refused rather than passed on).
pub fn connect_target(uri: &hyper::Uri) -> Result<ConnectTarget, ConnectTargetError> {
    let auth = uri.authority().ok_or(ConnectTargetError::NoAuthority)?;
    let port = auth
        .port_u16()
        .filter(|p| *p > 0)
        .ok_or_else(|| ConnectTargetError::BadPort(auth.to_string()))?;
    let host = crate::pins::normalize_lookup(auth.host()).into_owned();
    if host.is_empty() {
        return Err(ConnectTargetError::EmptyHost);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ConnectTarget {
            host: ip.to_string(),
            port,
        });
    }
    if !is_dns_name(&host) {
        return Err(ConnectTargetError::BadHost(auth.to_string()));
    }
    Ok(ConnectTarget { host, port })
}

/// Non-empty labels of `[a-z0-9_-]` (already lowercased) whose last label is
/// not a number (decimal, or hex with `0x`, as `inet_aton` would read it).
fn is_dns_name(host: &str) -> bool {
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    });
    let last = host.rsplit('.').next().unwrap_or(host);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    labels_ok && !numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Result<ConnectTarget, ConnectTargetError> {
        connect_target(&s.parse::<hyper::Uri>().unwrap())
    }

    fn ok(host: &str, port: u16) -> Result<ConnectTarget, ConnectTargetError> {
        Ok(ConnectTarget {
            host: host.to_owned(),
            port,
        })
    }

    fn assert_targets(cases: &[(&str, &str, u16)]) {
        for (input, host, port) in cases {
            assert_eq!(target(input), ok(host, *port), "{input}");
        }
    }

    #[test]
    fn dns_names_are_lowercased_without_trailing_dot() {
        assert_targets(&[
            ("matrix.org:8448", "matrix.org", 8448),
            ("Matrix.ORG.:443", "matrix.org", 443),
            ("under_score.example:1", "under_score.example", 1),
            ("0xcafe.example:1", "0xcafe.example", 1),
            ("1.example:1", "1.example", 1),
            ("https://hs.example:8448/", "hs.example", 8448),
            // Brackets around a name are dropped, as normalize_lookup always did.
            ("[HS.example]:8448", "hs.example", 8448),
        ]);
    }

    #[test]
    fn ip_literals_are_canonical() {
        assert_targets(&[
            ("[::1]:8448", "::1", 8448),
            ("[0:0::1]:8448", "::1", 8448),
            ("[2001:DB8::0:1]:443", "2001:db8::1", 443),
            ("192.0.2.1:8448", "192.0.2.1", 8448),
            ("192.0.2.1.:8448", "192.0.2.1", 8448),
        ]);
    }

    #[test]
    fn refuses_missing_or_bad_ports() {
        for s in [
            "matrix.org",
            "matrix.org:0",
            "matrix.org:65536",
            "matrix.org:",
        ] {
            assert!(
                matches!(target(s), Err(ConnectTargetError::BadPort(_))),
                "{s}"
            );
        }
        assert_eq!(
            target("matrix.org:0").unwrap_err().to_string(),
            "CONNECT matrix.org:0: missing or invalid port"
        );
        assert_eq!(target("/path"), Err(ConnectTargetError::NoAuthority));
        assert_eq!(
            ConnectTargetError::NoAuthority.to_string(),
            "CONNECT needs host:port"
        );
    }

    #[test]
    fn refuses_empty_and_invalid_hosts() {
        assert_eq!(target(":8448"), Err(ConnectTargetError::EmptyHost));
        assert_eq!(target(".:8448"), Err(ConnectTargetError::EmptyHost));
        assert_eq!(
            ConnectTargetError::EmptyHost.to_string(),
            "CONNECT with an empty host"
        );
        // One trailing dot is the root; two leave an empty label, which must
        // not reach deny_destinations as a different spelling of the name.
        for s in [
            "example.org..:8448",
            "a..b:8448",
            ".example.org:8448",
            "x[::1]:8448",
            "[a%25b]:8448",
            "127.1:8448",
            "2130706433:8448",
            "0x7f.1:8448",
            "1.0x7F:8448",
        ] {
            assert!(
                matches!(target(s), Err(ConnectTargetError::BadHost(_))),
                "{s}: {:?}",
                target(s)
            );
        }
        assert_eq!(
            target("a..b:8448").unwrap_err().to_string(),
            "CONNECT a..b:8448: invalid host"
        );
    }

    #[test]
    fn userinfo_is_ignored_like_before() {
        assert_eq!(target("user@hs.example:8448"), ok("hs.example", 8448));
    }
}
