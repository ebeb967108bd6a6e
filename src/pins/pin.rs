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
        // Canonical form only, so that one key has one spelling: the
        // `STANDARD` engine rejects padding other than the canonical and
        // non-zero trailing bits (its defaults), so 44 characters that
        // decode to 32 bytes are exactly what `Display` prints (the tests
        // and the fuzz target check the round trip).
        let pin = Pin(digest[..32]
            .try_into()
            .map_err(|_| PinParseError::BadBase64)?);
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
        // 44 characters, but not the canonical spelling: trailing bits
        // set in the character before the `=` (each of the three unused
        // bits' patterns), or no padding.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for seed in 0u8..20 {
            let good = Pin::of_spki(&[seed]).to_string();
            let last = good.len() - 2;
            let at = ALPHABET.iter().position(|c| *c == good.as_bytes()[last]);
            let idx = at.expect("a base64 character");
            assert_eq!(idx % 4, 0, "{good}: canonical trailing bits are zero");
            for bits in 1..4 {
                let mut tweaked = good.clone().into_bytes();
                tweaked[last] = ALPHABET[idx | bits];
                let tweaked = String::from_utf8(tweaked).expect("ascii");
                assert_eq!(tweaked.parse::<Pin>(), Err(PinParseError::BadBase64));
            }
            let unpadded = format!("{}A", &good[..good.len() - 1]);
            assert_eq!(unpadded.parse::<Pin>(), Err(PinParseError::BadBase64));
            assert_eq!(good.parse::<Pin>().map(|p| p.to_string()), Ok(good));
        }
    }
}
