//! Server signing keys for verifying request signatures at the edge.
//!
//! # What this protects against
//!
//! The origin of an inbound request is chosen by whoever sends it, so the
//! key fetch it triggers is attacker-directed network traffic. The fetcher
//! therefore:
//!
//! * resolves the origin the Matrix way (IP literal, explicit port,
//!   `/.well-known/matrix/server`, SRV, 8448) and dials only addresses the
//!   egress policy allows: loopback, private and other special ranges are
//!   refused unless the operator listed them, so `origin = "127.0.0.1:22"` or a
//!   name resolving to 10.0.0.1 causes no connection;
//! * checks every TLS connection (the well-known front and the key endpoint)
//!   with the same pinned verifier as the outbound proxy, so a CA-valid
//!   impostor for a pinned peer cannot serve forged keys;
//! * checks the key response's self-signature and `server_name`;
//! * caches keys until `valid_until_ts` (at most 7 days, bounded in the
//!   number of origins), caches failures for a short while, runs one fetch
//!   per origin at a time and a bounded number overall, so a flood of forged
//!   requests for one origin causes at most one fetch.
//!
//! A peer's keys can also be pinned in the pin file (`signing_keys`); then
//! no fetch is needed and a request signed with another key is a
//! `signing_key_mismatch`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::discovery::{self, DiscoveryError, DiscoveryOptions, WellKnown, WellKnownFuture};
use crate::egress::EgressPolicy;
use crate::https::{Dialer, HttpsClient, Redirects, Target, Trust};
use crate::matrix::signing::{self, VerifyKey};
use crate::tls::UpstreamTls;

/// Path of a server's own key document.
pub const KEY_PATH: &str = "/_matrix/key/v2/server";

/// Path of a notary's batch key query.
pub const QUERY_PATH: &str = "/_matrix/key/v2/query";

/// A notary (`[[inbound.key_servers]]`, Synapse's `trusted_key_servers`):
/// a server that vouches for other servers' key documents with its own
/// signature. Its keys are configuration, never fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyServer {
    /// The notary's server name, e.g. `matrix.org`.
    pub server_name: String,
    /// Its signing keys; a vouched document needs a signature by one.
    pub verify_keys: Vec<VerifyKey>,
}

/// Longest key or well-known response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// Longest a fetched key is trusted without a new fetch.
const MAX_KEY_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How the fetcher reaches origins.
#[derive(Debug, Clone)]
pub struct KeyFetchSettings {
    /// Which addresses may be dialled (the outbound proxy's policy).
    pub egress: EgressPolicy,
    /// Static name → address overrides (the outbound proxy's `resolve`).
    pub resolve: BTreeMap<String, IpAddr>,
    /// Static `(host, port)` → address overrides (`connect_to`).
    pub connect_to: BTreeMap<(String, u16), SocketAddr>,
    /// Limit for one whole fetch (discovery and the key request).
    pub timeout: Duration,
    /// Key fetches running at once, across all origins.
    pub max_inflight: usize,
    /// How long a failed fetch is remembered.
    pub negative_ttl: Duration,
    /// Origins whose keys are cached (least recently used are dropped).
    pub max_origins: usize,
    /// Notaries asked, in order, for the keys of an origin that has no
    /// entry in the pin file; the origin itself is asked when none answers.
    /// A pinned origin is always asked directly, over its pinned TLS: a
    /// notary's word is weaker than the pins.
    pub key_servers: Vec<KeyServer>,
}

impl Default for KeyFetchSettings {
    fn default() -> Self {
        KeyFetchSettings {
            egress: EgressPolicy::new(Vec::new(), Vec::new()),
            resolve: BTreeMap::new(),
            connect_to: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            max_inflight: 16,
            negative_ttl: Duration::from_secs(60),
            max_origins: 10_000,
            key_servers: Vec::new(),
        }
    }
}

/// Why no key could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The fetch failed (or failed recently and is not retried yet).
    #[error("cannot fetch the signing keys of {origin}: {reason}")]
    Fetch {
        /// The origin.
        origin: String,
        /// What went wrong, in words for the operator.
        reason: String,
    },
    /// The origin's current keys do not include this key ID.
    #[error("{origin} has no current key {key_id}")]
    UnknownKey {
        /// The origin.
        origin: String,
        /// The key asked for.
        key_id: String,
    },
    /// Too many fetches are running; try again shortly.
    #[error("too many signing-key fetches in flight")]
    Busy,
}

