//! Matrix canonical JSON, byte for byte as Synapse's encoder
//! (`canonicaljson.encode_canonical_json`: Python's `json` with sorted keys,
//! `,`/`:` separators, UTF-8 output) writes it.
//!
//! Object keys sort by code point (Python's `str` order), which is UTF-8 byte
//! order, not UTF-16 order. Strings escape `"`, `\`, and the control
//! characters below U+0020 (`\b \f \n \r \t` by name, the rest as `\u00XX`)
//! and nothing else. Floats, which the Matrix specification keeps out of
//! canonical JSON but which Synapse's request parser accepts, are written as
//! Python's `repr` writes them (`1.0`, `1e+16`, `1e-05`). Integers beyond the
//! 64-bit range are parsed as floats and so written differently from
//! Python's integers: a signature over them fails to verify (fail closed;
//! the Matrix specification limits integers to ±2^53 anyway).
//! `tests/differential/` checks this encoder against Synapse's.

use serde_json::Value;

/// Why a value has no canonical encoding here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// Bytes that Synapse's request parser would not accept as JSON either.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// A number fedpin cannot write exactly as Synapse would.
    #[error("number {0} has no exact canonical form here")]
    Number(String),
}

/// Parses request-body bytes as Synapse's request parser would (UTF-8, no
/// `NaN`/`Infinity`, last duplicate key wins).
pub fn parse(bytes: &[u8]) -> Result<Value, CanonicalError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| CanonicalError::NotJson(format!("not UTF-8: {e}")))?;
    // Python's json module accepts leading/trailing whitespace but not a BOM.
    serde_json::from_str(text).map_err(|e| CanonicalError::NotJson(e.to_string()))
}

/// Encodes `value` canonically.
pub fn encode(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // serde_json's map is a BTreeMap<String, _>: byte order, which for
            // UTF-8 is code-point order.
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write(v, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(n: &serde_json::Number, out: &mut String) -> Result<(), CanonicalError> {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
        return Ok(());
    }
    if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
        return Ok(());
    }
    let f = n
        .as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| CanonicalError::Number(n.to_string()))?;
    out.push_str(&python_float_repr(f));
    Ok(())
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed
/// notation when the decimal exponent is in [-4, 16), else `d.ddde±XX`.
pub fn python_float_repr(f: f64) -> String {
    // Rust's `{:e}` gives the shortest round-trip digits too: "1.2345e-7".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    // Python's decpt: the position of the decimal point after the first digit.
    let decpt = exp + 1;
    if (-3..=16).contains(&decpt) {
        let mut s = String::from(sign);
        if decpt <= 0 {
            s.push_str("0.");
            s.push_str(&"0".repeat((-decpt) as usize));
            s.push_str(&digits);
        } else {
            let d = decpt as usize;
            if digits.len() <= d {
                s.push_str(&digits);
                s.push_str(&"0".repeat(d - digits.len()));
                s.push_str(".0");
            } else {
                s.push_str(&digits[..d]);
                s.push('.');
                s.push_str(&digits[d..]);
            }
        }
        s
    } else {
        let mut s = String::from(sign);
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if exp < 0 { '-' } else { '+' });
        s.push_str(&format!("{:02}", exp.abs()));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        encode(&parse(text.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_by_code_point_and_drops_whitespace() {
        assert_eq!(
            canon(r#"{"b": 1, "a": [true, null, "x"]}"#),
            r#"{"a":[true,null,"x"],"b":1}"#
        );
        // U+FFFD sorts before U+1F600 by code point (after it in UTF-16).
        assert_eq!(
            canon("{\"\u{1F600}\": 1, \"\u{FFFD}\": 2}"),
            "{\"\u{FFFD}\":2,\"\u{1F600}\":1}"
        );
        // Last duplicate wins, as in Python.
        assert_eq!(canon(r#"{"a": 1, "a": 2}"#), r#"{"a":2}"#);
    }

    #[test]
    fn escapes_like_python_with_ensure_ascii_off() {
        assert_eq!(
            canon(r#"["\u00e9", "\u2028", "a\"b\\c/", "\u0000\u001f\b\f\n\r\t"]"#),
            "[\"é\",\"\u{2028}\",\"a\\\"b\\\\c/\",\"\\u0000\\u001f\\b\\f\\n\\r\\t\"]"
        );
    }

    #[test]
    fn floats_as_python_repr() {
        for (f, py) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (9999999999999998.0, "9999999999999998.0"),
        ] {
            assert_eq!(python_float_repr(f), py, "{f:e}");
        }
        assert_eq!(canon("[1e2, 2.50]"), "[100.0,2.5]");
    }

    #[test]
    fn refuses_what_it_cannot_write_exactly() {
        assert!(parse(b"[NaN]").is_err());
        assert!(parse(b"\xef\xbb\xbf{}").is_err());
        assert!(parse(b"{} x").is_err());
        assert!(parse(&[0xff]).is_err());
    }
}
