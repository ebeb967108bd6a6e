//! fedpin's side of the request-signature differential test
//! (`tests/differential/signing.sh`): stdin JSON Lines `{"method", "uri",
//! "origin", "destination", "content_hex", "key_id", "public_key", "sig"}`,
//! stdout `{"ok": true}` or `{"refused": reason}` per line.

mod support;

use fedpin::matrix::signing::{SignedRequest, VerifyKey};
use serde_json::{json, Value};

fn answer(line: &str) -> Value {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return json!({ "input_error": "not JSON" });
    };
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let body = match v.get("content_hex").and_then(Value::as_str) {
        Some(h) => match support::unhex(h) {
            Some(b) => b,
            None => return json!({ "input_error": "content_hex is not hex" }),
        },
        None => Vec::new(),
    };
    let key = match VerifyKey::from_base64(&s("key_id"), &s("public_key")) {
        Ok(k) => k,
        Err(e) => return json!({ "refused": e.to_string() }),
    };
    let (method, uri, origin, destination) = (s("method"), s("uri"), s("origin"), s("destination"));
    // The edge reads the origin from the X-Matrix header, which accepts only
    // a server name in canonical form (proxy::xmatrix).
    if origin
        .parse::<fedpin::discovery::ServerName>()
        .map(|n| n.to_string())
        .ok()
        .as_deref()
        != Some(origin.as_str())
    {
        return json!({ "refused": "the origin is not a server name in canonical form" });
    }
    let req = SignedRequest {
        method: &method,
        uri: &uri,
        origin: &origin,
        destination: &destination,
        body: &body,
    };
    match req.verify(&key, &s("sig")) {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "refused": e.to_string() }),
    }
}

fn main() -> std::io::Result<()> {
    support::answer_lines(answer)
}
