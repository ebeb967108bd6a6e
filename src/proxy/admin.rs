//! The admin listener (loopback by default): `/` (the status page for a
//! browser, [`super::status_page`]), `/metrics` (Prometheus text,
//! encoded by prometheus-client from the live counters at scrape time),
//! `/healthz` (checks real things and says what failed), `/pins` (the pin set
//! in force: generation, file hash, peers; no keys).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::inbound::InboundProxy;
use super::outbound::OutboundProxy;
use crate::alert::{AlertHub, Severity};
use crate::pin_store::PinStore;

/// What the admin listener reports on.
#[derive(Clone)]
pub struct AdminSources {
    /// The pin store.
    pub pins: Arc<PinStore>,
    /// The alert hub.
    pub alerts: AlertHub,
    /// The outbound proxy, if running.
    pub outbound: Option<Arc<OutboundProxy>>,
    /// The inbound edge, if running.
    pub inbound: Option<Arc<InboundProxy>>,
    /// Files that must stay readable (CA, certificates), with what they are.
    pub files: Vec<(&'static str, PathBuf)>,
    /// Accept loops that must be running: what, where, and the task.
    pub listeners: Vec<(&'static str, std::net::SocketAddr, tokio::task::AbortHandle)>,
}

impl std::fmt::Debug for AdminSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSources").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Live(AdminSources);

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            ConstCounter::new(*v).encode(m)?;
            return Ok(());
        }
        let fam = m.encode_family(labels)?;
        ConstCounter::new(*v).encode(fam)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &prometheus_client::metrics::histogram::Histogram,
) -> Result<(), std::fmt::Error> {
    h.encode(enc.encode_descriptor(name, help, None, MetricType::Histogram)?)
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        encode_pins(s, &mut enc)?;
        encode_alerts(s, &mut enc)?;
        encode_handshakes(s, &mut enc)?;
        if let Some(o) = &s.outbound {
            encode_outbound(o, &mut enc)?;
        }
        if let Some(i) = &s.inbound {
            encode_inbound(i, &mut enc)?;
        }
        Ok(())
    }
}

/// The pin set in force and its reloads.
fn encode_pins(s: &AdminSources, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let set = s.pins.current();
    gauge(
        enc,
        "fedpin_pin_generation",
        "Generation of the pin set in force",
        set.generation as i64,
    )?;
    gauge(
        enc,
        "fedpin_pin_peers",
        "Peers in the pin set in force",
        set.len() as i64,
    )?;
    let (ok, failed) = s.pins.reload_counts();
    counter(
        enc,
        "fedpin_pin_reloads",
        "Pin-file reloads by result",
        &[(&[("result", "ok")], ok), (&[("result", "failed")], failed)],
    )?;

    Ok(())
}

/// Alerts raised, by event and severity, and the sinks' losses.
fn encode_alerts(s: &AdminSources, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let c = s.alerts.counters();
    counter(
        enc,
        "fedpin_alerts_raised",
        "Alerts raised (before the 60 s merge)",
        &[(&[], c.raised.load(Ordering::Relaxed))],
    )?;
    let by_event = s.alerts.counts_by_event();
    let mut m = enc.encode_descriptor(
        "fedpin_alerts",
        "Alerts raised by event and severity",
        None,
        MetricType::Counter,
    )?;
    for (event, severity, n) in &by_event {
        let sev = match severity {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        };
        let labels = [("event", event.as_str()), ("severity", sev)];
        ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
    }
    counter(
        enc,
        "fedpin_alert_sink_dropped",
        "Alerts a sink could not take (queue full)",
        &[(&[], c.dropped.load(Ordering::Relaxed))],
    )?;
    counter(
        enc,
        "fedpin_alert_sink_failures",
        "Alert deliveries that failed",
        &[(&[], c.sink_failures.load(Ordering::Relaxed))],
    )?;

    Ok(())
}

