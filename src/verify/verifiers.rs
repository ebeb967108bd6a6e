//! The rustls verifiers: they run [`VerifierCore::evaluate`] inside a
//! handshake, report the verdict, keep it in the connection's record, and
//! hand rustls the matching result.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;

use super::report::rustls_error;
use super::verdict::{Accepted, Basis, Outcome, Presented, Refusal, Usage, Verdict};
use super::{spki, PeerContext, VerifierCore};
use crate::alert::Direction;
use crate::pins::PinSet;

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
    record: Mutex<Option<Verdict>>,
}

impl ConnState {
    /// State for one connection.
    pub fn new(ctx: PeerContext) -> Arc<Self> {
        Arc::new(ConnState {
            ctx,
            record: Mutex::new(None),
        })
    }

    /// The verdict of the certificate check on this connection, if one ran
    /// (a resumed session runs none).
    pub fn record(&self) -> Option<Verdict> {
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

fn store(record: &Mutex<Option<Verdict>>, verdict: Verdict) {
    *record.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
}

/// A verifier's `Debug`: its name, the generation it enforces and one field
/// of its own; never the pin set itself (which may hold 10,000 entries).
fn debug_verifier(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    pins: &PinSet,
    (field, value): (&str, &dyn fmt::Debug),
) -> fmt::Result {
    f.debug_struct(name)
        .field("generation", &pins.generation)
        .field(field, value)
        .finish_non_exhaustive()
}

/// The handshake-signature methods of a rustls certificate verifier, the same
/// in every verifier of the crate: rustls's own checks (never ours) against
/// the algorithms `$algs`, each result handed to `$then` (the pinned server
/// verifier turns a failure into a reported verdict).
macro_rules! signature_checks {
    ($self:ident, $algs:expr, |$cert:ident, $r:ident| $then:expr) => {
        $crate::verify::signature_checks!(@each $self, $algs, |$cert, $r| $then,
            verify_tls12_signature, verify_tls13_signature);

        fn supported_verify_schemes(&$self) -> Vec<rustls::SignatureScheme> {
            $algs.supported_schemes()
        }
    };
    // The TLS 1.2 and 1.3 methods differ only in which rustls check they call,
    // and each calls the rustls function of its own name.
    (@each $self:ident, $algs:expr, |$cert:ident, $r:ident| $then:expr, $($check:ident),+) => {
        $(
            fn $check(
                &$self,
                message: &[u8],
                $cert: &rustls::pki_types::CertificateDer<'_>,
                dss: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
                let $r = rustls::crypto::$check(message, $cert, dss, &$algs);
                $then
            }
        )+
    };
}
pub(crate) use signature_checks;

/// A rustls server-certificate verifier that applies the pin rules of one
/// pin-set generation and raises alerts with the connection's context: the
/// [`ConnState`] of the enclosing [`ConnState::scope`] when there is one,
/// else the context it was built with.
pub struct PinnedServerVerifier {
    core: Arc<VerifierCore>,
    pins: Arc<PinSet>,
    ctx: PeerContext,
    record: Mutex<Option<Verdict>>,
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_verifier(f, "PinnedServerVerifier", &self.pins, ("ctx", &self.ctx))
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

    /// The verdict of the last certificate check, if one ran (for a verifier
    /// used outside any [`ConnState::scope`]).
    pub fn record(&self) -> Option<Verdict> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn with_state<R>(&self, f: impl FnOnce(&PeerContext, &Mutex<Option<Verdict>>) -> R) -> R {
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

    /// The handshake signature does not verify with the leaf's key: the
    /// connection's verdict becomes [`Refusal::SignatureInvalid`], reported
    /// like any other (critical when the chain had been accepted on a pin).
    fn signature_failed(
        &self,
        ctx: &PeerContext,
        record: &Mutex<Option<Verdict>>,
        cert: &CertificateDer<'_>,
        e: &rustls::Error,
    ) {
        let (host, mode, after_pin) = {
            let rec = record.lock().unwrap_or_else(|p| p.into_inner());
            match rec.as_ref() {
                Some(v) => (v.host.clone(), v.mode, v.basis().is_some_and(Basis::is_pin)),
                None => (String::new(), None, false),
            }
        };
        let verdict = Verdict {
            host,
            mode,
            outcome: Outcome::Reject(Refusal::SignatureInvalid {
                error: e.clone(),
                after_pin,
            }),
        };
        let presented = Presented {
            lookup: &verdict.host,
            name: None,
            end_entity: cert,
            intermediates: &[],
            now: UnixTime::now(),
            usage: Usage::Server,
        };
        self.core.raise(&self.pins, &presented, ctx, &verdict);
        store(record, verdict);
    }

    fn check_server(
        &self,
        ctx: &PeerContext,
        record: &Mutex<Option<Verdict>>,
        presented: &Presented<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.core.evaluate(&self.pins, presented);
        self.core.report(&self.pins, presented, ctx, &verdict);
        let result = match verdict.outcome {
            Outcome::Accept(_) => Ok(ServerCertVerified::assertion()),
            Outcome::Reject(_) => Err(rustls_error(verdict.clone())),
        };
        store(record, verdict);
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

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let lookup = lookup_key(server_name);
        let presented = Presented {
            lookup: &lookup,
            name: Some(server_name),
            end_entity,
            intermediates,
            now,
            usage: Usage::Server,
        };
        self.with_state(|ctx, record| self.check_server(ctx, record, &presented))
    }

    signature_checks!(self, self.core.algs, |cert, r| self
        .signature_result(cert, r));
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
        debug_verifier(
            f,
            "PinnedClientVerifier",
            &self.pins,
            ("mandatory", &self.mandatory),
        )
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

    /// The pin set this verifier enforces.
    pub fn pins(&self) -> &PinSet {
        &self.pins
    }

    /// The context its alerts carry.
    pub fn context(&self) -> &PeerContext {
        &self.ctx
    }

    /// Judges a client chain (pure: no count, no alert). Every name in the
    /// certificate that has a pin entry must pass its own entry's rules;
    /// a certificate without a name may pass only on a key pinned for some
    /// peer ([`Basis::PinnedKeyAwaitingOrigin`]).
    pub fn evaluate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Verdict {
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
        let mut chosen: Option<Verdict> = None;
        for name in candidates {
            let server_name = ServerName::try_from(name.clone()).ok();
            let verdict = self.core.evaluate(
                &self.pins,
                &Presented {
                    lookup: name,
                    name: server_name.as_ref(),
                    end_entity,
                    intermediates,
                    now,
                    usage: Usage::Client,
                },
            );
            if !verdict.is_accept() {
                return verdict;
            }
            // Of several acceptances, report the one that carries a finding.
            if chosen
                .as_ref()
                .is_none_or(|c| c.reported().is_none() && verdict.reported().is_some())
            {
                chosen = Some(verdict);
            }
        }
        chosen.unwrap_or_else(|| self.nameless(end_entity))
    }

    /// No name to look up. A key pinned for some peer may still finish the
    /// handshake; the inbound layer then binds every request's X-Matrix
    /// origin to it ([`PinnedClientVerifier::check_for_origin`]). Anything
    /// else is refused.
    fn nameless(&self, end_entity: &CertificateDer<'_>) -> Verdict {
        let pinned_somewhere = spki::spki_of_der(end_entity.as_ref())
            .is_some_and(|pin| self.pins.peers_with_pin(&pin).next().is_some());
        Verdict {
            host: String::new(),
            mode: None,
            outcome: if pinned_somewhere {
                Outcome::Accept(Accepted::new(Basis::PinnedKeyAwaitingOrigin))
            } else {
                Outcome::Reject(Refusal::NamelessClientUnpinned)
            },
        }
    }

    /// Checks a client chain against the pin entry of the request's X-Matrix
    /// origin host (for certificates that carry no DNS name): the entry's
    /// rules apply, without a name check. The verdict is reported (counted,
    /// and its alert raised).
    pub fn check_for_origin(
        &self,
        origin_host: &str,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Verdict {
        let presented = Presented {
            lookup: origin_host,
            name: None,
            end_entity,
            intermediates,
            now,
            usage: Usage::Client,
        };
        let verdict = self.core.evaluate(&self.pins, &presented);
        self.core
            .report(&self.pins, &presented, &self.ctx, &verdict);
        verdict
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
        let verdict = self.evaluate(end_entity, intermediates, now);
        let presented = Presented {
            lookup: &verdict.host,
            name: None,
            end_entity,
            intermediates,
            now,
            usage: Usage::Client,
        };
        if verdict.host.is_empty() {
            // No entry judged a nameless certificate: nothing to count.
            self.core.raise(&self.pins, &presented, &self.ctx, &verdict);
        } else {
            self.core
                .report(&self.pins, &presented, &self.ctx, &verdict);
        }
        let result = match verdict.outcome {
            Outcome::Accept(_) => Ok(ClientCertVerified::assertion()),
            Outcome::Reject(_) => Err(rustls_error(verdict.clone())),
        };
        // The inbound proxy runs a handshake inside a ConnState scope to
        // learn which name was checked and how (the per-peer last result).
        let _ = CONNECTION.try_with(|state| store(&state.record, verdict));
        result
    }

    signature_checks!(self, self.core.algs, |_cert, r| r);
}
