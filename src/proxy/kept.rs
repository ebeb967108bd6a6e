//! Pinned upstream connections kept between outbound tunnels.
//!
//! A new tunnel costs two TLS handshakes: the homeserver's, ended with a
//! minted leaf, and fedpin's own to the peer, pin-checked. Upstream session
//! resumption (TLS 1.3 tickets) makes the second cheaper but not free: a
//! resumed handshake still does its key exchange. When the homeserver speaks
//! HTTP/1.1 inside the tunnel, fedpin reads it as HTTP and, when the tunnel
//! ends, keeps its upstream connection, at a message boundary, for the next
//! tunnel to the same peer. That tunnel then makes no upstream handshake at
//! all (issue 13, item 4).
//!
//! What keeps this safe (SPEC 4.8, 4.13):
//!
//! * a kept connection was pin-checked under the pin generation it records,
//!   and is handed out only while that generation is the one in force. A
//!   reload empties the pool, and a connection from an older generation is
//!   closed, never reused: the next tunnel dials and checks afresh;
//! * it is handed out only for the same TLS name, CONNECT host and port, and
//!   only if the address it is connected to is among the addresses the new
//!   tunnel was vetted for (egress policy, `resolve`, `connect_to` as they
//!   are now);
//! * a tunnel that takes one registers its recorded chain for revocation
//!   like any other, so a reload that refuses it ends that tunnel too;
//! * at most `max_per_key` wait per peer and `max_total` in all, and none is
//!   handed out after `idle` (a task started by the proxy closes them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::CertificateDer;

