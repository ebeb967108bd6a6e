//! Alerts (SPEC section 5): one JSON object per violation, logged on target
//! `fedpin::alert`, deduplicated for 60 s, and handed to the configured sinks.
//!
//! [`AlertHub::raise`] never blocks: it is called from inside TLS handshakes.
//! Sinks run on their own tasks behind bounded queues ([`SinkQueue`]): each
//! sink has a queue reserved for critical alerts, which it takes first, so a
//! flood of warnings cannot push a critical out. Under a flood, warnings of
//! one (event, direction) beyond [`FLOOD_LIMIT`] per window are not queued
//! one by one: the sinks get one summary record whose `repeats` counts them
//! when the window closes (the log keeps every record).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::pins::{Mode, Pin};

/// How long identical alerts are merged.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(60);

/// Room each sink keeps for critical alerts, apart from its other queue.
pub const CRITICAL_QUEUE: usize = 64;

/// Warning records of one (event, direction) handed to the sinks one by one
/// per window; the rest of the window's records reach them as one summary.
pub const FLOOD_LIMIT: u64 = 20;

/// Which violation happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// No pin matched the peer's chain.
    PinMismatch,
    /// The host has no entry and `policy.unpinned = "deny"`.
    UnpinnedDenied,
    /// The peer's pins passed their `expires` date.
    PinExpired,
    /// The chain did not validate under Web PKI.
    ChainInvalid,
    /// The peer proved no possession of the pinned key (handshake signature failed).
    SignatureInvalid,
    /// The pin file failed to load; the previous set stays in force.
    PinReloadFailed,
    /// The verifier could not evaluate the peer (malformed certificate, no name…).
    VerifyError,
    /// A certificate, key or CA file in use became unreadable or invalid; the
    /// last good material stays in use.
    CertReloadFailed,
    /// A pinned peer's `/.well-known/matrix/server` answer (seen through an
    /// intercepted tunnel) no longer names the delegation recorded for it.
    DelegationChanged,
    /// A pinned peer signed a request with a key not in its `signing_keys`.
    SigningKeyMismatch,
    /// A pin-file reload removed peers: they are no longer pinned and fall
    /// under `policy.unpinned` (warning; the alert names them).
    PinsRemoved,
}

impl AlertEvent {
    /// The event's wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertEvent::PinMismatch => "pin_mismatch",
            AlertEvent::UnpinnedDenied => "unpinned_denied",
            AlertEvent::PinExpired => "pin_expired",
            AlertEvent::ChainInvalid => "chain_invalid",
            AlertEvent::SignatureInvalid => "signature_invalid",
            AlertEvent::PinReloadFailed => "pin_reload_failed",
            AlertEvent::VerifyError => "verify_error",
            AlertEvent::CertReloadFailed => "cert_reload_failed",
            AlertEvent::DelegationChanged => "delegation_changed",
            AlertEvent::SigningKeyMismatch => "signing_key_mismatch",
            AlertEvent::PinsRemoved => "pins_removed",
        }
    }
}

/// How loud an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Web PKI accepted the chain but no pin matched: the CA-compromise signature.
    Critical,
    /// Everything else.
    Warning,
}

/// Which side of the proxy saw the violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// fedpin dialled a remote homeserver.
    Outbound,
    /// A remote homeserver dialled fedpin.
    Inbound,
    /// `pinctl` or another tool checking a peer.
    Cli,
    /// Not tied to a connection (e.g. reloads).
    Local,
}

/// What happened to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The connection was refused.
    Blocked,
    /// The connection proceeded (report mode, expired pins under `webpki`).
    Allowed,
}

/// One certificate of the chain the peer served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedCert {
    /// Subject DN, RFC 4514 style.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// SPKI pin, `sha256/…` (absent if the certificate could not be parsed).
    pub pin: Option<String>,
}

