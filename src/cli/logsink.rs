//! Where `causeflow serve` writes its log lines: a bounded buffer in memory that one thread
//! empties into stderr at most every [`FLUSH_EVERY`], or sooner once [`FLUSH_AT`] bytes wait.
//!
//! Why not a channel to a writer thread (tracing-appender)? At thousands of alerts a second that
//! cost a heap allocation and a channel send per line, and woke the writer thread for nearly
//! every burst: in the load profile the log thread's context switches alone were about 5% of
//! the process's CPU. Here a line is one copy into the buffer under a mutex nobody holds for
//! long, and the thread wakes a few dozen times a second.
//!
//! Not lossy: when [`LIMIT`] bytes are waiting (stderr cannot keep up), a line waits for room
//! rather than being dropped. Lines reach stderr in the order they were logged. Dropping the
//! [`Flush`] guard writes whatever is left; a process killed outright loses at most the last
//! [`FLUSH_EVERY`] of lines, as it would with any buffered writer.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Bytes waiting past which the thread writes at once instead of waiting out [`FLUSH_EVERY`].
pub const FLUSH_AT: usize = 256 << 10;
/// Bytes waiting past which loggers wait for the thread to make room.
pub const LIMIT: usize = 8 << 20;

struct State {
    buf: Vec<u8>,
    /// The flushing thread is waiting on `ready`: only then is it worth a wake-up.
    flusher_waiting: bool,
    /// Loggers waiting on `room`.
    waiting_for_room: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Lines arrived (into an empty buffer, or past [`FLUSH_AT`]), or the sink closed.
    ready: Condvar,
    /// The buffer was emptied.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A logger that panicked mid-copy leaves at worst a torn line; keep logging.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, line: &[u8]) {
        let mut st = self.lock();
        // A line longer than the limit on its own still goes in, once the buffer is empty.
        while !st.buf.is_empty() && st.buf.len() + line.len() > LIMIT && !st.closed {
            st.waiting_for_room += 1;
            st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
            st.waiting_for_room -= 1;
        }
        let was_empty = st.buf.is_empty();
        let before = st.buf.len();
        st.buf.extend_from_slice(line);
        let crossed = before < FLUSH_AT && st.buf.len() >= FLUSH_AT;
        if st.flusher_waiting && (was_empty || crossed) {
            self.ready.notify_one();
        }
    }
}

/// The [`MakeWriter`] handed to tracing-subscriber: each event arrives as one `write_all`.
#[derive(Clone)]
pub struct BufferedLog {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the thread when dropped.
pub struct Flush {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the flushing thread, writing to `out`.
pub fn buffered<W: Write + Send + 'static>(out: W) -> (BufferedLog, Flush) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: Vec::with_capacity(FLUSH_AT),
            flusher_waiting: false,
            waiting_for_room: 0,
            closed: false,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || flush_loop(&s, out))
        .expect("spawn the log writer thread");
    (
        BufferedLog {
            shared: shared.clone(),
        },
        Flush {
            shared,
            thread: Some(thread),
        },
    )
}

fn flush_loop<W: Write>(shared: &Shared, mut out: W) {
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_AT);
    loop {
        let mut st = shared.lock();
        while st.buf.is_empty() && !st.closed {
            st.flusher_waiting = true;
            st = shared.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            st.flusher_waiting = false;
        }
        if st.buf.is_empty() {
            return; // closed, and everything written
        }
        // Let the burst that just started gather, unless it is big already.
        if st.buf.len() < FLUSH_AT && !st.closed {
            st.flusher_waiting = true;
            st = shared
                .ready
                .wait_timeout(st, FLUSH_EVERY)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            st.flusher_waiting = false;
        }
        std::mem::swap(&mut st.buf, &mut spare);
        if st.waiting_for_room > 0 {
            shared.room.notify_all();
        }
        drop(st);
        // Nowhere to report a failed write to: the line is gone either way, as with stderr.
        let _ = out.write_all(&spare).and_then(|_| out.flush());
        spare.clear();
        if spare.capacity() > 4 * FLUSH_AT {
            spare.shrink_to(FLUSH_AT);
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        self.shared.room.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One event's writer: the formatter hands it the whole line at once.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedLog {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination the test can read while the sink writes to it, and hold shut.
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.gate.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(out: &Out, len: usize) {
        // Bounded: FLUSH_EVERY is 50 ms; 10 s means the thread is not writing at all.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.bytes.lock().unwrap().len() < len {
            assert!(
                std::time::Instant::now() < deadline,
                "the log thread did not write"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn lines_reach_the_output_in_order_without_a_flush() {
        let out = Out::default();
        let (log, guard) = buffered(out.clone());
        let mut expected = Vec::new();
        for i in 0..1000 {
            let line = format!("line {i}\n");
            log.make_writer().write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        // Written by the thread on its own, the guard still alive.
        wait_for(&out, expected.len());
        assert_eq!(*out.bytes.lock().unwrap(), expected);
        drop(guard);
    }

    #[test]
    fn dropping_the_guard_writes_what_is_left() {
        let out = Out::default();
        let (log, guard) = buffered(out.clone());
        let held = out.gate.lock().unwrap();
        log.make_writer().write_all(b"first\n").unwrap();
        log.make_writer().write_all(b"second\n").unwrap();
        drop(held);
        drop(guard);
        assert_eq!(*out.bytes.lock().unwrap(), b"first\nsecond\n");
    }

    #[test]
    fn a_blocked_output_makes_loggers_wait_instead_of_dropping_or_growing() {
        let out = Out::default();
        let (log, guard) = buffered(out.clone());
        let held = out.gate.lock().unwrap();
        let line = vec![b'x'; 64 << 10];
        // More than LIMIT plus what the thread can hold while blocked mid-write: the logger
        // must stop and wait, not buffer without bound.
        let lines = 2 * LIMIT / line.len() + 8;
        let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let logger = {
            let (log, line, progress) = (log.clone(), line.clone(), progress.clone());
            std::thread::spawn(move || {
                for _ in 0..lines {
                    log.make_writer().write_all(&line).unwrap();
                    progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        // The logger ends up waiting for room: its count stops below the total, and the
        // buffer never holds more than LIMIT.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let st = log.shared.lock();
            assert!(st.buf.len() <= LIMIT, "buffer grew past its limit");
            if st.waiting_for_room == 1 {
                break;
            }
            drop(st);
            assert!(
                std::time::Instant::now() < deadline,
                "the logger never waited"
            );
            std::thread::yield_now();
        }
        assert!(progress.load(std::sync::atomic::Ordering::SeqCst) < lines);
        drop(held);
        logger.join().unwrap();
        drop(guard);
        assert_eq!(out.bytes.lock().unwrap().len(), lines * line.len());
    }
}
