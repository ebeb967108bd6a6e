//! The `sha256/…` pin type: base64(SHA-256(DER SubjectPublicKeyInfo)).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The prefix every pin carries.
pub const PIN_PREFIX: &str = "sha256/";

/// A public-key pin: the SHA-256 digest of a DER-encoded `SubjectPublicKeyInfo`.
///
/// Written as `sha256/` followed by 44 characters of standard, padded base64
/// (the HPKP / `curl --pinnedpubkey` form).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of a DER-encoded `SubjectPublicKeyInfo` (outer `SEQUENCE` included).
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Pin(out)
    }

    /// Builds a pin from raw digest bytes.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Pin(digest)
    }

    /// The raw SHA-256 digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PIN_PREFIX}{}", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a pin string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinParseError {
    /// The string does not start with `sha256/`.
    #[error("pin must start with \"sha256/\" (only SHA-256 SPKI pins are supported)")]
    MissingPrefix,
    /// The base64 part is not 44 characters.
    #[error("pin must have 44 base64 characters after \"sha256/\", found {0}")]
    BadLength(usize),
    /// The base64 part does not decode to exactly 32 bytes in canonical form.
    #[error("pin is not valid padded base64 of a 32-byte SHA-256 digest")]
    BadBase64,
}

impl FromStr for Pin {
    type Err = PinParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s
            .strip_prefix(PIN_PREFIX)
            .ok_or(PinParseError::MissingPrefix)?;
        if b64.len() != 44 {
            return Err(PinParseError::BadLength(b64.chars().count()));
        }
        // 44 padded base64 characters hold at most 33 bytes; exactly 32 are wanted.
        let mut digest = [0u8; 33];
        let n = STANDARD
            .decode_slice(b64, &mut digest)
            .map_err(|_| PinParseError::BadBase64)?;
        if n != 32 {
            return Err(PinParseError::BadBase64);
        }
        let pin = Pin(digest[..32]
            .try_into()
            .map_err(|_| PinParseError::BadBase64)?);
        // Canonical form only: the string must be exactly what we would print
        // (re-encoded on the stack: a 10,000-peer file has 20,000 pins).
        let mut canonical = [0u8; 44];
        let written = STANDARD
            .encode_slice(pin.0, &mut canonical)
            .map_err(|_| PinParseError::BadBase64)?;
        if canonical[..written] != *b64.as_bytes() {
            return Err(PinParseError::BadBase64);
        }
        Ok(pin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let pin = Pin::of_spki(b"example");
        let text = pin.to_string();
        assert!(text.starts_with("sha256/"));
        assert_eq!(text.len(), 7 + 44);
        assert_eq!(text.parse::<Pin>().unwrap(), pin);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!("sha1/abc".parse::<Pin>(), Err(PinParseError::MissingPrefix));
        assert_eq!(
            "sha256/abc".parse::<Pin>(),
            Err(PinParseError::BadLength(3))
        );
        let bad = format!("sha256/{}", "!".repeat(44));
        assert_eq!(bad.parse::<Pin>(), Err(PinParseError::BadBase64));
        // 44 chars but non-canonical trailing bits.
        let good = Pin::of_spki(b"x").to_string();
        let mut chars: Vec<char> = good.chars().collect();
        let last = chars.len() - 2; // the char before '='
        chars[last] = if chars[last] == 'B' { 'C' } else { 'B' };
        let tweaked: String = chars.into_iter().collect();
        assert!(
            tweaked.parse::<Pin>().is_err()
                || tweaked.parse::<Pin>().unwrap().to_string() == tweaked
        );
    }
}
