//! Leaf certificates minted by the interception CA for the inner TLS
//! handshake with the homeserver, cached per name in a bounded LRU so a
//! repeat connection costs no signing.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::alert::{AlertHub, Direction, MaterialWatch};

/// How long a minted leaf is valid.
pub const LEAF_VALIDITY: time::Duration = time::Duration::hours(24);
/// Re-mint a cached leaf when less than this is left.
const REMINT_MARGIN: time::Duration = time::Duration::hours(1);

/// Errors loading the CA or minting.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The CA files could not be read or used.
    #[error("interception CA: {0}")]
    Ca(String),
    /// A leaf could not be minted.
    #[error("cannot mint a certificate for {name}: {reason}")]
    Mint {
        /// The name.
        name: String,
        /// What went wrong, in words for the operator.
        reason: String,
    },
}

/// Which file of the interception CA a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaFile {
    /// The CA certificate (`outbound.ca_cert`).
    Cert,
    /// The CA key (`outbound.ca_key`).
    Key,
}

/// An interception CA file that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CaFileError {
    /// The file at fault.
    pub file: CaFile,
    /// One sentence, naming the file's path.
    pub message: String,
}

struct Cached {
    key: Arc<CertifiedKey>,
    not_after: OffsetDateTime,
}

/// Mints and caches leaves signed by the interception CA.
pub struct LeafMinter {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    cache: Mutex<LruCache<String, Cached>>,
    /// Alerts once per failure of the CA files on disk.
    files_failing: MaterialWatch,
    /// Whether a different CA on disk was already reported.
    files_differ: AtomicBool,
}

impl std::fmt::Debug for LeafMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafMinter").finish_non_exhaustive()
    }
}

impl LeafMinter {
    /// Loads the CA from PEM files, refusing a key readable by group or others.
    pub fn from_files(cert: &Path, key: &Path, cache_size: usize) -> Result<Self, MintError> {
        Self::load(cert, key, cache_size).map_err(|e| MintError::Ca(e.message))
    }

    /// Loads and checks the CA from PEM files, naming the file at fault: the
    /// key's mode (not readable by group or others), both files readable and
    /// PEM, the certificate a CA certificate, and the key its key.
    pub fn load(cert: &Path, key: &Path, cache_size: usize) -> Result<Self, CaFileError> {
        let fail = |file: CaFile, message: String| CaFileError { file, message };
        crate::tls::ca::check_key_mode(key).map_err(|m| fail(CaFile::Key, m))?;
        let cert_pem = std::fs::read_to_string(cert)
            .map_err(|e| fail(CaFile::Cert, format!("{}: {e}", cert.display())))?;
        let key_pem = std::fs::read_to_string(key)
            .map_err(|e| fail(CaFile::Key, format!("{}: {e}", key.display())))?;
        Self::build(&cert_pem, &key_pem, cache_size).map_err(|(file, m)| {
            let path = match file {
                CaFile::Cert => cert,
                CaFile::Key => key,
            };
            fail(file, format!("{}: {m}", path.display()))
        })
    }

