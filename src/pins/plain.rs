//! A fast reader for the plain `[[peer]]` sections that `pinctl` writes.
//!
//! The TOML crate was most of a 10,000-peer reload (`benches/reload.rs`):
//! it builds a table of maps for every section before serde walks it
//! into [`RawPeer`]. The sections `pinctl add` writes use a sliver of
//! TOML: `key = "string"`, arrays of strings (over several lines, with
//! comments), and one inline table of arrays (`host_pins`). This reader
//! takes exactly that sliver, in printable ASCII, and gives what the TOML
//! crate gives for it: the same values and the same spans.
//!
//! It never decides anything. A section it does not fully understand
//! (any other TOML form, an escape, a character outside printable ASCII,
//! an unknown or repeated key, a keyword it does not know, a missing
//! required key) gives `None`, and [`super::file`] hands that section to
//! the TOML crate, which alone says what is accepted and what each error
//! says. So the reader can only be wrong by accepting a text the TOML
//! crate reads differently: the tests below, the pin-file fuzz target
//! ([`crate::fuzzing::pin_file`]) and the pieces-versus-whole tests check
//! every text this reader accepts against the TOML crate's reading.

use std::collections::BTreeMap;

use toml::Spanned;

use super::file::{Mode, RawPeer, Trust};
use super::pieces::PEER_HEADER;

/// The `[[peer]]` table of `section` (a section of a pin file: its header
/// line, then key lines), spans counting from the section's start; `None`
/// when the section is not plain (the TOML crate must read it).
pub(super) fn read_section(section: &str) -> Option<Spanned<RawPeer>> {
    let rest = section.strip_prefix(PEER_HEADER)?;
    let mut c = Cursor {
        text: section,
        bytes: section.as_bytes(),
        at: PEER_HEADER.len(),
    };
    if !rest.is_empty() && !c.newline() {
        return None;
    }
    let mut peer = Fields::default();
    loop {
        c.blanks();
        match c.peek() {
            None => break,
            Some(b) if is_bare(b) => {
                peer.line(&mut c)?;
                c.blanks();
            }
            Some(_) => {}
        }
        if c.peek() == Some(b'#') {
            c.comment()?;
        }
        if c.peek().is_some() && !c.newline() {
            return None;
        }
    }
    peer.finish()
}

/// Whether this reader's reading of `section`, if it has one, is the
/// TOML crate's, values and spans: the property the tests and the fuzz
/// target check.
pub(super) fn agrees_with_toml(section: &str) -> bool {
    match read_section(section) {
        None => true,
        Some(peer) => {
            super::file::toml_reading(section).as_deref() == Some(format!("{peer:?}").as_str())
        }
    }
}

/// Panics unless the reader agrees with the TOML crate on `text` and on
/// each of its `[[peer]]` sections (the pin-file fuzz target's check).
pub(crate) fn check_sections(text: &str) {
    assert!(
        agrees_with_toml(text),
        "the plain reader differs on the text"
    );
    if let Some(first) = super::pieces::next_header(text, 0) {
        for range in super::pieces::section_ranges(text, first) {
            let section = &text[range];
            assert!(
                agrees_with_toml(section),
                "the plain reader differs from the TOML crate on {section:?}"
            );
        }
    }
}

/// The bytes of a bare key.
fn is_bare(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A position in a section's text.
struct Cursor<'t> {
    text: &'t str,
    bytes: &'t [u8],
    at: usize,
}

