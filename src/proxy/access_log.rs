//! Access logs: path templating, so logs never carry room IDs, event IDs,
//! user IDs, transaction IDs or other values; and [`JsonLine`], the JSON
//! formatter of the access-log layer.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

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

/// Whether the access line's text fields go to the log as strings rather
/// than as `%` (Display) values. Off by default: the text format prints
/// Display values unquoted (operators grep for `path=/_matrix/…`) and
/// strings quoted. The JSON format quotes both alike, and a string is
/// written as it is, where a Display value goes through `fmt` (callgrind:
/// about 1.9k instructions of each request's line, against 0.6k), so the
/// daemon turns this on when its log is JSON.
static STRING_FIELDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets whether the access line's text fields are logged as strings (see
/// [`string_fields`]); for a JSON log.
pub fn use_string_fields(on: bool) {
    STRING_FIELDS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the access line's text fields are logged as strings: true once
/// [`use_string_fields`] turned it on (a JSON log), else Display values.
pub fn string_fields() -> bool {
    STRING_FIELDS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The JSON line of one access-log event, in the shape of
/// tracing-subscriber's JSON format without spans:
/// `{"timestamp":…,"level":"INFO","fields":{"message":"request",…},"target":"fedpin::access"}`.
///
/// Written straight into the line buffer. tracing-subscriber's own JSON
/// format goes through serde_json and re-checks the UTF-8 of every piece it
/// writes; at one line per request that was about a fifth of a kept-alive
/// request's instructions (callgrind). Strings are escaped as JSON requires,
/// by the canonical-JSON escaper.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        use std::cell::RefCell;
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        // Built in a buffer of this thread's, then written in one call:
        // the writer is `dyn`, and a call through it per piece (a quote, a
        // colon) was a tenth of the line's instructions (callgrind).
        LINE.with(|cell| {
            let mut fresh = String::new();
            let mut held = cell.try_borrow_mut();
            let line = match held.as_deref_mut() {
                Ok(l) => l,
                Err(_) => &mut fresh,
            };
            line.clear();
            json_line(line, event)?;
            writer.write_str(line)
        })
    }
}

/// Writes the JSON line of `event` into `out`.
fn json_line(out: &mut String, event: &tracing::Event<'_>) -> fmt::Result {
    let meta = event.metadata();
    out.push_str("{\"timestamp\":\"");
    write_timestamp(out, std::time::SystemTime::now())?;
    out.push_str("\",\"level\":\"");
    out.push_str(meta.level().as_str());
    out.push_str("\",\"fields\":{");
    let mut fields = JsonFields {
        out,
        first: true,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    out.push_str("},\"target\":");
    write_json_str(out, meta.target())?;
    out.push_str("}\n");
    Ok(())
}

/// Writes an event's fields as JSON members.
struct JsonFields<'w> {
    out: &'w mut String,
    first: bool,
    result: fmt::Result,
}

impl JsonFields<'_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        self.result = write_json_str(self.out, field.name()).and_then(|()| {
            self.out.push(':');
            value(self.out)
        });
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| write_json_str(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |w| write_f64(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `now` as tracing-subscriber's `SystemTime` writes it (RFC 3339, UTC,
/// microseconds: `2026-12-02T20:03:55.969155Z`). The part down to the
/// second is formatted once a second per thread and kept: formatting the
/// whole date each time was 2.4k instructions of every access-log line.
fn write_timestamp(w: &mut impl fmt::Write, now: std::time::SystemTime) -> fmt::Result {
    use std::cell::RefCell;
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
        w.write_str(&cached.1)
    })?;
    let mut micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    w.write_char('.')?;
    w.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)?;
    w.write_char('Z')
}

