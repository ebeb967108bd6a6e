//! A future polled only when it asked to be.
//!
//! `tokio::select!` polls every branch whenever its task wakes. An inbound
//! connection's task selects between hyper's connection and what else may
//! end it ([`crate::proxy::inbound`]'s watch: shutdown, a pin publish, its
//! idle tick), and it wakes two or three times per proxied request, each
//! time for hyper's side; polling the watch branch on each of those wakes
//! was about 1.2k instructions of a kept-alive request (callgrind, issue 13).
//!
//! [`OwnWakes`] gives its future a waker of its own: the future is polled
//! on its first poll and afterwards only once that waker has fired (a
//! shutdown signal, a publish, the tick's timer). Any other wake of the
//! task costs a flag test. The task's waker is kept up to date on every
//! poll, so a wake of the inner future always reaches the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// The waker handed to the inner futures: sets the flag, then wakes the
/// task that last polled.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One waker, reused by the futures wrapped with it (one at a time).
pub struct WakeFlag {
    flag: Arc<Flag>,
    waker: Waker,
}

impl Default for WakeFlag {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WakeFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeFlag")
            .field("woken", &self.flag.woken.load(Ordering::Relaxed))
            .finish()
    }
}

impl WakeFlag {
    /// A flag with its waker.
    pub fn new() -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        WakeFlag { flag, waker }
    }

    /// `fut`, polled on its first poll and then only after its own waker
    /// fired.
    pub fn wrap<F: Future>(&self, fut: F) -> OwnWakes<'_, F> {
        // A new future has registered nothing yet: it must be polled once.
        self.flag.woken.store(true, Ordering::Relaxed);
        OwnWakes { flag: self, fut }
    }
}

pin_project_lite::pin_project! {
    /// See [`WakeFlag::wrap`].
    #[must_use = "futures do nothing unless polled"]
    pub struct OwnWakes<'a, F> {
        flag: &'a WakeFlag,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for OwnWakes<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake between the two sets
        // the flag (seen below) and wakes this task again (harmless).
        this.flag.flag.task.register(cx.waker());
        if !this.flag.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut own = Context::from_waker(&this.flag.waker);
        this.fut.poll(&mut own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, waking whoever polled
    /// last when `kick` is called.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polled_first_then_only_when_its_own_waker_fires() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let probe = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        };
        let flag = WakeFlag::new();
        let mut wrapped = std::pin::pin!(flag.wrap(probe));
        // The task wakes ten times for other reasons: one poll only.
        let mut other = 0;
        let done = std::future::poll_fn(|cx| {
            if wrapped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(other);
            }
            other += 1;
            if other <= 10 {
                cx.waker().wake_by_ref();
            } else if other == 11 {
                ready.store(true, Ordering::SeqCst);
                // The inner future's own waker, from another thread.
                let w = waker.lock().unwrap().take().unwrap();
                std::thread::spawn(move || w.wake());
            }
            Poll::Pending
        });
        let others = tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("the inner future's wake reached the task");
        assert_eq!(others, 11);
        // Its first poll, and the one after its own wake.
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_timer_inside_still_fires() {
        let flag = WakeFlag::new();
        for _ in 0..3 {
            // Reused: each wrapped future gets its first poll.
            tokio::time::timeout(
                Duration::from_secs(10),
                flag.wrap(tokio::time::sleep(Duration::from_millis(20))),
            )
            .await
            .expect("the sleep ended");
        }
        let (tx, mut rx) = tokio::sync::watch::channel(0u32);
        let waiting = tokio::spawn(async move {
            let flag = WakeFlag::new();
            flag.wrap(rx.changed()).await.is_ok()
        });
        tokio::task::yield_now().await;
        tx.send(1).unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap());
    }
}