impl<'t> Cursor<'t> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Takes `b` if it is next.
    fn eat(&mut self, b: u8) -> bool {
        let here = self.peek() == Some(b);
        if here {
            self.at += 1;
        }
        here
    }

    /// Spaces and tabs.
    fn blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// A line ending (`\n` or `\r\n`), taken if it is next.
    fn newline(&mut self) -> bool {
        match self.peek() {
            Some(b'\n') => self.at += 1,
            Some(b'\r') if self.bytes.get(self.at + 1) == Some(&b'\n') => self.at += 2,
            _ => return false,
        }
        true
    }

    /// A comment from its `#` to the end of its line (not taken); tabs and
    /// printable ASCII only.
    fn comment(&mut self) -> Option<()> {
        self.eat(b'#').then_some(())?;
        while let Some(b) = self.peek() {
            match b {
                b'\n' | b'\r' => break,
                b'\t' | 0x20..=0x7e => self.at += 1,
                _ => return None,
            }
        }
        Some(())
    }

    /// Blanks, comments and line endings (between an array's values).
    fn gaps(&mut self) -> Option<()> {
        loop {
            self.blanks();
            if self.peek() == Some(b'#') {
                self.comment()?;
            }
            if !self.newline() {
                return Some(());
            }
        }
    }

    /// A bare key.
    fn bare_key(&mut self) -> Option<&'t str> {
        let start = self.at;
        while self.peek().is_some_and(is_bare) {
            self.at += 1;
        }
        (self.at > start).then(|| &self.text[start..self.at])
    }

    /// A basic string without escapes, printable ASCII; spanned from quote
    /// to quote.
    fn string(&mut self) -> Option<Spanned<String>> {
        let (span, value) = self.raw_string()?;
        Some(Spanned::new(span, value.to_owned()))
    }

    /// [`Cursor::string`]'s span and text, not copied.
    fn raw_string(&mut self) -> Option<(std::ops::Range<usize>, &'t str)> {
        let start = self.at;
        self.eat(b'"').then_some(())?;
        let len = memchr::memchr(b'"', self.bytes.get(self.at..)?)?;
        let end = self.at + len;
        let body = self.bytes.get(self.at..end)?;
        // Printable ASCII but the backslash (a line ending or any other
        // control character before the closing quote fails here too).
        // (Counted without stopping early, so that it runs 16 or 32 bytes
        // at a time.)
        let bad = body.iter().fold(0u8, |bad, b| {
            bad | u8::from(b.wrapping_sub(0x20) >= 0x5f) | u8::from(*b == b'\\')
        });
        if bad != 0 {
            return None;
        }
        let value = self.text.get(self.at..end)?;
        self.at = end + 1;
        Some((start..self.at, value))
    }

    /// An array of such strings: `[`, values separated by commas (one
    /// after the last allowed), blanks, comments and line endings around
    /// them, `]`; spanned from bracket to bracket.
    fn strings(&mut self) -> Option<Spanned<Vec<Spanned<String>>>> {
        let start = self.at;
        self.eat(b'[').then_some(())?;
        // Most arrays are two pins.
        let mut values = Vec::with_capacity(2);
        loop {
            self.gaps()?;
            if self.eat(b']') {
                break;
            }
            values.push(self.string()?);
            self.gaps()?;
            if self.eat(b']') {
                break;
            }
            self.eat(b',').then_some(())?;
        }
        Some(Spanned::new(start..self.at, values))
    }

    /// An inline table of arrays of strings on one line (but for line
    /// endings inside its arrays), keys bare or quoted, each once, no comma
    /// after the last.
    #[allow(clippy::type_complexity)]
    fn table_of_strings(&mut self) -> Option<BTreeMap<String, Spanned<Vec<Spanned<String>>>>> {
        self.eat(b'{').then_some(())?;
        let mut map = BTreeMap::new();
        self.blanks();
        if self.eat(b'}') {
            return Some(map);
        }
        loop {
            let key = match self.peek()? {
                b'"' => self.string()?.into_inner(),
                _ => self.bare_key()?.to_owned(),
            };
            self.blanks();
            self.eat(b'=').then_some(())?;
            self.blanks();
            let value = self.strings()?;
            if map.insert(key, value).is_some() {
                return None;
            }
            self.blanks();
            if self.eat(b'}') {
                return Some(map);
            }
            self.eat(b',').then_some(())?;
            self.blanks();
        }
    }

    /// A string that must be one of `words`.
    fn word<T: Copy>(&mut self, words: &[(&str, T)]) -> Option<T> {
        let (_, s) = self.raw_string()?;
        words.iter().find(|(w, _)| *w == s).map(|(_, v)| *v)
    }
}

/// The keys of a `[[peer]]` table as read so far.
#[derive(Default)]
struct Fields {
    server_name: Option<Spanned<String>>,
    hosts: Option<Vec<Spanned<String>>>,
    pins: Option<Spanned<Vec<Spanned<String>>>>,
    delegation: Option<Spanned<String>>,
    signing_keys: Option<Vec<Spanned<String>>>,
    host_pins: Option<BTreeMap<String, Spanned<Vec<Spanned<String>>>>>,
    trust: Option<Trust>,
    mode: Option<Mode>,
    expires: Option<Spanned<String>>,
    note: Option<String>,
}

/// Sets `slot` to `value`, if it was empty (a key given twice is for the
/// TOML crate to reject).
fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

