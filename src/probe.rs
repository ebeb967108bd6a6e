//! Live checks of a peer for `pinctl add` and `pinctl verify` (and the demo):
//! connect over TLS, capture the served chain, and run the same verifier the
//! proxy runs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;
use tokio::net::TcpStream;

use crate::alert::Direction;
use crate::pins::{Pin, PinSet};
use crate::verify::{PeerContext, PinnedServerVerifier, Usage, Verdict, VerifierCore};

/// Where to connect and which TLS name to present and verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// SNI / name checked against the certificate (DNS name or IP text).
    pub tls_name: String,
    /// Host to dial.
    pub connect_host: String,
    /// Port to dial.
    pub port: u16,
}

/// Errors reaching a peer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TLS name is not a DNS name or IP address.
    #[error("\"{0}\" is not a valid TLS server name")]
    BadName(String),
    /// TCP connect failed.
    #[error("cannot connect to {host}:{port}: {message}")]
    Connect {
        /// The host dialled.
        host: String,
        /// The port dialled.
        port: u16,
        /// What went wrong, in words for the operator.
        message: String,
    },
    /// The TLS handshake failed (for `capture`, before any chain was seen).
    #[error("TLS handshake with {host}:{port} failed: {message}")]
    Handshake {
        /// The host dialled.
        host: String,
        /// The port dialled.
        port: u16,
        /// What went wrong, in words for the operator.
        message: String,
    },
    /// Timed out.
    #[error("{host}:{port} did not answer within {secs} s")]
    Timeout {
        /// The host dialled.
        host: String,
        /// The port dialled.
        port: u16,
        /// The time limit that passed, in seconds.
        secs: u64,
    },
}

/// One certificate on offer for pinning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    /// `leaf`, `intermediate`, `sent, not on the validated path`, or `trust anchor (not sent)`.
    pub role: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Expiry, RFC 3339 (empty for anchors).
    pub not_after: String,
    /// The pin.
    pub pin: Pin,
}

/// What a peer served.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The served chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// `Ok` if the chain validates under Web PKI for the name, else why not.
    pub webpki: Result<(), String>,
    /// The served certificates plus, when Web PKI validated, the anchor, with roles.
    pub entries: Vec<ChainEntry>,
    /// The address dialled.
    pub peer_addr: SocketAddr,
}

fn server_name(name: &str) -> Result<ServerName<'static>, ProbeError> {
    ServerName::try_from(name.to_string()).map_err(|_| ProbeError::BadName(name.to_string()))
}

async fn dial(target: &Target, timeout: Duration) -> Result<TcpStream, ProbeError> {
    let fut = TcpStream::connect((target.connect_host.as_str(), target.port));
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ProbeError::Timeout {
            host: target.connect_host.clone(),
            port: target.port,
            secs: timeout.as_secs(),
        }),
        Ok(Err(e)) => Err(ProbeError::Connect {
            host: target.connect_host.clone(),
            port: target.port,
            message: e.to_string(),
        }),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// Records the served chain and accepts it, for enrolment display only.
///
/// The handshake signature is still verified (by rustls's own check, against
/// the leaf key), so the peer proves it holds the key it offers. This verifier
/// is never used for proxied traffic.
#[derive(Debug)]
struct Capture {
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
    }

    crate::verify::signature_checks!(self, self.algs, |_cert, r| r);
}

