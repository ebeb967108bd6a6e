//! Parsing a large pin file in pieces, one thread per piece.
//!
//! A 10,000-peer file is 1.4 MB of TOML, and the TOML parser was two
//! thirds of a reload (`benches/reload.rs`). The file is a head (`version`,
//! `[policy]`) and then `[[peer]]` tables, each of which means the same
//! parsed alone as in the whole file: so the text is cut at `[[peer]]`
//! lines and the pieces are parsed at once. [`crate::pins::PinSet`] takes
//! the pieces only when every one of them parsed and kept to the shape
//! that makes the cut harmless; otherwise it parses the whole text, which
//! alone decides what is accepted and what each error says.

use serde::de::DeserializeOwned;

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

/// Where to cut `text` into up to `pieces` pieces of about equal size: the
/// starts of `[[peer]]` lines after `first`, the first peer's (so every
/// piece after the first starts with a peer header, and the first holds
/// the head and at least one peer). Empty when no cut is worth making.
pub(super) fn cuts(text: &str, first: usize, pieces: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(pieces.saturating_sub(1));
    for k in 1..pieces {
        let target = text.len() / pieces * k;
        let from = target.max(out.last().map_or(first, |c| *c) + 1);
        match next_header(text, from) {
            Some(c) => out.push(c),
            None => break,
        }
    }
    out
}

/// Parses each piece of `text` between the cuts (the first from the start,
/// the last to the end) as a TOML document of its own, each on a thread
/// ([`on_threads`]); in order (empty if a result went missing).
pub(super) fn parse_each<T>(text: &str, cuts: &[usize]) -> Vec<Result<T, toml::de::Error>>
where
    T: DeserializeOwned + Send,
{
    let pieces: Vec<&str> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .zip(cuts.iter().copied().chain(std::iter::once(text.len())))
        .map(|(a, b)| &text[a..b])
        .collect();
    on_threads(pieces, |piece| toml::from_str::<T>(piece)).unwrap_or_default()
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
    fn cuts_are_increasing_headers_after_the_first_peer() {
        let text: String = std::iter::once("version = 1\n".to_string())
            .chain((0..100).map(|i| format!("[[peer]]\nserver_name = \"p{i}.test\"\n")))
            .collect();
        let first = next_header(&text, 0).unwrap();
        for n in 2..6 {
            let c = cuts(&text, first, n);
            assert_eq!(c.len(), n - 1, "{n} pieces");
            assert!(c.windows(2).all(|w| w[0] < w[1]));
            assert!(c
                .iter()
                .all(|&x| x > first && text[x..].starts_with("[[peer]]\n")));
        }
        // Too few headers for the pieces asked for: fewer cuts, never a repeat.
        let small = "version = 1\n[[peer]]\na = 1\n[[peer]]\nb = 2\n";
        assert_eq!(cuts(small, 12, 8).len(), 1);
    }

    #[test]
    fn a_cut_target_inside_a_multibyte_char_still_cuts() {
        let text: String = std::iter::once("version = 1\n".to_string())
            .chain((0..1000).map(|i| {
                format!("[[peer]]\nserver_name = \"p{i}.test\"\nnote = \"日本語日本語\"\n")
            }))
            .collect();
        let first = next_header(&text, 0).unwrap();
        let got: Vec<usize> = (2..6).map(|n| cuts(&text, first, n).len()).collect();
        assert_eq!(got, [1, 2, 3, 4]);
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

    #[test]
    fn pieces_parse_in_order() {
        #[derive(serde::Deserialize)]
        struct Doc {
            peer: Vec<toml::Value>,
        }
        let text = "[[peer]]\nn = 0\n[[peer]]\nn = 1\n[[peer]]\nn = 2\n";
        let c = cuts(text, 0, 3);
        let parsed = parse_each::<Doc>(text, &c);
        let ns: Vec<i64> = parsed
            .into_iter()
            .flat_map(|d| d.unwrap().peer)
            .map(|p| p["n"].as_integer().unwrap())
            .collect();
        assert_eq!(ns, [0, 1, 2]);
    }
}
