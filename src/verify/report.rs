//! The one report of a [`Verdict`]: the alert it raises, its metric labels,
//! and the rustls error that carries a refusal out of a handshake (and back
//! in, when the proxy classifies the failed handshake). Everything a verdict
//! looks like to an operator is derived here, from the structured
//! [`Refusal`], so the alert, the counters, the error page and `pinctl`'s
//! output always tell the same story.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::CertificateError;
use time::format_description::well_known::Rfc3339;

use super::verdict::{Outcome, Refusal, Verdict};
use super::{PeerContext, Presented, VerifierCore};
use crate::alert::{Action, Alert, AlertEvent, Direction, ServedCert, Severity};
use crate::metrics::{CheckMode, CheckResult, HandshakeResult};
use crate::pins::PinSet;

impl Refusal {
    /// The alert event that describes this refusal.
    pub fn event(&self) -> AlertEvent {
        match self {
            Refusal::Unparseable(_) | Refusal::NamelessClientUnpinned => AlertEvent::VerifyError,
            Refusal::UnpinnedChainInvalid(_) | Refusal::PinnedChainInvalid { .. } => {
                AlertEvent::ChainInvalid
            }
            Refusal::UnpinnedDenied { .. } => AlertEvent::UnpinnedDenied,
            Refusal::PinMismatch { .. } => AlertEvent::PinMismatch,
            Refusal::PinsExpired { .. } => AlertEvent::PinExpired,
            Refusal::SignatureInvalid { .. } => AlertEvent::SignatureInvalid,
        }
    }

    /// How loud the alert is. Critical is kept for the attack this crate
    /// exists for: a Web-PKI-valid chain with no pinned key, and a pinned
    /// certificate replayed without its private key.
    pub fn severity(&self) -> Severity {
        match self {
            Refusal::PinMismatch { webpki: Ok(()), .. }
            | Refusal::SignatureInvalid {
                after_pin: true, ..
            } => Severity::Critical,
            _ => Severity::Warning,
        }
    }

    /// The `result` label of `fedpin_handshakes_total` for a handshake this
    /// refusal ended.
    pub fn handshake_result(&self) -> HandshakeResult {
        HandshakeResult::from_event(self.event())
    }
}

impl Verdict {
    /// The `(mode, result)` labels of `fedpin_pin_checks_total`.
    pub fn check_labels(&self) -> (CheckMode, CheckResult) {
        let mode = self.mode.map_or(CheckMode::Unpinned, CheckMode::from);
        let result = match &self.outcome {
            Outcome::Accept(a) => {
                use super::Basis::*;
                match a.basis() {
                    PinOnValidatedPath | PinOnlyLeaf | PinnedKeyAwaitingOrigin => {
                        CheckResult::Match
                    }
                    UnpinnedWebPki => CheckResult::WebpkiOnly,
                    ExpiredPinsWebPki => CheckResult::Expired,
                    ReportModeWebPki => CheckResult::Mismatch,
                }
            }
            Outcome::Reject(Refusal::PinMismatch { .. }) => CheckResult::Mismatch,
            Outcome::Reject(Refusal::PinsExpired { .. }) => CheckResult::Expired,
            Outcome::Reject(_) => CheckResult::Refused,
        };
        (mode, result)
    }

    /// The alert event this verdict raises, if any.
    pub fn alert_event(&self) -> Option<AlertEvent> {
        self.reported().map(Refusal::event)
    }

    /// The alert this verdict raises, if any: every refusal, and every
    /// acceptance that policy granted despite a refusal (report mode,
    /// expired pins). `end_entity` and `intermediates` are what was served.
    pub fn alert(
        &self,
        pins: &PinSet,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        ctx: &PeerContext,
    ) -> Option<Alert> {
        let refusal = self.reported()?;
        let action = if self.is_accept() {
            Action::Allowed
        } else {
            Action::Blocked
        };
        let peer = pins.lookup(&self.host);
        Some(Alert {
            event: refusal.event(),
            severity: refusal.severity(),
            time: Alert::now_string(),
            direction: ctx.direction.unwrap_or(Direction::Cli),
            server_name: ctx
                .server_name
                .clone()
                .or_else(|| peer.map(|p| p.server_name.clone()))
                .or_else(|| (!self.host.is_empty()).then(|| self.host.clone())),
            host: Some(self.host.clone()),
            port: ctx.port,
            peer_addr: ctx.peer_addr.map(|a| a.to_string()),
            mode: peer.map(|p| p.mode),
            action,
            webpki: refusal.webpki_text(),
            served_chain: std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| ServedCert::describe(c.as_ref()))
                .collect(),
            known_pins: peer
                .map(|p| p.pins.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default(),
            expires: peer.and_then(|p| p.expires.and_then(|e| e.format(&Rfc3339).ok())),
            pin_generation: pins.generation,
            reason: self.to_string(),
            repeats: 1,
        })
    }
}

