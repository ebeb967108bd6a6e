//! Matrix canonical JSON, byte for byte as Synapse's encoder
//! (`canonicaljson.encode_canonical_json`: Python's `json` with sorted keys,
//! `,`/`:` separators, UTF-8 output) writes it.
//!
//! Object keys sort by code point (Python's `str` order), which is UTF-8 byte
//! order, not UTF-16 order. Strings escape `"`, `\`, and the control
//! characters below U+0020 (`\b \f \n \r \t` by name, the rest as `\u00XX`)
//! and nothing else. Floats, which the Matrix specification keeps out of
//! canonical JSON but which Synapse's request parser accepts, are written as
//! Python's `repr` writes them (`1.0`, `1e+16`, `1e-05`); integers keep their
//! exact text whatever their size (`-0` is `0`), as Python's do. The parser
//! is fedpin's own for that reason (serde_json without arbitrary precision
//! turns big integers and `-0` into floats).
//! `tests/differential/` checks this encoder against Synapse's.

use std::collections::BTreeMap;

use serde_json::Value;

/// Deepest nesting accepted (Python's recursion limit is higher: deeper
/// documents are refused here, which only fails closed).
const MAX_DEPTH: usize = 128;

/// Python's default `sys.get_int_max_str_digits()`.
const MAX_INT_DIGITS: usize = 4300;

/// Why a value has no canonical encoding here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// Bytes that Synapse's request parser would not accept as JSON either
    /// (or nesting deeper than fedpin follows).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// A number fedpin cannot write exactly as Synapse would.
    #[error("number {0} has no exact canonical form here")]
    Number(String),
}

/// A parsed JSON document that keeps what Python keeps: integers exactly
/// (any size, `-0` is `0`), floats as `f64`, objects with the last of
/// duplicate keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer, as canonical decimal text.
    Int(String),
    /// A number with a fraction or exponent.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in code-point order.
    Object(BTreeMap<String, Json>),
}

impl Json {
    /// Whether this is an object.
    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    /// Converts a `serde_json` value (numbers as serde_json holds them).
    pub fn from_value(v: &Value) -> Result<Json, CanonicalError> {
        Ok(match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Json::Int(i.to_string())
                } else if let Some(u) = n.as_u64() {
                    Json::Int(u.to_string())
                } else {
                    Json::Float(
                        n.as_f64()
                            .ok_or_else(|| CanonicalError::Number(n.to_string()))?,
                    )
                }
            }
            Value::String(s) => Json::Str(s.clone()),
            Value::Array(a) => {
                Json::Array(a.iter().map(Json::from_value).collect::<Result<_, _>>()?)
            }
            Value::Object(o) => Json::Object(
                o.iter()
                    .map(|(k, v)| Ok((k.clone(), Json::from_value(v)?)))
                    .collect::<Result<_, CanonicalError>>()?,
            ),
        })
    }
}

/// Parses request-body bytes as Synapse's request parser reads them
/// (strict UTF-8, Python's `json` grammar without `NaN`/`Infinity`, last
/// duplicate key wins, integers exact).
pub fn parse(bytes: &[u8]) -> Result<Json, CanonicalError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| CanonicalError::NotJson(format!("not UTF-8: {e}")))?;
    let mut p = Parser {
        text,
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(v)
}

struct Parser<'a> {
    text: &'a str,
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> CanonicalError {
        CanonicalError::NotJson(format!("{what} at byte {}", self.i))
    }

    /// Python's json skips exactly these four.
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    /// The members of an object or the elements of an array, from its
    /// opening bracket (at `self.i`) to `close`: `item` reads one member,
    /// starting at its first non-blank byte.
    fn items(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), CanonicalError>,
    ) -> Result<(), CanonicalError> {
        self.i += 1;
        self.ws();
        if self.eat(&[close]) {
            return Ok(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            if self.eat(b",") {
                continue;
            }
            if self.eat(&[close]) {
                return Ok(());
            }
            return Err(self.err(&format!("expected ',' or '{}'", close as char)));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.s.get(self.i) {
            Some(b'{') => {
                let mut map = BTreeMap::new();
                self.items(b'}', |p| {
                    if p.s.get(p.i) != Some(&b'"') {
                        return Err(p.err("expected a string key"));
                    }
                    let k = p.string()?;
                    p.ws();
                    if !p.eat(b":") {
                        return Err(p.err("expected ':'"));
                    }
                    p.ws();
                    map.insert(k, p.value(depth + 1)?);
                    Ok(())
                })?;
                Ok(Json::Object(map))
            }
            Some(b'[') => {
                let mut items = Vec::new();
                self.items(b']', |p| {
                    items.push(p.value(depth + 1)?);
                    Ok(())
                })?;
                Ok(Json::Array(items))
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b'n') if self.eat(b"null") => Ok(Json::Null),
            Some(b't') if self.eat(b"true") => Ok(Json::Bool(true)),
            Some(b'f') if self.eat(b"false") => Ok(Json::Bool(false)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a value")),
        }
    }

    fn number(&mut self) -> Result<Json, CanonicalError> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let d = p.i;
            while matches!(p.s.get(p.i), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i - d
        };
        let neg = self.eat(b"-");
        let int_start = self.i;
        let n = digits(self);
        if n == 0 {
            return Err(self.err("expected digits"));
        }
        if n > 1 && self.s[int_start] == b'0' {
            // Python reads "01" as 0 then fails on the trailing "1".
            return Err(self.err("leading zero"));
        }
        let mut float = false;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(self.err("expected fraction digits"));
            }
            float = true;
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("expected exponent digits"));
            }
            float = true;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("number"))?;
        if float {
            let f: f64 = text.parse().map_err(|_| self.err("number"))?;
            if !f.is_finite() {
                return Err(CanonicalError::Number(text.to_owned()));
            }
            return Ok(Json::Float(f));
        }
        if n > MAX_INT_DIGITS {
            // Python refuses to convert longer integer text (its default
            // int_max_str_digits): Synapse answers 400.
            return Err(CanonicalError::Number(format!("{n}-digit integer")));
        }
        let magnitude = &self.s[int_start..self.i];
        let magnitude = std::str::from_utf8(magnitude).map_err(|_| self.err("number"))?;
        Ok(Json::Int(if neg && magnitude != "0" {
            format!("-{magnitude}")
        } else {
            magnitude.to_owned()
        }))
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, CanonicalError> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            match b {
                b'"' => {
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.i += 1;
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                let save = self.i;
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xdc00..0xe000).contains(&lo) {
                                    char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))
                                } else {
                                    self.i = save;
                                    None
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            // A lone surrogate: Python keeps it, then cannot
                            // encode it as UTF-8. Refused here.
                            out.push(c.ok_or_else(|| self.err("lone surrogate"))?);
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                // Python's json (strict) refuses raw control characters.
                0x00..=0x1f => return Err(self.err("control character in string")),
                _ => {
                    // Up to the next quote, backslash or control character
                    // (all ASCII, so the run ends on a character boundary of
                    // the text, which `parse` checked is UTF-8).
                    let start = self.i;
                    let run = self.s[start..]
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                        .unwrap_or(self.s.len() - start);
                    let chunk = self
                        .text
                        .get(start..start + run)
                        .ok_or_else(|| self.err("not UTF-8"))?;
                    out.push_str(chunk);
                    self.i += run;
                }
            }
        }
    }
}

