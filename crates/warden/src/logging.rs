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

use std::collections::HashMap;

use tracing::callsite::Identifier;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// How often buffered lines are written out at the latest.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A `MakeWriter` for buffered stderr, and the access log's sink.
#[derive(Clone, Debug)]
pub(crate) struct BufferedStderr(Arc<Mutex<BufWriter<Stderr>>>, AccessFormat);

/// How the access log writes its lines: the same fields either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AccessFormat {
    /// One JSON object per line.
    Json,
    /// `name=value` text; coloured when `true`.
    Text(bool),
}

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
    pub(crate) fn start(access: AccessFormat) -> (Self, FlushGuard) {
        let writer = Self(
            Arc::new(Mutex::new(BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ))),
            access,
        );
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

impl BufferedStderr {
    /// Writes out what is buffered now (before the start-up banner, so
    /// that the lines above it are the ones logged before it).
    pub(crate) fn flush_now(&self) {
        let _ = self.lock().flush();
    }
}

impl warden_server::access_log::LineSink for BufferedStderr {
    fn write_record(&self, record: &warden_server::access_log::AccessRecord<'_>) {
        let line = match self.1 {
            AccessFormat::Json => record.to_line(),
            AccessFormat::Text(color) => record.to_text(color),
        };
        let mut out = self.lock();
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
    }
}

/// Lines one callsite may write per [`BUDGET_WINDOW`]; past it they are
/// counted and dropped, and a summary line says how many.
pub(crate) const LINES_PER_WINDOW: u32 = 20;

/// The window of the per-callsite budget.
pub(crate) const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A per-callsite budget on log lines: a message a client can cause over and
/// over (an HTTP/2 GOAWAY for a rapid reset, a TLS failure, a refused
/// connection, a failed authentication) writes at most [`LINES_PER_WINDOW`]
/// lines per window; the rest are counted, and every window a `warn` line
/// (`log lines suppressed`) names each callsite and its count. Written here
/// because tracing-subscriber filters by level and target, not by rate.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogBudget(Arc<Mutex<HashMap<Identifier, Slot>>>);

#[derive(Debug)]
struct Slot {
    meta: &'static Metadata<'static>,
    window: u64,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    /// A budget, and the thread that reports what it suppressed.
    pub(crate) fn start() -> Self {
        let budget = Self::default();
        let weak = Arc::downgrade(&budget.0);
        let _ = std::thread::Builder::new()
            .name("warden-log-budget".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(BUDGET_WINDOW);
                    let Some(slots) = weak.upgrade() else { return };
                    let report = Self(slots).take_suppressed();
                    if !report.is_empty() {
                        tracing::warn!(
                            target: "warden::log",
                            suppressed = %report,
                            window_s = BUDGET_WINDOW.as_secs(),
                            "log lines suppressed: these messages repeated more than {LINES_PER_WINDOW} times in the window"
                        );
                    }
                }
            });
        budget
    }

    /// Whether a line of `meta`'s callsite may be written in `window`.
    fn allow(&self, meta: &'static Metadata<'static>, window: u64) -> bool {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(meta.callsite()).or_insert(Slot {
            meta,
            window,
            lines: 0,
            suppressed: 0,
        });
        if slot.window != window {
            slot.window = window;
            slot.lines = 0;
        }
        if slot.lines < LINES_PER_WINDOW {
            slot.lines += 1;
            true
        } else {
            slot.suppressed += 1;
            false
        }
    }

    /// "target (file:line): count" for each callsite with suppressed lines
    /// since the last call.
    fn take_suppressed(&self) -> String {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut parts: Vec<String> = slots
            .values_mut()
            .filter(|s| s.suppressed > 0)
            .map(|s| {
                let n = std::mem::take(&mut s.suppressed);
                format!(
                    "{} ({}:{}): {n}",
                    s.meta.target(),
                    s.meta.file().unwrap_or("?"),
                    s.meta.line().unwrap_or(0)
                )
            })
            .collect();
        parts.sort();
        parts.join(", ")
    }
}

fn current_window() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / BUDGET_WINDOW.as_secs())
}

impl<S: Subscriber> Layer<S> for LogBudget {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        // Alerts (a ban, suspected extraction, ...) and audit checkpoints are
        // never held back: an attacker must not be able to hide the next
        // alert by triggering twenty of the same kind first. Each is bounded
        // at its source (bans by the ban length, checkpoints by their interval).
        let fields = event.metadata().fields();
        if fields.field("alert").is_some() || fields.field("event").is_some() {
            return true;
        }
        self.allow(event.metadata(), current_window())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callsite_writes_its_budget_and_the_rest_is_counted() {
        let budget = LogBudget::default();
        static CALLSITE: tracing::callsite::DefaultCallsite =
            tracing::callsite::DefaultCallsite::new(&META);
        static META: Metadata<'static> = tracing::metadata!(
            name: "event",
            target: "h2::proto",
            level: Level::WARN,
            fields: &[],
            callsite: &CALLSITE,
            kind: tracing::metadata::Kind::EVENT
        );
        let written = (0..3000).filter(|_| budget.allow(&META, 1)).count();
        assert_eq!(written, LINES_PER_WINDOW as usize);
        assert!(budget.allow(&META, 2), "a new window has a new budget");
        let report = budget.take_suppressed();
        assert!(report.starts_with("h2::proto"), "{report}");
        assert!(report.ends_with(": 2980"), "{report}");
        assert!(budget.take_suppressed().is_empty());
    }
}
