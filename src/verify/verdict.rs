//! The outcome of the pin rules as a value: what was presented goes in
//! ([`Presented`]), a [`Verdict`] comes out. A refusal is a structured
//! [`Refusal`], never a sentence; the sentence, the alert, the metric labels
//! and the rustls error are all derived from it in one place
//! ([`super::report`]), so they cannot disagree.

use std::fmt;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::pins::{ExpiredPolicy, Mode, Pin, Trust};

/// Which certificate usage a chain is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server certificate (outbound, `pinctl`).
    Server,
    /// A client certificate (inbound mutual TLS).
    Client,
}

impl Usage {
    pub(super) fn key_usage(self) -> webpki::KeyUsage {
        match self {
            Usage::Server => webpki::KeyUsage::server_auth(),
            Usage::Client => webpki::KeyUsage::client_auth(),
        }
    }
}

/// What a peer presented, and how to judge it: the input of
/// [`super::VerifierCore::evaluate`].
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The TLS name (SNI) or IP text that selects the pin entry.
    pub lookup: &'a str,
    /// The name the certificate must be valid for, when one is checked
    /// (server certificates always; client certificates by their own SAN;
    /// none for a nameless client judged for an X-Matrix origin).
    pub name: Option<&'a ServerName<'a>>,
    /// The end-entity certificate.
    pub end_entity: &'a CertificateDer<'a>,
    /// The other certificates sent, in the order sent.
    pub intermediates: &'a [CertificateDer<'a>],
    /// The time validity is checked at.
    pub now: UnixTime,
    /// Server or client certificate.
    pub usage: Usage,
}

/// Why a peer was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// `trust = "webpki"`: the chain validated and a pin is on the validated path.
    PinOnValidatedPath,
    /// `trust = "pin-only"`: the leaf key is pinned.
    PinOnlyLeaf,
    /// No entry, `policy.unpinned = "webpki"`, and the chain validated.
    UnpinnedWebPki,
    /// Pins expired but still matched, `policy.on_expired = "webpki"`, and the
    /// chain validated (a mismatch is never accepted on this basis).
    ExpiredPinsWebPki,
    /// `mode = "report"`: no pin matched, but the chain validated.
    ReportModeWebPki,
    /// A client certificate without a DNS name whose key is pinned for some
    /// peer: the handshake may complete, but every request must then pass
    /// [`super::PinnedClientVerifier::evaluate_for_origin`] for its X-Matrix
    /// origin.
    PinnedKeyAwaitingOrigin,
}

impl Basis {
    /// Whether the peer was accepted on one of its own pins (not on a
    /// fallback policy).
    pub fn is_pin(self) -> bool {
        matches!(self, Basis::PinOnValidatedPath | Basis::PinOnlyLeaf)
    }
}

/// Proof that the pin rules accepted a peer. Only this module's parent can
/// build one, so no caller reaches "accepted" without passing the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    basis: Basis,
    overridden: Option<Refusal>,
}

impl Accepted {
    pub(super) fn new(basis: Basis) -> Self {
        Accepted {
            basis,
            overridden: None,
        }
    }

    /// Accepted although `refusal` holds, because policy says so (report
    /// mode; expired pins under `on_expired = "webpki"`). The refusal is
    /// still reported.
    pub(super) fn despite(basis: Basis, refusal: Refusal) -> Self {
        Accepted {
            basis,
            overridden: Some(refusal),
        }
    }

    /// Why the peer was accepted.
    pub fn basis(&self) -> Basis {
        self.basis
    }

    /// What would have refused the peer had policy not allowed it.
    pub fn overridden(&self) -> Option<&Refusal> {
        self.overridden.as_ref()
    }
}

/// An entry's pins had expired when the chain was compared with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// When they expired (`expires` of the entry).
    pub at: Option<OffsetDateTime>,
    /// `policy.on_expired` at the time.
    pub policy: ExpiredPolicy,
}

