//! SPKI extraction: pins of certificates and public keys (x509-parser for
//! parsing only; hashing is SHA-256 from ring).

use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::pins::Pin;

/// The pin of a DER certificate's SubjectPublicKeyInfo, or `None` if it does not parse.
pub fn spki_of_der(cert_der: &[u8]) -> Option<Pin> {
    x509_parser::parse_x509_certificate(cert_der)
        .ok()
        .map(|(_, c)| Pin::of_spki(c.public_key().raw))
}

/// The pin of a DER certificate's key, with a located error.
pub fn leaf_pin(cert_der: &[u8]) -> Result<Pin, PemPinError> {
    spki_of_der(cert_der).ok_or_else(|| PemPinError::Unparseable {
        item: 0,
        what: "certificate".into(),
    })
}

/// The DNS names in a certificate's subjectAltName, lowercased.
pub fn dns_sans(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Errors reading certificates or keys for hashing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemPinError {
    /// No certificate or public key was found.
    #[error(
        "no certificate or public key found (expected PEM CERTIFICATE / PUBLIC KEY blocks, or DER)"
    )]
    Empty,
    /// A block could not be parsed.
    #[error("item {item}: the {what} cannot be parsed")]
    Unparseable {
        /// 1-based index of the PEM block.
        item: usize,
        /// What kind of block.
        what: String,
    },
    /// A PEM block of a kind we do not hash.
    #[error("item {item}: PEM block \"{label}\" is neither a CERTIFICATE nor a PUBLIC KEY")]
    UnsupportedLabel {
        /// 1-based index.
        item: usize,
        /// The label.
        label: String,
    },
    /// Broken PEM armour.
    #[error("item {item}: malformed PEM ({reason})")]
    BadPem {
        /// 1-based index.
        item: usize,
        /// What went wrong, in words for the operator.
        reason: String,
    },
}

/// One hashed item: what it is, and its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedItem {
    /// Subject DN for certificates, "public key" for bare keys.
    pub label: String,
    /// The pin.
    pub pin: Pin,
}

/// Pins of every certificate and public key in PEM text or one DER item.
pub fn pins_of_pem_or_der(bytes: &[u8]) -> Result<Vec<HashedItem>, PemPinError> {
    let looks_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if !looks_pem {
        if let Ok((rest, cert)) = x509_parser::parse_x509_certificate(bytes) {
            if rest.is_empty() {
                return Ok(vec![HashedItem {
                    label: cert.subject().to_string(),
                    pin: Pin::of_spki(cert.public_key().raw),
                }]);
            }
        }
        if let Ok((rest, spki)) = SubjectPublicKeyInfo::from_der(bytes) {
            if rest.is_empty() {
                return Ok(vec![HashedItem {
                    label: "public key".into(),
                    pin: Pin::of_spki(spki.raw),
                }]);
            }
        }
        return Err(PemPinError::Empty);
    }
    let mut out = Vec::new();
    for (i, pem) in Pem::iter_from_buffer(bytes).enumerate() {
        let item = i + 1;
        let pem = pem.map_err(|e| PemPinError::BadPem {
            item,
            reason: e.to_string(),
        })?;
        match pem.label.as_str() {
            "CERTIFICATE" | "TRUSTED CERTIFICATE" => {
                let (_, cert) =
                    x509_parser::parse_x509_certificate(&pem.contents).map_err(|_| {
                        PemPinError::Unparseable {
                            item,
                            what: "certificate".into(),
                        }
                    })?;
                out.push(HashedItem {
                    label: cert.subject().to_string(),
                    pin: Pin::of_spki(cert.public_key().raw),
                });
            }
            "PUBLIC KEY" => {
                let (_, spki) = SubjectPublicKeyInfo::from_der(&pem.contents).map_err(|_| {
                    PemPinError::Unparseable {
                        item,
                        what: "public key".into(),
                    }
                })?;
                out.push(HashedItem {
                    label: "public key".into(),
                    pin: Pin::of_spki(spki.raw),
                });
            }
            other => {
                return Err(PemPinError::UnsupportedLabel {
                    item,
                    label: other.to_string(),
                })
            }
        }
    }
    if out.is_empty() {
        return Err(PemPinError::Empty);
    }
    Ok(out)
}