impl Fields {
    /// One `key = value` line, up to the end of its value.
    fn line(&mut self, c: &mut Cursor<'_>) -> Option<()> {
        let key = c.bare_key()?;
        c.blanks();
        c.eat(b'=').then_some(())?;
        c.blanks();
        let trusts = [
            (Trust::Webpki.as_str(), Trust::Webpki),
            (Trust::PinOnly.as_str(), Trust::PinOnly),
        ];
        let modes = [
            (Mode::Enforce.as_str(), Mode::Enforce),
            (Mode::Report.as_str(), Mode::Report),
        ];
        match key {
            "server_name" => once(&mut self.server_name, c.string()),
            "hosts" => once(&mut self.hosts, c.strings().map(Spanned::into_inner)),
            "pins" => once(&mut self.pins, c.strings()),
            "delegation" => once(&mut self.delegation, c.string()),
            "signing_keys" => once(&mut self.signing_keys, c.strings().map(Spanned::into_inner)),
            "host_pins" => once(&mut self.host_pins, c.table_of_strings()),
            "trust" => once(&mut self.trust, c.word(&trusts)),
            "mode" => once(&mut self.mode, c.word(&modes)),
            "expires" => once(&mut self.expires, c.string()),
            "note" => once(&mut self.note, c.string().map(Spanned::into_inner)),
            _ => None,
        }
    }

