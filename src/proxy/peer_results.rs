//! The last TLS handshake result per peer, for one direction of the proxy
//! (the status page reads it; the proxies write it where they count the
//! handshake).
//!
//! The state is bounded whatever the traffic: peers with a pin entry are kept
//! in one LRU map ([`PINNED_CAPACITY`], far above any real pin file), hosts
//! without an entry in another, smaller one ([`UNPINNED_CAPACITY`]), so a
//! stream of unpinned names can never push a pinned peer's row out. Recording
//! is one pin-set hash lookup and one short, uncontended mutex section (an
//! LRU `put`, O(1)); the chain's expiry is read only for completed handshakes.

use std::sync::Mutex;

use lru::LruCache;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::metrics::HandshakeResult;
use crate::pins::PinSet;

/// Peers with a pin entry whose last result is kept.
pub const PINNED_CAPACITY: usize = 4096;

/// Hosts without a pin entry whose last result is kept (the most recent).
pub const UNPINNED_CAPACITY: usize = 256;

/// The last handshake with one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastHandshake {
    /// When it ended.
    pub at: OffsetDateTime,
    /// How it ended.
    pub result: HandshakeResult,
    /// The TLS name (or IP literal) it was checked as.
    pub host: String,
    /// The nearest `notAfter` among the certificates the peer served
    /// (completed handshakes only).
    pub nearest_cert_expiry: Option<OffsetDateTime>,
}

/// Last handshake results by peer, for one direction.
#[derive(Debug)]
pub struct PeerResults {
    /// Keyed by the peer's server name, lowercased.
    pinned: Mutex<LruCache<String, LastHandshake>>,
    /// Keyed by the normalised TLS name or IP text.
    unpinned: Mutex<LruCache<String, LastHandshake>>,
}

impl Default for PeerResults {
    fn default() -> Self {
        Self::with_capacity(PINNED_CAPACITY, UNPINNED_CAPACITY)
    }
}