/// An upstream HTTP/1.1 connection that passed the pin rules.
pub struct Link {
    /// Sends requests over it (its connection task runs on its own).
    pub sender: SendRequest<Incoming>,
    /// The chain the peer presented, for re-checks on reload.
    pub chain: std::sync::Arc<[CertificateDer<'static>]>,
    /// Where it is connected (`None`: unknown, never kept).
    pub peer_addr: Option<SocketAddr>,
    /// The pin generation that checked it.
    pub generation: u64,
    /// When it was made: none is handed out after [`MAX_AGE`], so that the
    /// certificate's and the pins' expiry are checked again by a new dial.
    pub created: Instant,
    /// Its HTTP/1.1 connection task, ended with it (a peer that never
    /// answers does not keep the task and its socket).
    pub task: Option<tokio::task::AbortHandle>,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The oldest a kept connection may be when it is handed out.
pub const MAX_AGE: Duration = Duration::from_secs(600);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer_addr", &self.peer_addr)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What a kept connection may be reused for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The TLS name it was checked for (SNI).
    pub tls_name: String,
    /// The CONNECT host.
    pub host: String,
    /// The CONNECT port.
    pub port: u16,
}

struct Waiting {
    link: Link,
    since: Instant,
}

/// The kept connections, per key, oldest first.
pub struct Kept {
    map: Mutex<HashMap<Key, Vec<Waiting>>>,
    max_per_key: usize,
    max_total: usize,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Kept {
    /// An empty pool with these limits.
    pub fn new(max_per_key: usize, max_total: usize) -> Self {
        Kept {
            map: Mutex::new(HashMap::new()),
            max_per_key,
            max_total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Waiting>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently kept connection for `key` that was checked under
    /// `generation`, is connected to one of `addrs`, is younger than `idle`
    /// and is ready for a request. Others met on the way are closed.
    pub fn take(
        &self,
        key: &Key,
        generation: u64,
        addrs: &[SocketAddr],
        idle: Duration,
    ) -> Option<Link> {
        let mut map = self.lock();
        let list = map.get_mut(key)?;
        let mut found = None;
        while let Some(w) = list.pop() {
            if w.link.generation == generation
                && w.link.peer_addr.is_some_and(|a| addrs.contains(&a))
                && w.since.elapsed() < idle
                && w.link.created.elapsed() < MAX_AGE
                && w.link.sender.is_ready()
            {
                found = Some(w.link);
                break;
            }
        }
        if list.is_empty() {
            map.remove(key);
        }
        found
    }

    /// Keeps `link` for a later tunnel to `key`, if it was checked under
    /// `generation` (the one in force) and can take a request now. The
    /// oldest for the key, or the oldest of all, makes room.
    pub fn put(&self, key: Key, link: Link, generation: u64) {
        if self.max_per_key == 0
            || self.max_total == 0
            || link.generation != generation
            || link.created.elapsed() >= MAX_AGE
            || !link.sender.is_ready()
        {
            return;
        }
        let mut map = self.lock();
        // Whatever another generation left is of no use any more.
        map.retain(|_, list| {
            list.retain(|w| w.link.generation == generation && !w.link.sender.is_closed());
            !list.is_empty()
        });
        let list = map.entry(key).or_default();
        if list.len() >= self.max_per_key {
            list.remove(0);
        }
        list.push(Waiting {
            link,
            since: Instant::now(),
        });
        let mut total: usize = map.values().map(Vec::len).sum();
        while total > self.max_total {
            let oldest = map
                .iter()
                .filter_map(|(k, l)| l.first().map(|w| (w.since, k.clone())))
                .min_by_key(|(since, _)| *since)
                .map(|(_, k)| k);
            let Some(k) = oldest else { break };
            if let Some(list) = map.get_mut(&k) {
                list.remove(0);
                if list.is_empty() {
                    map.remove(&k);
                }
            }
            total -= 1;
        }
    }

    /// Closes every kept connection (a pin reload, a settings change).
    /// Returns how many were closed.
    pub fn clear(&self) -> usize {
        let drained: Vec<_> = self.lock().drain().collect();
        drained.iter().map(|(_, l)| l.len()).sum()
    }

    /// Closes those older than `idle`, closed by the peer, or from another
    /// generation than `generation`.
    pub fn reap(&self, idle: Duration, generation: u64) {
        let now = Instant::now();
        self.lock().retain(|_, list| {
            list.retain(|w| {
                now.duration_since(w.since) < idle
                    && w.link.generation == generation
                    && !w.link.sender.is_closed()
            });
            !list.is_empty()
        });
    }

    /// Connections kept now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A loopback HTTP/1.1 server that answers `ok`, and where it listens.
    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn link(addr: SocketAddr, generation: u64) -> Link {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        // Ready once its task ran: what a tunnel waits for before keeping it.
        sender.ready().await.expect("ready");
        Link {
            sender,
            chain: Vec::new().into(),
            peer_addr: Some(addr),
            generation,
            created: Instant::now(),
            task: None,
        }
    }

    fn key(name: &str) -> Key {
        Key {
            tls_name: name.into(),
            host: name.into(),
            port: 443,
        }
    }

    const IDLE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn only_the_same_key_generation_and_address_take_it() {
        let addr = server().await;
        let kept = Kept::new(8, 256);
        kept.put(key("a.test"), link(addr, 1).await, 1);
        assert_eq!(kept.len(), 1);
        assert!(kept.take(&key("b.test"), 1, &[addr], IDLE).is_none());
        let elsewhere: SocketAddr = "127.0.0.2:443".parse().expect("addr");
        assert!(kept.take(&key("a.test"), 1, &[elsewhere], IDLE).is_none());
        assert_eq!(
            kept.len(),
            0,
            "a connection to an address no longer vetted is closed"
        );

        kept.put(key("a.test"), link(addr, 1).await, 1);
        assert!(kept.take(&key("a.test"), 2, &[addr], IDLE).is_none());
        assert_eq!(
            kept.len(),
            0,
            "a connection from another generation is closed"
        );

        kept.put(key("a.test"), link(addr, 1).await, 1);
        assert!(kept
            .take(&key("a.test"), 1, &[addr], Duration::ZERO)
            .is_none());
        kept.put(key("a.test"), link(addr, 1).await, 1);
        let l = kept.take(&key("a.test"), 1, &[addr], IDLE).expect("kept");
        assert_eq!(l.generation, 1);
        assert!(kept.is_empty());
    }

    #[tokio::test]
    async fn put_refuses_stale_and_evicts_the_oldest() {
        let addr = server().await;
        let kept = Kept::new(2, 3);
        kept.put(key("a.test"), link(addr, 1).await, 2);
        assert!(kept.is_empty(), "checked under generation 1, put under 2");
        for _ in 0..3 {
            kept.put(key("a.test"), link(addr, 2).await, 2);
        }
        assert_eq!(kept.len(), 2, "two per key");
        kept.put(key("b.test"), link(addr, 2).await, 2);
        kept.put(key("c.test"), link(addr, 2).await, 2);
        assert_eq!(kept.len(), 3, "three in all");
        assert!(kept.take(&key("c.test"), 2, &[addr], IDLE).is_some());
        // A later generation's put closes what an older one left.
        kept.put(key("d.test"), link(addr, 3).await, 3);
        assert_eq!(kept.len(), 1);
        kept.reap(IDLE, 4);
        assert!(kept.is_empty());
        kept.put(key("d.test"), link(addr, 4).await, 4);
        assert_eq!(kept.clear(), 1);
        assert!(kept.is_empty());
    }

    #[tokio::test]
    async fn zero_limits_keep_nothing() {
        let addr = server().await;
        let kept = Kept::new(0, 10);
        kept.put(key("a.test"), link(addr, 1).await, 1);
        assert!(kept.is_empty());
    }
}
