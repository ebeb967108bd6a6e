//! fedpin's side of the well-known differential test
//! (`tests/differential/well_known.sh`): stdin JSON Lines `{"hex": "<body>"}`,
//! stdout `{"ok": "<m.server, canonical>"}` or `{"refused": reason}` per line:
//! the delegation fedpin's outbound watch reads from a
//! `/.well-known/matrix/server` body.

mod support;

use serde_json::{json, Value};

fn answer(line: &str) -> Value {
    let body = match support::hex_input(line) {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    match fedpin::discovery::parse_well_known(&body) {
        Ok(name) => json!({ "ok": name.to_string() }),
        Err(e) => json!({ "refused": e.to_string() }),
    }
}

fn main() -> std::io::Result<()> {
    support::answer_lines(answer)
}
