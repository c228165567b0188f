//! Anomaly alert: a principal whose query rate departs from its own
//! baseline. Each principal's predicted rows are counted per window
//! (`alerts.rate_window`); closed windows feed an exponentially weighted
//! moving average (α = 0.1, about the last ten windows, empty windows
//! included). Once `alerts.rate_warmup` windows are in, a window whose rows
//! exceed `rate_factor` × the baseline and at least `rate_min` rows raises
//! one `query_rate_anomaly` alert for that window.
//!
//! The request path only hands `(principal, rows)` to a bounded channel
//! (`try_send`: under overload an observation is dropped, never a request
//! delayed); one task owns the table. Memory is bounded: at most
//! [`MAX_PRINCIPALS`] baselines, the least recently seen evicted first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use warden_core::config::AlertSettings;
use warden_core::metrics::Alert;

/// Most principals with a baseline.
pub const MAX_PRINCIPALS: usize = 100_000;
const ALPHA: f64 = 0.1;
/// Most empty windows folded into a baseline at once (beyond, it is ~0 anyway).
const MAX_GAP: u64 = 64;

/// The request side of the rate watch.
#[derive(Debug, Clone)]
pub struct RateWatch {
    tx: mpsc::Sender<(Arc<str>, u64)>,
}

impl RateWatch {
    /// Starts the watch task on the current runtime.
    pub fn start(settings: AlertSettings) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Arc<str>, u64)>(8192);
        tokio::spawn(async move {
            let epoch = Instant::now();
            let mut baselines = Baselines::new(settings);
            while let Some((principal, rows)) = rx.recv().await {
                let window = baselines.window_of(epoch.elapsed());
                if let Some(a) = baselines.observe(&principal, rows, window) {
                    Alert::QueryRateAnomaly.count();
                    tracing::warn!(
                        alert = Alert::QueryRateAnomaly.as_str(),
                        principal = %principal,
                        rows = a.rows,
                        baseline = a.baseline,
                        window_seconds = settings.rate_window.as_secs_f64(),
                        "query rate departs from the principal's baseline"
                    );
                }
            }
        });
        Self { tx }
    }

    /// Notes `rows` predicted for `principal` (never waits).
    pub fn observe(&self, principal: &Arc<str>, rows: u64) {
        let _ = self.tx.try_send((Arc::clone(principal), rows));
    }
}

/// Anomaly alert: a served certificate near expiry. Checked at start and
/// every six hours; each check within `warning` of a listener's expiry logs
/// a `certificate_expiry` alert (expired certificates are an error).
pub fn watch_certificates(served: &[Arc<crate::certs::ServedCert>], warning: Duration) {
    if served.is_empty() {
        return;
    }
    let served = served.to_vec();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(6 * 3600));
        loop {
            every.tick().await;
            let now = crate::steps::unix_micros() as i64 / 1_000_000;
            for cert in &served {
                let (listener, not_after) = (cert.listener, cert.not_after());
                let left = not_after - now;
                if left > warning.as_secs() as i64 {
                    continue;
                }
                Alert::CertificateExpiry.count();
                if left <= 0 {
                    tracing::error!(
                        alert = Alert::CertificateExpiry.as_str(),
                        listener,
                        not_after,
                        "the served certificate has expired"
                    );
                } else {
                    tracing::warn!(
                        alert = Alert::CertificateExpiry.as_str(),
                        listener,
                        not_after,
                        days_left = left / 86_400,
                        "the served certificate expires soon"
                    );
                }
            }
        }
    });
}

#[derive(Debug, Clone, Copy)]
struct Baseline {
    window: u64,
    rows: u64,
    mean: f64,
    windows: u32,
    alerted: Option<u64>,
}

/// An anomaly: this window's rows against the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateAnomaly {
    /// Rows in the current window so far.
    pub rows: u64,
    /// The principal's baseline rows per window.
    pub baseline: f64,
}

/// Per-principal baselines (the watch task's table; pure, for tests).
#[derive(Debug)]
pub struct Baselines {
    settings: AlertSettings,
    table: HashMap<Arc<str>, Baseline>,
}

impl Baselines {
    /// An empty table.
    pub fn new(settings: AlertSettings) -> Self {
        Self {
            settings,
            table: HashMap::new(),
        }
    }

