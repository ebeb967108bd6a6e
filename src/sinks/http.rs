//! HTTP alert sinks: a `webhook` (POST of the alert JSON) and a `matrix` sink
//! (a message in an operator's room through the Client-Server API). Both run
//! on their own task behind a bounded queue, retry with backoff, and count
//! and log failures; neither ever blocks a handshake.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, Uri};
use rustls::pki_types::CertificateDer;

use crate::https::{HttpsClient, Target};

use crate::alert::{Alert, AlertHub, Severity};

/// Errors configuring an HTTP sink.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// How a sink reaches its endpoint: the crate's HTTPS client with Web PKI
/// (Mozilla roots + extra anchors), timeouts, retries.
#[derive(Clone)]
pub struct HttpTarget {
    client: HttpsClient,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Attempts per alert (first try included).
    pub attempts: u32,
    /// First retry delay; doubles each time.
    pub backoff: Duration,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget").finish_non_exhaustive()
    }
}

impl HttpTarget {
    /// Web PKI with the Mozilla roots plus `extra` anchors.
    pub fn new(extra: &[CertificateDer<'static>]) -> Result<Self, SinkError> {
        let anchors =
            crate::https::anchors(extra).map_err(|e| SinkError(format!("alert sink {e}")))?;
        let client = HttpsClient::webpki(&anchors)
            .map_err(SinkError)?
            // Sinks read no answer beyond its status.
            .with_max_body(1024 * 1024);
        Ok(HttpTarget {
            client,
            timeout: Duration::from_secs(10),
            attempts: 5,
            backoff: Duration::from_millis(500),
        })
    }

    /// One request; returns the status code.
    async fn send(
        &self,
        method: Method,
        url: &Uri,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        let host = url
            .host()
            .ok_or("URL without a host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("URL scheme must be https (or http to loopback)".into()),
        };
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = url
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let target = Target {
            tls_name: &host,
            connect_host: &host,
            port,
            host_header: url.authority().map(|a| a.as_str()).unwrap_or(&host),
            plain: !https,
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = self
            .client
            .clone()
            .with_timeout(self.timeout)
            .send(target, method, &path, &headers, body)
            .await?;
        Ok(answer.status.as_u16())
    }

    /// Sends with retries and exponential backoff; Ok once a 2xx comes back.
    async fn deliver(
        &self,
        method: Method,
        url: &Uri,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(), String> {
        let mut delay = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts.max(1) {
            match tokio::time::timeout(
                self.timeout,
                self.send(method.clone(), url, headers, body.clone()),
            )
            .await
            {
                Ok(Ok(s)) if (200..300).contains(&s) => return Ok(()),
                Ok(Ok(s)) => last = format!("HTTP {s}"),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("timed out after {:?}", self.timeout),
            }
            if attempt < self.attempts {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
        Err(format!("gave up after {} attempts: {last}", self.attempts))
    }
}

fn parse_url(url: &str) -> Result<Uri, SinkError> {
    let u: Uri = url
        .parse()
        .map_err(|e| SinkError(format!("alert sink URL \"{url}\": {e}")))?;
    if u.host().is_none() {
        return Err(SinkError(format!("alert sink URL \"{url}\" has no host")));
    }
    Ok(u)
}

/// POSTs each alert's JSON to a URL.
#[derive(Debug)]
pub struct WebhookSink {
    url: Uri,
    target: HttpTarget,
    queue: usize,
}

impl WebhookSink {
    /// A webhook sink for `url`.
    pub fn new(url: &str, target: HttpTarget) -> Result<Self, SinkError> {
        Ok(WebhookSink {
            url: parse_url(url)?,
            target,
            queue: 256,
        })
    }

    /// Attaches the sink to `hub` (spawns its worker on the current runtime).
    pub fn attach(self, hub: &AlertHub) -> tokio::task::JoinHandle<()> {
        let mut rx = hub.sink_queue(self.queue);
        let hub = hub.clone();
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                let body = Bytes::from(alert.to_json());
                if let Err(e) = self
                    .target
                    .deliver(Method::POST, &self.url, &[], body)
                    .await
                {
                    hub.counters().sink_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "fedpin::alert", sink = "webhook", event = alert.event.as_str(), error = %e, "alert webhook delivery failed");
                }
            }
        })
    }
}

/// Posts alerts as messages into an operator's Matrix room.
///
/// At most one message per `min_interval`; alerts that arrive in between are
/// summarised in the next message. The access token and room ID are never logged.
pub struct MatrixSink {
    homeserver: Uri,
    room_id: String,
    token: String,
    target: HttpTarget,
    /// Minimum time between two messages.
    pub min_interval: Duration,
}

impl std::fmt::Debug for MatrixSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatrixSink").finish_non_exhaustive()
    }
}