/// `value` as a JSON number. Values from 0 to 10^12 (the access log's
/// `latency_ms`) to the thousandth, in integers (`0.295`, `12.0`): the
/// shortest round-trip digits (`{value}`) were a seventh of the line's
/// instructions. Others as `{value}`; NaN and infinities, which JSON has
/// not, as `null`.
fn write_f64(w: &mut String, value: f64) -> fmt::Result {
    if !value.is_finite() {
        w.push_str("null");
        return Ok(());
    }
    if !(0.0..1e12).contains(&value) {
        return write!(w, "{value}");
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
    Ok(())
}

/// `s` as a JSON string.
fn write_json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(&mut *w).write_str(s)?;
    w.write_char('"')
}

/// A writer that escapes what passes through it for a JSON string.
struct Escaped<'w, W: fmt::Write + ?Sized>(&'w mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::matrix::canonical_json::escape(s, self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::template;

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
            super::write_timestamp(&mut out, t).unwrap();
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
            super::write_f64(&mut out, v).unwrap();
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

    fn emit_with<L>(layer: impl FnOnce(Captured) -> L) -> serde_json::Value
    where
        L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync,
    {
        emit_fields_with(layer, false)
    }

    /// The access event through `layer`, its text fields as Display values
    /// or (`strings`) as strings.
    fn emit_fields_with<L>(layer: impl FnOnce(Captured) -> L, strings: bool) -> serde_json::Value
    where
        L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync,
    {
        use tracing_subscriber::prelude::*;
        let out = Captured::default();
        let subscriber = tracing_subscriber::registry().with(layer(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("connection", client_addr = "192.0.2.1:1");
            let _in = span.enter();
            let (method, path) = ("GET", "/_matrix/federation/v1/send/{param}");
            let client = std::net::IpAddr::from([127, 0, 0, 1]).to_string();
            macro_rules! line {
                ($($text:tt)*) => {
                    tracing::info!(
                        target: "fedpin::access",
                        parent: None,
                        direction = "inbound",
                        method = $($text)* method,
                        path = $($text)* path,
                        origin = "tricky \"name\"\\\u{1}\n.example",
                        status = 200u16,
                        bytes = 185u64,
                        signed = -3i64,
                        ok = true,
                        latency_ms = 0.5f64,
                        client = $($text)* client.as_str(),
                        "request"
                    )
                };
            }
            if strings {
                line!();
            } else {
                line!(%);
            }
        });
        let bytes = out.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.ends_with('\n') && text.lines().count() == 1,
            "{text:?}"
        );
        serde_json::from_str(&text).unwrap()
    }

    /// The hand-written access line parses as JSON and says exactly what
    /// tracing-subscriber's own JSON format (without spans) says.
    #[test]
    fn json_line_matches_tracing_subscribers_json() {
        let ours = emit_with(|w| {
            tracing_subscriber::fmt::layer()
                .event_format(super::JsonLine)
                .with_writer(move || w.clone())
        });
        let theirs = emit_with(|w| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(move || w.clone())
        });
        let strip = |mut v: serde_json::Value| {
            let t = v.as_object_mut().unwrap().remove("timestamp").unwrap();
            let t = t.as_str().unwrap().to_owned();
            assert!(
                time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                    .is_ok(),
                "{t}"
            );
            v
        };
        assert_eq!(strip(ours), strip(theirs));
    }

    /// The daemon's JSON log takes the access line's text fields as
    /// strings (`string_fields`): the line says what it says with them as
    /// Display values, to the byte (the timestamp aside).
    #[test]
    fn string_fields_give_the_same_json_line_as_display_fields() {
        let line = |strings| {
            emit_fields_with(
                |w| {
                    tracing_subscriber::fmt::layer()
                        .event_format(super::JsonLine)
                        .with_writer(move || w.clone())
                },
                strings,
            )
        };
        let strip = |mut v: serde_json::Value| {
            v.as_object_mut().unwrap().remove("timestamp").unwrap();
            v.to_string()
        };
        let (display, strings) = (strip(line(false)), strip(line(true)));
        assert_eq!(display, strings);
        assert!(display.contains(r#""client":"127.0.0.1""#), "{display}");
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
