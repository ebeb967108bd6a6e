//! X-Matrix request signatures: the JSON Synapse signs and checks
//! (`Authenticator.authenticate_request`), verified with ring's ed25519.
//!
//! The signed object is `{"method", "uri", "origin", "destination",
//! "content"?}`: the request method, the request target exactly as sent
//! (path and query, undecoded), the origin and destination server names, and
//! for `PUT` and `POST` only the body parsed as a JSON object. It is encoded
//! as canonical JSON ([`super::canonical_json`]) and the `sig` parameter of the
//! X-Matrix header must be an ed25519 signature over it by the key `key`.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::canonical_json::{self, Json};

/// Encodings of the Edwards points of small order, as libsodium lists them
/// (the top bit, the sign of x, is ignored when comparing). libsodium (and
/// so Synapse, through PyNaCl) refuses a public key or a signature `R` that
/// is one of these; ring does not, so fedpin checks them itself, and the
/// differential test compares the two.
#[rustfmt::skip]
const SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05],
    [0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a],
    [0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    [0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    [0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
];

/// libsodium's `ge25519_has_small_order`.
fn has_small_order(p: &[u8]) -> bool {
    p.len() == 32
        && SMALL_ORDER
            .iter()
            .any(|b| b[..31] == p[..31] && (p[31] & 0x7f) == b[31])
}

/// libsodium's `ge25519_is_canonical`: the encoded y is below 2^255 - 19.
fn is_canonical_point(p: &[u8; 32]) -> bool {
    !(p[31] & 0x7f == 0x7f && p[1..31].iter().all(|b| *b == 0xff) && p[0] >= 0xed)
}

/// An ed25519 public key of a Matrix server, by key ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerifyKey {
    /// The key ID, e.g. `ed25519:a_AbCd`.
    pub id: String,
    /// The 32-byte public key.
    pub key: [u8; 32],
}

impl VerifyKey {
    /// A key from its ID and unpadded (or padded) standard base64.
    pub fn from_base64(id: &str, b64: &str) -> Result<Self, SignatureError> {
        if !id.starts_with("ed25519:") || id.len() <= "ed25519:".len() {
            return Err(SignatureError::UnsupportedKey(id.to_owned()));
        }
        let bytes = decode_base64(b64).ok_or(SignatureError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SignatureError::BadKey)?;
        if !is_canonical_point(&key) || has_small_order(&key) {
            return Err(SignatureError::BadKey);
        }
        Ok(VerifyKey {
            id: id.to_owned(),
            key,
        })
    }

    /// The key as unpadded standard base64 (Matrix's form).
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.key)
    }

    /// Verifies `sig` (base64) over `message`.
    pub fn verify(&self, message: &[u8], sig: &str) -> Result<(), SignatureError> {
        let sig = decode_base64(sig).ok_or(SignatureError::BadSignatureEncoding)?;
        if sig.len() != 64 || has_small_order(&sig[..32]) || has_small_order(&self.key) {
            return Err(SignatureError::Invalid);
        }
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.key)
            .verify(message, &sig)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key algorithm is not ed25519.
    #[error("key {0} is not an ed25519 key")]
    UnsupportedKey(String),
    /// The public key is not 32 bytes of base64, or not a usable point.
    #[error("the public key is not a usable ed25519 key")]
    BadKey,
    /// The method or URI is not ASCII (Synapse reads them as ASCII).
    #[error("the request line is not ASCII")]
    NotAscii,
    /// The signature is not base64.
    #[error("the signature is not base64")]
    BadSignatureEncoding,
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Invalid,
    /// The body of a PUT/POST is not a JSON object Synapse would accept.
    #[error("the request body is not a JSON object: {0}")]
    Body(String),
    /// The signed JSON has no canonical encoding here.
    #[error("{0}")]
    Canonical(#[from] canonical_json::CanonicalError),
}

/// Standard base64, padded or not (Matrix writes it unpadded).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// One request as the edge saw it.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// `GET`, `PUT`, …
    pub method: &'a str,
    /// The request target as sent: path and query.
    pub uri: &'a str,
    /// The X-Matrix origin.
    pub origin: &'a str,
    /// This server's name (the X-Matrix destination, or the configured name).
    pub destination: &'a str,
    /// The body bytes (ignored unless the method is PUT or POST).
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    /// The canonical JSON the origin signed.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, SignatureError> {
        if !self.method.is_ascii() || !self.uri.is_ascii() {
            return Err(SignatureError::NotAscii);
        }
        let mut obj = BTreeMap::new();
        obj.insert("method".into(), Json::Str(self.method.to_owned()));
        obj.insert("uri".into(), Json::Str(self.uri.to_owned()));
        obj.insert("origin".into(), Json::Str(self.origin.to_owned()));
        obj.insert("destination".into(), Json::Str(self.destination.to_owned()));
        if self.method == "PUT" || self.method == "POST" {
            let content = canonical_json::parse(self.body)
                .map_err(|e| SignatureError::Body(e.to_string()))?;
            if !content.is_object() {
                return Err(SignatureError::Body("not an object".into()));
            }
            obj.insert("content".into(), content);
        }
        Ok(canonical_json::encode(&Json::Object(obj))?.into_bytes())
    }

    /// Verifies the X-Matrix `sig` made with `key`.
    pub fn verify(&self, key: &VerifyKey, sig: &str) -> Result<(), SignatureError> {
        key.verify(&self.signed_bytes()?, sig)
    }
}