    /// The window index of a time since the start.
    pub fn window_of(&self, since_start: Duration) -> u64 {
        (since_start.as_nanos() / self.settings.rate_window.as_nanos().max(1)) as u64
    }

    /// Adds `rows` for `principal` in `window`; returns an anomaly the first
    /// time a window crosses the threshold.
    pub fn observe(&mut self, principal: &Arc<str>, rows: u64, window: u64) -> Option<RateAnomaly> {
        if !self.table.contains_key(principal) && self.table.len() >= MAX_PRINCIPALS {
            self.evict();
        }
        let s = self.settings;
        let b = self.table.entry(Arc::clone(principal)).or_insert(Baseline {
            window,
            rows: 0,
            mean: 0.0,
            windows: 0,
            alerted: None,
        });
        if window > b.window {
            // Close the finished window, then any empty ones after it.
            let closed = std::iter::once(b.rows).chain(std::iter::repeat_n(
                0,
                (window - b.window - 1).min(MAX_GAP) as usize,
            ));
            for n in closed {
                b.mean = if b.windows == 0 {
                    n as f64
                } else {
                    b.mean + ALPHA * (n as f64 - b.mean)
                };
                b.windows = b.windows.saturating_add(1);
            }
            b.window = window;
            b.rows = 0;
        }
        b.rows = b.rows.saturating_add(rows);
        let anomalous = b.windows >= s.rate_warmup
            && b.rows >= s.rate_min
            && b.rows as f64 > s.rate_factor * b.mean.max(1.0)
            && b.alerted != Some(window);
        if anomalous {
            b.alerted = Some(window);
            Some(RateAnomaly {
                rows: b.rows,
                baseline: b.mean,
            })
        } else {
            None
        }
    }

    /// Drops the least recently seen half of the table.
    fn evict(&mut self) {
        let mut windows: Vec<u64> = self.table.values().map(|b| b.window).collect();
        let mid = windows.len() / 2;
        let (_, cut, _) = windows.select_nth_unstable(mid);
        let cut = *cut;
        self.table.retain(|_, b| b.window > cut);
    }

    /// Principals with a baseline.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no principal has a baseline.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AlertSettings {
        AlertSettings {
            rate_window: Duration::from_secs(60),
            rate_warmup: 5,
            rate_factor: 10.0,
            rate_min: 100,
            certificate_warning: Duration::from_secs(14 * 86_400),
        }
    }

    #[test]
    fn a_steady_principal_never_alerts_and_a_burst_alerts_once_per_window() {
        let mut b = Baselines::new(settings());
        let p: Arc<str> = "key:steady".into();
        for w in 0..20 {
            for _ in 0..50 {
                assert_eq!(
                    b.observe(&p, 1, w),
                    None,
                    "steady traffic alerted in window {w}"
                );
            }
        }
        // Window 20: ten times the baseline of 50 rows is 500.
        let mut alerts = 0;
        for _ in 0..600 {
            if let Some(a) = b.observe(&p, 1, 20) {
                alerts += 1;
                assert_eq!(a.rows, 501);
                assert!((a.baseline - 50.0).abs() < 1e-9);
            }
        }
        assert_eq!(alerts, 1);
    }

    #[test]
    fn no_alert_before_warmup_or_below_the_floor() {
        let mut b = Baselines::new(settings());
        let p: Arc<str> = "key:new".into();
        // A new principal's first windows are its baseline, however busy.
        for w in 0..4 {
            assert_eq!(b.observe(&p, 10_000, w), None);
        }
        let q: Arc<str> = "key:quiet".into();
        for w in 0..10 {
            b.observe(&q, 1, w);
        }
        // 99 rows is 99x the baseline but under rate_min.
        assert_eq!(b.observe(&q, 98, 10), None);
    }

    #[test]
    fn idle_windows_lower_the_baseline() {
        let mut b = Baselines::new(settings());
        let p: Arc<str> = "key:bursty".into();
        for w in 0..10 {
            b.observe(&p, 1000, w);
        }
        // After a long pause, 1000 rows is far above a baseline that decayed.
        assert!(b.observe(&p, 1000, 70).is_some());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut b = Baselines::new(settings());
        for i in 0..(MAX_PRINCIPALS + 10) {
            let p: Arc<str> = format!("key:{i}").into();
            b.observe(&p, 1, i as u64 / 1000);
        }
        assert!(b.len() <= MAX_PRINCIPALS);
        assert!(!b.is_empty());
    }
}
