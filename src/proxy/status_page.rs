//! The status page at `/` on the admin listener: one server-rendered HTML
//! page for an operator's browser, with no script, no external asset and
//! no form. It shows, from the state the daemon already keeps:
//!
//! * every pinned peer with its trust and enforcement mode, days until its
//!   pins expire, the nearest certificate expiry seen, the last handshake
//!   result per direction with its time, and a red badge when a critical
//!   alert named it in the last 24 hours;
//! * hosts without a pin entry seen lately;
//! * the latest alerts (event, severity, peer, time, repeats);
//! * the pin generation in force and the last reload, loaded or rejected;
//! * the listeners and their counters.
//!
//! Nothing on it is secret: no keys, pins, tokens, peer addresses or Matrix
//! identifiers beyond server names. Every value is written through
//! [`Page::text`], which escapes `& < > " '`; markup can only be written
//! from `&'static str`, so no value can reach the page unescaped.

use std::fmt::{self, Display, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

use super::admin::AdminSources;
use super::peer_results::{LastHandshake, PeerResults};
use crate::alert::{Action, Alert, Direction, Severity};
use crate::metrics::HandshakeResult;
use crate::pins::{ExpiredPolicy, Mode, UnpinnedPolicy};

/// The latest alerts shown.
pub const ALERT_ROWS: usize = 50;

/// Hosts without a pin entry shown, per direction.
pub const UNPINNED_ROWS: usize = 20;

/// How far back a critical alert puts the red badge on its peer.
pub const CRITICAL_WINDOW: Duration = Duration::hours(24);

/// Pins expiring sooner than this are shown as a warning.
const EXPIRY_WARNING: Duration = Duration::days(30);

/// The `Content-Security-Policy` the page is served with: nothing may load,
/// only the page's own `<style>` applies.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A `fmt::Write` that escapes HTML's five special characters on the way
/// into the page (safe in text and in quoted attribute values).
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// Escapes `value` for HTML text or a quoted attribute value.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let _ = Escaping(&mut out).write_str(value);
    out
}

/// The page being written: markup only from `&'static str`, every value
/// through [`Page::text`].
struct Page {
    out: String,
}

impl Page {
    fn raw(&mut self, markup: &'static str) {
        self.out.push_str(markup);
    }

    fn text(&mut self, value: impl Display) {
        let _ = write!(Escaping(&mut self.out), "{value}");
    }

    /// `<time datetime="…">2026-12-02 08:31:05 UTC</time> (3 min ago)`.
    fn time(&mut self, t: OffsetDateTime, now: OffsetDateTime) {
        let t = t.to_offset(UtcOffset::UTC);
        let shown = format_args!(
            "{} {:02}:{:02}:{:02} UTC",
            day(t),
            t.hour(),
            t.minute(),
            t.second()
        );
        self.time_element(t, shown);
        self.raw(" <span class=\"ago\">(");
        self.text(ago(now - t));
        self.raw(")</span>");
    }

    /// A handshake result (inside an open `data-result="` attribute): its
    /// label, the badge in words, and when.
    fn result(&mut self, l: &LastHandshake, now: OffsetDateTime) {
        let (words, badge) = result_badge(l.result);
        self.text(l.result.as_str());
        self.raw("\"><span class=\"");
        self.raw(badge);
        self.raw("\">");
        self.raw(words);
        self.raw("</span> ");
        self.time(l.at, now);
    }

    /// `<time datetime="…">shown</time>` for a UTC time.
    fn time_element(&mut self, t: OffsetDateTime, shown: impl fmt::Display) {
        self.raw("<time datetime=\"");
        self.text(machine_time(t));
        self.raw("\">");
        self.text(shown);
        self.raw("</time>");
    }

    /// A date with the whole days left until it (or since it passed).
    fn deadline(&mut self, t: OffsetDateTime, now: OffsetDateTime, warn: Duration) {
        let left = t - now;
        let class: &'static str = if left <= Duration::ZERO {
            "badge b-bad"
        } else if left < warn {
            "badge b-warn"
        } else {
            "badge b-quiet"
        };
        self.raw("<span class=\"");
        self.raw(class);
        self.raw("\">");
        let days = left.whole_days();
        if left <= Duration::ZERO {
            self.text(format_args!("expired {} d ago", -days));
        } else {
            self.text(format_args!("{days} d"));
        }
        let t = t.to_offset(UtcOffset::UTC);
        self.raw("</span> ");
        self.time_element(t, day(t));
    }

    /// One `<tr>` of a two-column key/value table.
    fn fact(&mut self, key: &'static str, value: impl Display) {
        self.raw("<tr><th scope=\"row\">");
        self.raw(key);
        self.raw("</th><td>");
        self.text(value);
        self.raw("</td></tr>");
    }
}