#[derive(Clone)]
enum Entry {
    Keys {
        keys: HashMap<String, VerifyKey>,
        /// Unix ms after which the keys are no longer valid.
        valid_until_ms: u64,
        fetched: Instant,
    },
    Failed {
        until: Instant,
        reason: String,
    },
}

/// Fetches, checks and caches origins' signing keys.
pub struct KeyFetcher {
    upstream: Arc<UpstreamTls>,
    client: HttpsClient,
    settings: KeyFetchSettings,
    cache: Mutex<lru::LruCache<String, Entry>>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    slots: Arc<tokio::sync::Semaphore>,
    fetches: AtomicU64,
    srv: Mutex<Option<Arc<dyn discovery::SrvLookup>>>,
}

impl std::fmt::Debug for KeyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFetcher")
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl KeyFetcher {
    /// A fetcher dialling through `upstream` (the pinned verifier).
    pub fn new(upstream: Arc<UpstreamTls>, settings: KeyFetchSettings) -> Self {
        let cap = NonZeroUsize::new(settings.max_origins.max(1)).unwrap_or(NonZeroUsize::MIN);
        let dialer = Dialer {
            egress: Some(settings.egress.clone()),
            resolve: settings.resolve.clone(),
            connect_to: settings.connect_to.clone(),
            fixed: None,
        };
        let client = HttpsClient::new(Trust::Pinned(upstream.clone()))
            .with_dialer(dialer)
            .with_timeout(settings.timeout)
            .with_max_body(MAX_RESPONSE);
        KeyFetcher {
            upstream,
            client,
            slots: Arc::new(tokio::sync::Semaphore::new(settings.max_inflight.max(1))),
            settings,
            cache: Mutex::new(lru::LruCache::new(cap)),
            flights: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
            srv: Mutex::new(None),
        }
    }

    /// Uses this SRV backend instead of the system resolver (tests).
    pub fn with_srv(self, srv: Arc<dyn discovery::SrvLookup>) -> Self {
        *self.srv.lock().unwrap_or_else(|p| p.into_inner()) = Some(srv);
        self
    }

    /// Key fetches started so far (for metrics and tests).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn cached(&self, origin: &str, key_id: &str) -> Option<Result<VerifyKey, KeyError>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(origin)? {
            Entry::Failed { until, reason } => {
                if Instant::now() < *until {
                    Some(Err(KeyError::Fetch {
                        origin: origin.to_owned(),
                        reason: format!("{reason} (remembered; retried later)"),
                    }))
                } else {
                    None
                }
            }
            Entry::Keys {
                keys,
                valid_until_ms,
                fetched,
            } => {
                if now_ms() >= *valid_until_ms || fetched.elapsed() >= MAX_KEY_LIFETIME {
                    return None;
                }
                match keys.get(key_id) {
                    Some(k) => Some(Ok(k.clone())),
                    // A key rotated in since the fetch: look again, but not
                    // more than once per negative TTL.
                    None if fetched.elapsed() >= self.settings.negative_ttl => None,
                    None => Some(Err(KeyError::UnknownKey {
                        origin: origin.to_owned(),
                        key_id: key_id.to_owned(),
                    })),
                }
            }
        }
    }

    /// The origin's current key `key_id`, from the cache or one fetch.
    pub async fn key(&self, origin: &str, key_id: &str) -> Result<VerifyKey, KeyError> {
        if let Some(hit) = self.cached(origin, key_id) {
            return hit;
        }
        // One fetch per origin at a time: later callers wait and read the cache.
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if flights.len() > self.settings.max_origins {
                flights.retain(|_, m| Arc::strong_count(m) > 1);
            }
            flights
                .entry(origin.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        let _turn = flight.lock().await;
        if let Some(hit) = self.cached(origin, key_id) {
            return hit;
        }
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            return Err(KeyError::Busy);
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = self.fetch_keys(origin).await;
        let entry = match fetched {
            Ok((keys, valid_until_ms)) => Entry::Keys {
                keys,
                valid_until_ms,
                fetched: Instant::now(),
            },
            Err(reason) => {
                tracing::warn!(target: "fedpin::inbound", origin = %origin, reason = %reason, "signing-key fetch failed");
                Entry::Failed {
                    until: Instant::now() + self.settings.negative_ttl,
                    reason,
                }
            }
        };
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(origin.to_owned(), entry);
        self.cached(origin, key_id).unwrap_or_else(|| {
            Err(KeyError::UnknownKey {
                origin: origin.to_owned(),
                key_id: key_id.to_owned(),
            })
        })
    }

    /// Reads `origin`'s key document from a known endpoint (`pinctl`, which
    /// has just resolved and pinned it): the keys it publishes now, checked
    /// as for any fetch. Not cached.
    pub async fn fetch_from(
        &self,
        tls_name: &str,
        connect_host: &str,
        port: u16,
        origin: &str,
    ) -> Result<HashMap<String, VerifyKey>, String> {
        let fut = async {
            let target = Target {
                tls_name,
                connect_host,
                port,
                host_header: origin,
                plain: false,
            };
            let (status, body) = self
                .request(Method::GET, target, KEY_PATH, Bytes::new())
                .await?;
            if status != StatusCode::OK {
                return Err(format!("{KEY_PATH} answered HTTP {status}"));
            }
            let (mut keys, _) = parse_key_response(&body, origin, now_ms())?;
            // Only the keys it signs with now (not old_verify_keys).
            let current: Value = serde_json::from_slice(&body).unwrap_or_default();
            keys.retain(|id, _| current["verify_keys"].get(id).is_some());
            Ok(keys)
        };
        tokio::time::timeout(self.settings.timeout, fut)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.settings.timeout)))
    }

    /// The origin's keys: from the notaries first (unless the origin is
    /// pinned), then from the origin itself; each source within its own
    /// timeout.
    async fn fetch_keys(&self, origin: &str) -> Result<(HashMap<String, VerifyKey>, u64), String> {
        let limit = self.settings.timeout;
        let timed_out = || format!("timed out after {limit:?}");
        let pinned = self
            .upstream
            .store()
            .current()
            .by_server_name(origin)
            .is_some();
        let mut refused = Vec::new();
        if !pinned {
            for notary in &self.settings.key_servers {
                let asked = tokio::time::timeout(limit, self.fetch_via_notary(notary, origin));
                match asked.await.unwrap_or_else(|_| Err(timed_out())) {
                    Ok(found) => return Ok(found),
                    Err(reason) => {
                        tracing::info!(target: "fedpin::inbound", origin = %origin, notary = %notary.server_name, reason = %reason, "key server could not vouch for the origin's keys; trying the next source");
                        refused.push(format!("key server {}: {reason}", notary.server_name));
                    }
                }
            }
        }
        let direct = tokio::time::timeout(limit, self.fetch_direct(origin));
        match direct.await.unwrap_or_else(|_| Err(timed_out())) {
            Ok(found) => Ok(found),
            Err(reason) if refused.is_empty() => Err(reason),
            Err(reason) => Err(format!("{}; directly: {reason}", refused.join("; "))),
        }
    }

    /// Where `server` is served: the Matrix resolution of its name, every
    /// hop through the pinned verifier and the egress policy.
    async fn locate(&self, server: &str) -> Result<(discovery::Resolved, String), String> {
        let name: discovery::ServerName = server
            .parse()
            .map_err(|e: discovery::InvalidServerName| e.to_string())?;
        let opts = DiscoveryOptions {
            timeout: self.settings.timeout,
            resolver: self.srv.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            ..DiscoveryOptions::default()
        };
        let r = discovery::resolve_via(&name, &opts, self)
            .await
            .map_err(|e| e.to_string())?;
        let host_header = match name.port {
            Some(p) => format!("{}:{p}", name.host),
            None => name.host.to_string(),
        };
        Ok((r, host_header))
    }

    /// Discovers the origin's endpoint and reads its key document.
    async fn fetch_direct(
        &self,
        origin: &str,
    ) -> Result<(HashMap<String, VerifyKey>, u64), String> {
        let (r, host_header) = self.locate(origin).await?;
        let (status, body) = self
            .request(
                Method::GET,
                target_of(&r, &host_header),
                KEY_PATH,
                Bytes::new(),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(format!("{KEY_PATH} answered HTTP {status}"));
        }
        parse_key_response(&body, origin, now_ms())
    }

    /// Asks a notary for the origin's key document (`POST
    /// /_matrix/key/v2/query`), over TLS to the notary checked like any
    /// other, and keeps only documents that both the notary (with a
    /// configured key) and the origin itself signed.
    async fn fetch_via_notary(
        &self,
        notary: &KeyServer,
        origin: &str,
    ) -> Result<(HashMap<String, VerifyKey>, u64), String> {
        let (r, host_header) = self.locate(&notary.server_name).await?;
        let now = now_ms();
        let query = serde_json::json!({
            "server_keys": { origin: {} },
        });
        let (status, body) = self
            .request(
                Method::POST,
                target_of(&r, &host_header),
                QUERY_PATH,
                Bytes::from(query.to_string()),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(format!("{QUERY_PATH} answered HTTP {status}"));
        }
        parse_notary_response(&body, notary, origin, now)
    }

    /// One request over the pinned verifier (the client's dialer applies
    /// the egress policy); a non-empty body is sent as JSON.
    async fn request(
        &self,
        method: Method,
        target: Target<'_>,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let answer = self.client.send(target, method, path, &[], body).await?;
        Ok((answer.status, answer.body))
    }
}