impl VerifierCore {
    /// Reports one verdict on `presented`: counts it in
    /// [`VerifierCore::pin_checks`] and raises its alert, if any.
    pub fn report(
        &self,
        pins: &PinSet,
        presented: &Presented<'_>,
        ctx: &PeerContext,
        verdict: &Verdict,
    ) {
        let (mode, result) = verdict.check_labels();
        self.checks.add(mode, result);
        self.raise(pins, presented, ctx, verdict);
    }

    /// Raises the verdict's alert, if any, without counting a check.
    pub(super) fn raise(
        &self,
        pins: &PinSet,
        presented: &Presented<'_>,
        ctx: &PeerContext,
        verdict: &Verdict,
    ) {
        if let Some(alert) = verdict.alert(pins, presented.end_entity, presented.intermediates, ctx)
        {
            self.alerts.raise(alert);
        }
    }
}

/// A refusal by the pin rules, as the source of a rustls error: tokio-rustls
/// hands it back inside the `io::Error` of the failed handshake, where
/// [`handshake_result`] finds it.
///
/// rustls shows this error with `{:?}` inside its own message ("invalid
/// peer certificate: Other(...)"), which is what a homeserver logs; so
/// `Debug` carries the event and the sentence, not the whole structure.
#[derive(Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct RefusedByPins(pub Verdict);

impl std::fmt::Debug for RefusedByPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusedByPins")
            .field("event", &self.0.alert_event().map(|e| e.as_str()))
            .field("reason", &self.0.to_string())
            .finish()
    }
}

/// The rustls error that refuses a handshake for `verdict`.
pub(super) fn rustls_error(verdict: Verdict) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        RefusedByPins(verdict),
    ))))
}

/// Classifies a failed handshake from the error tokio-rustls returned: a
/// refusal by a pinned verifier carries its [`Verdict`] inside the rustls
/// error; a bad handshake signature is rustls's own error.
pub fn handshake_result(e: &std::io::Error) -> HandshakeResult {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return HandshakeResult::Error;
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<RefusedByPins>() {
                Some(RefusedByPins(v)) => v
                    .refusal()
                    .map_or(HandshakeResult::Error, Refusal::handshake_result),
                None => HandshakeResult::Error,
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            HandshakeResult::SignatureInvalid
        }
        _ => HandshakeResult::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::verdict::Accepted;

    fn refused(r: Refusal) -> Verdict {
        Verdict {
            host: "peer.example".into(),
            mode: None,
            outcome: Outcome::Reject(r),
        }
    }

    #[test]
    fn failed_handshakes_are_classified_from_the_rustls_error() {
        let verdict = refused(Refusal::UnpinnedDenied { webpki: Ok(()) });
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error(verdict));
        assert_eq!(handshake_result(&io), HandshakeResult::UnpinnedDenied);
        let bad_sig = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::BadSignature),
        );
        assert_eq!(
            handshake_result(&bad_sig),
            HandshakeResult::SignatureInvalid
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(handshake_result(&reset), HandshakeResult::Error);
    }

    #[test]
    fn severity_is_critical_only_for_the_attack_signatures() {
        let mismatch = |webpki| Refusal::PinMismatch {
            entry: "peer.example".into(),
            trust: crate::pins::Trust::Webpki,
            webpki,
            expired: None,
            served: vec![],
            known: vec![],
        };
        assert_eq!(mismatch(Ok(())).severity(), Severity::Critical);
        assert_eq!(
            mismatch(Err(webpki::Error::UnknownIssuer)).severity(),
            Severity::Warning
        );
        let sig = |after_pin| Refusal::SignatureInvalid {
            error: rustls::Error::InvalidCertificate(CertificateError::BadSignature),
            after_pin,
        };
        assert_eq!(sig(true).severity(), Severity::Critical);
        assert_eq!(sig(false).severity(), Severity::Warning);
        // Report mode: accepted, yet the mismatch is reported (critical) and
        // counted as a mismatch.
        let allowed = Verdict {
            host: "peer.example".into(),
            mode: Some(crate::pins::Mode::Report),
            outcome: Outcome::Accept(Accepted::despite(
                super::super::Basis::ReportModeWebPki,
                mismatch(Ok(())),
            )),
        };
        assert_eq!(allowed.alert_event(), Some(AlertEvent::PinMismatch));
        assert_eq!(
            allowed.check_labels(),
            (CheckMode::Report, CheckResult::Mismatch)
        );
        assert!(allowed
            .to_string()
            .ends_with("allowed because mode = \"report\""));
    }
}
