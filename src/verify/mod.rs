//! The pin rules and the rustls verifiers that apply them.
//!
//! Everything that decides whether a peer is accepted lives in
//! [`VerifierCore::evaluate`]. It never re-implements crypto: chains are built
//! and checked by rustls-webpki's `verify_for_usage`, with the pin matched
//! inside its `verify_path` callback so that a pin counts only on a path that
//! actually validated; handshake signatures are left to
//! `rustls::crypto::verify_tls1{2,3}_signature`, always against the leaf key.
//!
//! The outcome is a [`Verdict`]. Its accepting variant carries an
//! [`Accepted`] token that only this module can build, so no caller can reach
//! "accepted" without passing the pin rules.
//!
//! # What each rule protects against
//!
//! * **A pin counts only on the validated path** (`trust = "webpki"`). An
//!   attacker holding a CA-valid certificate for the peer's name can send the
//!   peer's genuine (pinned) certificate *alongside* its own chain. A pin
//!   check over "every certificate sent" would accept that (CVE-2016-2402 in
//!   OkHttp); here the pin must be the leaf, an intermediate that was used, or
//!   the anchor of a path webpki actually validated.
//! * **A Web-PKI-valid chain with no pinned key is critical.** That is the
//!   exact signature of the attacker this crate exists for: a compromised,
//!   coerced or mis-issuing CA. It is refused in enforce mode and raised as a
//!   `critical` `pin_mismatch` in every mode, whatever `policy.on_expired`
//!   says (expired pins are still compared), so an expiry date cannot turn a
//!   CA compromise into a warning.
//! * **Pin-only peers pin the leaf key only** (`trust = "pin-only"`), so extra
//!   certificates sent with a self-signed leaf cannot smuggle a match.
//! * **The handshake signature is checked against the leaf's key** by rustls
//!   itself. A certificate is public: replaying a pinned peer's certificate
//!   without its private key must fail (`signature_invalid`, critical when
//!   the chain had been accepted on a pin).
//! * **Report mode never accepts what Web PKI refuses.** `mode = "report"`
//!   lets an operator roll pins out without outages, but it must not become a
//!   way around ordinary validation.
//! * **Fail closed.** A certificate that cannot be parsed, a name that cannot
//!   be looked up, or anything else that cannot be evaluated is refused.
//! * **One verifier per pin generation** ([`crate::tls::UpstreamTls`],
//!   [`PinnedClientVerifier`]): rustls resumes a session only with the
//!   verifier that checked it, so a session from before a reload cannot skip
//!   the new set's checks.
//! * **Client certificates are held to every pinned name they carry**
//!   ([`PinnedClientVerifier`]): a client cannot pick the weakest of its
//!   names, and a certificate without a name whose key is pinned must still
//!   match the X-Matrix origin of each request.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::alert::{Action, Alert, AlertEvent, AlertHub, Direction, ServedCert, Severity};
use crate::metrics::{CheckMode, CheckResult, PinCheckCounters};
use crate::pins::{ExpiredPolicy, Mode, Peer, Pin, PinSet, Trust, UnpinnedPolicy};

mod spki;

pub use spki::{dns_sans, leaf_pin, pins_of_pem_or_der, spki_of_der, HashedItem, PemPinError};

/// Errors building a verifier.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// An extra trust anchor could not be used.
    #[error("extra trust anchor #{index} is not a usable CA certificate: {reason}")]
    BadAnchor {
        /// 0-based position in the list.
        index: usize,
        /// What went wrong, in words for the operator.
        reason: String,
    },
}

/// The shared, immutable part of verification: trust anchors, algorithms, alert hub.
pub struct VerifierCore {
    anchors: Vec<TrustAnchor<'static>>,
    algs: WebPkiSupportedAlgorithms,
    alerts: AlertHub,
    checks: PinCheckCounters,
}

impl fmt::Debug for VerifierCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierCore")
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

/// Which certificate usage a chain is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server certificate (outbound, `pinctl`).
    Server,
    /// A client certificate (inbound mutual TLS).
    Client,
}

impl Usage {
    fn key_usage(self) -> webpki::KeyUsage {
        match self {
            Usage::Server => webpki::KeyUsage::server_auth(),
            Usage::Client => webpki::KeyUsage::client_auth(),
        }
    }
}

