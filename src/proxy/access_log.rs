//! Access logs: path templating, so logs never carry room IDs, event IDs,
//! user IDs, transaction IDs or other values; and [`Line`], one request's
//! line, which a JSON log gets written straight to it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::OnceLock;

use crate::log_writer::BatchWriter;

/// Literal path words of the federation and key APIs kept as they are; every
/// other segment is replaced by a placeholder. (A `match`: the compiler
/// dispatches on the length first, where a list was scanned word by word
/// for every segment of every request.)
fn known(segment: &str) -> bool {
    matches!(
        segment,
        "_matrix"
            | "federation"
            | "key"
            | "v1"
            | "v2"
            | "v3"
            | "send"
            | "event"
            | "state"
            | "state_ids"
            | "make_join"
            | "send_join"
            | "invite"
            | "make_leave"
            | "send_leave"
            | "make_knock"
            | "send_knock"
            | "backfill"
            | "get_missing_events"
            | "query"
            | "directory"
            | "profile"
            | "user"
            | "devices"
            | "keys"
            | "claim"
            | "publicRooms"
            | "openid"
            | "userinfo"
            | "event_auth"
            | "exchange_third_party_invite"
            | "3pid"
            | "onbind"
            | "hierarchy"
            | "timestamp_to_event"
            | "media"
            | "download"
            | "thumbnail"
            | "server"
            | "version"
            | "query_auth"
            | "unstable"
            | "knock"
    )
}

/// The path (query dropped) with identifiers replaced: `!…` → `{roomId}`,
/// `$…` → `{eventId}`, `@…` → `{userId}`, `#…` → `{roomAlias}`, anything else
/// not a known API word → `{param}`.
pub fn template(path: &str) -> String {
    // By bytes: both are ASCII, so the cut is on a character boundary.
    let end = path
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    let path = &path[..end];
    let mut out = String::with_capacity(path.len().min(256));
    for (i, seg) in crate::proxy::ascii::split(path, b'/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        // Counted before empty segments are skipped: a run of slashes must
        // not make the line unbounded.
        if i > 24 {
            out.push_str("{…}");
            break;
        }
        if seg.is_empty() {
            continue;
        }
        // The first character, percent-decoded when it is one of the four
        // sigils (hex digits in either case); every sigil is ASCII.
        let decoded_first = match seg.as_bytes() {
            [b'%', a, b, ..] => match (a, b.to_ascii_uppercase()) {
                (b'2', b'1') => Some(b'!'),
                (b'2', b'4') => Some(b'$'),
                (b'4', b'0') => Some(b'@'),
                (b'2', b'3') => Some(b'#'),
                _ => None,
            },
            [first, ..] => Some(*first),
            [] => None,
        };
        let placeholder = match decoded_first {
            Some(b'!') => "{roomId}",
            Some(b'$') => "{eventId}",
            Some(b'@') => "{userId}",
            Some(b'#') => "{roomAlias}",
            _ if known(seg) => {
                out.push_str(seg);
                continue;
            }
            _ => "{param}",
        };
        out.push_str(placeholder);
    }
    out
}

/// The access log's target: `FEDPIN_LOG=fedpin::access=off` turns it off.
pub const TARGET: &str = "fedpin::access";

/// Where the access log's JSON lines go when the daemon's log is JSON
/// (set once, by [`write_json_to`]); unset, lines are tracing events.
static JSON_TO: OnceLock<BatchWriter> = OnceLock::new();

/// Sends the access log's lines, as JSON, straight to `writer` (the
/// daemon's batched log, when its log format is JSON) instead of through
/// tracing's per-field dispatch. Set once per process; later calls are
/// ignored. Whether a line is logged is still the log filter's to say.
pub fn write_json_to(writer: BatchWriter) {
    let _ = JSON_TO.set(writer);
}

