//! Where `pinctl` connects: Matrix discovery or `--connect`, the
//! `--connect-to` redirections, and the proxy's verifier with the extra
//! roots (`--roots`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, TrustAnchor};

use super::error::PinctlError;
use crate::alert::AlertHub;
use crate::discovery::{self, ConnectTo, DiscoveryOptions, WellKnown, WellKnownHop};
use crate::pins::split_server_name;
use crate::probe::Target;
use crate::verify::VerifierCore;

/// How `pinctl add` and `pinctl verify` reach peers: the `--roots`,
/// `--connect` and `--connect-to` options, which both commands share.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// Extra trust anchors (PEM files).
    pub roots: Vec<PathBuf>,
    /// Connect here instead of discovering (`HOST:PORT`; one peer only).
    pub connect: Option<String>,
    /// `--connect-to HOST:PORT:ADDR:PORT` rules.
    pub connect_to: Vec<String>,
}

impl Reach {
    /// The `--connect-to` rules, parsed (a usage error names the bad one).
    pub fn rules(&self) -> Result<Vec<ConnectTo>, PinctlError> {
        parse_connect_to(&self.connect_to)
    }
}

/// The connection context of one `pinctl add` or `pinctl verify` run.
pub struct Network {
    /// The proxy's verifier, trusting the Web PKI plus the extra roots.
    pub core: Arc<VerifierCore>,
    /// The extra roots as trust anchors, for discovery's HTTPS fetches.
    pub anchors: Vec<TrustAnchor<'static>>,
    /// The `--connect-to` rules.
    pub connect_to: Vec<ConnectTo>,
    /// `--connect HOST:PORT`, when given: no discovery.
    pub connect: Option<String>,
}

/// Where a server name's federation endpoint is, and how that was decided.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where to connect (after `--connect-to`) and which TLS name to check.
    pub target: Target,
    /// How the target was found (`--connect HOST:PORT` or the discovery step).
    pub via: String,
    /// The well-known delegation, when discovery followed one.
    pub well_known: Option<WellKnown>,
}

impl Network {
    /// Reads the extra roots and builds the verifier.
    pub fn new(reach: &Reach) -> Result<Self, PinctlError> {
        let connect_to = reach.rules()?;
        let extra = read_roots(&reach.roots)?;
        let core = VerifierCore::new(&crate::tls::provider(), &extra, AlertHub::new())
            .map(Arc::new)
            .map_err(PinctlError::input)?;
        let anchors = extra
            .iter()
            .filter_map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        Ok(Network {
            core,
            anchors,
            connect_to,
            connect: reach.connect.clone(),
        })
    }

    /// Finds the endpoint of `server_name`: `--connect` (`HOST:PORT`) when
    /// given, else Matrix discovery, with the `--connect-to` rules applied.
    pub async fn resolve(&self, server_name: &str) -> Result<Resolved, PinctlError> {
        let tls_host = split_server_name(server_name).map_err(PinctlError::Usage)?;
        if let Some(c) = &self.connect {
            let (host, port) = parse_connect(c)?;
            return Ok(Resolved {
                target: Target {
                    tls_name: tls_host,
                    connect_host: host,
                    port,
                },
                via: format!("--connect {c}"),
                well_known: None,
            });
        }
        let name: discovery::ServerName = server_name
            .parse()
            .map_err(|e: discovery::InvalidServerName| PinctlError::Usage(e.to_string()))?;
        let opts = DiscoveryOptions {
            extra_roots: self.anchors.clone(),
            connect_to: self.connect_to.clone(),
            ..DiscoveryOptions::default()
        };
        let r = discovery::resolve(&name, &opts)
            .await
            .map_err(PinctlError::input)?;
        let target = Target {
            tls_name: r.tls_name.clone(),
            connect_host: r.connect_host.clone(),
            port: r.port,
        };
        Ok(Resolved {
            target: redirected(target, &self.connect_to),
            via: r.via.to_string(),
            well_known: r.well_known,
        })
    }

    /// The target of a host that answered the well-known fetch (its own
    /// name, on the port it answered on, after `--connect-to`).
    pub fn front(&self, hop: &WellKnownHop) -> Target {
        redirected(
            Target {
                tls_name: hop.host.clone(),
                connect_host: hop.host.clone(),
                port: hop.port,
            },
            &self.connect_to,
        )
    }
}

/// Reads the certificates of the extra roots (`--roots`).
pub fn read_roots(roots: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, PinctlError> {
    let mut out = Vec::new();
    for r in roots {
        out.extend(crate::tls::load_certs(r).map_err(PinctlError::input)?);
    }
    Ok(out)
}

/// Parses the `--connect-to HOST:PORT:ADDR:PORT` rules.
pub fn parse_connect_to(rules: &[String]) -> Result<Vec<ConnectTo>, PinctlError> {
    rules
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|e: String| PinctlError::Usage(format!("--connect-to {e}")))
        })
        .collect()
}

/// Parses `--connect HOST:PORT` (IPv6 in brackets).
pub fn parse_connect(s: &str) -> Result<(String, u16), PinctlError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| PinctlError::Usage(format!("--connect \"{s}\" must be HOST:PORT")))?;
    let port: u16 =
        port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            PinctlError::Usage(format!("--connect \"{s}\": invalid port \"{port}\""))
        })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(PinctlError::Usage(format!("--connect \"{s}\": empty host")));
    }
    Ok((host.to_string(), port))
}

/// Applies the `--connect-to` rules to a target.
pub fn redirected(mut t: Target, rules: &[ConnectTo]) -> Target {
    if let Some(r) = rules
        .iter()
        .find(|r| r.host == t.connect_host && r.port == t.port)
    {
        t.connect_host = r.addr.ip().to_string();
        t.port = r.addr.port();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_forms() {
        assert_eq!(
            parse_connect("[::1]:8448").unwrap(),
            ("::1".to_string(), 8448)
        );
        assert_eq!(
            parse_connect("a.example:443").unwrap(),
            ("a.example".to_string(), 443)
        );
        for bad in ["a.example", "a.example:0", "a.example:x", ":443"] {
            assert!(
                matches!(parse_connect(bad), Err(PinctlError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn connect_to_redirects_only_its_host_and_port() {
        let rules = parse_connect_to(&["a.example:443:127.0.0.1:9443".to_string()]).unwrap();
        let t = |h: &str, p| Target {
            tls_name: h.into(),
            connect_host: h.into(),
            port: p,
        };
        let moved = redirected(t("a.example", 443), &rules);
        assert_eq!(
            (moved.connect_host.as_str(), moved.port),
            ("127.0.0.1", 9443)
        );
        assert_eq!(moved.tls_name, "a.example");
        assert_eq!(
            redirected(t("a.example", 8448), &rules),
            t("a.example", 8448)
        );
        assert!(parse_connect_to(&["nonsense".to_string()]).is_err());
    }
}
