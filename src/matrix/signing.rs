//! X-Matrix request signatures: the JSON Synapse signs and checks
//! (`Authenticator.authenticate_request`), verified with ring's ed25519.
//!
//! The signed object is `{"method", "uri", "origin", "destination",
//! "content"?}`: the request method, the request target exactly as sent
//! (path and query, undecoded), the origin and destination server names, and
//! for `PUT` and `POST` only the body parsed as a JSON object. It is encoded
//! as canonical JSON ([`super::canonical_json`]) and the `sig` parameter of the
//! X-Matrix header must be an ed25519 signature over it by the key `key`.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::canonical_json;

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
    /// The public key is not 32 bytes of base64.
    #[error("the public key is not 32 bytes of base64")]
    BadKey,
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
        let mut obj = Map::new();
        obj.insert("method".into(), Value::String(self.method.to_owned()));
        obj.insert("uri".into(), Value::String(self.uri.to_owned()));
        obj.insert("origin".into(), Value::String(self.origin.to_owned()));
        obj.insert(
            "destination".into(),
            Value::String(self.destination.to_owned()),
        );
        if self.method == "PUT" || self.method == "POST" {
            let content = canonical_json::parse(self.body)
                .map_err(|e| SignatureError::Body(e.to_string()))?;
            if !content.is_object() {
                return Err(SignatureError::Body("not an object".into()));
            }
            obj.insert("content".into(), content);
        }
        Ok(canonical_json::encode(&Value::Object(obj))?.into_bytes())
    }

    /// Verifies the X-Matrix `sig` made with `key`.
    pub fn verify(&self, key: &VerifyKey, sig: &str) -> Result<(), SignatureError> {
        key.verify(&self.signed_bytes()?, sig)
    }
}

/// Verifies a signed JSON object (a key response, a notary answer) as
/// `signedjson.verify_signed_json` does: drop `signatures` and `unsigned`,
/// encode canonically, check `signatures[server][key.id]`.
pub fn verify_json(value: &Value, server: &str, key: &VerifyKey) -> Result<(), SignatureError> {
    let sig = value
        .get("signatures")
        .and_then(|s| s.get(server))
        .and_then(|s| s.get(&key.id))
        .and_then(Value::as_str)
        .ok_or(SignatureError::Invalid)?;
    let mut stripped = value.clone();
    if let Some(o) = stripped.as_object_mut() {
        o.remove("signatures");
        o.remove("unsigned");
    }
    key.verify(canonical_json::encode(&stripped)?.as_bytes(), sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;

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