/// One request's line in the access log. The text values are what the edge
/// already holds (the path is a [`template`], never the raw path).
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// `inbound`.
    pub direction: &'static str,
    /// The request method.
    pub method: &'a str,
    /// The path's [`template`].
    pub path: &'a str,
    /// The X-Matrix origin, `-` for none.
    pub origin: &'a str,
    /// The response status.
    pub status: u16,
    /// The response's Content-Length, if it had one.
    pub bytes: Option<u64>,
    /// From the request's head to the response's head, in milliseconds.
    pub latency_ms: f64,
    /// The client's address.
    pub client: &'a str,
}

impl Line<'_> {
    /// Logs the line: as JSON written straight to the daemon's log if
    /// [`write_json_to`] was called, else as a tracing event (the text log,
    /// tests' subscribers). Either way only if the log filter enables
    /// [`TARGET`] at INFO.
    ///
    /// The JSON line is the same as tracing-subscriber's JSON format gives
    /// for the event (without spans): written directly it costs about a
    /// third of what the event cost through tracing's dispatch and a field
    /// visitor (callgrind: 4.5k of a kept-alive request's instructions).
    pub fn log(&self) {
        let Some(out) = JSON_TO.get() else {
            self.event();
            return;
        };
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        LINE.with(|cell| {
            let mut fresh = String::new();
            let mut held = cell.try_borrow_mut();
            let line = match held.as_deref_mut() {
                Ok(l) => l,
                Err(_) => &mut fresh,
            };
            line.clear();
            self.json(line, std::time::SystemTime::now());
            out.write_line(line.as_bytes());
        });
    }

    /// The line as a tracing event. The text values are `%` (Display): the
    /// text format prints them unquoted (operators grep for
    /// `path=/_matrix/…`).
    fn event(&self) {
        tracing::info!(
            target: TARGET,
            parent: None,
            direction = self.direction,
            method = %self.method,
            path = %self.path,
            origin = self.origin,
            status = self.status,
            bytes = self.bytes,
            latency_ms = self.latency_ms,
            client = %self.client,
            "request"
        );
    }

    /// The line as JSON, in the shape of tracing-subscriber's JSON format
    /// without spans, newline included:
    /// `{"timestamp":…,"level":"INFO","fields":{"message":"request",…},"target":"fedpin::access"}`.
    /// Strings are escaped as JSON requires, by the canonical-JSON escaper;
    /// the member names need none.
    fn json(&self, out: &mut String, now: std::time::SystemTime) {
        out.push_str("{\"timestamp\":\"");
        write_timestamp(out, now);
        out.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"direction\":");
        write_json_str(out, self.direction);
        out.push_str(",\"method\":");
        write_json_str(out, self.method);
        out.push_str(",\"path\":");
        write_json_str(out, self.path);
        out.push_str(",\"origin\":");
        write_json_str(out, self.origin);
        out.push_str(",\"status\":");
        out.push_str(itoa::Buffer::new().format(self.status));
        if let Some(bytes) = self.bytes {
            out.push_str(",\"bytes\":");
            out.push_str(itoa::Buffer::new().format(bytes));
        }
        out.push_str(",\"latency_ms\":");
        write_f64(out, self.latency_ms);
        out.push_str(",\"client\":");
        write_json_str(out, self.client);
        out.push_str("},\"target\":\"");
        out.push_str(TARGET);
        out.push_str("\"}\n");
    }
}

/// `now` as tracing-subscriber's `SystemTime` writes it (RFC 3339, UTC,
/// microseconds: `2026-12-02T20:03:55.969155Z`). The part down to the
/// second is formatted once a second per thread and kept: formatting the
/// whole date each time was 2.4k instructions of every access-log line.
fn write_timestamp(w: &mut String, now: std::time::SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            // "YYYY-MM-DDTHH:MM:SSZ" without its Z: the fraction follows.
            cached.1 = super::status_page::machine_time(t);
            cached.1.pop();
            cached.0 = secs;
        }
        w.push_str(&cached.1);
    });
    let mut micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    w.push('.');
    w.extend(digits.iter().map(|&d| char::from(d)));
    w.push('Z');
}