/// Who is being checked, for alerts.
#[derive(Debug, Clone, Default)]
pub struct PeerContext {
    /// Direction of the connection (`Cli` when unset).
    pub direction: Option<Direction>,
    /// The Matrix server name, when the caller knows it.
    pub server_name: Option<String>,
    /// Remote port.
    pub port: Option<u16>,
    /// Remote socket address.
    pub peer_addr: Option<SocketAddr>,
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
    /// [`PinnedClientVerifier::evaluate_for_origin`] for its X-Matrix origin.
    PinnedKeyAwaitingOrigin,
}

/// Proof that the pin rules accepted a peer. Only this module can build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    basis: Basis,
}

impl Accepted {
    /// Why the peer was accepted.
    pub fn basis(&self) -> Basis {
        self.basis
    }
}

/// Why a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejected {
    /// The alert event that describes the refusal.
    pub event: AlertEvent,
    /// One sentence: which check failed for which host.
    pub reason: String,
}

/// The decision for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The peer passed (the handshake signature is still checked separately).
    Accept(Accepted),
    /// The peer failed.
    Reject(Rejected),
}

impl Verdict {
    /// Whether the verdict accepts.
    pub fn is_accept(&self) -> bool {
        matches!(self, Verdict::Accept(_))
    }
}

/// A verdict plus the alert it raises, if any.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The decision.
    pub verdict: Verdict,
    /// The alert to raise (report mode raises one while accepting).
    pub alert: Option<Alert>,
    /// The normalised lookup key used (TLS name or IP text).
    pub host: String,
}

/// The result of a Web PKI check, as it appears in an alert.
fn webpki_text(r: &Result<(), webpki::Error>) -> String {
    match r {
        Ok(()) => "valid".into(),
        Err(e) => format!("{e:?}"),
    }
}

impl VerifierCore {
    /// Builds the core with the Mozilla roots plus `extra_anchors`.
    pub fn new(
        provider: &CryptoProvider,
        extra_anchors: &[CertificateDer<'_>],
        alerts: AlertHub,
    ) -> Result<Self, VerifierError> {
        let mut anchors: Vec<TrustAnchor<'static>> = webpki_roots::TLS_SERVER_ROOTS.to_vec();
        Self::push_anchors(&mut anchors, extra_anchors)?;
        Ok(VerifierCore {
            anchors,
            algs: provider.signature_verification_algorithms,
            alerts,
            checks: PinCheckCounters::default(),
        })
    }

    /// Builds the core with only `anchors` (no Mozilla roots): private federations, tests.
    pub fn with_only_anchors(
        provider: &CryptoProvider,
        anchors: &[CertificateDer<'_>],
        alerts: AlertHub,
    ) -> Result<Self, VerifierError> {
        let mut list = Vec::new();
        Self::push_anchors(&mut list, anchors)?;
        Ok(VerifierCore {
            anchors: list,
            algs: provider.signature_verification_algorithms,
            alerts,
            checks: PinCheckCounters::default(),
        })
    }

    fn push_anchors(
        out: &mut Vec<TrustAnchor<'static>>,
        extra: &[CertificateDer<'_>],
    ) -> Result<(), VerifierError> {
        for (index, der) in extra.iter().enumerate() {
            let ta =
                webpki::anchor_from_trusted_cert(der).map_err(|e| VerifierError::BadAnchor {
                    index,
                    reason: format!("{e:?}"),
                })?;
            out.push(ta.to_owned());
        }
        Ok(())
    }

    /// The alert hub verdicts are reported to.
    pub fn alerts(&self) -> &AlertHub {
        &self.alerts
    }

    /// Pin checks run so far, by mode and result.
    pub fn pin_checks(&self) -> &PinCheckCounters {
        &self.checks
    }

    /// The signature algorithms used for chains and handshakes.
    pub fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.algs
    }

    /// Plain Web PKI validation of a chain for `name` (no pins): the baseline.
    pub fn webpki_check(
        &self,
        name: Option<&ServerName<'_>>,
        ee: &webpki::EndEntityCert<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<(), webpki::Error> {
        if let Some(name) = name {
            ee.verify_is_valid_for_subject_name(name)?;
        }
        ee.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            usage.key_usage(),
            None,
            None,
        )
        .map(|_| ())
    }

    /// Plain Web PKI validation of a served chain, returning the pins of the
    /// path that validated (leaf first, trust anchor last) for display.
    pub fn describe_path(
        &self,
        name: &ServerName<'_>,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> (Result<(), String>, Vec<Pin>) {
        let Some((first, rest)) = chain.split_first() else {
            return (Err("the peer sent no certificate".into()), Vec::new());
        };
        let ee = match webpki::EndEntityCert::try_from(first) {
            Ok(ee) => ee,
            Err(e) => return (Err(format!("{e:?}")), Vec::new()),
        };
        if let Err(e) = ee.verify_is_valid_for_subject_name(name) {
            return (Err(format!("{e:?}")), Vec::new());
        }
        match ee.verify_for_usage(
            self.algs.all,
            &self.anchors,
            rest,
            now,
            usage.key_usage(),
            None,
            None,
        ) {
            Ok(path) => {
                let mut pins = vec![leaf_pin_of(&ee)];
                pins.extend(
                    path.intermediate_certificates()
                        .map(|c| Pin::of_spki(c.subject_public_key_info().as_ref())),
                );
                pins.push(Pin::of_spki(
                    webpki::spki_for_anchor(path.anchor()).as_ref(),
                ));
                (Ok(()), pins)
            }
            Err(e) => (Err(format!("{e:?}")), Vec::new()),
        }
    }

    /// Validates the chain for `name` and requires one of `peer`'s pins on the
    /// path that validated (end entity, an intermediate used, or the anchor).
    fn pinned_path_check(
        &self,
        name: Option<&ServerName<'_>>,
        ee: &webpki::EndEntityCert<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
        peer: &Peer,
    ) -> PathOutcome {
        if let Some(name) = name {
            if let Err(e) = ee.verify_is_valid_for_subject_name(name) {
                return PathOutcome::Invalid(e);
            }
        }
        // webpki calls this only for a path that fully validated (signatures,
        // validity, EKU, name constraints), so "called at all" means Web PKI
        // alone would accept the chain: no second validation is needed to
        // tell a CA-valid impostor from a broken chain.
        let validated = std::cell::Cell::new(false);
        let on_path = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            validated.set(true);
            if path_has_pin(path, peer) {
                Ok(())
            } else {
                // Not a pinned path: webpki goes on to try other paths.
                Err(webpki::Error::UnknownIssuer)
            }
        };
        match ee.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            usage.key_usage(),
            None,
            Some(&on_path),
        ) {
            Ok(_) => PathOutcome::Pinned,
            Err(_) if validated.get() => PathOutcome::ValidUnpinned,
            Err(e) => PathOutcome::Invalid(e),
        }
    }

