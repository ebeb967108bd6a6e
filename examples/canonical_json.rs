//! fedpin's side of the canonical JSON differential test
//! (`tests/differential/signing.sh`): stdin JSON Lines `{"hex": "<bytes>"}`,
//! stdout `{"ok": "<canonical JSON>"}` or `{"refused": reason}` per line.

mod support;

use serde_json::{json, Value};

fn answer(line: &str) -> Value {
    let bytes = match support::hex_input(line) {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    match fedpin::matrix::canonical_json::parse(&bytes)
        .and_then(|v| fedpin::matrix::canonical_json::encode(&v))
    {
        Ok(text) => json!({ "ok": text }),
        Err(e) => json!({ "refused": e.to_string() }),
    }
}

fn main() -> std::io::Result<()> {
    support::answer_lines(answer)
}
