//! Counters shared by the verifier and both proxies, rendered by the admin
//! listener (`/metrics`). Plain atomics indexed by small enums: counting a
//! handshake is one relaxed `fetch_add`, and label values come from fixed
//! word lists, so they can never carry a room, event or user ID.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::alert::AlertEvent;
use crate::pins::Mode;

/// How one TLS handshake with a peer ended (the `result` label of
/// `fedpin_handshakes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Completed: the pin rules accepted the peer (or a session of the same
    /// pin generation was resumed).
    Ok,
    /// No pin matched (enforced).
    PinMismatch,
    /// The chain did not validate under Web PKI.
    ChainInvalid,
    /// The host has no pin entry and `policy.unpinned = "deny"`.
    UnpinnedDenied,
    /// The pins expired and `policy.on_expired` refused the peer.
    Expired,
    /// The peer showed a certificate without holding its key.
    SignatureInvalid,
    /// The handshake did not finish in time.
    Timeout,
    /// Any other failure (protocol error, unparsable certificate, reset).
    Error,
}

impl HandshakeResult {
    /// Every result, in label order.
    pub const ALL: [HandshakeResult; 8] = [
        HandshakeResult::Ok,
        HandshakeResult::PinMismatch,
        HandshakeResult::ChainInvalid,
        HandshakeResult::UnpinnedDenied,
        HandshakeResult::Expired,
        HandshakeResult::SignatureInvalid,
        HandshakeResult::Timeout,
        HandshakeResult::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::PinMismatch => "pin_mismatch",
            HandshakeResult::ChainInvalid => "chain_invalid",
            HandshakeResult::UnpinnedDenied => "unpinned_denied",
            HandshakeResult::Expired => "expired",
            HandshakeResult::SignatureInvalid => "signature_invalid",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::Error => "error",
        }
    }

    /// The result for a refusal by the pin rules (see
    /// `verify::handshake_result` for a failed handshake's error).
    pub fn from_event(event: AlertEvent) -> Self {
        match event {
            AlertEvent::PinMismatch => HandshakeResult::PinMismatch,
            AlertEvent::ChainInvalid => HandshakeResult::ChainInvalid,
            AlertEvent::UnpinnedDenied => HandshakeResult::UnpinnedDenied,
            AlertEvent::PinExpired => HandshakeResult::Expired,
            AlertEvent::SignatureInvalid => HandshakeResult::SignatureInvalid,
            AlertEvent::PinReloadFailed
            | AlertEvent::VerifyError
            | AlertEvent::CertReloadFailed
            | AlertEvent::DelegationChanged
            | AlertEvent::SigningKeyMismatch
            | AlertEvent::PinsRemoved => HandshakeResult::Error,
        }
    }
}

/// Handshake counters for one direction.
#[derive(Debug, Default)]
pub struct HandshakeCounters([AtomicU64; HandshakeResult::ALL.len()]);

impl HandshakeCounters {
    /// Counts one handshake.
    pub fn add(&self, result: HandshakeResult) {
        self.0[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `result`.
    pub fn get(&self, result: HandshakeResult) -> u64 {
        self.0[result as usize].load(Ordering::Relaxed)
    }

    /// `(label, count)` for every result.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        HandshakeResult::ALL
            .iter()
            .map(|r| (r.as_str(), self.get(*r)))
            .collect()
    }
}

/// The `mode` label of a pin check: the peer entry's mode, or `unpinned`
/// when the host has no entry (then `policy.unpinned` decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// `mode = "enforce"`.
    Enforce,
    /// `mode = "report"`.
    Report,
    /// No entry for the host.
    Unpinned,
}

impl CheckMode {
    const ALL: [CheckMode; 3] = [CheckMode::Enforce, CheckMode::Report, CheckMode::Unpinned];

    fn as_str(self) -> &'static str {
        match self {
            CheckMode::Enforce => "enforce",
            CheckMode::Report => "report",
            CheckMode::Unpinned => "unpinned",
        }
    }
}

impl From<Mode> for CheckMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Enforce => CheckMode::Enforce,
            Mode::Report => CheckMode::Report,
        }
    }
}

/// The `result` label of a pin check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// A pin matched (on a validated path, or the leaf under pin-only).
    Match,
    /// No pin matched; blocked (enforce) or allowed (report, Web PKI valid).
    Mismatch,
    /// The pins had expired; `policy.on_expired` decided.
    Expired,
    /// No entry; Web PKI accepted the chain (`policy.unpinned = "webpki"`).
    WebpkiOnly,
    /// Refused for another reason (chain invalid, no entry under `deny`,
    /// unparsable certificate).
    Refused,
}

impl CheckResult {
    const ALL: [CheckResult; 5] = [
        CheckResult::Match,
        CheckResult::Mismatch,
        CheckResult::Expired,
        CheckResult::WebpkiOnly,
        CheckResult::Refused,
    ];

    fn as_str(self) -> &'static str {
        match self {
            CheckResult::Match => "match",
            CheckResult::Mismatch => "mismatch",
            CheckResult::Expired => "expired",
            CheckResult::WebpkiOnly => "webpki_only",
            CheckResult::Refused => "refused",
        }
    }
}

/// Pin checks by mode and result (every run of the pin rules: each upstream
/// handshake, each client certificate, each `pinctl verify`).
#[derive(Debug, Default)]
pub struct PinCheckCounters([[AtomicU64; CheckResult::ALL.len()]; CheckMode::ALL.len()]);

impl PinCheckCounters {
    /// Counts one check.
    pub fn add(&self, mode: CheckMode, result: CheckResult) {
        self.0[mode as usize][result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `(mode, result)`.
    pub fn get(&self, mode: CheckMode, result: CheckResult) -> u64 {
        self.0[mode as usize][result as usize].load(Ordering::Relaxed)
    }

    /// `(mode, result, count)` for every pair.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(CheckMode::ALL.len() * CheckResult::ALL.len());
        for m in CheckMode::ALL {
            for r in CheckResult::ALL {
                out.push((m.as_str(), r.as_str(), self.get(m, r)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_index_by_label() {
        let c = HandshakeCounters::default();
        c.add(HandshakeResult::Timeout);
        c.add(HandshakeResult::Timeout);
        c.add(HandshakeResult::Ok);
        let snap = c.snapshot();
        assert_eq!(snap.len(), 8);
        assert!(snap.contains(&("timeout", 2)));
        assert!(snap.contains(&("ok", 1)));
        assert!(snap.contains(&("pin_mismatch", 0)));
        let p = PinCheckCounters::default();
        p.add(CheckMode::Report, CheckResult::Mismatch);
        assert!(p.snapshot().contains(&("report", "mismatch", 1)));
        assert_eq!(p.get(CheckMode::Enforce, CheckResult::Mismatch), 0);
    }
}

/// A latency histogram in seconds: `BUCKETS` exponential buckets from 1 ms,
/// each twice the last. A type of its own so the stats structs that hold one
/// can derive `Default`.
#[derive(Debug)]
pub struct Seconds<const BUCKETS: u16>(prometheus_client::metrics::histogram::Histogram);

impl<const BUCKETS: u16> Default for Seconds<BUCKETS> {
    fn default() -> Self {
        Seconds(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, BUCKETS),
        ))
    }
}

impl<const BUCKETS: u16> std::ops::Deref for Seconds<BUCKETS> {
    type Target = prometheus_client::metrics::histogram::Histogram;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