/// Handshakes and pin-rule runs, by direction.
fn encode_handshakes(
    s: &AdminSources,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        "fedpin_handshakes",
        "TLS handshakes with peers by direction and result",
        None,
        MetricType::Counter,
    )?;
    let directions = [
        (
            "outbound",
            s.outbound.as_ref().map(|o| &o.stats().handshakes),
        ),
        ("inbound", s.inbound.as_ref().map(|i| &i.stats().handshakes)),
    ];
    for (direction, counters) in directions {
        for (result, n) in counters.map(|c| c.snapshot()).unwrap_or_default() {
            let labels = [("direction", direction), ("result", result)];
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "fedpin_pin_checks",
        "Runs of the pin rules by direction, the entry's mode (unpinned: no entry) and result",
        None,
        MetricType::Counter,
    )?;
    let cores = [
        ("outbound", s.outbound.as_ref().map(|o| o.verifier())),
        ("inbound", s.inbound.as_ref().map(|i| i.verifier())),
    ];
    for (direction, core) in cores {
        for (mode, result, n) in core.map(|c| c.pin_checks().snapshot()).unwrap_or_default() {
            let labels = [("direction", direction), ("mode", mode), ("result", result)];
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
    }

    Ok(())
}

/// The outbound proxy's counters.
fn encode_outbound(
    o: &Arc<OutboundProxy>,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let st = o.stats();
    let totals = [
        (
            "fedpin_outbound_upstream_errors",
            "Upstreams that could not be reached (no handshake took place)",
            &st.upstream_errors,
        ),
        (
            "fedpin_outbound_refused",
            "CONNECTs refused by policy",
            &st.refused,
        ),
        (
            "fedpin_outbound_over_capacity",
            "Clients turned away at the tunnel cap",
            &st.over_capacity,
        ),
        (
            "fedpin_outbound_upstream_reused",
            "Kept pinned upstream connections taken by a tunnel (no upstream handshake)",
            &st.upstream_reused,
        ),
        (
            "fedpin_outbound_http_tunnels",
            "Tunnels read as HTTP/1.1, whose upstream connections can be kept",
            &st.http_tunnels,
        ),
        (
            "fedpin_outbound_parked_tunnels",
            "Times a quiet HTTP tunnel was parked (hyper's buffers released, TLS kept)",
            &st.parked_tunnels,
        ),
        (
            "fedpin_outbound_revoked_tunnels",
            "Open tunnels ended because a pin reload refused their upstream",
            &st.revoked,
        ),
    ];
    for (name, help, n) in totals {
        counter(enc, name, help, &[(&[], n.load(Ordering::Relaxed))])?;
    }
    gauge(
        enc,
        "fedpin_outbound_active_tunnels",
        "Tunnels open now",
        st.active_tunnels.load(Ordering::Relaxed) as i64,
    )?;
    histogram(
        enc,
        "fedpin_outbound_upstream_handshake_seconds",
        "Upstream connect + pinned TLS handshake duration",
        &st.upstream_handshake_seconds,
    )
}

/// The inbound edge's counters.
fn encode_inbound(
    i: &Arc<InboundProxy>,
    enc: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let st = i.stats();
    gauge(
        enc,
        "fedpin_inbound_connections",
        "Inbound connections open now",
        st.connections.load(Ordering::Relaxed) as i64,
    )?;
    let classes = ["2xx", "3xx", "4xx", "5xx", "other", "bad_signature"];
    let rows: Vec<([(&str, &str); 1], u64)> = classes
        .iter()
        .enumerate()
        .map(|(k, c)| ([("class", *c)], st.by_class[k].load(Ordering::Relaxed)))
        .collect();
    let mut m = enc.encode_descriptor(
        "fedpin_inbound_requests",
        "Inbound requests by status class",
        None,
        MetricType::Counter,
    )?;
    for (labels, v) in &rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    histogram(
        enc,
        "fedpin_inbound_upstream_seconds",
        "Time for the homeserver to answer a forwarded request (response head)",
        &st.upstream_seconds,
    )?;
    counter(
        enc,
        "fedpin_inbound_parked",
        "Times an idle HTTP/1.1 connection was parked (hyper's buffers released, TLS kept)",
        &[(&[], st.parked.load(Ordering::Relaxed))],
    )?;
    counter(
        enc,
        "fedpin_inbound_revoked_connections",
        "Open connections ended because a pin reload refused their client certificate",
        &[(&[], st.revoked.load(Ordering::Relaxed))],
    )?;
    if let Some(k) = i.key_fetcher() {
        counter(
            enc,
            "fedpin_signing_key_fetches",
            "Signing-key fetches started for request-signature checks",
            &[(&[], k.fetches())],
        )?;
    }
    let (ok, failed) = i.certs().reload_counts();
    counter(
        enc,
        "fedpin_inbound_cert_reloads",
        "Server certificate reloads by result",
        &[(&[("result", "ok")], ok), (&[("result", "failed")], failed)],
    )?;
    Ok(())
}

/// Renders `/metrics`.
pub fn render_metrics(sources: &AdminSources) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Live(sources.clone())));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// `/healthz`: Ok(summary) or Err(what failed).
pub fn health(sources: &AdminSources) -> Result<serde_json::Value, serde_json::Value> {
    let mut failures = Vec::new();
    for (what, addr, task) in &sources.listeners {
        if task.is_finished() {
            failures.push(format!(
                "the {what} listener on {addr} stopped accepting connections"
            ));
        }
    }
    let set = sources.pins.current();
    if set.generation == 0 {
        failures.push("no pin set loaded".to_string());
    }
    for (what, path) in &sources.files {
        if let Err(e) = std::fs::File::open(path) {
            failures.push(format!("{what} {} is not readable: {e}", path.display()));
            continue;
        }
        // Present is not enough: a readable file that no longer parses (a
        // botched renewal) is what the next reload or restart would refuse.
        let parsed = if what.ends_with("key") {
            crate::tls::load_key(path).map(|_| None)
        } else {
            crate::tls::load_certs(path).map(|certs| {
                certs
                    .iter()
                    .position(|c| x509_parser::parse_x509_certificate(c.as_ref()).is_err())
            })
        };
        match parsed {
            Err(e) => failures.push(format!("{what} is invalid: {e}")),
            Ok(Some(i)) => failures.push(format!(
                "{what} is invalid: {}: certificate {} is not X.509",
                path.display(),
                i + 1
            )),
            Ok(None) => {}
        }
    }
    let body = serde_json::json!({
        "pin_generation": set.generation,
        "peers": set.len(),
        "outbound": sources.outbound.is_some(),
        "inbound": sources.inbound.is_some(),
        "failures": failures,
    });
    if failures.is_empty() {
        Ok(body)
    } else {
        Err(body)
    }
}

