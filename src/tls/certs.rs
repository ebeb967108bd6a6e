//! The inbound server certificate, reloaded without a restart when its files
//! change (certbot renewals). A new pair that is broken, or whose key does not
//! match the certificate, is refused and the old pair stays in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::alert::{AlertHub, Direction, MaterialWatch};

/// Errors loading a certificate pair.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertError(pub String);

/// The current certificate pair, swapped atomically.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    fingerprint: ArcSwap<[u8; 32]>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Alerts once per failure, not per re-check.
    failing: MaterialWatch,
    alerts: Option<AlertHub>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// Which file of a certificate pair a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    /// The certificate chain.
    Cert,
    /// The private key.
    Key,
}

/// A certificate pair that cannot be used, naming the file at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PairError {
    /// The file the problem is in (a key that does not match its
    /// certificate is the key's problem).
    pub file: PairFile,
    /// One sentence, naming the file's path.
    pub message: String,
}

/// A certificate chain and the private key that belongs to it.
pub struct CertPair {
    /// The private key as read (rustls' client configs take it as DER).
    pub key_der: rustls::pki_types::PrivateKeyDer<'static>,
    /// The chain with the key loaded for signing; `keys_match` passed.
    pub certified: CertifiedKey,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("chain_len", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

/// Reads a PEM certificate chain and its PEM private key and checks that the
/// key is usable and belongs to the first certificate.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertPair, PairError> {
    let chain = crate::tls::load_certs(cert).map_err(|e| PairError {
        file: PairFile::Cert,
        message: e.to_string(),
    })?;
    let key_der = crate::tls::load_key(key).map_err(|e| PairError {
        file: PairFile::Key,
        message: e.to_string(),
    })?;
    let provider = crate::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| PairError {
            file: PairFile::Key,
            message: format!("{}: unusable private key: {e}", key.display()),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| PairError {
        file: PairFile::Key,
        message: format!(
            "{} does not match the certificate in {} ({e})",
            key.display(),
            cert.display()
        ),
    })?;
    Ok(CertPair { key_der, certified })
}

fn fingerprint(ck: &CertifiedKey) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for c in &ck.cert {
        ctx.update(c.as_ref());
    }
    let mut fp = [0u8; 32];
    fp.copy_from_slice(ctx.finish().as_ref());
    fp
}

fn load(cert: &Path, key: &Path) -> Result<(CertifiedKey, [u8; 32]), CertError> {
    let ck = load_pair(cert, key)
        .map_err(|e| CertError(e.message))?
        .certified;
    let fp = fingerprint(&ck);
    Ok((ck, fp))
}

impl CertStore {
    /// Loads the pair; the first load must succeed.
    pub fn open(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let (ck, fp) = load(cert, key)?;
        Ok(Self::with_current(cert, key, ck, fp))
    }

    /// A store serving `pair`, already loaded (by [`load_pair`]) from
    /// `cert` and `key`, the files it re-reads on [`CertStore::reload`].
    pub fn from_pair(cert: &Path, key: &Path, pair: CertPair) -> Self {
        let fp = fingerprint(&pair.certified);
        Self::with_current(cert, key, pair.certified, fp)
    }

    fn with_current(cert: &Path, key: &Path, ck: CertifiedKey, fp: [u8; 32]) -> Self {
        CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(ck),
            fingerprint: ArcSwap::from_pointee(fp),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            failing: MaterialWatch::default(),
            alerts: None,
        }
    }

    /// Raises a `cert_reload_failed` alert (direction inbound) when the files
    /// become unreadable or invalid.
    pub fn with_alerts(mut self, alerts: AlertHub) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// The pair in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Successful and failed reloads.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Re-reads both files; swaps only a good, matching, changed pair.
    /// Returns whether a new pair is in force.
    pub fn reload(&self) -> Result<bool, CertError> {
        match load(&self.cert, &self.key) {
            Ok((ck, fp)) => {
                if self.failing.recovered() {
                    tracing::info!(target: "fedpin::inbound", cert = %self.cert.display(), "server certificate files are usable again");
                }
                if **self.fingerprint.load() == fp {
                    return Ok(false);
                }
                self.current.store(Arc::new(ck));
                self.fingerprint.store(Arc::new(fp));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "fedpin::inbound", cert = %self.cert.display(), "server certificate reloaded");
                Ok(true)
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "fedpin::inbound", error = %e, "new server certificate refused; the previous one stays in force");
                self.failing.failed(self.alerts.as_ref(), Direction::Inbound, || {
                    format!("server certificate files refused, the certificate loaded before stays in use: {e}")
                });
                Err(e)
            }
        }
    }

    /// The watched files.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

/// Serves the current pair to every handshake.
#[derive(Debug)]
pub struct CurrentCert(pub Arc<CertStore>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}
