//! Log output: JSON (or text) lines on stderr, buffered.
//!
//! Written by hand because neither stock option fits the request path:
//! unbuffered stderr costs one `write` syscall per access-log line, and
//! tracing-appender's background writer wakes its thread for every line —
//! a context switch per request, which cost about 20% of throughput on the
//! benchmark (bench/run.sh, server pinned to one core). Here lines collect
//! in a 64 KiB buffer under a mutex, written out when it fills, every 100 ms
//! by a timer thread, at once for warnings and errors, and on exit. The
//! access log (`warden_server::access_log`) writes to the same buffer.

use std::io::{BufWriter, Stderr, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How often buffered lines are written out at the latest.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A `MakeWriter` for buffered stderr.
#[derive(Clone, Debug)]
pub(crate) struct BufferedStderr(Arc<Mutex<BufWriter<Stderr>>>);

/// Flushes the buffer when dropped (at the end of `serve`).
#[derive(Debug)]
pub(crate) struct FlushGuard(BufferedStderr);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let _ = self.0.lock().flush();
    }
}

impl BufferedStderr {
    /// The writer, its guard, and the timer thread that flushes it.
    pub(crate) fn start() -> (Self, FlushGuard) {
        let writer = Self(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ))));
        let weak = Arc::downgrade(&writer.0);
        let _ = std::thread::Builder::new()
            .name("warden-log-flush".into())
            .spawn(move || {
                while let Some(buffer) = weak.upgrade() {
                    let _ = buffer
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .flush();
                    drop(buffer);
                    std::thread::sleep(FLUSH_EVERY);
                }
            });
        (writer.clone(), FlushGuard(writer))
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<Stderr>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One event's writer; flushes on drop for warnings and errors.
pub(crate) struct EventWriter<'a> {
    inner: MutexGuard<'a, BufWriter<Stderr>>,
    flush: bool,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Drop for EventWriter<'_> {
    fn drop(&mut self) {
        if self.flush {
            let _ = self.inner.flush();
        }
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            inner: self.lock(),
            flush: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        EventWriter {
            inner: self.lock(),
            flush: *meta.level() <= Level::WARN,
        }
    }
}

impl warden_server::access_log::LineSink for BufferedStderr {
    fn write_line(&self, line: &[u8]) {
        let mut out = self.lock();
        let _ = out.write_all(line);
        let _ = out.write_all(b"\n");
    }
}