/// `YYYY-MM-DD` of a UTC time.
fn day(t: OffsetDateTime) -> String {
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// A `datetime` attribute value: UTC, whole seconds (HTML allows at most
/// three fraction digits; RFC 3339 output may carry nine).
pub(crate) fn machine_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// "12 s ago", "4 min ago", "3 h ago", "2 d ago".
fn ago(d: Duration) -> String {
    let s = d.whole_seconds();
    if s < 1 {
        "just now".into()
    } else if s < 60 {
        format!("{s} s ago")
    } else if s < 3600 {
        format!("{} min ago", s / 60)
    } else if s < 86_400 {
        format!("{} h ago", s / 3600)
    } else {
        format!("{} d ago", s / 86_400)
    }
}

/// The words shown for a handshake result, and its badge class.
fn result_badge(r: HandshakeResult) -> (&'static str, &'static str) {
    match r {
        HandshakeResult::Ok => ("OK", "badge b-ok"),
        HandshakeResult::PinMismatch => ("pin mismatch", "badge b-bad"),
        HandshakeResult::ChainInvalid => ("chain invalid", "badge b-bad"),
        HandshakeResult::UnpinnedDenied => ("unpinned, denied", "badge b-bad"),
        HandshakeResult::Expired => ("pins expired, refused", "badge b-bad"),
        HandshakeResult::SignatureInvalid => ("key not held", "badge b-bad"),
        HandshakeResult::Timeout => ("timed out", "badge b-warn"),
        HandshakeResult::Error => ("failed", "badge b-warn"),
    }
}

fn direction_word(d: Direction) -> &'static str {
    match d {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
        Direction::Cli => "cli",
        Direction::Local => "local",
    }
}