/// A client config with the crate's TLS policy and `verifier`.
fn client_config(
    target: &Target,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, ProbeError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeError::Handshake {
                host: target.connect_host.clone(),
                port: target.port,
                message: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// Connects, captures the served chain (the peer must prove possession of
/// the leaf key), and describes it for an operator choosing what to pin.
pub async fn capture(
    core: &VerifierCore,
    target: &Target,
    timeout: Duration,
) -> Result<Captured, ProbeError> {
    let name = server_name(&target.tls_name)?;
    let capture = Arc::new(Capture {
        algs: *core.algorithms(),
        chain: Mutex::new(Vec::new()),
    });
    let config = client_config(target, capture.clone())?;
    let tcp = dial(target, timeout).await?;
    let peer_addr = tcp.peer_addr().map_err(|e| ProbeError::Connect {
        host: target.connect_host.clone(),
        port: target.port,
        message: e.to_string(),
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(timeout, connector.connect(name.clone(), tcp)).await {
        Err(_) => {
            return Err(ProbeError::Timeout {
                host: target.connect_host.clone(),
                port: target.port,
                secs: timeout.as_secs(),
            })
        }
        Ok(Err(e)) => {
            return Err(ProbeError::Handshake {
                host: target.connect_host.clone(),
                port: target.port,
                message: e.to_string(),
            })
        }
        Ok(Ok(_)) => {}
    }
    let chain = capture
        .chain
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (webpki, path) = core.describe_path(&name, &chain, UnixTime::now(), Usage::Server);
    let mut entries = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let d = crate::alert::ServedCert::describe(der.as_ref());
        let Some(pin) = d.pin.as_deref().and_then(|p| p.parse::<Pin>().ok()) else {
            continue;
        };
        let role = if i == 0 {
            "leaf".to_string()
        } else if webpki.is_ok() && !path.contains(&pin) {
            "sent, not on the validated path".to_string()
        } else {
            "intermediate".to_string()
        };
        entries.push(ChainEntry {
            role,
            subject: d.subject,
            issuer: d.issuer,
            not_after: d.not_after,
            pin,
        });
    }
    if let (Ok(()), Some(anchor)) = (&webpki, path.last()) {
        if !entries.iter().any(|e| e.pin == *anchor) {
            entries.push(ChainEntry {
                role: "trust anchor (not sent)".into(),
                subject: String::new(),
                issuer: String::new(),
                not_after: String::new(),
                pin: *anchor,
            });
        }
    }
    Ok(Captured {
        chain,
        webpki,
        entries,
        peer_addr,
    })
}

/// The result of a live pinned check.
#[derive(Debug, Clone)]
pub struct LiveCheck {
    /// What the verifier decided (None if the handshake failed before it ran).
    pub record: Option<Verdict>,
    /// The handshake error, if the connection failed.
    pub error: Option<String>,
    /// The served leaf's expiry, when the handshake completed.
    pub leaf_not_after: Option<OffsetDateTime>,
    /// The address dialled.
    pub peer_addr: Option<SocketAddr>,
}

impl LiveCheck {
    /// Whether the peer passed the pin rules and the handshake.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.record.as_ref().is_some_and(|r| r.is_accept())
    }
}

/// Connects with the proxy's own [`PinnedServerVerifier`] and reports the verdict.
pub async fn check(
    core: Arc<VerifierCore>,
    pins: Arc<PinSet>,
    target: &Target,
    server_name_hint: Option<String>,
    timeout: Duration,
) -> Result<LiveCheck, ProbeError> {
    let name = server_name(&target.tls_name)?;
    let tcp = dial(target, timeout).await?;
    let peer_addr = tcp.peer_addr().ok();
    let verifier = Arc::new(PinnedServerVerifier::new(
        core,
        pins,
        PeerContext {
            direction: Some(Direction::Cli),
            server_name: server_name_hint,
            port: Some(target.port),
            peer_addr,
        },
    ));
    let config = client_config(target, verifier.clone())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let res = tokio::time::timeout(timeout, connector.connect(name, tcp)).await;
    let (error, leaf_not_after) = match res {
        Err(_) => {
            return Err(ProbeError::Timeout {
                host: target.connect_host.clone(),
                port: target.port,
                secs: timeout.as_secs(),
            })
        }
        Ok(Err(e)) => (Some(e.to_string()), None),
        Ok(Ok(tls)) => {
            let not_after = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
                .map(|(_, c)| c.validity().not_after.to_datetime());
            (None, not_after)
        }
    };
    Ok(LiveCheck {
        record: verifier.record(),
        error,
        leaf_not_after,
        peer_addr,
    })
}
