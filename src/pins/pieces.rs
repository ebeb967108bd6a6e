//! Parsing a large pin file in sections, on several threads, and
//! reparsing only what changed.
//!
//! A 10,000-peer file is over a megabyte of TOML, and the TOML crate was
//! more than half of a reload (`benches/reload.rs`). The file is a head
//! (`version`, `[policy]`) and then `[[peer]]` tables, each of which means
//! the same parsed alone as in the whole file: so the text is cut at every
//! `[[peer]]` line, the sections are read (by the plain reader,
//! [`super::plain`], where they are in the form `pinctl` writes) and
//! checked on up to one thread per core, and a reload reads only the
//! sections whose text is not byte for byte one the previous set read
//! ([`Sections`]). [`crate::pins::PinSet`]
//! takes the sections only when every one of them parsed and kept to the
//! shape that makes the cut harmless; otherwise it parses the whole text,
//! which alone decides what is accepted and what each error says.

use std::collections::HashMap;
use std::ops::Range;

/// The line that opens a peer's table.
pub(super) const PEER_HEADER: &str = "[[peer]]";

/// The start of the first line at or after `from` that reads exactly
/// [`PEER_HEADER`] (a `\r\n` ending allowed).
pub(super) fn next_header(text: &str, from: usize) -> Option<usize> {
    // A cut's target may fall inside a multi-byte character: start at the
    // next character.
    let mut at = from;
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    loop {
        let start = if at == 0 && text.starts_with(PEER_HEADER) {
            0
        } else {
            at + text.get(at..)?.find("\n[[peer]]")? + 1
        };
        let rest = &text[start + PEER_HEADER.len()..];
        if rest.is_empty() || rest.starts_with('\n') || rest.starts_with("\r\n") {
            return Some(start);
        }
        at = start + 1;
    }
}

/// The `[[peer]]` sections of `text` from `first` (a header line's
/// start, [`next_header`]) on: each from its header line to the next one,
/// the last to the end.
pub(super) fn section_ranges(text: &str, first: usize) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let after = first + 1;
    let headers = bytes.get(after..).into_iter().flat_map(|rest| {
        memchr::memmem::find_iter(rest, b"\n[[peer]]")
            .map(move |i| after + i + 1)
            .filter(|&start| {
                let rest = &bytes[start + PEER_HEADER.len()..];
                rest.is_empty() || rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
            })
    });
    let starts: Vec<usize> = std::iter::once(first).chain(headers).collect();
    let ends = starts
        .iter()
        .skip(1)
        .copied()
        .chain(std::iter::once(text.len()));
    starts
        .iter()
        .copied()
        .zip(ends)
        .map(|(a, b)| a..b)
        .collect()
}

/// A section's text, hashed (a reload looks its sections up by this; a
/// lookup compares the bytes too, so the hash needs to be fast, not
/// unguessable).
pub(super) fn section_hash(section: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5eed_f00d).hash_one(section)
}

/// The sections of the text a pin set was parsed from, each with what
/// parsing and checking it alone gave (`T`), kept so that the next reload
/// parses and checks only the sections whose text changed: a section of
/// the same bytes gives the same, wherever it now is. A 10,000-peer file
/// edited in one place reloads without parsing the other 9,999 peers (the
/// whole-file checks and the indexes still run for all).
pub(super) struct Sections<T> {
    text: bytes::Bytes,
    ranges: Vec<Range<usize>>,
    parsed: Vec<T>,
    /// A section's index by the hash of its text (any one of equal texts).
    by_hash: HashMap<u64, usize>,
    /// How many were taken from the previous set's sections, not parsed.
    reused: usize,
}

impl<T> Sections<T> {
    /// The sections of `text` at `ranges`, their hashes and parses (all
    /// three in the same order), `reused` of them not parsed this time.
    pub(super) fn new(
        text: bytes::Bytes,
        ranges: Vec<Range<usize>>,
        hashes: &[u64],
        parsed: Vec<T>,
        reused: usize,
    ) -> Self {
        let by_hash = hashes.iter().enumerate().map(|(k, h)| (*h, k)).collect();
        Sections {
            text,
            ranges,
            parsed,
            by_hash,
            reused,
        }
    }

    /// What the section of exactly these bytes (with this hash) parsed to.
    pub(super) fn get(&self, hash: u64, section: &[u8]) -> Option<&T> {
        let k = *self.by_hash.get(&hash)?;
        let range = self.ranges.get(k)?;
        let same = self.text.get(range.clone()) == Some(section);
        same.then(|| self.parsed.get(k)).flatten()
    }

