//! TLS policy: the crypto provider (ring only) and rustls configs per pin generation.

pub mod ca;
pub mod certs;
pub mod mint;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::ClientConfig;

use crate::pin_store::PinStore;
use crate::verify::{ConnState, PeerContext, PinnedServerVerifier, Verdict, VerifierCore};

/// The one crypto provider fedpin uses: *ring*.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Upstream (client-side) TLS with pinned verification.
///
/// Keeps one base `ClientConfig` per pin generation, with one shared
/// [`PinnedServerVerifier`] and its own session store. rustls resumes a
/// session only with the verifier object that verified it, and a new
/// generation starts with a new verifier and an empty store, so a session
/// resumed after a reload cannot skip the new set's checks; within a
/// generation, sessions resume. Per-connection context (for alerts and error
/// pages) travels in a [`ConnState`] scoped around the handshake.
pub struct UpstreamTls {
    core: Arc<VerifierCore>,
    store: Arc<PinStore>,
    provider: Arc<CryptoProvider>,
    client_auth: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        Arc<rustls::pki_types::PrivateKeyDer<'static>>,
    )>,
    current: ArcSwapOption<Generation>,
    session_cache_size: usize,
}

struct Generation {
    generation: u64,
    base: Arc<ClientConfig>,
    verifier: Arc<PinnedServerVerifier>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

/// One connection's TLS client settings.
pub struct Connector {
    /// The config to hand to tokio-rustls (drive the handshake with
    /// [`Connector::connect`], or inside `state.scope(..)`).
    pub config: Arc<ClientConfig>,
    /// The generation's shared verifier.
    pub verifier: Arc<PinnedServerVerifier>,
    /// This connection's context and check record.
    pub state: Arc<ConnState>,
}

impl Connector {
    /// Runs the TLS handshake over `io` with this connection's context.
    pub async fn connect<IO>(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        io: IO,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        self.state.scope(connector.connect(name, io)).await
    }

    /// What the certificate check decided (None when the session resumed or
    /// the handshake failed before the check).
    pub fn record(&self) -> Option<Verdict> {
        self.state.record()
    }

    /// The pin generation this connection is checked against.
    pub fn generation(&self) -> u64 {
        self.verifier.generation()
    }
}

impl UpstreamTls {
    /// Builds upstream TLS over a verifier core and a pin store.
    pub fn new(
        core: Arc<VerifierCore>,
        store: Arc<PinStore>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        UpstreamTls {
            core,
            store,
            provider,
            client_auth: None,
            current: ArcSwapOption::empty(),
            session_cache_size: 1024,
        }
    }

    /// Presents this client certificate upstream (mutual pinned TLS between fedpins).
    pub fn with_client_auth(
        mut self,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Self {
        self.client_auth = Some((chain, Arc::new(key)));
        self
    }

    /// The verifier core.
    pub fn core(&self) -> &Arc<VerifierCore> {
        &self.core
    }

    /// The pin store.
    pub fn store(&self) -> &Arc<PinStore> {
        &self.store
    }

    fn generation_for(
        &self,
        pins: &Arc<crate::pins::PinSet>,
    ) -> Result<Arc<Generation>, rustls::Error> {
        if let Some(g) = self.current.load_full() {
            if g.generation == pins.generation {
                return Ok(g);
            }
        }
        let verifier = Arc::new(PinnedServerVerifier::new(
            self.core.clone(),
            pins.clone(),
            PeerContext::default(),
        ));
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let mut config = match &self.client_auth {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
        };
        config.resumption = Resumption::in_memory_sessions(self.session_cache_size);
        let generation = Arc::new(Generation {
            generation: pins.generation,
            base: Arc::new(config),
            verifier,
        });
        // Publish only if no newer generation got there first.
        self.current.rcu(|cur| match cur {
            Some(c) if c.generation > generation.generation => Some(c.clone()),
            _ => Some(generation.clone()),
        });
        Ok(generation)
    }

    /// A config for one upstream connection under the current pin generation.
    pub fn connector(
        &self,
        ctx: PeerContext,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Connector, rustls::Error> {
        let pins = self.store.current();
        let g = self.generation_for(&pins)?;
        let mut config = (*g.base).clone();
        config.alpn_protocols = alpn;
        Ok(Connector {
            config: Arc::new(config),
            verifier: g.verifier.clone(),
            state: ConnState::new(ctx),
        })
    }
}

/// Errors reading PEM material.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read or parsed.
    #[error("{path}: {message}")]
    Bad {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Reads every certificate from a PEM file (at least one).
pub fn load_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PemError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |message: String| PemError::Bad {
        path: path.display().to_string(),
        message,
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("malformed PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads one private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(
    path: &std::path::Path,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, PemError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path).map_err(|e| PemError::Bad {
        path: path.display().to_string(),
        message: format!("cannot read a private key: {e}"),
    })
}