const STYLE: &str = "\
:root{color-scheme:light;--line:#d8dee4;--muted:#57606a;--bg:#f6f8fa}\
*{box-sizing:border-box}\
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1f2328;background:#fff}\
header{padding:18px 28px;border-bottom:1px solid var(--line);background:var(--bg)}\
header h1{margin:0;font-size:20px;font-weight:600}\
header p{margin:4px 0 0;color:var(--muted)}\
main{padding:8px 28px 28px;max-width:1400px}\
section{margin-top:22px}\
h2{font-size:16px;font-weight:600;margin:0 0 8px}\
p.note{margin:0 0 8px;color:var(--muted)}\
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line)}\
th,td{text-align:left;vertical-align:top;padding:6px 10px;border-bottom:1px solid var(--line)}\
thead th{background:var(--bg);font-weight:600;font-size:13px;color:var(--muted)}\
table.facts{width:auto;min-width:520px}\
table.facts th{background:var(--bg);font-weight:600;white-space:nowrap;width:1%}\
td.reason{max-width:560px;overflow-wrap:anywhere}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
.peer{font-weight:600}\
time{white-space:nowrap}\
.ago,.host,.none{color:var(--muted)}\
.host{font-size:12px}\
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}\
.b-ok{background:#dafbe1;color:#116329}\
.b-bad{background:#ffebe9;color:#a40e26}\
.b-warn{background:#fff8c5;color:#7d4e00}\
.b-quiet{background:#eaeef2;color:#424a53}\
.b-crit{background:#cf222e;color:#fff}\
.banner{margin-top:18px;padding:10px 14px;border-radius:6px;font-weight:600}\
.banner.good{background:#dafbe1;color:#116329;border:1px solid #aceebb}\
.banner.bad{background:#ffebe9;color:#a40e26;border:1px solid #ffcecb}\
ul.failures{margin:4px 0 0;padding-left:20px}\
";

/// Renders the page at `now`; `admin` is the admin listener's own address.
pub fn render(sources: &AdminSources, admin: Option<SocketAddr>, now: OffsetDateTime) -> String {
    let mut p = Page {
        out: String::with_capacity(16 * 1024),
    };
    let set = sources.pins.current();
    let out_results = sources.outbound.as_ref().map(|o| &o.stats().peers);
    let in_results = sources.inbound.as_ref().map(|i| &i.stats().peers);
    let critical = |name: &str| critical_alert(sources, name, now);

    p.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    p.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    p.raw("<meta http-equiv=\"refresh\" content=\"30\">\n<title>fedpin status</title>\n<style>");
    p.raw(STYLE);
    p.raw("</style>\n</head>\n<body>\n<header><h1>fedpin status</h1><p>fedpin ");
    p.text(env!("CARGO_PKG_VERSION"));
    p.raw(" · page generated ");
    p.time(now, now);
    p.raw(" · refreshes every 30 s</p></header>\n<main>\n");

    // At a glance: critical peers and health.
    let peers_critical = set
        .peers()
        .iter()
        .filter(|peer| critical(&peer.server_name).is_some())
        .count();
    if peers_critical > 0 {
        p.raw("<div class=\"banner bad\" id=\"glance\">");
        p.text(format_args!(
            "{peers_critical} pinned peer(s) with a critical alert in the last 24 hours"
        ));
        p.raw("</div>\n");
    } else {
        p.raw("<div class=\"banner good\" id=\"glance\">No critical alert about a pinned peer in the last 24 hours</div>\n");
    }

    pin_set_section(&mut p, sources, now);

    peers_section(&mut p, &set, sources, out_results, in_results, now);

    unpinned_section(&mut p, out_results, in_results, now);
    alerts_section(&mut p, sources, now);
    listeners_section(&mut p, sources, admin);
    p.raw("</main>\n</body>\n</html>\n");
    p.out
}

/// The pinned-peers table, peers with a critical alert first.
fn peers_section(
    p: &mut Page,
    set: &crate::pins::PinSet,
    sources: &AdminSources,
    out_results: Option<&PeerResults>,
    in_results: Option<&PeerResults>,
    now: OffsetDateTime,
) {
    let critical = |name: &str| critical_alert(sources, name, now);
    // Peers.
    p.raw("<section id=\"peers\">\n<h2>Pinned peers</h2>\n");
    if set.is_empty() {
        p.raw("<p class=\"note\">The pin set has no peers.</p>\n");
    } else {
        p.raw("<table id=\"peers-table\">\n<thead><tr><th scope=\"col\">Peer</th><th scope=\"col\">Trust</th><th scope=\"col\">Mode</th><th scope=\"col\">Pins</th><th scope=\"col\">Pins expire</th><th scope=\"col\">Nearest certificate expiry seen</th>");
        if out_results.is_some() {
            p.raw("<th scope=\"col\">Last outbound handshake</th>");
        }
        if in_results.is_some() {
            p.raw("<th scope=\"col\">Last inbound handshake (client certificate)</th>");
        }
        p.raw("</tr></thead>\n<tbody>\n");
        let mut rows: Vec<_> = set
            .peers()
            .iter()
            .map(|peer| (critical(&peer.server_name), peer))
            .collect();
        // Peers with a critical alert first, then by name.
        rows.sort_by(|(a, x), (b, y)| {
            b.is_some()
                .cmp(&a.is_some())
                .then_with(|| x.server_name.cmp(&y.server_name))
        });
        for (crit, peer) in rows {
            peer_row(p, peer, crit, out_results, in_results, now);
        }
        p.raw("</tbody>\n</table>\n");
    }
    p.raw("</section>\n");
}

/// One row of the pinned-peers table.
fn peer_row(
    p: &mut Page,
    peer: &crate::pins::Peer,
    crit: Option<(OffsetDateTime, crate::alert::AlertEvent)>,
    out_results: Option<&PeerResults>,
    in_results: Option<&PeerResults>,
    now: OffsetDateTime,
) {
    let out = out_results.and_then(|r| r.pinned(&peer.server_name));
    let inb = in_results.and_then(|r| r.pinned(&peer.server_name));
    p.raw("<tr data-peer=\"");
    p.text(&peer.server_name);
    p.raw("\"><td><span class=\"peer\">");
    p.text(&peer.server_name);
    p.raw("</span>");
    if let Some((at, event)) = crit {
        p.raw(" <span class=\"badge b-crit\" data-critical=\"");
        p.text(event.as_str());
        p.raw("\">critical: ");
        p.text(event.as_str());
        p.raw("</span><br><span class=\"ago\">last ");
        p.text(ago(now - at));
        p.raw("</span>");
    }
    p.raw("</td><td>");
    p.text(peer.trust.as_str());
    p.raw("</td><td>");
    match peer.mode {
        Mode::Enforce => p.raw("<span class=\"badge b-quiet\">enforce</span>"),
        Mode::Report => p.raw("<span class=\"badge b-warn\">report</span>"),
    }
    p.raw("</td><td>");
    if peer.pins.len() == 1 {
        p.raw("<span class=\"badge b-warn\">1, no backup</span>");
    } else {
        p.text(peer.pins.len());
    }
    p.raw("</td><td>");
    match peer.expires {
        Some(e) => p.deadline(e, now, EXPIRY_WARNING),
        None => p.raw("<span class=\"none\">never</span>"),
    }
    p.raw("</td><td>");
    let seen = [&out, &inb]
        .into_iter()
        .filter_map(|l| l.as_ref().and_then(|l| l.nearest_cert_expiry))
        .min();
    match seen {
        Some(e) => p.deadline(e, now, EXPIRY_WARNING),
        None => p.raw("<span class=\"none\">not seen yet</span>"),
    }
    p.raw("</td>");
    if out_results.is_some() {
        last_cell(p, "last-out", out.as_ref(), now);
    }
    if in_results.is_some() {
        last_cell(p, "last-in", inb.as_ref(), now);
    }
    p.raw("</tr>\n");
}

/// The last critical alert about `name` within the red-badge window.
fn critical_alert(
    sources: &AdminSources,
    name: &str,
    now: OffsetDateTime,
) -> Option<(OffsetDateTime, crate::alert::AlertEvent)> {
    sources
        .alerts
        .last_critical(name)
        .filter(|(at, _)| now - *at <= CRITICAL_WINDOW)
}

/// A peer's last handshake in one direction.
fn last_cell(p: &mut Page, class: &'static str, last: Option<&LastHandshake>, now: OffsetDateTime) {
    p.raw("<td class=\"");
    p.raw(class);
    match last {
        Some(l) => {
            p.raw("\" data-result=\"");
            p.result(l, now);
            p.raw("<br><span class=\"host\">as ");
            p.text(&l.host);
            p.raw("</span></td>");
        }
        None => p.raw("\"><span class=\"none\">none since start</span></td>"),
    }
}

fn pin_set_section(p: &mut Page, sources: &AdminSources, now: OffsetDateTime) {
    let set = sources.pins.current();
    let (since, last) = sources.pins.reload_history();
    let (ok, failed) = sources.pins.reload_counts();
    p.raw("<section id=\"pin-set\">\n<h2>Pin set</h2>\n<table class=\"facts\">\n");
    p.fact("Generation", set.generation);
    p.raw("<tr><th scope=\"row\">In force since</th><td>");
    p.time(since, now);
    p.raw("</td></tr>\n");
    p.fact("Peers", set.len());
    p.fact("File", sources.pins.path().display());
    p.fact(
        "Policy",
        format_args!(
            "unpinned = {}, on_expired = {}",
            match set.policy.unpinned {
                UnpinnedPolicy::Webpki => "webpki",
                UnpinnedPolicy::Deny => "deny",
            },
            match set.policy.on_expired {
                ExpiredPolicy::Webpki => "webpki",
                ExpiredPolicy::Deny => "deny",
            }
        ),
    );
    p.raw("<tr><th scope=\"row\">Last reload</th><td id=\"last-reload\">");
    match last {
        None => p.raw("<span class=\"none\">none since start</span>"),
        Some(r) => {
            match &r.outcome {
                Ok(g) => {
                    p.raw("<span class=\"badge b-ok\">loaded</span> generation ");
                    p.text(g);
                }
                Err(_) => p.raw(
                    "<span class=\"badge b-bad\">rejected</span> the previous set stays in force",
                ),
            }
            p.raw(", ");
            p.time(r.at, now);
            if let Err(why) = &r.outcome {
                p.raw("<br><span class=\"host\">");
                p.text(why);
                p.raw("</span>");
            }
        }
    }
    p.raw("</td></tr>\n");
    p.fact(
        "Reloads since start",
        format_args!("{ok} loaded, {failed} rejected"),
    );
    p.raw("<tr><th scope=\"row\">Health</th><td id=\"health\">");
    match super::admin::health(sources) {
        Ok(_) => p.raw("<span class=\"badge b-ok\">ok</span>"),
        Err(v) => {
            p.raw("<span class=\"badge b-bad\">failing</span><ul class=\"failures\">");
            for f in v["failures"].as_array().into_iter().flatten() {
                p.raw("<li>");
                p.text(f.as_str().unwrap_or_default());
                p.raw("</li>");
            }
            p.raw("</ul>");
        }
    }
    p.raw("</td></tr>\n</table>\n</section>\n");
}

fn unpinned_section(
    p: &mut Page,
    out: Option<&PeerResults>,
    inb: Option<&PeerResults>,
    now: OffsetDateTime,
) {
    let mut rows: Vec<(&'static str, LastHandshake)> = Vec::new();
    for (dir, r) in [("outbound", out), ("inbound", inb)] {
        if let Some(r) = r {
            rows.extend(r.unpinned(UNPINNED_ROWS).into_iter().map(|l| (dir, l)));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.at));
    p.raw("<section id=\"unpinned\">\n<h2>Hosts without a pin entry, seen lately</h2>\n");
    if rows.is_empty() {
        p.raw("<p class=\"note\">None since start.</p>\n</section>\n");
        return;
    }
    p.raw("<table>\n<thead><tr><th scope=\"col\">Host</th><th scope=\"col\">Direction</th><th scope=\"col\">Last handshake</th></tr></thead>\n<tbody>\n");
    for (dir, l) in rows {
        p.raw("<tr><td>");
        p.text(&l.host);
        p.raw("</td><td>");
        p.raw(dir);
        p.raw("</td><td data-result=\"");
        p.result(&l, now);
        p.raw("</td></tr>\n");
    }
    p.raw("</tbody>\n</table>\n</section>\n");
}

fn alerts_section(p: &mut Page, sources: &AdminSources, now: OffsetDateTime) {
    let recent: Vec<Alert> = sources.alerts.recent();
    let raised = sources.alerts.counters().raised.load(Ordering::Relaxed);
    p.raw("<section id=\"alerts\">\n<h2>Latest alerts</h2>\n<p class=\"note\">");
    p.text(format_args!(
        "Newest first; {} shown of {} kept; {raised} raised since start (identical alerts within 60 s are merged into one record with a repeat count).",
        recent.len().min(ALERT_ROWS),
        recent.len()
    ));
    p.raw("</p>\n");
    if recent.is_empty() {
        p.raw("<p class=\"note\">No alert since start.</p>\n</section>\n");
        return;
    }
    p.raw("<table id=\"alerts-table\">\n<thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Severity</th><th scope=\"col\">Event</th><th scope=\"col\">Peer</th><th scope=\"col\">Direction</th><th scope=\"col\">Action</th><th scope=\"col\">Repeats</th><th scope=\"col\">Reason</th></tr></thead>\n<tbody>\n");
    for a in recent.iter().rev().take(ALERT_ROWS) {
        p.raw("<tr data-event=\"");
        p.text(a.event.as_str());
        p.raw("\" data-peer=\"");
        p.text(a.server_name.as_deref().or(a.host.as_deref()).unwrap_or(""));
        p.raw("\"><td>");
        match OffsetDateTime::parse(&a.time, &Rfc3339) {
            Ok(t) => p.time(t, now),
            Err(_) => p.text(&a.time),
        }
        p.raw("</td><td>");
        match a.severity {
            Severity::Critical => p.raw("<span class=\"badge b-crit\">critical</span>"),
            Severity::Warning => p.raw("<span class=\"badge b-warn\">warning</span>"),
        }
        p.raw("</td><td>");
        p.text(a.event.as_str());
        p.raw("</td><td>");
        match a.server_name.as_deref().or(a.host.as_deref()) {
            Some(name) => p.text(name),
            None => p.raw("<span class=\"none\">—</span>"),
        }
        p.raw("</td><td>");
        p.raw(direction_word(a.direction));
        p.raw("</td><td>");
        p.raw(match a.action {
            Action::Blocked => "blocked",
            Action::Allowed => "allowed",
        });
        p.raw("</td><td class=\"num\">");
        p.text(a.repeats);
        p.raw("</td><td class=\"reason\">");
        p.text(&a.reason);
        p.raw("</td></tr>\n");
    }
    p.raw("</tbody>\n</table>\n</section>\n");
}

fn listeners_section(p: &mut Page, sources: &AdminSources, admin: Option<SocketAddr>) {
    p.raw("<section id=\"listeners\">\n<h2>Listeners</h2>\n");
    p.raw("<table id=\"listeners-table\">\n<thead><tr><th scope=\"col\">Listener</th><th scope=\"col\">Address</th><th scope=\"col\">State</th><th scope=\"col\">Counters since start</th></tr></thead>\n<tbody>\n");
    for (what, addr, task) in &sources.listeners {
        p.raw("<tr data-listener=\"");
        p.text(what);
        p.raw("\"><td>");
        p.text(what);
        p.raw("</td><td>");
        p.text(addr);
        p.raw("</td><td>");
        if task.is_finished() {
            p.raw("<span class=\"badge b-bad\">stopped</span>");
        } else {
            p.raw("<span class=\"badge b-ok\">accepting</span>");
        }
        p.raw("</td><td>");
        let handshakes = |c: &crate::metrics::HandshakeCounters| {
            let ok = c.get(HandshakeResult::Ok);
            let all: u64 = HandshakeResult::ALL.iter().map(|r| c.get(*r)).sum();
            (ok, all - ok)
        };
        match *what {
            "outbound" => {
                if let Some(o) = &sources.outbound {
                    let st = o.stats();
                    let (ok, failed) = handshakes(&st.handshakes);
                    p.text(format_args!(
                        "upstream handshakes: {ok} ok, {failed} failed · unreachable upstreams: {} · tunnels open: {} · refused by policy: {} · over capacity: {} · ended by a pin reload: {}",
                        st.upstream_errors.load(Ordering::Relaxed),
                        st.active_tunnels.load(Ordering::Relaxed),
                        st.refused.load(Ordering::Relaxed),
                        st.over_capacity.load(Ordering::Relaxed),
                        st.revoked.load(Ordering::Relaxed),
                    ));
                }
            }
            "inbound" => {
                if let Some(i) = &sources.inbound {
                    let st = i.stats();
                    let (ok, failed) = handshakes(&st.handshakes);
                    let class = |k: usize| st.by_class[k].load(Ordering::Relaxed);
                    p.text(format_args!(
                        "handshakes: {ok} ok, {failed} failed · connections open: {} · requests: {} 2xx, {} 3xx, {} 4xx, {} 5xx, {} other · bad signatures: {} · ended by a pin reload: {}",
                        st.connections.load(Ordering::Relaxed),
                        class(0),
                        class(1),
                        class(2),
                        class(3),
                        class(4),
                        class(5),
                        st.revoked.load(Ordering::Relaxed),
                    ));
                }
            }
            _ => {}
        }
        p.raw("</td></tr>\n");
    }
    if let Some(addr) = admin {
        p.raw("<tr data-listener=\"admin\"><td>admin</td><td>");
        p.text(addr);
        p.raw("</td><td><span class=\"badge b-ok\">accepting</span></td><td>this page, /metrics, /healthz, /pins</td></tr>\n");
    }
    p.raw("</tbody>\n</table>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::alert::{AlertEvent, AlertHub};
    use crate::pin_store::PinStore;
    use crate::pins::PinSet;

    #[test]
    fn escape_covers_the_five_special_characters() {
        assert_eq!(
            escape("<script>alert('x' & \"y\")</script>"),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("matrix.org:8448"), "matrix.org:8448");
        assert_eq!(escape("ünïcode ✓"), "ünïcode ✓");
        let mut p = Page { out: String::new() };
        p.text(format_args!("{}<{}", 1, "b>"));
        assert_eq!(p.out, "1&lt;b&gt;");
    }

    #[test]
    fn machine_times_are_utc_whole_seconds() {
        let t = OffsetDateTime::parse("2026-12-02T09:30:04.971071955+01:00", &Rfc3339).unwrap();
        assert_eq!(machine_time(t), "2026-12-02T08:30:04Z");
    }

    #[test]
    fn ago_reads_naturally() {
        assert_eq!(ago(Duration::seconds(-5)), "just now");
        assert_eq!(ago(Duration::seconds(12)), "12 s ago");
        assert_eq!(ago(Duration::minutes(4)), "4 min ago");
        assert_eq!(ago(Duration::hours(3)), "3 h ago");
        assert_eq!(ago(Duration::days(2)), "2 d ago");
    }

    fn sources(hub: &AlertHub) -> AdminSources {
        let pin = format!("sha256/{}=", "A".repeat(43));
        let set = PinSet::parse(&format!(
            "version = 1\n[[peer]]\nserver_name = \"victim.example\"\npins = [\"{pin}\", \"{pin}\"]\nexpires = \"2031-01-01T00:00:00Z\"\n\n[[peer]]\nserver_name = \"calm.example\"\npins = [\"{pin}\"]\nmode = \"report\"\n"
        ))
        .unwrap();
        AdminSources {
            pins: Arc::new(PinStore::fixed(set, hub.clone())),
            alerts: hub.clone(),
            outbound: None,
            inbound: None,
            files: Vec::new(),
            listeners: Vec::new(),
        }
    }

    fn critical(server_name: &str, reason: &str) -> Alert {
        let mut a = Alert::local(
            AlertEvent::PinMismatch,
            Direction::Outbound,
            1,
            reason.into(),
        );
        a.severity = Severity::Critical;
        a.server_name = Some(server_name.into());
        a.host = Some(server_name.into());
        a
    }

    /// Every value is escaped: a peer name or reason carrying markup shows
    /// as text, and the page contains no element it did not write itself.
    #[test]
    fn values_with_markup_render_as_text() {
        let hub = AlertHub::new();
        let s = sources(&hub);
        hub.raise(critical(
            "<script>alert(1)</script>.example",
            "reason with <script>alert(2)</script> & \"quotes\" 'too'",
        ));
        let page = render(&s, None, OffsetDateTime::now_utc());
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;.example"));
        assert!(page.contains(
            "reason with &lt;script&gt;alert(2)&lt;/script&gt; &amp; &quot;quotes&quot; &#39;too&#39;"
        ));
        assert!(page.contains("data-peer=\"&lt;script&gt;alert(1)&lt;/script&gt;.example\""));
    }

    #[test]
    fn a_recent_critical_alert_puts_the_badge_on_its_peer_only() {
        let hub = AlertHub::new();
        let s = sources(&hub);
        let calm = render(&s, None, OffsetDateTime::now_utc());
        assert!(!calm.contains("badge b-crit"), "{calm}");
        assert!(calm.contains("No critical alert about a pinned peer"));
        hub.raise(critical("Victim.Example", "no pin matched"));
        let now = OffsetDateTime::now_utc();
        let page = render(&s, None, now);
        let row = |name: &str| {
            let start = page
                .find(&format!("<tr data-peer=\"{name}\">"))
                .unwrap_or_else(|| panic!("no row for {name}: {page}"));
            let end = start + page[start..].find("</tr>").unwrap();
            page[start..end].to_string()
        };
        assert!(row("victim.example").contains("critical: pin_mismatch"));
        assert!(!row("calm.example").contains("badge b-crit"));
        assert!(row("calm.example").contains(">report<"));
        assert!(page.contains("1 pinned peer(s) with a critical alert in the last 24 hours"));
        // The victim's row comes first.
        assert!(
            page.find("data-peer=\"victim.example\"") < page.find("data-peer=\"calm.example\"")
        );
        // More than 24 hours later the badge is gone (the alert stays listed).
        let later = render(&s, None, now + Duration::hours(25));
        assert!(!later.contains("critical: pin_mismatch"), "{later}");
        assert!(later.contains("<tr data-event=\"pin_mismatch\""));
    }

    #[test]
    fn pin_expiry_is_shown_in_days() {
        let hub = AlertHub::new();
        let s = sources(&hub);
        let now = OffsetDateTime::parse("2030-12-01T00:00:00Z", &Rfc3339).unwrap();
        let page = render(&s, None, now);
        assert!(page.contains(">31 d</span>"), "{page}");
        let page = render(&s, None, now + Duration::days(40));
        assert!(page.contains(">expired 9 d ago</span>"), "{page}");
    }
}