impl ServedCert {
    /// Describes a DER certificate; never fails (unparseable input is described as such).
    pub fn describe(der: &[u8]) -> Self {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => ServedCert {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                not_after: cert
                    .validity()
                    .not_after
                    .to_datetime()
                    .format(&Rfc3339)
                    .unwrap_or_else(|_| "invalid".into()),
                pin: Some(Pin::of_spki(cert.public_key().raw).to_string()),
            },
            Err(e) => ServedCert {
                subject: format!("<unparseable certificate: {e}>"),
                issuer: String::new(),
                not_after: String::new(),
                pin: None,
            },
        }
    }
}

/// One violation, with every field of SPEC section 5.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// What happened.
    pub event: AlertEvent,
    /// `critical` or `warning`.
    pub severity: Severity,
    /// When, RFC 3339 UTC.
    pub time: String,
    /// Which side.
    pub direction: Direction,
    /// The peer's Matrix server name (from its pin entry, or the TLS name when unknown).
    pub server_name: Option<String>,
    /// The TLS name (SNI) or IP literal checked.
    pub host: Option<String>,
    /// Remote port.
    pub port: Option<u16>,
    /// Remote socket address.
    pub peer_addr: Option<String>,
    /// The peer's mode, when it has an entry.
    pub mode: Option<Mode>,
    /// Whether the connection was blocked.
    pub action: Action,
    /// `valid`, or the Web PKI validation error.
    pub webpki: String,
    /// The chain the peer served.
    pub served_chain: Vec<ServedCert>,
    /// The pins that were expected.
    pub known_pins: Vec<String>,
    /// When those pins expire.
    pub expires: Option<String>,
    /// The pin-file generation the check used.
    pub pin_generation: u64,
    /// One sentence saying what failed.
    pub reason: String,
    /// How many identical alerts this record stands for (1 unless merged).
    pub repeats: u64,
}

/// Alerts about a file once per failure, not once per re-check: the first
/// failure after a success (or after start) raises `cert_reload_failed`;
/// later failures only log until a success clears the latch.
#[derive(Debug, Default)]
pub struct MaterialWatch {
    failing: AtomicBool,
}

impl MaterialWatch {
    /// Records a failure; raises the alert if this starts a new failure.
    pub fn failed(
        &self,
        hub: Option<&AlertHub>,
        direction: Direction,
        reason: impl FnOnce() -> String,
    ) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            if let Some(hub) = hub {
                hub.raise(Alert::local(
                    AlertEvent::CertReloadFailed,
                    direction,
                    0,
                    reason(),
                ));
            }
        }
    }

    /// Records a success; true if it ends a failure.
    pub fn recovered(&self) -> bool {
        self.failing.swap(false, Ordering::Relaxed)
    }
}

impl Alert {
    /// An alert about fedpin's own material (pin file, certificates, CA), not
    /// about a peer: no host, no chain; `action = blocked` (the new material
    /// was refused and the last good one stays in force).
    pub fn local(
        event: AlertEvent,
        direction: Direction,
        pin_generation: u64,
        reason: String,
    ) -> Alert {
        Alert {
            event,
            severity: Severity::Warning,
            time: Alert::now_string(),
            direction,
            server_name: None,
            host: None,
            port: None,
            peer_addr: None,
            mode: None,
            action: Action::Blocked,
            webpki: "not checked".into(),
            served_chain: Vec::new(),
            known_pins: Vec::new(),
            expires: None,
            pin_generation,
            reason,
            repeats: 1,
        }
    }