/// `value` as a JSON number. Values from 0 to 10^12 (the access log's
/// `latency_ms`) to the thousandth, in integers (`0.295`, `12.0`): the
/// shortest round-trip digits (`{value}`) were a seventh of the line's
/// instructions. Others as `{value}`; NaN and infinities, which JSON has
/// not, as `null`.
fn write_f64(w: &mut String, value: f64) {
    if !value.is_finite() {
        w.push_str("null");
        return;
    }
    if !(0.0..1e12).contains(&value) {
        // Writing to a String cannot fail.
        let _ = write!(w, "{value}");
        return;
    }
    // In range: the product is below 2^53 and rounds to an integer exactly.
    let thousandths = (value * 1000.0).round() as u64;
    let mut int = itoa::Buffer::new();
    w.push_str(int.format(thousandths / 1000));
    let frac = thousandths % 1000;
    w.push('.');
    if frac == 0 {
        w.push('0');
    } else {
        let digits = [frac / 100, frac / 10 % 10, frac % 10];
        let keep = if digits[2] != 0 {
            3
        } else if digits[1] != 0 {
            2
        } else {
            1
        };
        for d in &digits[..keep] {
            w.push(char::from(b'0' + *d as u8));
        }
    }
}

/// `s` as a JSON string.
fn write_json_str(w: &mut String, s: &str) {
    w.push('"');
    // Writing to a String cannot fail.
    let _ = crate::matrix::canonical_json::escape(s, w);
    w.push('"');
}

#[cfg(test)]
mod tests {
    use super::{template, Line};

    /// The cached second and the written fraction give RFC 3339 that reads
    /// back as the instant (to the microsecond), across second, day and
    /// year boundaries and back again (the cache is per second, not only
    /// forward).
    #[test]
    fn timestamps_read_back_as_the_instant() {
        use std::time::{Duration, UNIX_EPOCH};
        let instants = [
            (0, 0),
            (1_700_000_000, 1),
            (1_700_000_000, 999_999),
            (1_700_000_001, 0),
            (1_709_164_799, 500_000),
            (1_709_164_800, 7),
            (1_700_000_000, 42),
            (4_102_444_799, 999_999),
        ];
        for (secs, micros) in instants {
            let t = UNIX_EPOCH + Duration::new(secs, micros * 1000 + 999);
            let mut out = String::new();
            super::write_timestamp(&mut out, t);
            assert_eq!(out.len(), 27, "{out}");
            let back =
                time::OffsetDateTime::parse(&out, &time::format_description::well_known::Rfc3339)
                    .unwrap();
            let want = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap()
                + time::Duration::microseconds(micros as i64);
            assert_eq!(back, want, "{out}");
        }
    }

    /// Floats to the thousandth in range, as `{value}` outside it, `null`
    /// for what JSON cannot hold; every output reads back as JSON within
    /// half a thousandth (in range) or exactly (outside).
    #[test]
    fn floats_are_written_to_the_thousandth() {
        for (v, want) in [
            (0.0, "0.0"),
            (0.5, "0.5"),
            (0.2948, "0.295"),
            (0.0999, "0.1"),
            (0.0004, "0.0"),
            (12.0, "12.0"),
            (12.05, "12.05"),
            (1234.0005, "1234.001"),
            (999_999_999_999.9, "999999999999.9"),
            (1e12, "1000000000000"),
            (-1.5, "-1.5"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ] {
            let mut out = String::new();
            super::write_f64(&mut out, v);
            assert_eq!(out, want, "{v}");
            let back: serde_json::Value = serde_json::from_str(&out).unwrap();
            if v.is_finite() {
                let back = back.as_f64().unwrap();
                assert!(
                    (back - v).abs() <= 0.0005 * v.abs().max(1.0),
                    "{v} -> {out}"
                );
            } else {
                assert!(back.is_null());
            }
        }
    }

    /// A captured log: what `tracing_subscriber` wrote, line by line.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lines to log: every text field holding what JSON must escape, a
    /// line without `bytes`, and odd latencies.
    fn lines() -> Vec<Line<'static>> {
        let line = Line {
            direction: "inbound",
            method: "GET",
            path: "/_matrix/federation/v1/send/{param}",
            origin: "-",
            status: 200,
            bytes: Some(185),
            latency_ms: 0.5,
            client: "127.0.0.1",
        };
        vec![
            line,
            Line {
                origin: "tricky \"name\"\\\u{1}\n\u{7f}é\u{2028}.example",
                method: "PR\"OP",
                path: "/a\\b\t",
                client: "::1",
                bytes: None,
                status: 599,
                latency_ms: 1234.0005,
                ..line
            },
            Line {
                bytes: Some(u64::MAX),
                latency_ms: f64::NAN,
                ..line
            },
            Line {
                bytes: Some(0),
                latency_ms: 2e12,
                ..line
            },
        ]
    }