    /// Applies every rule of SPEC section 4 to one presented chain.
    ///
    /// `lookup` is the TLS name (SNI) or IP text that selects the pin entry;
    /// `name` is checked against the certificate when given (server
    /// certificates always; client certificates by their own SAN).
    ///
    /// Every call is counted in [`VerifierCore::pin_checks`].
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &self,
        pins: &PinSet,
        lookup: &str,
        name: Option<&ServerName<'_>>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
        ctx: &PeerContext,
    ) -> Evaluation {
        let host = crate::pins::normalize_lookup(lookup).into_owned();
        let peer = pins.lookup(&host);
        let mode = peer.map_or(CheckMode::Unpinned, |p| p.mode.into());
        let ev = self.apply_rules(
            pins,
            host,
            peer,
            name,
            end_entity,
            intermediates,
            now,
            usage,
            ctx,
        );
        self.checks.add(mode, CheckResult::of(&ev));
        ev
    }

    /// The rules for one chain, once the entry for `host` (if any) is known.
    #[allow(clippy::too_many_arguments)]
    fn apply_rules(
        &self,
        pins: &PinSet,
        host: String,
        peer: Option<&Peer>,
        name: Option<&ServerName<'_>>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
        ctx: &PeerContext,
    ) -> Evaluation {
        let mut draft = AlertDraft {
            ctx,
            host: &host,
            peer,
            pins,
            end_entity,
            intermediates,
        };
        let ee = match webpki::EndEntityCert::try_from(end_entity) {
            Ok(ee) => ee,
            Err(e) => {
                // Fail closed: a certificate we cannot parse is never accepted.
                let reason =
                    format!("the certificate presented for {host} cannot be parsed ({e:?})");
                let alert = draft.build(
                    AlertEvent::VerifyError,
                    Severity::Warning,
                    Action::Blocked,
                    format!("{e:?}"),
                    &reason,
                );
                return Evaluation {
                    verdict: reject(AlertEvent::VerifyError, reason),
                    alert: Some(alert),
                    host,
                };
            }
        };
        let webpki = || self.webpki_check(name, &ee, intermediates, now, usage);

        let Some(peer) = peer else {
            return match pins.policy.unpinned {
                UnpinnedPolicy::Webpki => match webpki() {
                    Ok(()) => accept(Basis::UnpinnedWebPki, host),
                    Err(e) => {
                        let reason = format!("{host} has no pin entry and its chain does not validate under Web PKI ({e:?})");
                        let alert = draft.build(
                            AlertEvent::ChainInvalid,
                            Severity::Warning,
                            Action::Blocked,
                            webpki_text(&Err(e)),
                            &reason,
                        );
                        Evaluation {
                            verdict: reject(AlertEvent::ChainInvalid, reason),
                            alert: Some(alert),
                            host,
                        }
                    }
                },
                UnpinnedPolicy::Deny => {
                    let w = webpki();
                    let reason = format!("{host} has no pin entry and policy.unpinned = \"deny\"");
                    let alert = draft.build(
                        AlertEvent::UnpinnedDenied,
                        Severity::Warning,
                        Action::Blocked,
                        webpki_text(&w),
                        &reason,
                    );
                    Evaluation {
                        verdict: reject(AlertEvent::UnpinnedDenied, reason),
                        alert: Some(alert),
                        host,
                    }
                }
            };
        };

        let now_dt = OffsetDateTime::from_unix_timestamp(now.as_secs() as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        // Invariant 10: expired pins are still compared. `policy.on_expired`
        // decides only for a chain whose pins still match (or that does not
        // validate at all); a Web-PKI-valid chain that matches no pin is a
        // critical mismatch whatever `on_expired` says.
        let expired = peer.is_expired(now_dt);

        // Whether a pin matched, and if not, what Web PKI alone says: a
        // Web-PKI-valid chain without a pinned key is the CA-compromise signature.
        let w = match peer.trust {
            Trust::Webpki => {
                match self.pinned_path_check(name, &ee, intermediates, now, usage, peer) {
                    // A pinned path validated, so Web PKI accepts the chain.
                    PathOutcome::Pinned if expired => {
                        return expired_pins(pins, peer, &mut draft, Ok(()))
                    }
                    PathOutcome::Pinned => return accept(Basis::PinOnValidatedPath, host),
                    PathOutcome::ValidUnpinned => Ok(()),
                    PathOutcome::Invalid(e) => Err(e),
                }
            }
            Trust::PinOnly => {
                if peer.has_pin(&leaf_pin_of(&ee)) {
                    if expired {
                        return expired_pins(pins, peer, &mut draft, webpki());
                    }
                    return accept(Basis::PinOnlyLeaf, host);
                }
                webpki()
            }
        };
        if expired && w.is_err() {
            // No Web-PKI-valid chain: refused whatever the policy (not the
            // CA-compromise signature, so a warning as before).
            return expired_pins(pins, peer, &mut draft, w);
        }
        let (event, severity) = match (&w, peer.trust) {
            (Ok(()), _) => (AlertEvent::PinMismatch, Severity::Critical),
            (Err(_), Trust::Webpki) if draft.any_served_pin_matches() => {
                (AlertEvent::ChainInvalid, Severity::Warning)
            }
            (Err(_), _) => (AlertEvent::PinMismatch, Severity::Warning),
        };
        // Expired pins under `on_expired = "deny"` are refused even in report mode.
        let expired_deny = expired && pins.policy.on_expired == ExpiredPolicy::Deny;
        let allowed = peer.mode == Mode::Report && w.is_ok() && !expired_deny;
        let what = match (event, peer.trust) {
            (AlertEvent::ChainInvalid, _) => {
                "a pinned key was served but the chain does not validate under Web PKI".to_string()
            }
            (_, Trust::Webpki) => "no pinned key is on a validated path".to_string(),
            (_, Trust::PinOnly) => "the leaf key is not pinned (trust = \"pin-only\")".to_string(),
        };
        let mut webpki_note = match &w {
            Ok(()) => "Web PKI alone would have accepted it".to_string(),
            Err(e) => format!("Web PKI: {e:?}"),
        };
        if expired {
            let at = peer
                .expires
                .and_then(|e| e.format(&Rfc3339).ok())
                .map(|e| format!(" at {e}"))
                .unwrap_or_default();
            webpki_note.push_str(&format!(
                "; the pins expired{at} and are still compared (policy.on_expired = \"{}\")",
                pins.policy.on_expired
            ));
        }
        if allowed {
            let reason = format!("pin mismatch for {host} ({}): {what}; {webpki_note}; allowed because mode = \"report\"", peer.server_name);
            let alert = draft.build(event, severity, Action::Allowed, webpki_text(&w), &reason);
            Evaluation {
                verdict: Verdict::Accept(Accepted {
                    basis: Basis::ReportModeWebPki,
                }),
                alert: Some(alert),
                host,
            }
        } else {
            let reason = format!(
                "pin check failed for {host} ({}): {what}; {webpki_note}",
                peer.server_name
            );
            let alert = draft.build(event, severity, Action::Blocked, webpki_text(&w), &reason);
            Evaluation {
                verdict: reject(event, reason),
                alert: Some(alert),
                host,
            }
        }
    }
}

