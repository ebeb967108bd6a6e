//! Shared by the JSON Lines examples the differential tests drive
//! (`tests/differential/`): hex decoding and the stdin-to-stdout loop.
//! Each example uses part of it, hence `allow(dead_code)`.
#![allow(dead_code)]

use std::io::{BufRead, Write};

use serde_json::{json, Value};

/// Bytes from lowercase or uppercase hex; `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The bytes of an input line `{"hex": "<bytes>"}`, or the `input_error`
/// answer for a line that is not one.
pub fn hex_input(line: &str) -> Result<Vec<u8>, Value> {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("hex").and_then(Value::as_str).and_then(unhex))
        .ok_or_else(|| json!({ "input_error": "expected {\"hex\": \"…\"}" }))
}

/// Writes `answer(line)` for each non-blank line of stdin, one per line.
pub fn answer_lines(answer: impl Fn(&str) -> Value) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if !line.trim().is_empty() {
            writeln!(out, "{}", answer(&line))?;
        }
    }
    out.flush()
}
