//! The pin rules and the rustls verifiers that apply them.
//!
//! Everything that decides whether a peer is accepted lives in
//! [`VerifierCore::evaluate`]. It never re-implements crypto: chains are built
//! and checked by rustls-webpki's `verify_for_usage`, with the pin matched
//! inside its `verify_path` callback so that a pin counts only on a path that
//! actually validated; handshake signatures are left to
//! `rustls::crypto::verify_tls1{2,3}_signature`, always against the leaf key.
//!
//! `evaluate` is pure: what was presented ([`Presented`]) and the pin set go
//! in, a [`Verdict`] comes out. Its accepting outcome carries an [`Accepted`]
//! token that only this module can build, so no caller can reach "accepted"
//! without passing the pin rules; a refusal is a structured [`Refusal`]. One
//! reporting path ([`VerifierCore::report`], `report.rs`) turns a verdict
//! into its alert, its metric labels and the rustls error, and the
//! connection's record ([`ConnState`]) keeps the verdict itself. The
//! handshake-signature check is the one rule rustls runs later; its failure
//! becomes a [`Refusal::SignatureInvalid`] verdict on the same path.
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

use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use time::OffsetDateTime;

use crate::alert::{AlertHub, Direction};
use crate::metrics::PinCheckCounters;
use crate::pins::{ExpiredPolicy, Mode, Peer, Pin, PinSet, Trust, UnpinnedPolicy};

mod report;
mod spki;
mod verdict;
mod verifiers;

pub use report::{handshake_result, RefusedByPins};
pub use spki::{dns_sans, leaf_pin, pins_of_pem_or_der, spki_of_der, HashedItem, PemPinError};
pub use verdict::{Accepted, Basis, Expiry, Outcome, Presented, Refusal, Usage, Verdict};
pub(crate) use verifiers::signature_checks;
pub use verifiers::{lookup_key, ConnState, PinnedClientVerifier, PinnedServerVerifier};

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
        self.validate(name, ee, intermediates, now, usage, None)
            .map(|_| ())
    }

    /// webpki's validation of `ee` for `name` (when given) and `usage`;
    /// `on_path`, when given, must also accept the path (webpki then tries
    /// the other paths).
    fn validate<'p>(
        &'p self,
        name: Option<&ServerName<'_>>,
        ee: &'p webpki::EndEntityCert<'p>,
        intermediates: &'p [CertificateDer<'p>],
        now: UnixTime,
        usage: Usage,
        on_path: Option<PathCheck<'_>>,
    ) -> Result<webpki::VerifiedPath<'p>, webpki::Error> {
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
            on_path,
        )
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
        match self.validate(Some(name), &ee, rest, now, usage, None) {
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
        ee: &webpki::EndEntityCert<'_>,
        p: &Presented<'_>,
        peer: &Peer,
    ) -> PathOutcome {
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
        match self.validate(p.name, ee, p.intermediates, p.now, p.usage, Some(&on_path)) {
            Ok(_) => PathOutcome::Pinned,
            Err(_) if validated.get() => PathOutcome::ValidUnpinned,
            Err(e) => PathOutcome::Invalid(e),
        }
    }

    /// Applies every rule of SPEC section 4 to one presented chain.
    ///
    /// Pure: it neither counts nor alerts. [`VerifierCore::report`] turns
    /// the verdict into the alert and the metric labels; the rustls
    /// verifiers call both.
    pub fn evaluate(&self, pins: &PinSet, presented: &Presented<'_>) -> Verdict {
        let host = crate::pins::normalize_lookup(presented.lookup).into_owned();
        let peer = pins.lookup(&host);
        let outcome = match webpki::EndEntityCert::try_from(presented.end_entity) {
            // Fail closed: a certificate we cannot parse is never accepted.
            Err(e) => Outcome::Reject(Refusal::Unparseable(e)),
            Ok(ee) => match peer {
                None => self.unpinned(pins, &ee, presented),
                Some(peer) => self.pinned(pins, peer, &ee, presented),
            },
        };
        Verdict {
            host,
            mode: peer.map(|p| p.mode),
            outcome,
        }
    }

    /// Counts one verdict in [`VerifierCore::pin_checks`].
    pub fn count(&self, verdict: &Verdict) {
        let (mode, result) = verdict.check_labels();
        self.checks.add(mode, result);
    }

    fn webpki_of(
        &self,
        ee: &webpki::EndEntityCert<'_>,
        p: &Presented<'_>,
    ) -> Result<(), webpki::Error> {
        self.webpki_check(p.name, ee, p.intermediates, p.now, p.usage)
    }

    /// No entry for the host: `policy.unpinned` decides.
    fn unpinned(
        &self,
        pins: &PinSet,
        ee: &webpki::EndEntityCert<'_>,
        p: &Presented<'_>,
    ) -> Outcome {
        match (pins.policy.unpinned, self.webpki_of(ee, p)) {
            (UnpinnedPolicy::Webpki, Ok(())) => {
                Outcome::Accept(Accepted::new(Basis::UnpinnedWebPki))
            }
            (UnpinnedPolicy::Webpki, Err(e)) => Outcome::Reject(Refusal::UnpinnedChainInvalid(e)),
            (UnpinnedPolicy::Deny, webpki) => Outcome::Reject(Refusal::UnpinnedDenied { webpki }),
        }
    }

    /// The entry `peer` judges the chain.
    fn pinned(
        &self,
        pins: &PinSet,
        peer: &Peer,
        ee: &webpki::EndEntityCert<'_>,
        p: &Presented<'_>,
    ) -> Outcome {
        let now_dt = OffsetDateTime::from_unix_timestamp(p.now.as_secs() as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        // Invariant 10: expired pins are still compared. `policy.on_expired`
        // decides only for a chain whose pins still match (or that does not
        // validate at all); a Web-PKI-valid chain that matches no pin is a
        // critical mismatch whatever `on_expired` says.
        let expired = peer.is_expired(now_dt);

        // Whether a pin matched, and if not, what Web PKI alone says: a
        // Web-PKI-valid chain without a pinned key is the CA-compromise signature.
        let webpki = match peer.trust {
            Trust::Webpki => {
                match self.pinned_path_check(ee, p, peer) {
                    // A pinned path validated, so Web PKI accepts the chain.
                    PathOutcome::Pinned if expired => return expired_pins(pins, peer, Ok(())),
                    PathOutcome::Pinned => {
                        return Outcome::Accept(Accepted::new(Basis::PinOnValidatedPath))
                    }
                    PathOutcome::ValidUnpinned => Ok(()),
                    PathOutcome::Invalid(e) => Err(e),
                }
            }
            Trust::PinOnly => {
                if peer.has_pin(&leaf_pin_of(ee)) {
                    if expired {
                        return expired_pins(pins, peer, self.webpki_of(ee, p));
                    }
                    return Outcome::Accept(Accepted::new(Basis::PinOnlyLeaf));
                }
                self.webpki_of(ee, p)
            }
        };
        if expired && webpki.is_err() {
            // No Web-PKI-valid chain: refused whatever the policy (not the
            // CA-compromise signature, so a warning).
            return expired_pins(pins, peer, webpki);
        }
        let expired = expired.then_some(Expiry {
            at: peer.expires,
            policy: pins.policy.on_expired,
        });
        let served = served_pins(p);
        let refusal = match webpki {
            Err(error) if peer.trust == Trust::Webpki && served.iter().any(|s| peer.has_pin(s)) => {
                Refusal::PinnedChainInvalid {
                    entry: peer.server_name.clone(),
                    error,
                    expired,
                }
            }
            webpki => Refusal::PinMismatch {
                entry: peer.server_name.clone(),
                trust: peer.trust,
                webpki,
                expired,
                served,
                known: peer.pins.clone(),
            },
        };
        // Report mode lets a Web-PKI-valid mismatch through (still reported),
        // except for expired pins under `on_expired = "deny"`.
        let expired_deny = expired.is_some() && pins.policy.on_expired == ExpiredPolicy::Deny;
        let web_valid = matches!(refusal, Refusal::PinMismatch { webpki: Ok(()), .. });
        if peer.mode == Mode::Report && web_valid && !expired_deny {
            Outcome::Accept(Accepted::despite(Basis::ReportModeWebPki, refusal))
        } else {
            Outcome::Reject(refusal)
        }
    }
}