    /// Serialises to one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"event\":\"{}\",\"error\":\"alert serialisation failed: {e}\"}}",
                self.event.as_str()
            )
        })
    }

    /// The current time in the alert format.
    pub fn now_string() -> String {
        OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_else(|_| "unknown".into())
    }

    fn dedup_key(&self) -> DedupKey {
        DedupKey {
            event: self.event,
            direction: self.direction,
            action: self.action,
            severity: self.severity,
            host: self.host.clone().unwrap_or_default(),
            leaf: self.served_chain.first().and_then(|c| c.pin.clone()),
            // Local alerts have no host or chain: the reason tells them apart.
            reason: if matches!(
                self.event,
                AlertEvent::PinReloadFailed | AlertEvent::PinsRemoved
            ) {
                self.reason.clone()
            } else {
                String::new()
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DedupKey {
    event: AlertEvent,
    direction: Direction,
    action: Action,
    severity: Severity,
    host: String,
    leaf: Option<String>,
    reason: String,
}

struct Window {
    opened: Instant,
    suppressed: u64,
    last: Alert,
}

/// Counters a metrics exporter can read.
#[derive(Debug, Default)]
pub struct AlertCounters {
    /// Alerts raised (before dedup).
    pub raised: AtomicU64,
    /// Alert records emitted (after dedup, including merged summaries).
    pub emitted: AtomicU64,
    /// Alerts a sink could not take because its queue was full.
    pub dropped: AtomicU64,
    /// Sink deliveries that failed (non-zero exit, timeout, spawn error).
    pub sink_failures: AtomicU64,
    /// Warning records held back from the sinks during a flood and counted
    /// in a summary record instead.
    pub summarised: AtomicU64,
}

/// A warnings flood of one (event, direction) in the current window.
struct Flood {
    opened: Instant,
    /// Records handed to the sinks one by one in this window.
    passed: u64,
    /// Alerts (counting merged repeats) held back for the summary.
    held: u64,
    /// The last record held back.
    last: Option<Alert>,
}

impl Flood {
    fn new(opened: Instant) -> Self {
        Flood {
            opened,
            passed: 0,
            held: 0,
            last: None,
        }
    }

    /// The summary record for what was held back, if anything was.
    fn summary(&mut self, window: Duration) -> Option<Alert> {
        let last = self.last.take()?;
        let held = std::mem::take(&mut self.held);
        let direction = match last.direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Cli => "cli",
            Direction::Local => "local",
        };
        Some(Alert {
            time: Alert::now_string(),
            server_name: None,
            host: None,
            port: None,
            peer_addr: None,
            mode: None,
            served_chain: Vec::new(),
            known_pins: Vec::new(),
            expires: None,
            reason: format!(
                "{held} more {} warnings ({direction}) within {}s, summarised for the alert sinks during a flood (each is in fedpin's log); the last: {}",
                last.event.as_str(),
                window.as_secs().max(1),
                last.reason
            ),
            repeats: held,
            ..last
        })
    }
}

/// The sending side of one sink's queues.
struct SinkTx {
    /// Reserved for critical alerts (`None`: a sink added with
    /// [`AlertHub::add_sink`], one queue for everything).
    critical: Option<tokio::sync::mpsc::Sender<Arc<Alert>>>,
    other: tokio::sync::mpsc::Sender<Arc<Alert>>,
}

/// The receiving end of one sink's queues: critical alerts have a queue of
/// their own and are always taken before the others.
#[derive(Debug)]
pub struct SinkQueue {
    critical: tokio::sync::mpsc::Receiver<Arc<Alert>>,
    other: tokio::sync::mpsc::Receiver<Arc<Alert>>,
}

impl SinkQueue {
    /// The next alert, a queued critical first; `None` once the hub is gone.
    pub async fn recv(&mut self) -> Option<Arc<Alert>> {
        tokio::select! {
            biased;
            Some(a) = self.critical.recv() => Some(a),
            a = self.other.recv() => a,
        }
    }

    /// The next alert if one is queued now, a critical first.
    pub fn try_recv(&mut self) -> Option<Arc<Alert>> {
        self.critical
            .try_recv()
            .ok()
            .or_else(|| self.other.try_recv().ok())
    }
}

const RECENT: usize = 256;

/// Peers whose last critical alert is remembered (the status page's badge),
/// apart from the recent records, so a flood of warnings cannot hide one.
pub const CRITICAL_PEERS: usize = 4096;

/// The alert fan-out: dedup, log, recent history, sinks.
#[derive(Clone)]
pub struct AlertHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    by_event: Mutex<HashMap<(AlertEvent, Severity), u64>>,
    windows: Mutex<HashMap<DedupKey, Window>>,
    recent: Mutex<VecDeque<Alert>>,
    sinks: Mutex<Vec<SinkTx>>,
    floods: Mutex<HashMap<(AlertEvent, Direction), Flood>>,
    /// Last critical alert per peer (server name, else host; lowercased).
    criticals: Mutex<lru::LruCache<String, (OffsetDateTime, AlertEvent)>>,
    counters: AlertCounters,
    window: Duration,
}

impl Default for AlertHub {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for AlertHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertHub").finish_non_exhaustive()
    }
}