/// Why the pin rules refuse a chain (or, inside [`Accepted::overridden`],
/// what they found wrong with a chain that policy let through).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The end-entity certificate cannot be parsed (fail closed).
    Unparseable(webpki::Error),
    /// The host has no pin entry and its chain does not validate under Web PKI.
    UnpinnedChainInvalid(webpki::Error),
    /// The host has no pin entry and `policy.unpinned = "deny"`.
    UnpinnedDenied {
        /// What Web PKI alone says of the chain.
        webpki: Result<(), webpki::Error>,
    },
    /// `trust = "webpki"`: a pinned key was served, but no path through it
    /// validates under Web PKI.
    PinnedChainInvalid {
        /// The entry's server name.
        entry: String,
        /// Web PKI's error.
        error: webpki::Error,
        /// Set when the entry's pins had expired.
        expired: Option<Expiry>,
    },
    /// No pinned key is on a validated path (`trust = "webpki"`), or the leaf
    /// key is not pinned (`trust = "pin-only"`). With a Web-PKI-valid chain
    /// this is the CA-compromise signature.
    PinMismatch {
        /// The entry's server name.
        entry: String,
        /// The entry's trust.
        trust: Trust,
        /// What Web PKI alone says of the chain.
        webpki: Result<(), webpki::Error>,
        /// Set when the entry's pins had expired (they are still compared).
        expired: Option<Expiry>,
        /// The keys served, leaf first.
        served: Vec<Pin>,
        /// The keys pinned.
        known: Vec<Pin>,
    },
    /// The entry's pins have expired and `policy.on_expired` decided.
    PinsExpired {
        /// The entry's server name.
        entry: String,
        /// `policy.on_expired`.
        policy: ExpiredPolicy,
        /// What Web PKI alone says of the chain.
        webpki: Result<(), webpki::Error>,
    },
    /// A client certificate without a DNS name whose key no entry pins.
    NamelessClientUnpinned,
    /// The handshake signature does not verify with the presented
    /// certificate's key: the peer does not hold the key.
    SignatureInvalid {
        /// rustls's error.
        error: rustls::Error,
        /// Whether the chain had been accepted on a pin (then critical).
        after_pin: bool,
    },
}

/// The decision for one presented chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The peer passed (the handshake signature is still checked separately).
    Accept(Accepted),
    /// The peer failed.
    Reject(Refusal),
}

/// The verdict of the pin rules on one presented chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The normalised lookup key used (TLS name or IP text; empty for a
    /// client certificate without a name).
    pub host: String,
    /// The mode of the entry that judged, `None` when the host has none.
    pub mode: Option<Mode>,
    /// The decision.
    pub outcome: Outcome,
}

impl Verdict {
    /// Whether the verdict accepts.
    pub fn is_accept(&self) -> bool {
        matches!(self.outcome, Outcome::Accept(_))
    }

    /// The acceptance, if accepted.
    pub fn accepted(&self) -> Option<&Accepted> {
        match &self.outcome {
            Outcome::Accept(a) => Some(a),
            Outcome::Reject(_) => None,
        }
    }

    /// Why the peer was accepted, if it was.
    pub fn basis(&self) -> Option<Basis> {
        self.accepted().map(Accepted::basis)
    }

    /// The refusal, if refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.outcome {
            Outcome::Accept(_) => None,
            Outcome::Reject(r) => Some(r),
        }
    }

    /// The refusal this verdict reports: the one that refused, or the one
    /// policy overrode. `None` for a clean acceptance.
    pub fn reported(&self) -> Option<&Refusal> {
        match &self.outcome {
            Outcome::Accept(a) => a.overridden(),
            Outcome::Reject(r) => Some(r),
        }
    }
}

/// What Web PKI said, as the `webpki` field of an alert shows it.
pub(super) fn webpki_text(r: &Result<(), webpki::Error>) -> String {
    match r {
        Ok(()) => "valid".into(),
        Err(e) => format!("{e:?}"),
    }
}

