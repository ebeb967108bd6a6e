//! `pinctl verify`: the live check of pinned peers. Each peer is resolved
//! as the proxy would (or reached at `--connect`), its well-known fronts
//! and its endpoint are checked with the proxy's own verifier under the pin
//! file, its delegation is compared with the one recorded, and its signing
//! keys with the pinned ones.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::error::PinctlError;
use super::signing;
use super::target::{Network, Reach, Resolved};
use crate::discovery::WellKnown;
use crate::pins::{Peer, PinSet};
use crate::probe::{self, Target};
use crate::verify::Basis;

/// What `pinctl verify` was asked to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyRequest {
    /// The peers to check (empty: every peer in the file).
    pub server_names: Vec<String>,
    /// How to reach them (`--roots`, `--connect`, `--connect-to`).
    pub reach: Reach,
    /// Time allowed for each connection.
    pub timeout: Duration,
}

/// One peer's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyStatus {
    /// The peer passed under its pins, delegation and signing keys.
    Ok,
    /// No pin matches what the peer (or one of its well-known fronts) serves.
    Mismatch,
    /// Discovery now finds another delegation than the one recorded.
    DelegationChanged,
    /// The peer publishes other signing keys than the ones pinned.
    SigningKeysChanged,
    /// The peer could not be checked (discovery, connection, handshake).
    Error,
}

impl VerifyStatus {
    /// The status as `--json` writes it (`ok`, `mismatch`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyStatus::Ok => "ok",
            VerifyStatus::Mismatch => "mismatch",
            VerifyStatus::DelegationChanged => "delegation_changed",
            VerifyStatus::SigningKeysChanged => "signing_keys_changed",
            VerifyStatus::Error => "error",
        }
    }
}

impl fmt::Display for VerifyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One peer's `pinctl verify` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCheck {
    /// The peer's server name.
    pub server_name: String,
    /// Where it was checked (`HOST:PORT as TLS_NAME`), empty when it could
    /// not be resolved.
    pub target: String,
    /// The result.
    pub status: VerifyStatus,
    /// Why (for `ok`: the basis of acceptance).
    pub detail: String,
    /// Days until the served leaf certificate expires.
    pub cert_days_left: Option<i64>,
    /// Days until the pins expire.
    pub pins_days_left: Option<i64>,
    /// The recorded delegation.
    pub delegation: Option<String>,
}

impl PeerCheck {
    /// The result as one `--json` array element.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "server_name": self.server_name,
            "target": self.target,
            "status": self.status.as_str(),
            "detail": self.detail,
            "cert_days_left": self.cert_days_left,
            "pins_days_left": self.pins_days_left,
            "delegation": self.delegation,
        })
    }
}

/// What one check found, before it is tied to its peer.
struct Finding {
    status: VerifyStatus,
    detail: String,
    cert_days_left: Option<i64>,
    target: String,
}

impl Finding {
    fn new(status: VerifyStatus, detail: String, target: String) -> Self {
        Finding {
            status,
            detail,
            cert_days_left: None,
            target,
        }
    }
}

/// The checker of one `pinctl verify` run: the pin file, the peers asked
/// for, and the connection context.
pub struct LiveChecker {
    set: Arc<PinSet>,
    peers: Vec<Peer>,
    net: Network,
    timeout: Duration,
}

impl LiveChecker {
    /// Loads the pin file at `path` and prepares the run.
    pub fn new(path: &Path, req: &VerifyRequest) -> Result<Self, PinctlError> {
        req.reach.rules()?;
        let set = Arc::new(super::inspect::load(path)?);
        if req.reach.connect.is_some() && req.server_names.len() != 1 {
            return Err(PinctlError::Usage(
                "--connect needs exactly one SERVER_NAME".into(),
            ));
        }
        let peers: Vec<Peer> = if req.server_names.is_empty() {
            set.peers().to_vec()
        } else {
            let mut v = Vec::new();
            for n in &req.server_names {
                v.push(set.by_server_name(n).cloned().ok_or_else(|| {
                    PinctlError::NotListed(format!("{n} is not in {}", path.display()))
                })?);
            }
            v
        };
        Ok(LiveChecker {
            set,
            peers,
            net: Network::new(&req.reach)?,
            timeout: req.timeout,
        })
    }

    /// The peers to check, in order.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Checks one peer at `now`.
    pub async fn check(&self, peer: &Peer, now: OffsetDateTime) -> PeerCheck {
        let f = match self.net.resolve(&peer.server_name).await {
            Err(e) => Finding::new(VerifyStatus::Error, e.to_string(), String::new()),
            Ok(r) => self.check_resolved(peer, r, now).await,
        };
        PeerCheck {
            server_name: peer.server_name.clone(),
            target: f.target,
            status: f.status,
            detail: f.detail,
            cert_days_left: f.cert_days_left,
            pins_days_left: peer.expires.map(|e| (e - now).whole_days()),
            delegation: peer.delegation.clone(),
        }
    }