/// What validating a chain with the pin callback found.
enum PathOutcome {
    /// A path validated and carries a pin.
    Pinned,
    /// At least one path validated, none carries a pin.
    ValidUnpinned,
    /// No path validated (webpki's error).
    Invalid(webpki::Error),
}

fn accept(basis: Basis, host: String) -> Evaluation {
    Evaluation {
        verdict: Verdict::Accept(Accepted { basis }),
        alert: None,
        host,
    }
}

fn reject(event: AlertEvent, reason: String) -> Verdict {
    Verdict::Reject(Rejected { event, reason })
}

/// Expired pins that still match the served chain (or a chain that does not
/// validate under Web PKI at all): `policy.on_expired` decides, with a
/// `pin_expired` warning. `w` is the Web PKI result for the chain.
fn expired_pins(
    pins: &PinSet,
    peer: &Peer,
    draft: &mut AlertDraft<'_>,
    w: Result<(), webpki::Error>,
) -> Evaluation {
    let host = draft.host;
    let (verdict, action, reason) = match (pins.policy.on_expired, &w) {
        (ExpiredPolicy::Webpki, Ok(())) => (
            Verdict::Accept(Accepted {
                basis: Basis::ExpiredPinsWebPki,
            }),
            Action::Allowed,
            format!("the pins for {host} ({}) have expired; accepted on Web PKI per policy.on_expired = \"webpki\"", peer.server_name),
        ),
        (ExpiredPolicy::Webpki, Err(_)) => {
            let reason = format!("the pins for {host} ({}) have expired and its chain does not validate under Web PKI", peer.server_name);
            (reject(AlertEvent::PinExpired, reason.clone()), Action::Blocked, reason)
        }
        (ExpiredPolicy::Deny, _) => {
            let reason = format!(
                "the pins for {host} ({}) have expired and policy.on_expired = \"deny\"",
                peer.server_name
            );
            (reject(AlertEvent::PinExpired, reason.clone()), Action::Blocked, reason)
        }
    };
    let alert = draft.build(
        AlertEvent::PinExpired,
        Severity::Warning,
        action,
        webpki_text(&w),
        &reason,
    );
    Evaluation {
        verdict,
        alert: Some(alert),
        host: host.to_string(),
    }
}

