//! fedpin's side of the X-Matrix differential test (`tests/differential/`).
//!
//! Reads JSON Lines on stdin, each `{"headers": ["<hex>", …]}`: the raw bytes
//! of every `Authorization` header of one request, in order. Writes one line
//! per input: `{"ok": {"origin", "key", "sig", "destination"}}` when fedpin's
//! edge would accept the request's X-Matrix header, `{"refused": reason}`
//! when it refuses it, and `{"none": true}` when the request carries no
//! X-Matrix header (the edge treats it as unsigned).

mod support;

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};

fn answer(line: &str) -> Value {
    let input: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({ "input_error": e.to_string() }),
    };
    let Some(headers) = input.get("headers").and_then(Value::as_array) else {
        return json!({ "input_error": "no headers array" });
    };
    let mut map = HeaderMap::new();
    for h in headers {
        let Some(bytes) = h.as_str().and_then(support::unhex) else {
            return json!({ "input_error": "a header is not a hex string" });
        };
        // Bytes hyper's parser refuses on the wire never reach the edge.
        match HeaderValue::from_bytes(&bytes) {
            Ok(v) => map.append(AUTHORIZATION, v),
            Err(_) => return json!({ "refused": "not a valid HTTP header value" }),
        };
    }
    match fedpin::proxy::xmatrix::from_headers(&map) {
        Ok(Some(x)) => json!({ "ok": {
            "origin": x.origin,
            "key": x.key,
            "sig": x.sig,
            "destination": x.destination,
        }}),
        Ok(None) => json!({ "none": true }),
        Err(e) => json!({ "refused": e.to_string() }),
    }
}

fn main() -> std::io::Result<()> {
    support::answer_lines(answer)
}