/// An extra check webpki runs on each path that validated.
type PathCheck<'f> = &'f dyn Fn(&webpki::VerifiedPath<'_>) -> Result<(), webpki::Error>;

/// What validating a chain with the pin callback found.
enum PathOutcome {
    /// A path validated and carries a pin.
    Pinned,
    /// At least one path validated, none carries a pin.
    ValidUnpinned,
    /// No path validated (webpki's error).
    Invalid(webpki::Error),
}

/// Expired pins that still match the served chain (or a chain that does not
/// validate under Web PKI at all): `policy.on_expired` decides, with a
/// `pin_expired` warning. `webpki` is the Web PKI result for the chain.
fn expired_pins(pins: &PinSet, peer: &Peer, webpki: Result<(), webpki::Error>) -> Outcome {
    let policy = pins.policy.on_expired;
    let accept = policy == ExpiredPolicy::Webpki && webpki.is_ok();
    let refusal = Refusal::PinsExpired {
        entry: peer.server_name.clone(),
        policy,
        webpki,
    };
    if accept {
        Outcome::Accept(Accepted::despite(Basis::ExpiredPinsWebPki, refusal))
    } else {
        Outcome::Reject(refusal)
    }
}

/// The keys of every certificate served, leaf first (unparsable ones skipped).
fn served_pins(p: &Presented<'_>) -> Vec<Pin> {
    std::iter::once(p.end_entity)
        .chain(p.intermediates)
        .filter_map(|c| spki::spki_of_der(c.as_ref()))
        .collect()
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