    /// The JSON line written straight to the log says exactly what
    /// tracing-subscriber's own JSON format (without spans) says of the
    /// same line as a tracing event, for every line; only the timestamp
    /// differs (each writes its own), and it is RFC 3339.
    #[test]
    fn the_direct_json_line_is_tracing_subscribers_json_line() {
        use tracing_subscriber::prelude::*;
        for line in lines() {
            let out = Captured::default();
            let w = out.clone();
            let subscriber = tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(move || w.clone()),
            );
            tracing::subscriber::with_default(subscriber, || {
                // Inside a span, which the line must not carry.
                let span = tracing::info_span!("connection", client_addr = "192.0.2.1:1");
                let _in = span.enter();
                line.event();
            });
            let theirs = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            let mut ours = String::new();
            line.json(&mut ours, std::time::SystemTime::now());
            for text in [&ours, &theirs] {
                assert!(
                    text.ends_with('\n') && text.lines().count() == 1,
                    "{text:?}"
                );
            }
            let strip = |text: &str| {
                let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
                let t = v.as_object_mut().unwrap().remove("timestamp").unwrap();
                let t = t.as_str().unwrap().to_owned();
                assert!(
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .is_ok(),
                    "{t}"
                );
                v
            };
            let (o, t) = (strip(&ours), strip(&theirs));
            // tracing-subscriber writes a NaN as `null` too, and a float
            // in full where ours rounds to the thousandth (1234.0005 reads
            // back within half a thousandth): latency compared by value.
            let latency = |v: &serde_json::Value| v["fields"]["latency_ms"].as_f64();
            match (latency(&o), latency(&t)) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 0.0005, "{ours} / {theirs}"),
                (a, b) => assert_eq!(a.is_none(), b.is_none(), "{ours} / {theirs}"),
            }
            let without_latency = |mut v: serde_json::Value| {
                v["fields"].as_object_mut().unwrap().remove("latency_ms");
                v
            };
            assert_eq!(without_latency(o), without_latency(t), "{ours} / {theirs}");
        }
    }

    /// With nothing set by `write_json_to` (tests, the text log), a line is
    /// a tracing event under the access target, its text values Display
    /// (unquoted in the text format).
    #[test]
    fn without_a_json_log_a_line_is_a_tracing_event() {
        let out = Captured::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .compact()
            .finish();
        tracing::subscriber::with_default(subscriber, || lines()[0].log());
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("fedpin::access"), "{text}");
        assert!(
            text.contains("path=/_matrix/federation/v1/send/{param}"),
            "{text}"
        );
        assert!(text.contains("client=127.0.0.1"), "{text}");
    }

    #[test]
    fn replaces_identifiers() {
        assert_eq!(
            template("/_matrix/federation/v1/send/1234abc"),
            "/_matrix/federation/v1/send/{param}"
        );
        assert_eq!(
            template("/_matrix/federation/v1/make_join/!room:hs.example/@alice:hs.example?ver=10"),
            "/_matrix/federation/v1/make_join/{roomId}/{userId}"
        );
        assert_eq!(
            template("/_matrix/federation/v1/event/%24abc"),
            "/_matrix/federation/v1/event/{eventId}"
        );
        assert_eq!(template("/_matrix/key/v2/server"), "/_matrix/key/v2/server");
        assert_eq!(
            template("/_matrix/federation/v2/send_join/%21r%3Ahs/%24e"),
            "/_matrix/federation/v2/send_join/{roomId}/{eventId}"
        );
    }
}
