//! A peer's Matrix signing keys, read over TLS checked by its pins (SPEC 3,
//! "Signing keys"): recorded by `pinctl add`, compared by `pinctl verify`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::egress::EgressPolicy;
use crate::keys::{KeyFetchSettings, KeyFetcher};
use crate::pin_store::PinStore;
use crate::pins::{Peer, PinSet};
use crate::probe::Target;
use crate::tls::UpstreamTls;
use crate::verify::VerifierCore;

/// How long one key fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads the keys `server_name` publishes at `target`
/// (`/_matrix/key/v2/server`) over TLS checked against `pins`, as sorted
/// `ed25519:ID=BASE64` strings, or why they could not be read.
pub async fn fetch(
    core: &Arc<VerifierCore>,
    pins: &PinSet,
    target: &Target,
    server_name: &str,
) -> Result<Vec<String>, String> {
    let store = Arc::new(PinStore::fixed(pins.clone(), core.alerts().clone()));
    let upstream = Arc::new(UpstreamTls::new(
        core.clone(),
        store,
        crate::tls::provider(),
    ));
    // The operator chose this endpoint: any address may be dialled.
    let settings = KeyFetchSettings {
        egress: EgressPolicy::new(
            vec![
                "0.0.0.0/0".parse().map_err(|_| "CIDR")?,
                "::/0".parse().map_err(|_| "CIDR")?,
            ],
            vec![],
        ),
        timeout: FETCH_TIMEOUT,
        ..Default::default()
    };
    let fetcher = KeyFetcher::new(upstream, settings);
    let keys = fetcher
        .fetch_from(
            &target.tls_name,
            &target.connect_host,
            target.port,
            server_name,
        )
        .await?;
    let mut out: Vec<String> = keys
        .values()
        .map(|k| format!("{}={}", k.id, k.base64()))
        .collect();
    out.sort();
    Ok(out)
}

/// How the keys a peer publishes differ from the ones pinned for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDrift {
    /// The keys could not be read (why).
    Unreadable(String),
    /// Published but not pinned (`added`), pinned but no longer published
    /// (`removed`), as `ed25519:ID=BASE64`.
    Changed {
        /// Published now, not pinned.
        added: Vec<String>,
        /// Pinned, no longer published.
        removed: Vec<String>,
    },
}

impl fmt::Display for KeyDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDrift::Unreadable(e) => write!(f, "signing keys could not be read: {e}"),
            KeyDrift::Changed { added, removed } => write!(
                f,
                "signing keys changed: added [{}], removed [{}] (requests signed with an unpinned key are refused; re-run pinctl add after checking the change out of band)",
                added.join(", "),
                removed.join(", ")
            ),
        }
    }
}

/// For a peer with pinned signing keys: how the keys it publishes at
/// `target` differ from them; `None` when they agree or none are pinned.
pub async fn drift(
    core: &Arc<VerifierCore>,
    set: &PinSet,
    target: &Target,
    peer: &Peer,
) -> Option<KeyDrift> {
    if peer.signing_keys.is_empty() {
        return None;
    }
    let pinned: Vec<String> = peer
        .signing_keys
        .iter()
        .map(|k| format!("{}={}", k.id, k.base64()))
        .collect();
    match fetch(core, set, target, &peer.server_name).await {
        Err(e) => Some(KeyDrift::Unreadable(e)),
        Ok(now) => compare(&pinned, &now),
    }
}

/// The difference between pinned and published keys, `None` when equal.
fn compare(pinned: &[String], now: &[String]) -> Option<KeyDrift> {
    let added: Vec<String> = now
        .iter()
        .filter(|k| !pinned.contains(k))
        .cloned()
        .collect();
    let removed: Vec<String> = pinned
        .iter()
        .filter(|k| !now.contains(k))
        .cloned()
        .collect();
    if added.is_empty() && removed.is_empty() {
        None
    } else {
        Some(KeyDrift::Changed { added, removed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_names_added_and_removed() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(compare(&s(&["a", "b"]), &s(&["b", "a"])), None);
        let d = compare(&s(&["a", "b"]), &s(&["b", "c"])).unwrap();
        assert_eq!(
            d,
            KeyDrift::Changed {
                added: s(&["c"]),
                removed: s(&["a"])
            }
        );
        assert!(d
            .to_string()
            .starts_with("signing keys changed: added [c], removed [a] ("));
    }
}