impl AlertHub {
    /// A hub that only logs (add sinks with [`AlertHub::add_sink`]).
    pub fn new() -> Self {
        Self::with_window(DEDUP_WINDOW)
    }

    /// A hub with a custom dedup window (tests).
    pub fn with_window(window: Duration) -> Self {
        AlertHub {
            inner: Arc::new(HubInner {
                by_event: Mutex::new(HashMap::new()),
                windows: Mutex::new(HashMap::new()),
                recent: Mutex::new(VecDeque::with_capacity(RECENT)),
                sinks: Mutex::new(Vec::new()),
                floods: Mutex::new(HashMap::new()),
                criticals: Mutex::new(lru::LruCache::new(
                    std::num::NonZeroUsize::new(CRITICAL_PEERS)
                        .unwrap_or(std::num::NonZeroUsize::MIN),
                )),
                counters: AlertCounters::default(),
                window,
            }),
        }
    }

    /// Registers a sink and returns its queues: `capacity` alerts, plus
    /// [`CRITICAL_QUEUE`] reserved for critical ones. Alerts that do not fit
    /// are dropped for that sink and counted.
    pub fn sink_queue(&self, capacity: usize) -> SinkQueue {
        let (ctx, crx) = tokio::sync::mpsc::channel(CRITICAL_QUEUE);
        let (otx, orx) = tokio::sync::mpsc::channel(capacity.max(1));
        lock(&self.inner.sinks).push(SinkTx {
            critical: Some(ctx),
            other: otx,
        });
        SinkQueue {
            critical: crx,
            other: orx,
        }
    }

    /// Registers a single sink queue for every alert, with no room reserved
    /// for criticals (prefer [`AlertHub::sink_queue`]); alerts that do not
    /// fit are dropped and counted.
    pub fn add_sink(&self, tx: tokio::sync::mpsc::Sender<Arc<Alert>>) {
        lock(&self.inner.sinks).push(SinkTx {
            critical: None,
            other: tx,
        });
    }

    /// Alerts raised so far (before dedup), by event and severity.
    pub fn counts_by_event(&self) -> Vec<(AlertEvent, Severity, u64)> {
        let mut v: Vec<_> = lock(&self.inner.by_event)
            .iter()
            .map(|((e, s), n)| (*e, *s, *n))
            .collect();
        v.sort_by_key(|(e, s, _)| (e.as_str(), matches!(s, Severity::Warning)));
        v
    }

    /// When the last critical alert naming `peer` (its server name, or the
    /// host when it has no entry; any case) was raised, and its event. Kept
    /// for the last [`CRITICAL_PEERS`] peers, merged repeats included.
    pub fn last_critical(&self, peer: &str) -> Option<(OffsetDateTime, AlertEvent)> {
        lock(&self.inner.criticals)
            .peek(&peer.to_ascii_lowercase())
            .copied()
    }

    /// The hub's counters.
    pub fn counters(&self) -> &AlertCounters {
        &self.inner.counters
    }

    /// Raises an alert. Never blocks on a sink.
    pub fn raise(&self, alert: Alert) {
        self.inner.counters.raised.fetch_add(1, Ordering::Relaxed);
        *lock(&self.inner.by_event)
            .entry((alert.event, alert.severity))
            .or_insert(0) += 1;
        if alert.severity == Severity::Critical {
            if let Some(peer) = alert.server_name.as_ref().or(alert.host.as_ref()) {
                lock(&self.inner.criticals).put(
                    peer.to_ascii_lowercase(),
                    (OffsetDateTime::now_utc(), alert.event),
                );
            }
        }
        let now = Instant::now();
        self.flush_expired_at(now);
        let key = alert.dedup_key();
        {
            let mut windows = lock(&self.inner.windows);
            if let Some(w) = windows.get_mut(&key) {
                if now.duration_since(w.opened) < self.inner.window {
                    w.suppressed += 1;
                    w.last = alert;
                    return;
                }
            }
            windows.insert(
                key,
                Window {
                    opened: now,
                    suppressed: 0,
                    last: alert.clone(),
                },
            );
        }
        self.emit(alert);
    }