impl PeerResults {
    /// A table keeping at most `pinned` peers with an entry and `unpinned`
    /// hosts without one (each at least 1).
    pub fn with_capacity(pinned: usize, unpinned: usize) -> Self {
        let cap =
            |n: usize| std::num::NonZeroUsize::new(n.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        PeerResults {
            pinned: Mutex::new(LruCache::new(cap(pinned))),
            unpinned: Mutex::new(LruCache::new(cap(unpinned))),
        }
    }

    /// Records how a handshake with `host` ended. `pins` says whose host it
    /// is; `chain` is what the peer served (read only when `result` is
    /// [`HandshakeResult::Ok`]; a failure keeps the expiry seen last). An empty host (no name to key on) is not
    /// recorded.
    pub fn record(
        &self,
        pins: &PinSet,
        host: &str,
        result: HandshakeResult,
        chain: &[CertificateDer<'_>],
    ) {
        let host = crate::pins::normalize_lookup(host);
        if host.is_empty() {
            return;
        }
        let computed = if result == HandshakeResult::Ok {
            nearest_expiry(chain)
        } else {
            None
        };
        let now = OffsetDateTime::now_utc();
        // A failed handshake keeps the expiry of the last chain that
        // completed: it is still the peer's certificate as last seen.
        let entry = |previous: Option<&LastHandshake>| LastHandshake {
            at: now,
            result,
            host: host.clone().into_owned(),
            nearest_cert_expiry: if result == HandshakeResult::Ok {
                computed
            } else {
                previous.and_then(|p| p.nearest_cert_expiry)
            },
        };
        match pins.lookup(&host) {
            Some(peer) => {
                let key = peer.server_name.to_ascii_lowercase();
                let mut map = lock(&self.pinned);
                let e = entry(map.peek(&key));
                map.put(key, e);
            }
            None => {
                let mut map = lock(&self.unpinned);
                let e = entry(map.peek(host.as_ref()));
                map.put(host.into_owned(), e);
            }
        }
    }

    /// The last handshake with the peer named `server_name` (any case).
    pub fn pinned(&self, server_name: &str) -> Option<LastHandshake> {
        lock(&self.pinned)
            .peek(&server_name.to_ascii_lowercase())
            .cloned()
    }

    /// Hosts without a pin entry, most recent first, at most `limit`.
    pub fn unpinned(&self, limit: usize) -> Vec<LastHandshake> {
        lock(&self.unpinned)
            .iter()
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Number of rows kept (pinned, unpinned).
    pub fn len(&self) -> (usize, usize) {
        (lock(&self.pinned).len(), lock(&self.unpinned).len())
    }
}

/// The nearest `notAfter` among `chain`'s certificates (unparsable ones are skipped).
pub fn nearest_expiry(chain: &[CertificateDer<'_>]) -> Option<OffsetDateTime> {
    chain
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, cert)| cert.validity().not_after.to_datetime())
        .min()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> PinSet {
        let pin = format!("sha256/{}", "A".repeat(43) + "=");
        PinSet::parse(&format!(
            "version = 1\n[[peer]]\nserver_name = \"Peer.Example:8448\"\nhosts = [\"peer.example\", \"fed.peer.example\"]\npins = [\"{pin}\"]\n"
        ))
        .unwrap()
    }

    #[test]
    fn pinned_rows_are_keyed_by_server_name_and_keep_the_last_result() {
        let pins = set();
        let r = PeerResults::default();
        r.record(
            &pins,
            "FED.peer.example.",
            HandshakeResult::PinMismatch,
            &[],
        );
        let last = r.pinned("peer.example:8448").unwrap();
        assert_eq!(last.result, HandshakeResult::PinMismatch);
        assert_eq!(last.host, "fed.peer.example");
        r.record(&pins, "peer.example", HandshakeResult::Ok, &[]);
        let last = r.pinned("PEER.EXAMPLE:8448").unwrap();
        assert_eq!(last.result, HandshakeResult::Ok);
        assert_eq!(last.host, "peer.example");
        assert_eq!(r.len(), (1, 0));
    }

    #[test]
    fn unpinned_hosts_are_bounded_and_never_evict_pinned_peers() {
        let pins = set();
        let r = PeerResults::with_capacity(8, 3);
        r.record(&pins, "peer.example", HandshakeResult::Ok, &[]);
        for i in 0..100 {
            r.record(
                &pins,
                &format!("h{i}.example"),
                HandshakeResult::UnpinnedDenied,
                &[],
            );
        }
        r.record(&pins, "", HandshakeResult::Error, &[]);
        assert_eq!(r.len(), (1, 3));
        let hosts: Vec<String> = r.unpinned(10).into_iter().map(|l| l.host).collect();
        assert_eq!(hosts, ["h99.example", "h98.example", "h97.example"]);
        assert!(r.pinned("peer.example:8448").is_some());
    }

    #[test]
    fn nearest_expiry_is_the_earliest_not_after_of_the_chain() {
        let mut a = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        a.not_after = rcgen::date_time_ymd(2031, 5, 1);
        let mut b = rcgen::CertificateParams::new(vec!["b.example".to_string()]).unwrap();
        b.not_after = rcgen::date_time_ymd(2029, 2, 3);
        let key = rcgen::KeyPair::generate().unwrap();
        let chain = [
            a.self_signed(&key).unwrap().der().clone(),
            CertificateDer::from(vec![0u8, 1, 2]),
            b.self_signed(&key).unwrap().der().clone(),
        ];
        let nearest = nearest_expiry(&chain).unwrap();
        assert_eq!(
            (nearest.year(), u8::from(nearest.month()), nearest.day()),
            (2029, 2, 3)
        );
        let pins = set();
        let r = PeerResults::default();
        r.record(&pins, "peer.example", HandshakeResult::Ok, &chain);
        assert_eq!(
            r.pinned("peer.example:8448").unwrap().nearest_cert_expiry,
            Some(nearest)
        );
        // A refusal keeps the expiry last seen on a completed handshake.
        r.record(
            &pins,
            "peer.example",
            HandshakeResult::PinMismatch,
            &chain[1..2],
        );
        let last = r.pinned("peer.example:8448").unwrap();
        assert_eq!(last.result, HandshakeResult::PinMismatch);
        assert_eq!(last.nearest_cert_expiry, Some(nearest));
        r.record(
            &pins,
            "other.example",
            HandshakeResult::ChainInvalid,
            &chain,
        );
        assert_eq!(r.unpinned(1)[0].nearest_cert_expiry, None);
    }
}