    /// How many sections, and how many of them were reused.
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.ranges.len(), self.reused)
    }
}

impl<T> std::fmt::Debug for Sections<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sections")
            .field("sections", &self.ranges.len())
            .finish_non_exhaustive()
    }
}

/// `f` of each item, the first on this thread and each other on a thread
/// of its own (or here, when a thread cannot start); in order. A panic in
/// `f` is passed on. `None` only if an item's result went missing, which
/// the callers take as a failure (never as fewer items).
pub(super) fn on_threads<I, R, F>(items: Vec<I>, f: F) -> Option<Vec<R>>
where
    I: Send,
    R: Send,
    F: Fn(I) -> R + Sync,
{
    if items.is_empty() {
        return Some(Vec::new());
    }
    let slots: Vec<std::sync::Mutex<Option<I>>> = items
        .into_iter()
        .map(|i| std::sync::Mutex::new(Some(i)))
        .collect();
    let take = |k: usize| {
        slots
            .get(k)
            .and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).take())
    };
    let f = &f;
    let done: Vec<Option<R>> = std::thread::scope(|s| {
        let others: Vec<_> = (1..slots.len())
            .map(|k| {
                std::thread::Builder::new()
                    .name("fedpin-pins".into())
                    .spawn_scoped(s, move || take(k).map(f))
                    .ok()
            })
            .collect();
        let mut done = Vec::with_capacity(slots.len());
        done.push(take(0).map(f));
        for handle in others {
            done.push(match handle {
                Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                None => None,
            });
        }
        done
    });
    // An item whose thread did not start is still in its slot.
    done.into_iter()
        .enumerate()
        .map(|(k, r)| r.or_else(|| take(k).map(f)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_whole_header_lines() {
        let text =
            "version = 1\n[[peer]]\na = 1\n[[peer]] # x\n[[peers]]\n[[peer]]\r\nb = 2\n[[peer]]";
        let first = next_header(text, 0).unwrap();
        assert_eq!(first, 12);
        let second = next_header(text, first + 1).unwrap();
        assert_eq!(&text[second..second + 10], "[[peer]]\r\n");
        let third = next_header(text, second + 1).unwrap();
        assert_eq!(&text[third..], "[[peer]]");
        assert_eq!(next_header(text, third + 1), None);
        assert_eq!(next_header("[[peer]]\nx = 1\n", 0), Some(0));
        assert_eq!(next_header("x = 1\n", 0), None);
    }

    #[test]
    fn sections_run_from_each_header_line_to_the_next() {
        let text = "version = 1\n[[peer]]\na = 1\n  [[peer]]\n[[peer]]\r\nb = 2\n[[peer]]";
        let first = next_header(text, 0).unwrap();
        let got: Vec<&str> = section_ranges(text, first)
            .into_iter()
            .map(|r| &text[r])
            .collect();
        assert_eq!(
            got,
            [
                "[[peer]]\na = 1\n  [[peer]]\n",
                "[[peer]]\r\nb = 2\n",
                "[[peer]]"
            ]
        );
        // A multi-byte character right after a header.
        let text = "[[peer]]\nn = \"日本\"\n[[peer]]\n";
        assert_eq!(section_ranges(text, 0), [0..22, 22..31]);
    }

    #[test]
    fn a_section_is_found_only_by_its_exact_bytes() {
        let text = "[[peer]]\na = 1\n[[peer]]\nb = 2\n";
        let ranges = section_ranges(text, 0);
        let hashes: Vec<u64> = ranges
            .iter()
            .map(|r| section_hash(&text.as_bytes()[r.clone()]))
            .collect();
        let parsed = vec!['a', 'b'];
        let s = Sections::new(bytes::Bytes::from(text), ranges, &hashes, parsed, 0);
        assert_eq!(s.counts(), (2, 0));
        let b = b"[[peer]]\nb = 2\n";
        assert_eq!(s.get(section_hash(b), b).copied(), Some('b'));
        // Other bytes under a hash that is there (a collision) miss.
        assert_eq!(s.get(section_hash(b), b"[[peer]]\nb = 3\n"), None);
        assert_eq!(s.get(section_hash(b"x"), b"x"), None);
    }

    #[test]
    fn on_threads_keeps_order_and_count() {
        assert_eq!(on_threads(Vec::<u8>::new(), |x| x), Some(vec![]));
        assert_eq!(on_threads(vec![1], |x| x * 2), Some(vec![2]));
        let many: Vec<u32> = (0..7).collect();
        assert_eq!(
            on_threads(many, |x| x * 10),
            Some((0..7).map(|x| x * 10).collect())
        );
    }
}