/// Verifies a signed JSON object (a key response, a notary answer) as
/// `signedjson.verify_signed_json` does: drop `signatures` and `unsigned`,
/// encode canonically, check `signatures[server][key.id]`.
pub fn verify_json(value: &Json, server: &str, key: &VerifyKey) -> Result<(), SignatureError> {
    let Json::Object(obj) = value else {
        return Err(SignatureError::Invalid);
    };
    let sig = match obj.get("signatures") {
        Some(Json::Object(s)) => match s.get(server) {
            Some(Json::Object(by_key)) => match by_key.get(&key.id) {
                Some(Json::Str(sig)) => sig.clone(),
                _ => return Err(SignatureError::Invalid),
            },
            _ => return Err(SignatureError::Invalid),
        },
        _ => return Err(SignatureError::Invalid),
    };
    let mut stripped = obj.clone();
    stripped.remove("signatures");
    stripped.remove("unsigned");
    key.verify(
        canonical_json::encode(&Json::Object(stripped))?.as_bytes(),
        &sig,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;

    #[test]
    fn small_order_and_non_canonical_keys_are_refused_like_libsodium() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(b);
        for bad in &SMALL_ORDER {
            assert_eq!(
                VerifyKey::from_base64("ed25519:k", &b64(bad)),
                Err(SignatureError::BadKey)
            );
            let mut high = *bad;
            high[31] |= 0x80;
            assert_eq!(
                VerifyKey::from_base64("ed25519:k", &b64(&high)),
                Err(SignatureError::BadKey)
            );
        }
        // The identity key with sig = identity || 0 "verifies" any message
        // under plain RFC 8032 checks; here it is refused.
        let (_, key) = keypair(1);
        let mut sig = [0u8; 64];
        sig[0] = 1;
        assert_eq!(
            key.verify(b"anything", &b64(&sig)),
            Err(SignatureError::Invalid)
        );
    }

    fn keypair(seed: u8) -> (ring::signature::Ed25519KeyPair, VerifyKey) {
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let mut key = [0u8; 32];
        key.copy_from_slice(kp.public_key().as_ref());
        (
            kp,
            VerifyKey {
                id: "ed25519:k".into(),
                key,
            },
        )
    }

    fn sign(kp: &ring::signature::Ed25519KeyPair, req: &SignedRequest<'_>) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(kp.sign(&req.signed_bytes().unwrap()))
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_does_not() {
        let (kp, key) = keypair(1);
        let req = SignedRequest {
            method: "PUT",
            uri: "/_matrix/federation/v1/send/1",
            origin: "a.example",
            destination: "b.example",
            body: br#"{"pdus": [], "origin": "a.example"}"#,
        };
        let sig = sign(&kp, &req);
        req.verify(&key, &sig).unwrap();
        // Another spelling of the same JSON body verifies.
        let same = SignedRequest {
            body: b"{ \"origin\" : \"a.example\", \"pdus\":[] }",
            ..req
        };
        same.verify(&key, &sig).unwrap();
        // Padding is tolerated.
        req.verify(&key, &format!("{sig}=")).unwrap();
        for changed in [
            SignedRequest {
                origin: "c.example",
                ..req
            },
            SignedRequest {
                destination: "c.example",
                ..req
            },
            SignedRequest {
                uri: "/_matrix/federation/v1/send/2",
                ..req
            },
            SignedRequest {
                method: "POST",
                ..req
            },
            SignedRequest {
                body: br#"{"pdus": [1]}"#,
                ..req
            },
        ] {
            assert_eq!(changed.verify(&key, &sig), Err(SignatureError::Invalid));
        }
        let (_, other) = keypair(2);
        assert_eq!(req.verify(&other, &sig), Err(SignatureError::Invalid));
        // GET bodies are not signed.
        let get = SignedRequest {
            method: "GET",
            body: b"ignored",
            ..req
        };
        let gsig = sign(&kp, &get);
        SignedRequest { body: b"", ..get }
            .verify(&key, &gsig)
            .unwrap();
        // PUT needs a JSON object.
        assert!(matches!(
            SignedRequest {
                body: b"[1]",
                ..req
            }
            .verify(&key, &sig),
            Err(SignatureError::Body(_))
        ));
    }
}
