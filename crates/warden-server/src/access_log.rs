//! The access log: one JSON line per request (SPEC: request id, principal,
//! client address, route, model, version, status, latency). Never a
//! credential, never an input value.
//!
//! Written straight to a [`LineSink`] rather than through `tracing`: the
//! line is on every request's path, and formatting it by hand costs a
//! fraction of tracing-subscriber's JSON formatter (measured at ~6% of
//! server CPU per request in the benchmark). The line has the same shape as
//! the other log lines (`timestamp`, `level`, `target`).

use std::fmt::Debug;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Where access-log lines go. The sink picks the format:
/// [`AccessRecord::to_line`] (JSON) or [`AccessRecord::to_text`].
pub trait LineSink: Send + Sync + Debug {
    /// Writes one record as one line.
    fn write_record(&self, record: &AccessRecord<'_>);
}

/// One access-log record.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// Request id.
    pub request_id: &'a str,
    /// Client address.
    pub client: IpAddr,
    /// HTTP method.
    pub method: &'a str,
    /// Path (already cut to 256 characters).
    pub path: &'a str,
    /// Response status.
    pub status: u16,
    /// Time from the edge to the response.
    pub latency: Duration,
    /// Principal id, if authenticated.
    pub principal: Option<&'a str>,
    /// Model, version and rows, if a model was addressed.
    pub model: Option<(&'a str, u64, usize)>,
}

impl AccessRecord<'_> {
    /// The JSON line.
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        let now = humantime::format_rfc3339_micros(SystemTime::now());
        let (model, version, rows) = self.model.unwrap_or(("-", 0, 0));
        // Strings that may come from the client are escaped by serde_json;
        // the rest are Warden's own and need no escaping.
        let _ = write!(
            out,
            r#"{{"timestamp":"{now}","level":"INFO","target":"warden::access","request_id":"{}","client":"{}","method":"#,
            self.request_id, self.client
        );
        let _ = serde_json::to_writer(&mut out, self.method);
        out.extend_from_slice(b",\"path\":");
        let _ = serde_json::to_writer(&mut out, self.path);
        let _ = write!(
            out,
            r#","status":{},"latency_us":{},"principal":"#,
            self.status,
            self.latency.as_micros()
        );
        let _ = serde_json::to_writer(&mut out, self.principal.unwrap_or("-"));
        out.extend_from_slice(b",\"model\":");
        let _ = serde_json::to_writer(&mut out, model);
        let _ = write!(out, r#","version":{version},"rows":{rows}}}"#);
        out
    }
}

impl AccessRecord<'_> {
    /// The human-readable line (`log.format = "text"`, or a terminal): the
    /// same fields as [`Self::to_line`] as `name=value`, in the layout of
    /// the other text log lines; the status coloured when `color`. Values a
    /// client controls (path, method, principal, model) are written as
    /// quoted, escaped strings when they hold anything but printable,
    /// non-space ASCII, so that no request can write terminal escape
    /// sequences or fake a line.
    pub fn to_text(&self, color: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        let now = humantime::format_rfc3339_micros(SystemTime::now());
        let (model, version, rows) = self.model.unwrap_or(("-", 0, 0));
        let (level, status) = if color {
            let tint = match self.status {
                200..=299 => "32",
                300..=399 => "36",
                400..=499 => "33",
                _ => "31",
            };
            (
                "\x1b[32m INFO\x1b[0m \x1b[2mwarden::access\x1b[0m",
                format!("\x1b[{tint}m{}\x1b[0m", self.status),
            )
        } else {
            (" INFO warden::access", self.status.to_string())
        };
        let _ = write!(out, "{now} {level}: ");
        field(&mut out, "method", self.method);
        field(&mut out, "path", self.path);
        let _ = write!(
            out,
            "status={status} latency_us={} ",
            self.latency.as_micros()
        );
        field(&mut out, "principal", self.principal.unwrap_or("-"));
        field(&mut out, "model", model);
        let _ = write!(
            out,
            "version={version} rows={rows} client={} request_id={}",
            self.client, self.request_id
        );
        out
    }
}

/// `name=value ` with the value quoted and escaped unless plain.
fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    let plain = !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    if plain {
        let _ = write!(out, "{name}={value} ");
    } else {
        let _ = write!(out, "{name}={value:?} ");
    }
}

/// Access-log lines of cheap refusals (`refusals::COUNTED`) per outcome
/// and second; past it they are counted, not written, and
/// [`RefusalLines::spawn_reporter`] logs the count every 10 s. A flood of
/// unauthenticated requests would otherwise write one line each.
pub const REFUSAL_LINES_PER_SECOND: u64 = 20;