fn leaf_pin_of(ee: &webpki::EndEntityCert<'_>) -> Pin {
    Pin::of_spki(ee.subject_public_key_info().as_ref())
}

/// Whether any certificate on this validated path carries one of the peer's pins.
fn path_has_pin(path: &webpki::VerifiedPath<'_>, peer: &Peer) -> bool {
    if peer.has_pin(&Pin::of_spki(
        path.end_entity().subject_public_key_info().as_ref(),
    )) {
        return true;
    }
    if path
        .intermediate_certificates()
        .any(|c| peer.has_pin(&Pin::of_spki(c.subject_public_key_info().as_ref())))
    {
        return true;
    }
    peer.has_pin(&Pin::of_spki(
        webpki::spki_for_anchor(path.anchor()).as_ref(),
    ))
}

struct AlertDraft<'a> {
    ctx: &'a PeerContext,
    host: &'a str,
    peer: Option<&'a Peer>,
    pins: &'a PinSet,
    end_entity: &'a CertificateDer<'a>,
    intermediates: &'a [CertificateDer<'a>],
}

impl AlertDraft<'_> {
    fn served(&self) -> Vec<ServedCert> {
        std::iter::once(self.end_entity)
            .chain(self.intermediates.iter())
            .map(|c| ServedCert::describe(c.as_ref()))
            .collect()
    }

    fn any_served_pin_matches(&mut self) -> bool {
        let Some(peer) = self.peer else { return false };
        std::iter::once(self.end_entity)
            .chain(self.intermediates.iter())
            .filter_map(|c| spki::spki_of_der(c.as_ref()))
            .any(|p| peer.has_pin(&p))
    }

    fn build(
        &mut self,
        event: AlertEvent,
        severity: Severity,
        action: Action,
        webpki: String,
        reason: &str,
    ) -> Alert {
        Alert {
            event,
            severity,
            time: Alert::now_string(),
            direction: self.ctx.direction.unwrap_or(Direction::Cli),
            server_name: self
                .ctx
                .server_name
                .clone()
                .or_else(|| self.peer.map(|p| p.server_name.clone()))
                .or_else(|| (!self.host.is_empty()).then(|| self.host.to_string())),
            host: Some(self.host.to_string()),
            port: self.ctx.port,
            peer_addr: self.ctx.peer_addr.map(|a| a.to_string()),
            mode: self.peer.map(|p| p.mode),
            action,
            webpki,
            served_chain: self.served(),
            known_pins: self
                .peer
                .map(|p| p.pins.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default(),
            expires: self
                .peer
                .and_then(|p| p.expires.and_then(|e| e.format(&Rfc3339).ok())),
            pin_generation: self.pins.generation,
            reason: reason.to_string(),
            repeats: 1,
        }
    }
}