    /// Builds a minter from PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str, cache_size: usize) -> Result<Self, MintError> {
        Self::build(cert_pem, key_pem, cache_size).map_err(|(file, m)| {
            MintError::Ca(match file {
                CaFile::Cert => format!("CA certificate: {m}"),
                CaFile::Key => format!("CA key: {m}"),
            })
        })
    }

    fn build(cert_pem: &str, key_pem: &str, cache_size: usize) -> Result<Self, (CaFile, String)> {
        use rustls::pki_types::pem::PemObject;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| (CaFile::Key, format!("not a usable private key: {e}")))?;
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| (CaFile::Cert, format!("no PEM certificate: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(ca_der.as_ref())
            .map_err(|e| (CaFile::Cert, format!("not an X.509 certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err((
                CaFile::Cert,
                "not a CA certificate (no basicConstraints CA:TRUE), so it cannot sign the leaves it would mint".into(),
            ));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err((
                CaFile::Key,
                "is not the key of the CA certificate (their public keys differ)".into(),
            ));
        }
        let issuer =
            Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| (CaFile::Cert, e.to_string()))?;
        Ok(LeafMinter {
            issuer,
            ca_der,
            provider: crate::tls::provider(),
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_size.max(1)).unwrap_or(NonZeroUsize::MIN),
            )),
            files_failing: MaterialWatch::default(),
            files_differ: AtomicBool::new(false),
        })
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// Re-checks the CA files at run time (called by the daemon's watcher).
    /// The CA in memory always stays in use: files that became unreadable or
    /// invalid raise a `cert_reload_failed` alert (once per failure) and
    /// change nothing; a different, valid CA on disk is logged, and applies
    /// at the next start, because Synapse must be given the new certificate
    /// in `federation_custom_ca_list` at the same time.
    pub fn recheck_files(&self, cert: &Path, key: &Path, alerts: &AlertHub) {
        match Self::from_files(cert, key, 1) {
            Ok(on_disk) => {
                if self.files_failing.recovered() {
                    tracing::info!(target: "fedpin::outbound", ca_cert = %cert.display(), "interception CA files are usable again");
                }
                let differs = on_disk.ca_der != self.ca_der;
                if differs && !self.files_differ.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "fedpin::outbound", ca_cert = %cert.display(), "the interception CA on disk changed; the CA loaded at start stays in use until fedpin restarts");
                } else if !differs {
                    self.files_differ.store(false, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::error!(target: "fedpin::outbound", error = %e, "interception CA files refused; the CA loaded at start stays in use");
                self.files_failing
                    .failed(Some(alerts), Direction::Outbound, || {
                        format!("{e}; the CA loaded at start stays in use")
                    });
            }
        }
    }

    /// A leaf for `name` (DNS name or IP literal), from the cache when still fresh.
    pub fn leaf_for(&self, name: &str) -> Result<Arc<CertifiedKey>, MintError> {
        let now = OffsetDateTime::now_utc();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(name) {
                if c.not_after - now > REMINT_MARGIN {
                    return Ok(c.key.clone());
                }
            }
        }
        let (key, not_after) = self.mint(name, now)?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(
            name.to_string(),
            Cached {
                key: key.clone(),
                not_after,
            },
        );
        Ok(key)
    }

    fn mint(
        &self,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<(Arc<CertifiedKey>, OffsetDateTime), MintError> {
        let err = |reason: String| MintError::Mint {
            name: name.to_string(),
            reason,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| err(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.to_string()
                    .try_into()
                    .map_err(|e: rcgen::Error| err(e.to_string()))?,
            ),
        }];
        let serial: [u8; 16] = {
            let mut s = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s)
                .map_err(|_| err("no randomness for the serial".into()))?;
            s[0] &= 0x7f;
            s
        };
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = now - time::Duration::minutes(5);
        let not_after = now + LEAF_VALIDITY;
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| err(e.to_string()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = self
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| err(e.to_string()))?;
        let ck = CertifiedKey::new(vec![cert.der().clone(), self.ca_der.clone()], signing);
        Ok((Arc::new(ck), not_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minter() -> LeafMinter {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        LeafMinter::from_pem(&cert.pem(), &key.serialize_pem(), 2).unwrap()
    }

    #[test]
    fn caches_and_mints_random_serials() {
        let m = minter();
        let a = m.leaf_for("a.example").unwrap();
        let a2 = m.leaf_for("a.example").unwrap();
        assert!(Arc::ptr_eq(&a, &a2), "a repeat costs no signing");
        let b = m.leaf_for("b.example").unwrap();
        let ip = m.leaf_for("127.0.0.1").unwrap();
        let serial = |k: &CertifiedKey| {
            let (_, c) = x509_parser::parse_x509_certificate(k.cert[0].as_ref()).unwrap();
            c.serial.clone()
        };
        assert_ne!(serial(&a), serial(&b));
        // Bounded: capacity 2, so "a" was evicted and is minted afresh.
        let _ = ip;
        let a3 = m.leaf_for("a.example").unwrap();
        assert!(!Arc::ptr_eq(&a, &a3));
    }
}