/// The budget of refusal lines.
#[derive(Debug, Default)]
pub struct RefusalLines {
    /// Per counted outcome: (second, lines written in it, lines suppressed).
    slots: [std::sync::Mutex<(u64, u64, u64)>; crate::refusals::COUNTED.len()],
}

impl RefusalLines {
    /// Whether a line of `outcome` may be written now.
    pub fn allow(&self, outcome: &str, now_s: u64) -> bool {
        let Some(i) = crate::refusals::COUNTED.iter().position(|c| *c == outcome) else {
            return true;
        };
        let mut slot = self.slots[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.0 != now_s {
            slot.0 = now_s;
            slot.1 = 0;
        }
        if slot.1 < REFUSAL_LINES_PER_SECOND {
            slot.1 += 1;
            true
        } else {
            slot.2 += 1;
            false
        }
    }

    /// The suppressed counts since the last call, per outcome.
    pub fn take_suppressed(&self) -> Vec<(&'static str, u64)> {
        crate::refusals::COUNTED
            .iter()
            .zip(&self.slots)
            .filter_map(|(outcome, slot)| {
                let mut slot = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let n = std::mem::take(&mut slot.2);
                (n > 0).then_some((*outcome, n))
            })
            .collect()
    }

    /// Logs the suppressed counts every 10 s.
    pub fn spawn_reporter(self: std::sync::Arc<Self>) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                every.tick().await;
                for (outcome, suppressed) in self.take_suppressed() {
                    tracing::info!(
                        target: "warden::access",
                        outcome,
                        suppressed,
                        "access-log lines of refused requests suppressed (over {REFUSAL_LINES_PER_SECOND} a second); they are counted in warden_requests_total"
                    );
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_escape_client_text() {
        let r = AccessRecord {
            request_id: "abc",
            client: "127.0.0.1".parse().unwrap(),
            method: "POST",
            path: "/v1/models/\"evil\n:predict",
            status: 200,
            latency: Duration::from_micros(1234),
            principal: Some("key:x"),
            model: Some(("iris", 1, 3)),
        };
        let line = r.to_line();
        assert!(!line.contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["path"], "/v1/models/\"evil\n:predict");
        assert_eq!(v["target"], "warden::access");
        assert_eq!(
            (
                v["status"].as_u64(),
                v["latency_us"].as_u64(),
                v["rows"].as_u64()
            ),
            (Some(200), Some(1234), Some(3))
        );
        let anonymous = AccessRecord {
            principal: None,
            model: None,
            ..r
        };
        let v: serde_json::Value = serde_json::from_slice(&anonymous.to_line()).unwrap();
        let text = String::from_utf8(anonymous.to_text(true)).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(
            (v["principal"].as_str(), v["model"].as_str()),
            (Some("-"), Some("-"))
        );
    }

    #[test]
    fn text_lines_carry_the_same_fields_and_no_escape_sequence() {
        let r = AccessRecord {
            request_id: "abc",
            client: "127.0.0.1".parse().unwrap(),
            method: "GET",
            path: "/v2/models/\u{1b}[31mred x",
            status: 404,
            latency: Duration::from_micros(77),
            principal: Some("key:x"),
            model: Some(("iris", 2, 1)),
        };
        let plain = String::from_utf8(r.to_text(false)).unwrap();
        for f in [
            "method=GET ",
            "path=\"/v2/models/\\u{1b}[31mred x\" ",
            "status=404 ",
            "latency_us=77 ",
            "principal=key:x ",
            "model=iris ",
            "version=2 ",
            "rows=1 ",
            "client=127.0.0.1 ",
            "request_id=abc",
        ] {
            assert!(plain.contains(f), "{f} in {plain}");
        }
        assert!(!plain.contains('\u{1b}'), "{plain}");
        let coloured = String::from_utf8(r.to_text(true)).unwrap();
        assert!(coloured.contains("\u{1b}[33m404\u{1b}[0m"), "{coloured}");
        // The only escape sequences are Warden's own colours.
        assert_eq!(coloured.matches('\u{1b}').count(), 6, "{coloured}");
    }

    #[test]
    fn refusal_lines_are_budgeted_per_second() {
        let budget = RefusalLines::default();
        let written = (0..1000)
            .filter(|_| budget.allow("unauthenticated", 7))
            .count();
        assert_eq!(written as u64, REFUSAL_LINES_PER_SECOND);
        assert!(budget.allow("ok", 7), "other outcomes are never budgeted");
        assert!(
            budget.allow("unauthenticated", 8),
            "a new second has a new budget"
        );
        assert_eq!(
            budget.take_suppressed(),
            [("unauthenticated", 1000 - REFUSAL_LINES_PER_SECOND)]
        );
        assert!(budget.take_suppressed().is_empty());
    }
}