/// What the last check on a connection decided (for error pages and CLI output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    /// The lookup key (TLS name or IP text).
    pub host: String,
    /// Whether the pin rules accepted the chain.
    pub accepted: bool,
    /// Why it was accepted.
    pub basis: Option<Basis>,
    /// The refusal, if refused.
    pub rejected: Option<Rejected>,
    /// The alert event raised, if any.
    pub alert: Option<AlertEvent>,
    /// Whether the handshake signature check failed after the chain was accepted.
    pub signature_failed: bool,
}

tokio::task_local! {
    static CONNECTION: Arc<ConnState>;
}

/// One connection's context and outcome, made visible to a verifier shared by
/// many connections (rustls resumes a session only with the verifier object
/// that verified it, so [`crate::tls::UpstreamTls`] shares one per pin
/// generation). Run the handshake inside [`ConnState::scope`].
#[derive(Debug, Default)]
pub struct ConnState {
    ctx: PeerContext,
    record: Mutex<Option<CheckRecord>>,
}

impl ConnState {
    /// State for one connection.
    pub fn new(ctx: PeerContext) -> Arc<Self> {
        Arc::new(ConnState {
            ctx,
            record: Mutex::new(None),
        })
    }

    /// What the certificate check on this connection decided, if one ran
    /// (a resumed session runs none).
    pub fn record(&self) -> Option<CheckRecord> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `fut` (a TLS handshake) with this state visible to the verifier.
    pub async fn scope<F: std::future::Future>(self: &Arc<Self>, fut: F) -> F::Output {
        CONNECTION.scope(self.clone(), fut).await
    }
}