fn encode_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl MatrixSink {
    /// A sink posting to `room_id` on `homeserver` with the access token read from `token_file`.
    pub fn new(
        homeserver: &str,
        room_id: &str,
        token_file: &std::path::Path,
        target: HttpTarget,
    ) -> Result<Self, SinkError> {
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| {
                SinkError(format!(
                    "{}: cannot read the Matrix access token: {e}",
                    token_file.display()
                ))
            })?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(SinkError(format!(
                "{}: the Matrix access token file is empty",
                token_file.display()
            )));
        }
        if !room_id.starts_with('!') {
            return Err(SinkError(
                "alerts.matrix_room must be a room ID (!…)".into(),
            ));
        }
        Ok(MatrixSink {
            homeserver: parse_url(homeserver)?,
            room_id: room_id.to_string(),
            token,
            target,
            min_interval: Duration::from_secs(10),
        })
    }

    fn text(alert: &Alert, suppressed: u64) -> String {
        let mut t = format!(
            "fedpin alert {} ({:?}): {} — {}",
            alert.event.as_str(),
            alert.severity,
            alert.host.as_deref().unwrap_or("-"),
            alert.reason
        );
        if alert.repeats > 1 {
            t.push_str(&format!(" [repeated {} times]", alert.repeats));
        }
        if suppressed > 0 {
            t.push_str(&format!(
                " (+{suppressed} more alerts since the last message; see fedpin's log)"
            ));
        }
        t
    }

    /// Attaches the sink to `hub` (spawns its worker on the current runtime).
    pub fn attach(self, hub: &AlertHub) -> tokio::task::JoinHandle<()> {
        let mut rx = hub.sink_queue(256);
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut last_sent: Option<Instant> = None;
            let mut txn: u64 = 0;
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            while let Some(first) = rx.recv().await {
                // Rate limit: wait out the interval, then summarise what queued up.
                if let Some(t) = last_sent {
                    let wait = self.min_interval.saturating_sub(t.elapsed());
                    tokio::time::sleep(wait).await;
                }
                let mut newest = first;
                let mut suppressed = 0u64;
                while let Some(more) = rx.try_recv() {
                    // Keep a critical alert as the headline over later warnings.
                    if more.severity == Severity::Critical || newest.severity != Severity::Critical
                    {
                        newest = more;
                    }
                    suppressed += 1;
                }
                txn += 1;
                let path = format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/fedpin-{started}-{txn}",
                    encode_path_segment(&self.room_id)
                );
                let base = self.homeserver.to_string();
                let url: Uri = match format!("{}{path}", base.trim_end_matches('/')).parse() {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(target: "fedpin::alert", sink = "matrix", error = %e, "cannot build the Matrix URL");
                        continue;
                    }
                };
                let body = serde_json::json!({"msgtype": "m.notice", "body": Self::text(&newest, suppressed)}).to_string();
                let auth = [("authorization", format!("Bearer {}", self.token))];
                if let Err(e) = self
                    .target
                    .deliver(Method::PUT, &url, &auth, Bytes::from(body))
                    .await
                {
                    hub.counters().sink_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "fedpin::alert", sink = "matrix", event = newest.event.as_str(), error = %e, "alert message to the operators' room failed");
                }
                last_sent = Some(Instant::now());
            }
        })
    }
}