    /// Emits merged records for windows that have closed. Called on every
    /// raise and periodically by [`AlertHub::spawn_flusher`].
    pub fn flush_expired(&self) {
        self.flush_expired_at(Instant::now());
    }

    fn flush_expired_at(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut windows = lock(&self.inner.windows);
            windows.retain(|_, w| {
                if now.duration_since(w.opened) >= self.inner.window {
                    if w.suppressed > 0 {
                        let mut merged = w.last.clone();
                        merged.repeats = w.suppressed;
                        due.push(merged);
                    }
                    false
                } else {
                    true
                }
            });
        }
        for a in due {
            self.emit(a);
        }
        let summaries: Vec<Alert> = {
            let mut floods = lock(&self.inner.floods);
            let mut out = Vec::new();
            floods.retain(|_, f| {
                if now.duration_since(f.opened) >= self.inner.window {
                    out.extend(f.summary(self.inner.window));
                    false
                } else {
                    true
                }
            });
            out
        };
        for a in summaries {
            self.send_summary(a);
        }
    }

    /// Emits every pending merged record now, regardless of window (shutdown).
    pub fn flush_all(&self) {
        let due: Vec<Alert> = {
            let mut windows = lock(&self.inner.windows);
            windows
                .drain()
                .filter(|(_, w)| w.suppressed > 0)
                .map(|(_, w)| {
                    let mut merged = w.last;
                    merged.repeats = w.suppressed;
                    merged
                })
                .collect()
        };
        for a in due {
            self.emit(a);
        }
        let summaries: Vec<Alert> = lock(&self.inner.floods)
            .drain()
            .filter_map(|(_, mut f)| f.summary(self.inner.window))
            .collect();
        for a in summaries {
            self.send_summary(a);
        }
    }

    /// Spawns a task on the current tokio runtime that flushes closed windows every few seconds.
    pub fn spawn_flusher(&self) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                hub.flush_expired();
            }
        })
    }

    /// The most recent alert records (newest last), up to 256.
    pub fn recent(&self) -> Vec<Alert> {
        lock(&self.inner.recent).iter().cloned().collect()
    }

    fn emit(&self, alert: Alert) {
        self.inner.counters.emitted.fetch_add(1, Ordering::Relaxed);
        let json = alert.to_json();
        // tracing needs the level as a constant at each call site.
        macro_rules! log_alert {
            ($level:expr, $severity:literal) => {
                tracing::event!(
                    target: "fedpin::alert",
                    $level,
                    event = alert.event.as_str(),
                    severity = $severity,
                    alert = %json,
                    "{}", alert.reason
                )
            };
        }
        match alert.severity {
            Severity::Critical => log_alert!(tracing::Level::ERROR, "critical"),
            Severity::Warning => log_alert!(tracing::Level::WARN, "warning"),
        }
        let shared = Arc::new(alert);
        {
            let mut recent = lock(&self.inner.recent);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back((*shared).clone());
        }
        if shared.severity == Severity::Warning {
            let (pass, summary) = self.flood_gate(&shared, Instant::now());
            if let Some(s) = summary {
                self.send_summary(s);
            }
            if !pass {
                self.inner
                    .counters
                    .summarised
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.to_sinks(&shared);
    }

    /// Whether a warning goes to the sinks on its own (not during a flood of
    /// its (event, direction)), and the summary of a flood window it closes.
    fn flood_gate(&self, alert: &Alert, now: Instant) -> (bool, Option<Alert>) {
        let mut floods = lock(&self.inner.floods);
        let f = floods
            .entry((alert.event, alert.direction))
            .or_insert_with(|| Flood::new(now));
        let mut summary = None;
        if now.duration_since(f.opened) >= self.inner.window {
            summary = f.summary(self.inner.window);
            *f = Flood::new(now);
        }
        if f.passed < FLOOD_LIMIT {
            f.passed += 1;
            (true, summary)
        } else {
            f.held += alert.repeats.max(1);
            f.last = Some(alert.clone());
            (false, summary)
        }
    }

    /// Logs a flood summary and hands it to the sinks.
    fn send_summary(&self, alert: Alert) {
        tracing::warn!(
            target: "fedpin::alert",
            event = alert.event.as_str(),
            severity = "warning",
            summary = true,
            repeats = alert.repeats,
            "{}", alert.reason
        );
        self.to_sinks(&Arc::new(alert));
    }

    /// Queues a record for every sink without waiting: a critical in the
    /// sink's reserved queue (its other queue if that is full), anything
    /// else in the other queue; what fits nowhere is dropped and counted.
    fn to_sinks(&self, alert: &Arc<Alert>) {
        let sinks = lock(&self.inner.sinks);
        for tx in sinks.iter() {
            let reserved = match (&tx.critical, alert.severity) {
                (Some(c), Severity::Critical) => c.try_send(alert.clone()).is_ok(),
                _ => false,
            };
            if reserved || tx.other.try_send(alert.clone()).is_ok() {
                continue;
            }
            self.inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
            if alert.severity == Severity::Critical {
                tracing::error!(target: "fedpin::alert", event = alert.event.as_str(), "alert sink queues are full or closed; CRITICAL alert dropped for that sink (it is in this log)");
            } else {
                tracing::warn!(target: "fedpin::alert", "alert sink queue is full or closed; alert dropped for that sink");
            }
        }
    }
}

/// Locks a mutex, recovering the data if another thread panicked while holding it
/// (alert bookkeeping must keep working; the data stays consistent per operation).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(host: &str) -> Alert {
        Alert {
            event: AlertEvent::PinMismatch,
            severity: Severity::Critical,
            time: Alert::now_string(),
            direction: Direction::Outbound,
            server_name: Some(host.into()),
            host: Some(host.into()),
            port: Some(8448),
            peer_addr: None,
            mode: Some(Mode::Enforce),
            action: Action::Blocked,
            webpki: "valid".into(),
            served_chain: vec![],
            known_pins: vec![],
            expires: None,
            pin_generation: 1,
            reason: "test".into(),
            repeats: 1,
        }
    }

    #[test]
    fn identical_alerts_merge_with_repeats() {
        let hub = AlertHub::with_window(Duration::from_millis(50));
        for _ in 0..5 {
            hub.raise(alert("a.example"));
        }
        hub.raise(alert("b.example"));
        assert_eq!(hub.recent().len(), 2);
        std::thread::sleep(Duration::from_millis(60));
        hub.flush_expired();
        let recent = hub.recent();
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[2].host.as_deref(), Some("a.example"));
        assert_eq!(recent[2].repeats, 4);
        assert_eq!(hub.counters().raised.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn last_critical_per_peer_survives_a_flood_of_warnings() {
        let hub = AlertHub::with_window(Duration::from_millis(50));
        hub.raise(alert("Victim.example"));
        for i in 0..(RECENT + 10) {
            let mut w = alert(&format!("w{i}.example"));
            w.event = AlertEvent::UnpinnedDenied;
            w.severity = Severity::Warning;
            hub.raise(w);
        }
        assert!(hub
            .recent()
            .iter()
            .all(|a| a.host.as_deref() != Some("Victim.example")));
        let (_, event) = hub.last_critical("victim.EXAMPLE").unwrap();
        assert_eq!(event, AlertEvent::PinMismatch);
        assert!(hub.last_critical("w1.example").is_none());
    }

    #[test]
    fn json_has_every_field() {
        let v: serde_json::Value = serde_json::from_str(&alert("a").to_json()).unwrap();
        for f in [
            "event",
            "severity",
            "time",
            "direction",
            "server_name",
            "host",
            "port",
            "peer_addr",
            "mode",
            "action",
            "webpki",
            "served_chain",
            "known_pins",
            "expires",
            "pin_generation",
            "repeats",
        ] {
            assert!(v.get(f).is_some(), "missing {f}");
        }
        assert_eq!(v["event"], "pin_mismatch");
        assert_eq!(v["severity"], "critical");
    }
}