/// A rustls server-certificate verifier that applies the pin rules of one
/// pin-set generation and raises alerts with the connection's context: the
/// [`ConnState`] of the enclosing [`ConnState::scope`] when there is one,
/// else the context it was built with.
pub struct PinnedServerVerifier {
    core: Arc<VerifierCore>,
    pins: Arc<PinSet>,
    ctx: PeerContext,
    record: Mutex<Option<CheckRecord>>,
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerVerifier")
            .field("generation", &self.pins.generation)
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl PinnedServerVerifier {
    /// A verifier; `ctx` is used when no [`ConnState::scope`] encloses the handshake.
    pub fn new(core: Arc<VerifierCore>, pins: Arc<PinSet>, ctx: PeerContext) -> Self {
        PinnedServerVerifier {
            core,
            pins,
            ctx,
            record: Mutex::new(None),
        }
    }

    /// The pin-set generation this verifier enforces.
    pub fn generation(&self) -> u64 {
        self.pins.generation
    }

    /// What the last certificate check decided, if one ran (for a verifier
    /// used outside any [`ConnState::scope`]).
    pub fn record(&self) -> Option<CheckRecord> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn with_state<R>(&self, f: impl FnOnce(&PeerContext, &Mutex<Option<CheckRecord>>) -> R) -> R {
        match CONNECTION.try_with(|s| s.clone()) {
            Ok(state) => f(&state.ctx, &state.record),
            Err(_) => f(&self.ctx, &self.record),
        }
    }

    fn signature_result(
        &self,
        cert: &CertificateDer<'_>,
        r: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if let Err(e) = &r {
            self.with_state(|ctx, record| self.signature_failed(ctx, record, cert, e));
        }
        r
    }

    fn signature_failed(
        &self,
        ctx: &PeerContext,
        record: &Mutex<Option<CheckRecord>>,
        cert: &CertificateDer<'_>,
        e: &rustls::Error,
    ) {
        let (host, pinned_accept) = {
            let mut rec = record.lock().unwrap_or_else(|p| p.into_inner());
            let host = rec.as_ref().map(|r| r.host.clone()).unwrap_or_default();
            let pinned_accept = rec.as_ref().is_some_and(|r| {
                matches!(
                    r.basis,
                    Some(Basis::PinOnValidatedPath | Basis::PinOnlyLeaf)
                )
            });
            if let Some(r) = rec.as_mut() {
                r.signature_failed = true;
                r.accepted = false;
                r.alert = Some(AlertEvent::SignatureInvalid);
            }
            (host, pinned_accept)
        };
        let reason = format!(
            "{host} presented a certificate but its handshake signature does not verify with that certificate's key ({e}): the peer does not hold the key"
        );
        let peer = self.pins.lookup(&host);
        let mut draft = AlertDraft {
            ctx,
            host: &host,
            peer,
            pins: &self.pins,
            end_entity: cert,
            intermediates: &[],
        };
        let severity = if pinned_accept {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let alert = draft.build(
            AlertEvent::SignatureInvalid,
            severity,
            Action::Blocked,
            "not checked".into(),
            &reason,
        );
        self.core.alerts.raise(alert);
    }

    fn check_server(
        &self,
        ctx: &PeerContext,
        record: &Mutex<Option<CheckRecord>>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let lookup = lookup_key(server_name);
        let ev = self.core.evaluate(
            &self.pins,
            &lookup,
            Some(server_name),
            end_entity,
            intermediates,
            now,
            Usage::Server,
            ctx,
        );
        let alert_event = ev.alert.as_ref().map(|a| a.event);
        if let Some(alert) = ev.alert {
            self.core.alerts.raise(alert);
        }
        let (result, rec) = match ev.verdict {
            Verdict::Accept(a) => (
                Ok(ServerCertVerified::assertion()),
                CheckRecord {
                    host: ev.host,
                    accepted: true,
                    basis: Some(a.basis),
                    rejected: None,
                    alert: alert_event,
                    signature_failed: false,
                },
            ),
            Verdict::Reject(r) => (
                Err(to_rustls_error(r.clone())),
                CheckRecord {
                    host: ev.host,
                    accepted: false,
                    basis: None,
                    rejected: Some(r),
                    alert: alert_event,
                    signature_failed: false,
                },
            ),
        };
        *record.lock().unwrap_or_else(|p| p.into_inner()) = Some(rec);
        result
    }
}

/// The name text used as the pin lookup key for a rustls server name.
/// Borrows DNS names, so the handshake path allocates only for IP literals.
pub fn lookup_key<'a>(name: &'a ServerName<'_>) -> std::borrow::Cow<'a, str> {
    match name {
        ServerName::DnsName(d) => std::borrow::Cow::Borrowed(d.as_ref()),
        ServerName::IpAddress(ip) => {
            std::borrow::Cow::Owned(std::net::IpAddr::from(*ip).to_string())
        }
        _ => std::borrow::Cow::Borrowed(""),
    }
}

fn to_rustls_error(r: Rejected) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(r))))
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.with_state(|ctx, record| {
            self.check_server(ctx, record, end_entity, intermediates, server_name, now)
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let r = rustls::crypto::verify_tls12_signature(message, cert, dss, &self.core.algs);
        self.signature_result(cert, r)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let r = rustls::crypto::verify_tls13_signature(message, cert, dss, &self.core.algs);
        self.signature_result(cert, r)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.algs.supported_schemes()
    }
}

/// A rustls client-certificate verifier (inbound mutual TLS) applying the same
/// rules to the names in the client certificate's subjectAltName.
///
/// It enforces one pin-set generation: build a new `ServerConfig` (and so a
/// new session cache) per generation so resumption cannot skip a new set.
pub struct PinnedClientVerifier {
    core: Arc<VerifierCore>,
    pins: Arc<PinSet>,
    mandatory: bool,
    ctx: PeerContext,
}