/// The HTTPS target of a resolved server.
fn target_of<'a>(r: &'a discovery::Resolved, host_header: &'a str) -> Target<'a> {
    Target {
        tls_name: &r.tls_name,
        connect_host: &r.connect_host,
        port: r.port,
        host_header,
        plain: false,
    }
}

impl discovery::WellKnownSource for KeyFetcher {
    fn fetch<'a>(&'a self, host: &'a str) -> WellKnownFuture<'a> {
        Box::pin(async move {
            let url = format!("https://{host}{}", discovery::WELL_KNOWN_PATH);
            // Redirects are followed on the same host only: another host
            // would be a TLS name no pin covers for this origin.
            let redirects = Redirects {
                max: 5,
                other_hosts: false,
            };
            let (answer, hops) = self
                .client
                .get_following(host, 443, discovery::WELL_KNOWN_PATH, redirects, &[])
                .await
                .map_err(|reason| DiscoveryError::WellKnown { url, reason })?;
            let delegated = discovery::parse_well_known(&answer.body)?;
            Ok(WellKnown { delegated, hops })
        })
    }
}

/// Checks a `/_matrix/key/v2/server` answer for `origin` at `now_ms`: the
/// right `server_name`, every signature by one of its own `verify_keys`
/// valid (at least one), not yet expired. Returns the current keys (and the
/// `old_verify_keys` not yet expired) and the validity limit.
pub fn parse_key_response(
    body: &[u8],
    origin: &str,
    now_ms: u64,
) -> Result<(HashMap<String, VerifyKey>, u64), String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("key response is not JSON: {e}"))?;
    if v.get("server_name").and_then(Value::as_str) != Some(origin) {
        return Err(format!("key response is not for {origin}"));
    }
    let valid_until = v
        .get("valid_until_ts")
        .and_then(Value::as_u64)
        .ok_or("key response has no valid_until_ts")?;
    if valid_until <= now_ms {
        return Err("key response has expired (valid_until_ts is past)".into());
    }
    let mut keys = HashMap::new();
    if let Some(vk) = v.get("verify_keys").and_then(Value::as_object) {
        for (id, k) in vk {
            let Some(b64) = k.get("key").and_then(Value::as_str) else {
                continue;
            };
            if let Ok(key) = VerifyKey::from_base64(id, b64) {
                keys.insert(id.clone(), key);
            }
        }
    }
    if keys.is_empty() {
        return Err("key response has no usable ed25519 verify_keys".into());
    }
    let sigs = v
        .get("signatures")
        .and_then(|s| s.get(origin))
        .and_then(Value::as_object)
        .ok_or("key response is not signed by its server")?;
    let exact = crate::matrix::canonical_json::parse(body).map_err(|e| e.to_string())?;
    let mut verified = 0;
    for id in sigs.keys() {
        if let Some(k) = keys.get(id) {
            signing::verify_json(&exact, origin, k)
                .map_err(|e| format!("key response self-signature by {id}: {e}"))?;
            verified += 1;
        }
    }
    if verified == 0 {
        return Err("key response is not signed by any of its own keys".into());
    }
    if let Some(old) = v.get("old_verify_keys").and_then(Value::as_object) {
        for (id, k) in old {
            let expired = k.get("expired_ts").and_then(Value::as_u64).unwrap_or(0);
            if expired > now_ms {
                if let Some(key) = k
                    .get("key")
                    .and_then(Value::as_str)
                    .and_then(|b| VerifyKey::from_base64(id, b).ok())
                {
                    keys.entry(id.clone()).or_insert(key);
                }
            }
        }
    }
    Ok((keys, valid_until))
}