/// `/pins`: generation, file hash, peers (no keys).
pub fn pins_json(sources: &AdminSources) -> serde_json::Value {
    let set = sources.pins.current();
    let peers: Vec<serde_json::Value> = set
        .peers()
        .iter()
        .map(|p| {
            serde_json::json!({
                "server_name": p.server_name,
                "hosts": p.hosts,
                "trust": p.trust.to_string(),
                "mode": p.mode.to_string(),
                "pins": p.pins.len(),
                "expires": p.expires.and_then(|e| e.format(&time::format_description::well_known::Rfc3339).ok()),
            })
        })
        .collect();
    serde_json::json!({
        "generation": set.generation,
        "file": sources.pins.path().display().to_string(),
        "sha256": set.content_hash_hex(),
        "policy": set.policy,
        "peers": peers,
    })
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// The status page, with headers that keep a browser from loading anything
/// else, sniffing the type, caching it or framing it.
fn status_page(sources: &AdminSources, admin: Option<SocketAddr>) -> Response<Full<Bytes>> {
    use hyper::header::{self, HeaderValue};
    let body = super::status_page::render(sources, admin, time::OffsetDateTime::now_utc());
    let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::status_page::CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn route(
    sources: &AdminSources,
    admin: Option<SocketAddr>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/" => status_page(sources, admin),
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render_metrics(sources),
        ),
        "/healthz" => match health(sources) {
            Ok(v) => respond(StatusCode::OK, "application/json", v.to_string()),
            Err(v) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                v.to_string(),
            ),
        },
        "/pins" => respond(
            StatusCode::OK,
            "application/json",
            pins_json(sources).to_string(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "fedpin admin: / (status page), /metrics, /healthz, /pins\n".into(),
        ),
    }
}

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(
    sources: AdminSources,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let sources = Arc::new(sources);
    let admin = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = super::io::stopped(&mut shutdown) => return,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = route(&sources, admin, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_names_an_accept_loop_that_stopped() {
        let hub = AlertHub::new();
        let set = crate::pins::PinSet::parse("version = 1\n").unwrap();
        let running = tokio::spawn(std::future::pending::<()>());
        let stopped = tokio::spawn(async {});
        let addr: std::net::SocketAddr = "127.0.0.1:8449".parse().unwrap();
        let mut sources = AdminSources {
            pins: Arc::new(PinStore::fixed(set, hub.clone())),
            alerts: hub,
            outbound: None,
            inbound: None,
            files: Vec::new(),
            listeners: vec![("outbound", addr, running.abort_handle())],
        };
        assert!(health(&sources).is_ok());
        while !stopped.is_finished() {
            tokio::task::yield_now().await;
        }
        sources.listeners.push((
            "inbound",
            "0.0.0.0:8448".parse().unwrap(),
            stopped.abort_handle(),
        ));
        let failed = health(&sources).unwrap_err();
        let text = failed["failures"].to_string();
        assert!(
            text.contains("the inbound listener on 0.0.0.0:8448 stopped accepting connections"),
            "{text}"
        );
        assert!(!text.contains("outbound"), "{text}");
        running.abort();
    }

    /// Issue 11: material that is present but invalid (a garbage
    /// certificate after a failed reload) is reported, not only missing files.
    #[tokio::test]
    async fn healthz_reports_present_but_invalid_material() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let ck = rcgen::generate_simple_self_signed(vec!["hs.example".to_string()]).unwrap();
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let hub = AlertHub::new();
        let set = crate::pins::PinSet::parse("version = 1\n").unwrap();
        let sources = AdminSources {
            pins: Arc::new(PinStore::fixed(set, hub.clone())),
            alerts: hub,
            outbound: None,
            inbound: None,
            files: vec![
                ("server certificate", cert.clone()),
                ("server key", key.clone()),
            ],
            listeners: Vec::new(),
        };
        assert!(health(&sources).is_ok(), "{:?}", health(&sources));
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&key, "not a key\n").unwrap();
        let text = health(&sources).unwrap_err()["failures"].to_string();
        assert!(text.contains("server certificate is invalid"), "{text}");
        assert!(text.contains("server key is invalid"), "{text}");
    }
}