impl fmt::Debug for PinnedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedClientVerifier")
            .field("generation", &self.pins.generation)
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl PinnedClientVerifier {
    /// A verifier that asks for a client certificate; `mandatory` refuses clients without one.
    pub fn new(core: Arc<VerifierCore>, pins: Arc<PinSet>, mandatory: bool) -> Self {
        PinnedClientVerifier {
            core,
            pins,
            mandatory,
            ctx: PeerContext {
                direction: Some(Direction::Inbound),
                ..PeerContext::default()
            },
        }
    }

    /// Sets the peer address reported in alerts.
    pub fn set_peer_addr(&mut self, addr: SocketAddr) {
        self.ctx.peer_addr = Some(addr);
        self.ctx.port = Some(addr.port());
    }

    /// Evaluates a client chain; exposed for the inbound proxy and tests.
    pub fn evaluate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Evaluation {
        let names = spki::dns_sans(end_entity.as_ref());
        // Every name in the certificate that has a pin entry must pass its own
        // entry's rules: otherwise a client could choose, by SAN order, the
        // weakest entry (report mode, pin-only, expired) to be judged by.
        let pinned: Vec<&String> = names
            .iter()
            .filter(|n| self.pins.lookup(n).is_some())
            .collect();
        let candidates: Vec<&String> = if pinned.is_empty() {
            // No entry: policy.unpinned applies, judged on the first name.
            names.first().into_iter().collect()
        } else {
            pinned
        };
        if candidates.is_empty() {
            // No name to look up. A key pinned for some peer may still finish
            // the handshake; the inbound layer then binds every request's
            // X-Matrix origin to it (evaluate_for_origin). Anything else is refused.
            if let Some(pin) = spki::spki_of_der(end_entity.as_ref()) {
                if self.pins.peers_with_pin(&pin).next().is_some() {
                    return Evaluation {
                        verdict: Verdict::Accept(Accepted {
                            basis: Basis::PinnedKeyAwaitingOrigin,
                        }),
                        alert: None,
                        host: String::new(),
                    };
                }
            }
            let reason =
                "the client certificate carries no DNS name and its key is not pinned for any peer"
                    .to_string();
            let mut draft = AlertDraft {
                ctx: &self.ctx,
                host: "",
                peer: None,
                pins: &self.pins,
                end_entity,
                intermediates,
            };
            let alert = draft.build(
                AlertEvent::VerifyError,
                Severity::Warning,
                Action::Blocked,
                "not checked".into(),
                &reason,
            );
            return Evaluation {
                verdict: reject(AlertEvent::VerifyError, reason),
                alert: Some(alert),
                host: String::new(),
            };
        }
        let mut chosen: Option<Evaluation> = None;
        for name in candidates {
            let server_name = ServerName::try_from(name.clone()).ok();
            let ev = self.core.evaluate(
                &self.pins,
                name,
                server_name.as_ref(),
                end_entity,
                intermediates,
                now,
                Usage::Client,
                &self.ctx,
            );
            if !ev.verdict.is_accept() {
                return ev;
            }
            if chosen
                .as_ref()
                .is_none_or(|c| c.alert.is_none() && ev.alert.is_some())
            {
                chosen = Some(ev);
            }
        }
        chosen.unwrap_or_else(|| Evaluation {
            verdict: reject(AlertEvent::VerifyError, "no name was evaluated".into()),
            alert: None,
            host: String::new(),
        })
    }
}

impl PinnedClientVerifier {
    /// Checks a client chain against the pin entry of the request's X-Matrix
    /// origin host (for certificates that carry no DNS name): the entry's
    /// rules apply, without a name check.
    pub fn evaluate_for_origin(
        &self,
        origin_host: &str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Evaluation {
        self.core.evaluate(
            &self.pins,
            origin_host,
            None,
            end_entity,
            intermediates,
            now,
            Usage::Client,
            &self.ctx,
        )
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ev = self.evaluate(end_entity, intermediates, now);
        let alert_event = ev.alert.as_ref().map(|a| a.event);
        if let Some(alert) = ev.alert {
            self.core.alerts.raise(alert);
        }
        // The inbound proxy runs a handshake inside a ConnState scope to
        // learn which name was checked and how (the per-peer last result).
        let _ = CONNECTION.try_with(|state| {
            let (accepted, basis, rejected) = match &ev.verdict {
                Verdict::Accept(a) => (true, Some(a.basis), None),
                Verdict::Reject(r) => (false, None, Some(r.clone())),
            };
            *state.record.lock().unwrap_or_else(|p| p.into_inner()) = Some(CheckRecord {
                host: ev.host.clone(),
                accepted,
                basis,
                rejected,
                alert: alert_event,
                signature_failed: false,
            });
        });
        match ev.verdict {
            Verdict::Accept(_) => Ok(ClientCertVerified::assertion()),
            Verdict::Reject(r) => Err(to_rustls_error(r)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.core.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.core.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.algs.supported_schemes()
    }
}