/// Checks a notary's `/_matrix/key/v2/query` answer for `origin` at
/// `now_ms`: of the documents in `server_keys`, those for `origin` that
/// carry a valid signature by one of the notary's configured keys and pass
/// every check of [`parse_key_response`] (the origin's own self-signature
/// among them). A notary cannot vouch alone, and a document the origin
/// signed cannot be replayed by a notary whose key is not configured.
/// Returns the keys of the vouched documents and the earliest validity
/// limit among them.
pub fn parse_notary_response(
    body: &[u8],
    notary: &KeyServer,
    origin: &str,
    now_ms: u64,
) -> Result<(HashMap<String, VerifyKey>, u64), String> {
    use crate::matrix::canonical_json::{self, Json};
    let exact =
        canonical_json::parse(body).map_err(|e| format!("notary response is not JSON: {e}"))?;
    let docs = match &exact {
        Json::Object(top) => match top.get("server_keys") {
            Some(Json::Array(docs)) => docs,
            _ => return Err("notary response has no server_keys list".into()),
        },
        _ => return Err("notary response is not a JSON object".into()),
    };
    let mut keys = HashMap::new();
    let mut until: Option<u64> = None;
    let mut refused = Vec::new();
    for doc in docs {
        let Json::Object(fields) = doc else {
            continue;
        };
        if fields.get("server_name") != Some(&Json::Str(origin.to_owned())) {
            continue;
        }
        let vouched = notary
            .verify_keys
            .iter()
            .any(|k| signing::verify_json(doc, &notary.server_name, k).is_ok());
        if !vouched {
            refused.push(format!(
                "a document for {origin} without a valid signature by a configured key of {}",
                notary.server_name
            ));
            continue;
        }
        let text = canonical_json::encode(doc).map_err(|e| e.to_string())?;
        match parse_key_response(text.as_bytes(), origin, now_ms) {
            Ok((found, valid_until)) => {
                keys.extend(found);
                until = Some(until.map_or(valid_until, |u| u.min(valid_until)));
            }
            Err(reason) => refused.push(reason),
        }
    }
    match until {
        Some(until) if !keys.is_empty() => Ok((keys, until)),
        _ if refused.is_empty() => Err(format!("notary has no key document for {origin}")),
        _ => Err(refused.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use ring::signature::KeyPair as _;

    pub(crate) fn key_response(seed: u8, origin: &str, valid_until: u64) -> Vec<u8> {
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(b);
        let mut v = serde_json::json!({
            "server_name": origin,
            "valid_until_ts": valid_until,
            "verify_keys": { "ed25519:k": { "key": b64(kp.public_key().as_ref()) } },
            "old_verify_keys": {},
        });
        let text = crate::matrix::canonical_json::encode_value(&v).unwrap();
        let sig = b64(kp.sign(text.as_bytes()).as_ref());
        v["signatures"] = serde_json::json!({ origin: { "ed25519:k": sig } });
        serde_json::to_vec(&v).unwrap()
    }

    /// `doc` signed in addition by the notary `name` with seed `seed`.
    fn vouch(doc: &[u8], name: &str, seed: u8) -> Value {
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let mut v: Value = serde_json::from_slice(doc).unwrap();
        let mut stripped = v.clone();
        stripped.as_object_mut().unwrap().remove("signatures");
        let text = crate::matrix::canonical_json::encode_value(&stripped).unwrap();
        let sig = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(kp.sign(text.as_bytes()).as_ref());
        v["signatures"][name] = serde_json::json!({ "ed25519:n": sig });
        v
    }

    fn notary(seed: u8) -> KeyServer {
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        KeyServer {
            server_name: "notary.example".into(),
            verify_keys: vec![VerifyKey {
                id: "ed25519:n".into(),
                key: kp.public_key().as_ref().try_into().unwrap(),
            }],
        }
    }

    #[test]
    fn notary_answers_need_both_signatures() {
        let now = 1_000_000;
        let n = notary(7);
        let doc = key_response(1, "a.example", now + 1000);
        let answer = |docs: Vec<Value>| {
            serde_json::to_vec(&serde_json::json!({ "server_keys": docs })).unwrap()
        };
        // Vouched by the notary and self-signed: accepted.
        let good = answer(vec![vouch(&doc, "notary.example", 7)]);
        let (keys, until) = parse_notary_response(&good, &n, "a.example", now).unwrap();
        assert!(keys.contains_key("ed25519:k"));
        assert_eq!(until, now + 1000);
        // Only for the origin asked about.
        assert!(parse_notary_response(&good, &n, "b.example", now).is_err());
        // Signed by another notary key: refused.
        let other = answer(vec![vouch(&doc, "notary.example", 8)]);
        let why = parse_notary_response(&other, &n, "a.example", now).unwrap_err();
        assert!(why.contains("configured key"), "{why}");
        // Signed by the right key under another notary name: refused.
        let renamed = answer(vec![vouch(&doc, "evil.example", 7)]);
        assert!(parse_notary_response(&renamed, &n, "a.example", now).is_err());
        // Not vouched at all: refused.
        let bare: Value = serde_json::from_slice(&doc).unwrap();
        assert!(parse_notary_response(&answer(vec![bare]), &n, "a.example", now).is_err());
        // The notary alone cannot make keys: a document whose self-signature
        // is by a key it does not publish is refused even when vouched.
        let mut forged: Value =
            serde_json::from_slice(&key_response(2, "a.example", now + 1000)).unwrap();
        forged["verify_keys"] =
            serde_json::from_slice::<Value>(&doc).unwrap()["verify_keys"].clone();
        let forged = answer(vec![vouch(
            &serde_json::to_vec(&forged).unwrap(),
            "notary.example",
            7,
        )]);
        let why = parse_notary_response(&forged, &n, "a.example", now).unwrap_err();
        assert!(why.contains("self-signature"), "{why}");
        // Expired documents, whoever vouches for them, are refused.
        assert!(parse_notary_response(&good, &n, "a.example", now + 1000).is_err());
        // A vouched document changed afterwards fails both signatures.
        let mut tampered = vouch(&doc, "notary.example", 7);
        tampered["valid_until_ts"] = (now + 9000).into();
        assert!(parse_notary_response(&answer(vec![tampered]), &n, "a.example", now).is_err());
        // Not an answer at all.
        for junk in [&b"[]"[..], b"{}", b"{\"server_keys\": {}}", b"nope"] {
            assert!(parse_notary_response(junk, &n, "a.example", now).is_err());
        }
    }

    #[test]
    fn key_responses_are_checked() {
        let now = 1_000_000;
        let good = key_response(1, "a.example", now + 1000);
        let (keys, until) = parse_key_response(&good, "a.example", now).unwrap();
        assert!(keys.contains_key("ed25519:k"));
        assert_eq!(until, now + 1000);
        assert!(parse_key_response(&good, "b.example", now).is_err());
        assert!(parse_key_response(&good, "a.example", now + 1000).is_err());
        let mut tampered: Value = serde_json::from_slice(&good).unwrap();
        tampered["valid_until_ts"] = (now + 5000).into();
        assert!(
            parse_key_response(&serde_json::to_vec(&tampered).unwrap(), "a.example", now)
                .unwrap_err()
                .contains("self-signature")
        );
        let mut unsigned: Value = serde_json::from_slice(&good).unwrap();
        unsigned.as_object_mut().unwrap().remove("signatures");
        assert!(
            parse_key_response(&serde_json::to_vec(&unsigned).unwrap(), "a.example", now).is_err()
        );
    }
}
