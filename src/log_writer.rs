//! The daemon's log writer: lines are gathered in memory and written out in
//! batches by one thread, so that a proxy thread never waits on stderr and
//! one `write(2)` carries many lines.
//!
//! tracing-appender's non-blocking writer, which this replaces, hands each
//! line to its thread through a channel: one thread wake-up (a futex call,
//! and the thread spinning on `sched_yield` before it sleeps again) per line,
//! that is per proxied request. Measured on a kept-alive load
//! (`strace -c -f` on `fedpin run`), that was 1.8 `sched_yield`, about half
//! a `futex` and one `write` per request, and the writer thread took 6.7 %
//! of the process's CPU samples. Here a line is appended to a buffer under
//! an uncontended lock; the thread is woken once per batch (the first line
//! after a write, or the buffer reaching [`HIGH_WATER`]) and writes what has
//! gathered [`GATHER`] later.
//!
//! Lines are never dropped: a writer that falls [`MAX_BUFFERED`] behind
//! (stderr blocked) makes the logging threads wait, as the channel did
//! (alerts are log lines too). [`FlushGuard`] writes what is left when it
//! is dropped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long the thread gathers lines after the first one before it writes.
pub const GATHER: Duration = Duration::from_millis(20);
/// Buffered bytes at which the thread writes without waiting out [`GATHER`].
pub const HIGH_WATER: usize = 64 * 1024;
/// Buffered bytes at which logging threads wait for the writer.
pub const MAX_BUFFERED: usize = 1024 * 1024;

type Sink = Box<dyn Write + Send>;

struct State {
    buf: Vec<u8>,
    /// Set by [`FlushGuard`]'s drop: the thread writes what is left and ends.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The sink; locked by the thread while it writes a batch, and by
    /// loggers once the thread has ended.
    sink: Mutex<Sink>,
    /// Wakes the thread: a first line, the high-water mark, or closing.
    due: Condvar,
    /// Wakes loggers waiting for room.
    room: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: &[u8]) {
        let mut s = self.state();
        while s.buf.len() >= MAX_BUFFERED && !s.closed {
            s = self.room.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        if s.closed {
            // The thread has ended (or is ending): write through. The sink
            // is taken with the state still held (the thread's order), and
            // lines still waiting go first, so none is written out of turn.
            let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
            let waiting = std::mem::take(&mut s.buf);
            let _ = sink
                .write_all(&waiting)
                .and_then(|()| sink.write_all(line))
                .and_then(|()| sink.flush());
            return;
        }
        let before = s.buf.len();
        s.buf.extend_from_slice(line);
        // Only these two need the thread: std's condvar makes a system call
        // on every notify, waiting thread or not.
        if before == 0 || (before < HIGH_WATER && s.buf.len() >= HIGH_WATER) {
            self.due.notify_one();
        }
    }

    /// The thread: waits for a first line, gathers for [`GATHER`] (or up to
    /// [`HIGH_WATER`]), writes the batch; after closing, writes what is
    /// left and returns.
    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            let mut s = self.state();
            while s.buf.is_empty() && !s.closed {
                s = self.due.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            let deadline = Instant::now() + GATHER;
            while s.buf.len() < HIGH_WATER && !s.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                s = self
                    .due
                    .wait_timeout(s, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut s.buf, &mut batch);
            let closing = s.closed;
            // Held while writing, so a line logged after closing is written
            // after this batch, never before it.
            let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
            drop(s);
            self.room.notify_all();
            // Nowhere to report a failed write to stderr; the lines are
            // dropped rather than the loggers blocked for good.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            drop(sink);
            batch.clear();
            // A burst's buffer is not kept for the quiet that follows.
            if batch.capacity() > 2 * MAX_BUFFERED {
                batch = Vec::new();
            }
            if closing && self.state().buf.is_empty() {
                return;
            }
        }
    }
}

/// The [`tracing_subscriber::fmt::MakeWriter`] of the batched log.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

impl BatchWriter {
    /// Appends `line` (one or more whole lines, newline included) to the
    /// log, as a tracing event's line is: the access log's JSON lines come
    /// this way (`proxy::access_log::write_json_to`).
    pub fn write_line(&self, line: &[u8]) {
        self.shared.push(line);
    }
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter").finish_non_exhaustive()
    }
}

/// One event's writer: tracing-subscriber formats a whole line and writes
/// it in one call, so each write is appended as it comes.
#[derive(Debug)]
pub struct LineWriter<'a> {
    writer: &'a BatchWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { writer: self }
    }
}

/// Writes what is buffered, and ends the thread, when dropped (at the end
/// of `main`). Lines logged after that are written straight through.
#[must_use = "dropping the guard ends the writer thread"]
pub struct FlushGuard {
    shared: Arc<Shared>,
    /// Hears from the thread when it has written everything and ended
    /// (`None` when it could not be started).
    ended: Option<std::sync::mpsc::Receiver<()>>,
}

impl std::fmt::Debug for FlushGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushGuard").finish_non_exhaustive()
    }
}