    async fn check_resolved(&self, peer: &Peer, r: Resolved, now: OffsetDateTime) -> Finding {
        let discovered = self.net.connect.is_none();
        let found = r.well_known.as_ref().map(|w| w.delegated.to_string());
        let front_failure = match (&r.well_known, discovered) {
            (Some(wk), true) => self.check_fronts(peer, wk).await,
            _ => None,
        };
        let t = &r.target;
        let target = format!("{}:{} as {}", t.connect_host, t.port, t.tls_name);
        if discovered && peer.delegation.is_some() && found != peer.delegation {
            let detail = format!(
                "delegation changed: recorded {}, discovery now finds {}",
                peer.delegation.as_deref().unwrap_or("none"),
                found.as_deref().unwrap_or("no delegation")
            );
            return Finding::new(VerifyStatus::DelegationChanged, detail, target);
        }
        if let Some(detail) = front_failure {
            return Finding::new(VerifyStatus::Mismatch, detail, target);
        }
        self.check_endpoint(peer, t, target, now).await
    }

    /// The first well-known front that does not pass under its pins.
    async fn check_fronts(&self, peer: &Peer, wk: &WellKnown) -> Option<String> {
        for hop in &wk.hops {
            let c = probe::check(
                self.net.core.clone(),
                self.set.clone(),
                &self.net.front(hop),
                Some(peer.server_name.clone()),
                self.timeout,
            )
            .await;
            let passed = matches!(&c, Ok(c) if c.passed() && c.record.as_ref().and_then(|r| r.basis()) != Some(Basis::ReportModeWebPki));
            if !passed {
                return Some(format!(
                    "the well-known front {} does not match its pins",
                    hop.host
                ));
            }
        }
        None
    }

    async fn check_endpoint(
        &self,
        peer: &Peer,
        t: &Target,
        target: String,
        now: OffsetDateTime,
    ) -> Finding {
        let c = match probe::check(
            self.net.core.clone(),
            self.set.clone(),
            t,
            Some(peer.server_name.clone()),
            self.timeout,
        )
        .await
        {
            Err(e) => return Finding::new(VerifyStatus::Error, e.to_string(), target),
            Ok(c) => c,
        };
        if !c.passed() {
            let why = c
                .record
                .as_ref()
                .filter(|v| !v.is_accept())
                .map(|v| v.to_string())
                .or(c.error.clone())
                .unwrap_or_else(|| "handshake failed".into());
            let status = if c.record.as_ref().is_some_and(|r| r.alert_event().is_some()) {
                VerifyStatus::Mismatch
            } else {
                VerifyStatus::Error
            };
            return Finding::new(status, why, target);
        }
        let basis = c.record.as_ref().and_then(|r| r.basis());
        let (status, detail) = if basis == Some(Basis::ReportModeWebPki) {
            // Accepted only because the peer is in report mode: the served
            // keys do not match the pins.
            (
                VerifyStatus::Mismatch,
                "no pin matches the served chain (mode = \"report\": fedpin lets this peer through only because Web PKI validates it)".to_string(),
            )
        } else if let Some(drift) = signing::drift(&self.net.core, &self.set, t, peer).await {
            (VerifyStatus::SigningKeysChanged, drift.to_string())
        } else {
            (
                VerifyStatus::Ok,
                basis.map(|b| format!("{b:?}")).unwrap_or_default(),
            )
        };
        Finding {
            status,
            detail,
            cert_days_left: c.leaf_not_after.map(|t| (t - now).whole_days()),
            target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names() {
        let all = [
            VerifyStatus::Ok,
            VerifyStatus::Mismatch,
            VerifyStatus::DelegationChanged,
            VerifyStatus::SigningKeysChanged,
            VerifyStatus::Error,
        ];
        let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "ok",
                "mismatch",
                "delegation_changed",
                "signing_keys_changed",
                "error"
            ]
        );
    }

    #[test]
    fn unknown_peer_and_connect_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        std::fs::write(&path, "version = 1\n").unwrap();
        let req = VerifyRequest {
            server_names: vec!["a.example".into()],
            timeout: Duration::from_secs(1),
            ..VerifyRequest::default()
        };
        assert_eq!(
            LiveChecker::new(&path, &req).err(),
            Some(PinctlError::NotListed(format!(
                "a.example is not in {}",
                path.display()
            )))
        );
        let two = VerifyRequest {
            server_names: vec!["a.example".into(), "b.example".into()],
            reach: Reach {
                connect: Some("127.0.0.1:1".into()),
                ..Reach::default()
            },
            ..req
        };
        assert!(matches!(
            LiveChecker::new(&path, &two),
            Err(PinctlError::Usage(_))
        ));
        let all = LiveChecker::new(&path, &VerifyRequest::default()).unwrap();
        assert!(all.peers().is_empty());
    }
}