/// Encodes `value` canonically.
pub fn encode(value: &Json) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(512);
    write(value, &mut out);
    Ok(out)
}

/// Encodes a `serde_json` value canonically.
pub fn encode_value(value: &Value) -> Result<String, CanonicalError> {
    encode(&Json::from_value(value)?)
}

fn write(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Int(t) => out.push_str(t),
        Json::Float(f) => out.push_str(&python_float_repr(*f)),
        Json::Str(s) => write_string(s, out),
        Json::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        Json::Object(map) => {
            // BTreeMap<String, _>: byte order, which for UTF-8 is code-point order.
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write(v, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    // Writing to a String cannot fail.
    let _ = escape(s, out);
    out.push('"');
}

/// Writes `s` with the escapes a JSON string needs (without the quotes):
/// quotation mark and reverse solidus, `\n \r \t \b \f`, and `\u00XX` for the other control
/// characters; everything else as it is (canonical JSON keeps non-ASCII
/// characters unescaped). Also used by the JSON access log.
pub(crate) fn escape<W: std::fmt::Write + ?Sized>(s: &str, out: &mut W) -> std::fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Most strings (access-log fields, keys) need no escape: one pass to
    // find out, one write.
    if !needs_escape(s.as_bytes()) {
        return out.write_str(s);
    }
    // Copies runs of characters that need no escape at once; every escaped
    // character is ASCII, so each run ends on a character boundary.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.write_str(&s[run..i])?;
        if escaped.is_empty() {
            out.write_str("\\u00")?;
            out.write_char(char::from(HEX[usize::from(b >> 4)]))?;
            out.write_char(char::from(HEX[usize::from(b & 0xf)]))?;
        } else {
            out.write_str(escaped)?;
        }
        run = i + 1;
    }
    out.write_str(&s[run..])
}

/// Whether any byte of `s` is a control character, `"` or `\\`: the bytes
/// [`escape`] changes. Eight bytes at a time (the access log asks this of
/// every field of every request; byte by byte it was ~2k instructions of a
/// request's line). Per word, `(x - k·0x01…) & !x & 0x80…` is nonzero exactly
/// when some byte of `x` is below `k` (k ≤ 0x80; bytes ≥ 0x80 never count),
/// and a byte equal to `c` is a zero byte of `x ^ c·0x01…`. The test is of
/// the word as a whole, so the borrows the subtraction carries between
/// bytes cannot make it wrong: they start only above a byte that is below
/// `k` itself.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, k: u64| x.wrapping_sub(k * ONES) & !x & HIGH;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b);
        if below(x, 0x20)
            | below(x ^ (u64::from(b'"') * ONES), 1)
            | below(x ^ (u64::from(b'\\') * ONES), 1)
            != 0
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
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
    fn the_word_at_a_time_test_agrees_with_the_byte_test() {
        let bytewise = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        // Every byte value at every position of strings of 1 to 19 bytes,
        // among neighbours that need no escape (so only it decides) and
        // among the bytes most likely to confuse a word test (0x00, 0x1f,
        // 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xff as fillers).
        for filler in [
            b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff, 0x1f, 0x00,
        ] {
            for len in 1..20 {
                for pos in 0..len {
                    for v in 0..=255u8 {
                        let mut s = vec![filler; len];
                        s[pos] = v;
                        assert_eq!(super::needs_escape(&s), bytewise(&s), "{s:?}");
                    }
                }
            }
        }
        // Pairs of values in one word (borrows between neighbouring bytes).
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let s = [b'x', a, b, b'x', b'x', b'x', b'x', b'x', b'y'];
                assert_eq!(super::needs_escape(&s), bytewise(&s), "{s:?}");
            }
        }
        assert!(!super::needs_escape(b""));
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