impl Drop for FlushGuard {
    /// Waits up to [`EXIT_WAIT`] for the thread to write what is left: a
    /// stderr that does not drain (a stalled journal) must not keep the
    /// process from exiting.
    fn drop(&mut self) {
        self.shared.state().closed = true;
        self.shared.due.notify_one();
        self.shared.room.notify_all();
        if let Some(ended) = &self.ended {
            let _ = ended.recv_timeout(EXIT_WAIT);
        }
    }
}

/// How long [`FlushGuard`] waits for the last lines to be written.
pub const EXIT_WAIT: Duration = Duration::from_secs(2);

/// A batched writer to `sink`, its thread started. If the thread cannot be
/// started, lines are written straight through.
pub fn batched(sink: impl Write + Send + 'static) -> (BatchWriter, FlushGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: Vec::with_capacity(HIGH_WATER),
            closed: false,
        }),
        sink: Mutex::new(Box::new(sink)),
        due: Condvar::new(),
        room: Condvar::new(),
    });
    let worker = shared.clone();
    let (done, ended) = std::sync::mpsc::channel();
    let ended = std::thread::Builder::new()
        .name("fedpin-log".into())
        .spawn(move || {
            worker.run();
            let _ = done.send(());
        })
        .ok()
        .map(|_| ended);
    if ended.is_none() {
        shared.state().closed = true;
    }
    (
        BatchWriter {
            shared: shared.clone(),
        },
        FlushGuard { shared, ended },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that records each write (one batch) and can be held shut.
    #[derive(Clone)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn recorder() -> Recorder {
        Recorder {
            writes: Arc::new(Mutex::new(Vec::new())),
            gate: Arc::new(Mutex::new(())),
        }
    }

    fn log(w: &BatchWriter, line: &str) {
        use tracing_subscriber::fmt::MakeWriter;
        w.make_writer().write_all(line.as_bytes()).unwrap();
    }

    /// Many threads' lines all arrive, each whole and each thread's in
    /// order, in far fewer writes than lines; the guard writes the rest.
    #[test]
    fn lines_arrive_whole_in_order_and_batched() {
        let rec = recorder();
        let (w, guard) = batched(rec.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        log(&w, &format!("thread {t} line {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let writes = rec.writes.lock().unwrap();
        let all: Vec<u8> = writes.concat();
        let text = String::from_utf8(all).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            let prefix = format!("thread {t} line ");
            let mine: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&prefix))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..5000).collect::<Vec<_>>());
        }
        assert!(
            writes.len() < 1000,
            "{} writes for 20,000 lines",
            writes.len()
        );
    }

    /// A line logged alone is written without waiting for more (within the
    /// gathering time, not at exit).
    #[test]
    fn a_lone_line_is_written_soon() {
        let rec = recorder();
        let (w, guard) = batched(rec.clone());
        log(&w, "alone\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while rec.writes.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the line was not written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(rec.writes.lock().unwrap().concat(), b"alone\n");
        drop(guard);
    }

    /// A blocked sink holds loggers back once [`MAX_BUFFERED`] is waiting
    /// (no line is dropped); they go on when it opens, and every line is
    /// written.
    #[test]
    fn a_blocked_sink_holds_loggers_back_and_loses_nothing() {
        let rec = recorder();
        let shut = rec.gate.lock().unwrap();
        let (w, guard) = batched(rec.clone());
        let line = format!("{}\n", "x".repeat(1023));
        let n = 3 * MAX_BUFFERED / line.len();
        let (done_tx, done_rx) = mpsc::channel();
        let w2 = w.clone();
        let line2 = line.clone();
        let logger = std::thread::spawn(move || {
            for _ in 0..n {
                log(&w2, &line2);
            }
            done_tx.send(()).unwrap();
        });
        // With the sink shut, the logger cannot get through all its lines.
        assert!(done_rx.recv_timeout(Duration::from_millis(500)).is_err());
        assert!(w.shared.state().buf.len() <= MAX_BUFFERED + line.len());
        drop(shut);
        done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        logger.join().unwrap();
        drop(guard);
        let total: usize = rec.writes.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(total, n * line.len());
    }

    /// A sink that never drains does not keep the guard (the process) from
    /// ending: it gives up after [`EXIT_WAIT`].
    #[test]
    fn a_stuck_sink_does_not_hold_up_exit() {
        let rec = recorder();
        let shut = rec.gate.lock().unwrap();
        let (w, guard) = batched(rec.clone());
        log(&w, "stuck\n");
        // Let the thread take the line and block in the sink.
        std::thread::sleep(GATHER * 3);
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(guard);
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(EXIT_WAIT * 15).is_ok(),
            "the guard waited on a stuck sink"
        );
        drop(shut);
    }

    /// After the guard is dropped, lines are written straight through.
    #[test]
    fn after_the_guard_lines_go_straight_through() {
        let rec = recorder();
        let (w, guard) = batched(rec.clone());
        log(&w, "before\n");
        drop(guard);
        log(&w, "after\n");
        assert_eq!(rec.writes.lock().unwrap().concat(), b"before\nafter\n");
    }
}