    /// The table, spanned as the TOML crate spans an array-of-tables
    /// entry (its header); `None` without its required keys.
    fn finish(self) -> Option<Spanned<RawPeer>> {
        let peer = RawPeer {
            server_name: self.server_name?,
            hosts: self.hosts,
            pins: self.pins?,
            delegation: self.delegation,
            signing_keys: self.signing_keys,
            host_pins: self.host_pins,
            trust: self.trust,
            mode: self.mode,
            expires: self.expires,
            note: self.note,
        };
        Some(Spanned::new(0..PEER_HEADER.len(), peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What this reader gives for `section`, checked against the TOML
    /// crate: `None`, or the TOML crate's own reading, value and span.
    fn read(section: &str) -> Option<String> {
        check_sections(section);
        read_section(section).map(|p| format!("{p:?}"))
    }

    const PIN_A: &str = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const PIN_B: &str = "sha256/BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";

    /// What `pinctl add` writes, and the same in other plain spellings.
    #[test]
    fn reads_what_pinctl_writes_as_the_toml_crate_does() {
        let written = format!(
            "[[peer]]\nserver_name = \"example.org\"\nhosts = [\"example.org\", \"matrix.example.org\"]\n\
             pins = [\n  \"{PIN_A}\", # leaf\n  \"{PIN_B}\",\n]\ntrust = \"pin-only\"\nmode = \"report\"\n\
             expires = \"2027-06-01T00:00:00Z\"\nnote = \"enrolled # not a comment\"\n\
             delegation = \"matrix.example.org:443\"\nsigning_keys = [\"ed25519:a=b\"]\n\
             host_pins = {{ \"example.org\" = [\"{PIN_A}\"], wk-2_x = [\n\"{PIN_B}\"] }}\n\n# trailing\n\n"
        );
        assert!(read(&written).is_some());
        let crlf = written.replace('\n', "\r\n");
        assert!(read(&crlf).is_some());
        for plain in [
            "[[peer]]\nserver_name=\"a.test\"\npins=[]".to_string(),
            format!("[[peer]]\n\t server_name\t=  \"a.test\"  # c\n  pins = [ \"{PIN_A}\" ]  \n"),
            format!("[[peer]]\n# only a comment\nserver_name = \"\"\npins = [\"{PIN_A}\",]\nhost_pins = {{}}\n"),
            format!("[[peer]]\nserver_name = \"a.test\"\npins = [\n\n# c\n\"{PIN_A}\" # d\n,\n\"x\"\n]\nhost_pins = {{ \"\" = [] }}"),
            format!("[[peer]]\r\nserver_name = \"a.test\"\r\npins = [\"{PIN_A}\"] #\r\n"),
        ] {
            assert!(read(&plain).is_some(), "{plain:?}");
        }
    }

    /// Everything outside the sliver goes to the TOML crate: valid TOML
    /// in other forms, TOML the crate rejects, and keys the table must not
    /// have or must have once.
    #[test]
    fn leaves_everything_else_to_the_toml_crate() {
        let base = format!("[[peer]]\nserver_name = \"a.test\"\npins = [\"{PIN_A}\"]\n");
        let not_plain = [
            // Other TOML forms.
            "note = 'literal'",
            "note = \"\"\"multi\nline\"\"\"",
            "note = \"esc\\u0041\"",
            "note = \"tab\there\"",
            "note = \"caf\u{e9}\"",
            "\"note\" = \"quoted key\"",
            "note.x = \"dotted\"",
            "host_pins = { a = [], }",
            "host_pins = {\na = [] }",
            "host_pins = { a.b = [] }",
            "hosts = [[\"nested\"]]",
            "hosts = [\"a\", 1]",
            "[peer.host_pins]",
            "  [[peer]]",
            "# caf\u{e9}",
            "# bell \u{7}",
            "note = \"x\" trailing",
            "note = \"x\"\rnext = 1",
            // TOML the crate rejects, or a table serde rejects.
            "pins = [\"again\"]",
            "server_name = \"again\"",
            "note = \"a\"\nnote = \"b\"",
            "host_pins = { a = [], \"a\" = [] }",
            "trust = \"pinonly\"",
            "mode = \"Enforce\"",
            "unknown = \"x\"",
            "version = 1",
            "hosts = [\"a\",,]",
            "hosts = [,]",
            "hosts = [\"a\" \"b\"]",
            "hosts = [\"unterminated",
            "hosts = [\"a\"",
            "note =",
            "note = \"x\" = \"y\"",
            "= \"x\"",
        ];
        for extra in not_plain {
            let text = format!("{base}{extra}\n");
            assert_eq!(read(&text), None, "{text:?}");
        }
        assert_eq!(read("[[peer]]\nserver_name = \"a.test\"\n"), None);
        assert_eq!(read(&format!("[[peer]]\npins = [\"{PIN_A}\"]\n")), None);
        assert_eq!(read(&format!("[[peer]] # c\n{}", &base[9..])), None);
        assert_eq!(read(&format!("\n{base}")), None);
    }

    /// Thousands of small edits of a plain section (characters TOML
    /// gives meaning to inserted, bytes deleted or replaced, lines doubled):
    /// whatever the reader takes, it reads as the TOML crate does.
    #[test]
    fn edited_sections_agree_with_the_toml_crate() {
        let base = format!(
            "[[peer]]\nserver_name = \"a.test\" # x\nhosts = [\"a.test\", \"b.test\"]\npins = [\n  \"{PIN_A}\",\n  \"{PIN_B}\",\n]\n\
             host_pins = {{ \"h.test\" = [\"{PIN_A}\"], g = [] }}\ntrust = \"webpki\"\nmode = \"report\"\nnote = \"n\"\n"
        );
        let pieces = [
            "\"",
            "\\",
            "'",
            "[",
            "]",
            "{",
            "}",
            ",",
            "=",
            "#",
            ".",
            " ",
            "\t",
            "\n",
            "\r",
            "\r\n",
            "a",
            "1",
            "\u{e9}",
            "\u{7}",
            "\u{7f}",
            "\"\"\"",
            "x = 1",
            "[[peer]]",
            "note = \"y\"\n",
        ];
        // xorshift64: a fixed sequence, so a failure is repeatable.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut taken = 0;
        for _ in 0..4000 {
            let mut text = base.clone();
            for _ in 0..1 + next(3) {
                let mut at = next(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + 1 + next(4)).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                match next(4) {
                    0 => text.insert_str(at, pieces[next(pieces.len())]),
                    1 => text.replace_range(at..end, ""),
                    2 => text.replace_range(at..end, pieces[next(pieces.len())]),
                    _ => {
                        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                        let stop = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
                        let line = text[start..stop].to_string();
                        text.insert_str(stop, &line);
                    }
                }
            }
            taken += usize::from(read(&text).is_some());
        }
        // Enough of the edits stay plain for the check to mean something.
        assert!(taken > 400, "{taken}");
    }

    /// Every cut of a plain section is read as the TOML crate reads it, or
    /// left to it: an unterminated string or array is never taken.
    #[test]
    fn every_prefix_of_a_plain_section_agrees_with_the_toml_crate() {
        let text = format!(
            "[[peer]]\r\nserver_name = \"a.test\" # x\nhosts = [\"a.test\"]\npins = [\n  \"{PIN_A}\",\n  \"{PIN_B}\",\n]\n\
             host_pins = {{ \"h.test\" = [\"{PIN_A}\"], g = [] }}\nmode = \"report\"\nnote = \"n\"\n"
        );
        let mut taken = 0;
        for end in 0..=text.len() {
            taken += usize::from(read(&text[..end]).is_some());
        }
        assert!(taken >= 8, "{taken}");
    }
}
