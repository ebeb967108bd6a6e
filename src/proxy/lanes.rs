//! Lanes: single-threaded tokio runtimes, each on a thread of its own, that
//! carry the inbound edge's connections (thread per core).
//!
//! On tokio's multi-threaded runtime a proxied request crosses threads: the
//! client connection's task and the homeserver connection's task are woken
//! on whichever worker is free, and a worker that runs out of work looks
//! for some to steal before it sleeps. Measured on the 2-core test machine
//! (kept-alive GETs through the edge, `wrk -t2 -c32`, /proc user time per
//! request, three interleaved runs): 28.4–32.3 µs of user time per request
//! on 2 workers, 16.1–19.7 µs on one. A lane keeps a connection, the
//! homeserver connections its requests take (one pool per lane, see
//! [`crate::proxy::upstream`]) and their timers on one thread, as nginx
//! keeps a connection in one worker process.
//!
//! Each lane accepts connections from the one listening socket itself
//! ([`listener_per_lane`]), so a connection starts and ends on the lane that
//! took it. A lane's runtime stops when [`Lanes`] is dropped; what still
//! runs on it then is dropped with it.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// What a lane runs as it goes idle, if set ([`on_park`]).
static ON_PARK: OnceLock<fn()> = OnceLock::new();

/// Sets what every lane started after this runs as it goes idle (once per
/// process; later calls are ignored). The daemon's binary hands its
/// allocator's freed memory back to the system there, as it does on its
/// main runtime's workers.
pub fn on_park(hook: fn()) {
    let _ = ON_PARK.set(hook);
}

thread_local! {
    /// This thread's lane: 0 off the lanes, `i + 1` on lane `i`.
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The lane this code runs on: 0 off the lanes (a runtime of its own, a
/// test's), else 1 + the lane's index. Used to keep per-lane state, such
/// as the homeserver connection pool, with the lane.
pub fn current() -> usize {
    LANE.with(Cell::get)
}

/// A set of lanes; dropping it stops them.
pub struct Lanes {
    handles: Vec<Handle>,
    /// Dropped with the set: each lane's thread then leaves its runtime.
    _stop: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("lanes", &self.handles.len())
            .finish_non_exhaustive()
    }
}

impl Lanes {
    /// Starts `n` lanes (at least one), their threads named `{name}-{i}`.
    pub fn start(n: usize, name: &str) -> std::io::Result<Lanes> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            if let Some(&f) = ON_PARK.get() {
                builder.on_thread_park(f);
            }
            let rt = builder.build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    LANE.with(|l| l.set(i + 1));
                    // Ends when the sender is dropped (or sends).
                    rt.block_on(async {
                        let _ = rx.await;
                    });
                    // Dropping the runtime drops the tasks still on it.
                    drop(rt);
                })?;
        }
        Ok(Lanes {
            handles,
            _stop: stop,
        })
    }

    /// How many lanes there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: a set has at least one lane.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on lane `i` (modulo the number of lanes). A socket it
    /// uses must be registered there: made from a std socket inside `task`
    /// (`TcpListener::from_std`), not brought along from another runtime,
    /// whose reactor would go on waking it from that runtime's thread.
    pub fn spawn_on<F>(&self, i: usize, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handles[i % self.handles.len()].spawn(task)
    }
}

/// `listener` for `n` lanes: its socket and `n - 1` duplicates of it
/// (`dup`), each to be registered on its lane (`TcpListener::from_std`) and
/// accepted from there. A new connection wakes the lanes that are waiting
/// and the first to accept it takes it, so a lane that is less busy takes
/// more; no connection is handed from one thread to another.
///
/// One socket, not a group bound with `SO_REUSEPORT`: that would let a
/// second fedpin (or any process of the same user) bind the same port and
/// silently take a share of the connections, where now it fails to start.
pub fn listener_per_lane(
    listener: tokio::net::TcpListener,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = listener.into_std()?;
    let mut all = Vec::with_capacity(n.max(1));
    for _ in 1..n {
        all.push(first.try_clone()?);
    }
    all.insert(0, first);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    /// Each lane accepts from its duplicate of the one listening socket:
    /// every connection made is accepted, on a lane, once.
    #[test]
    fn lanes_accept_from_the_one_listening_socket() {
        let lanes = Lanes::start(2, "accept-test").unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        // Registered on a runtime first, as the daemon's listener is.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(async { tokio::net::TcpListener::from_std(std_listener) });
        let listeners = rt
            .block_on(async { listener_per_lane(listener.unwrap(), 2) })
            .unwrap();
        assert_eq!(listeners.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, l) in listeners.into_iter().enumerate() {
            let tx = tx.clone();
            lanes.spawn_on(i, async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                while let Ok((s, _)) = l.accept().await {
                    tx.send(current()).unwrap();
                    drop(s);
                }
            });
        }
        for _ in 0..20 {
            let c = std::net::TcpStream::connect(addr).unwrap();
            let lane = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the connection was not accepted");
            assert!(lane == 1 || lane == 2, "accepted off the lanes: {lane}");
            drop(c);
        }
        assert!(rx.try_recv().is_err(), "a connection was accepted twice");
    }

    /// Tasks go to the lanes asked for, each runs on its lane's own thread
    /// (which knows its lane), and dropping the set ends those threads.
    #[test]
    fn tasks_run_on_their_lanes_and_the_lanes_stop_when_dropped() {
        let lanes = Lanes::start(2, "lane-test").unwrap();
        assert_eq!(lanes.len(), 2);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for round in 0..4 {
            let seen = seen.clone();
            let tx = tx.clone();
            lanes.spawn_on(round, async move {
                // A timer and a socket, which need the lane's drivers.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                drop(l);
                let name = std::thread::current().name().unwrap_or("").to_string();
                seen.lock().unwrap().push((current(), name));
                tx.send(()).unwrap();
            });
        }
        for _ in 0..4 {
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("a lane task did not run");
        }
        let seen = seen.lock().unwrap().clone();
        let lanes_used: HashSet<usize> = seen.iter().map(|(l, _)| *l).collect();
        assert_eq!(lanes_used, HashSet::from([1, 2]), "{seen:?}");
        for (lane, name) in &seen {
            assert_eq!(name, &format!("lane-test-{}", lane - 1));
        }
        assert_eq!(current(), 0, "the test's own thread is on no lane");
        // Dropped: a task spawned before the drop and still waiting is
        // dropped with its lane's runtime.
        let (held_tx, held_rx) = oneshot::channel::<()>();
        let dropped = Arc::new(Mutex::new(false));
        struct OnDrop(Arc<Mutex<bool>>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = true;
            }
        }
        let guard = OnDrop(dropped.clone());
        lanes.spawn_on(0, async move {
            let _guard = guard;
            let _ = held_rx.await;
        });
        drop(lanes);
        let start = std::time::Instant::now();
        while !*dropped.lock().unwrap() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "the lane's task outlived the lanes"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(held_tx);
    }
}