impl Refusal {
    /// The alert's `webpki` field for this refusal.
    pub fn webpki_text(&self) -> String {
        match self {
            Refusal::Unparseable(e)
            | Refusal::UnpinnedChainInvalid(e)
            | Refusal::PinnedChainInvalid { error: e, .. } => format!("{e:?}"),
            Refusal::UnpinnedDenied { webpki }
            | Refusal::PinMismatch { webpki, .. }
            | Refusal::PinsExpired { webpki, .. } => webpki_text(webpki),
            Refusal::NamelessClientUnpinned | Refusal::SignatureInvalid { .. } => {
                "not checked".into()
            }
        }
    }
}

/// One sentence for the operator: which check failed for which host (the
/// alert's `reason`, the error page's body, `pinctl`'s output).
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = &self.host;
        let (refusal, allowed) = match &self.outcome {
            Outcome::Accept(a) => match a.overridden() {
                Some(r) => (r, true),
                None => return write!(f, "{host} accepted ({:?})", a.basis()),
            },
            Outcome::Reject(r) => (r, false),
        };
        match refusal {
            Refusal::Unparseable(e) => {
                write!(f, "the certificate presented for {host} cannot be parsed ({e:?})")
            }
            Refusal::UnpinnedChainInvalid(e) => write!(
                f,
                "{host} has no pin entry and its chain does not validate under Web PKI ({e:?})"
            ),
            Refusal::UnpinnedDenied { .. } => write!(
                f,
                "{host} has no pin entry and policy.unpinned = \"deny\""
            ),
            Refusal::PinsExpired {
                entry,
                policy,
                webpki,
            } => match (policy, webpki, allowed) {
                (_, _, true) => write!(f, "the pins for {host} ({entry}) have expired; accepted on Web PKI per policy.on_expired = \"webpki\""),
                (ExpiredPolicy::Deny, _, false) => write!(f, "the pins for {host} ({entry}) have expired and policy.on_expired = \"deny\""),
                (ExpiredPolicy::Webpki, _, false) => write!(f, "the pins for {host} ({entry}) have expired and its chain does not validate under Web PKI"),
            },
            Refusal::PinnedChainInvalid {
                entry,
                error,
                expired,
            } => {
                let what = "a pinned key was served but the chain does not validate under Web PKI";
                write!(f, "pin check failed for {host} ({entry}): {what}; Web PKI: {error:?}")?;
                write_expiry(f, expired)
            }
            Refusal::PinMismatch {
                entry,
                trust,
                webpki,
                expired,
                ..
            } => {
                let what = match trust {
                    Trust::Webpki => "no pinned key is on a validated path",
                    Trust::PinOnly => "the leaf key is not pinned (trust = \"pin-only\")",
                };
                if allowed {
                    write!(f, "pin mismatch for {host} ({entry}): {what}; ")?;
                } else {
                    write!(f, "pin check failed for {host} ({entry}): {what}; ")?;
                }
                match webpki {
                    Ok(()) => f.write_str("Web PKI alone would have accepted it")?,
                    Err(e) => write!(f, "Web PKI: {e:?}")?,
                }
                write_expiry(f, expired)?;
                if allowed {
                    f.write_str("; allowed because mode = \"report\"")?;
                }
                Ok(())
            }
            Refusal::NamelessClientUnpinned => f.write_str(
                "the client certificate carries no DNS name and its key is not pinned for any peer",
            ),
            Refusal::SignatureInvalid { error, .. } => write!(
                f,
                "{host} presented a certificate but its handshake signature does not verify with that certificate's key ({error}): the peer does not hold the key"
            ),
        }
    }
}

fn write_expiry(f: &mut fmt::Formatter<'_>, expired: &Option<Expiry>) -> fmt::Result {
    let Some(x) = expired else { return Ok(()) };
    let at =
        x.at.and_then(|e| e.format(&Rfc3339).ok())
            .map(|e| format!(" at {e}"))
            .unwrap_or_default();
    write!(
        f,
        "; the pins expired{at} and are still compared (policy.on_expired = \"{}\")",
        x.policy
    )
}
