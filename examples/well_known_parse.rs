//! fedpin's side of the well-known differential test
//! (`tests/differential/well_known.sh`): stdin JSON Lines `{"hex": "<body>"}`,
//! stdout `{"ok": "<m.server, canonical>"}` or `{"refused": reason}` per line:
//! the delegation fedpin's outbound watch reads from a
//! `/.well-known/matrix/server` body.

use std::io::{BufRead, Write};

use serde_json::{json, Value};

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn answer(line: &str) -> Value {
    let Some(body) = serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("hex").and_then(Value::as_str).and_then(unhex))
    else {
        return json!({ "input_error": "expected {\"hex\": \"…\"}" });
    };
    match fedpin::discovery::parse_well_known(&body) {
        Ok(name) => json!({ "ok": name.to_string() }),
        Err(e) => json!({ "refused": e.to_string() }),
    }
}

fn main() -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if !line.trim().is_empty() {
            writeln!(out, "{}", answer(&line))?;
        }
    }
    out.flush()
}
