//! The Prometheus side of the metrics named in `warden_core::metrics`: the
//! recorder (installed once per process), the per-request counters, and
//! `GET /metrics` on the management plane.
//!
//! Counters and histograms are recorded where things happen; gauges that
//! mirror state (in-flight requests, queue depths, loaded models, the audit
//! writer) are read when Prometheus scrapes, so they cost the request path
//! nothing.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use warden_core::metrics::{self as names, Alert};

use crate::state::AppState;
use crate::steps::Plane;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls return
/// the same handle). Call it before anything records (model loading counts
/// integrity alerts); `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    names::LATENCY_BUCKETS,
                )
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            names::describe();
            gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .clone()
}

/// Folds histogram samples into buckets every 5 s (without it they would
/// pile up between scrapes), on the current runtime.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Creates the per-model and per-policy series at zero, so that a scrape
/// shows every series a dashboard or alert rule uses before its first event.
pub fn register_series(state: &AppState) {
    for model in state.repository.models() {
        let name = model.name.as_str().to_owned();
        counter!(names::QUOTA_EXCEEDED, "model" => name.clone()).absolute(0);
        for kind in names::DEFENSE_KINDS {
            counter!(names::DEFENSE_FLAGS, "model" => name.clone(), "kind" => kind).absolute(0);
        }
    }
    for policy in ["default", "predict", "token", "in_flight"] {
        counter!(names::RATE_LIMITED, "policy" => policy).absolute(0);
    }
}

/// The `plane` label.
pub fn plane_label(plane: Plane) -> &'static str {
    match plane {
        Plane::Data => "data",
        Plane::Management => "management",
    }
}

/// Interned label values: route templates and model names are a fixed,
/// small set (unknown models are never a label), so each is leaked once and
/// the per-request path neither allocates nor builds metric keys.
fn intern(value: &str) -> &'static str {
    static SEEN: std::sync::RwLock<std::collections::BTreeSet<&'static str>> =
        std::sync::RwLock::new(std::collections::BTreeSet::new());
    if let Some(v) = SEEN
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(value)
    {
        return v;
    }
    let mut set = SEEN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(v) = set.get(value) {
        return v;
    }
    let v: &'static str = Box::leak(value.to_owned().into_boxed_str());
    set.insert(v);
    v
}

type RequestKey = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// The request counter and latency histogram of each (plane, route, model,
/// code), registered once.
static REQUEST_HANDLES: std::sync::LazyLock<
    std::sync::RwLock<
        std::collections::HashMap<RequestKey, (metrics::Counter, metrics::Histogram)>,
    >,
> = std::sync::LazyLock::new(Default::default);

/// One answered request.
pub fn request(
    plane: Plane,
    protocol: &'static str,
    route: &str,
    model: Option<&str>,
    code: &'static str,
    elapsed: Duration,
) {
    let key = (
        plane_label(plane),
        intern(route),
        model.map_or("", intern),
        code,
        protocol,
    );
    let cached = REQUEST_HANDLES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        .cloned();
    let (count, latency) = cached.unwrap_or_else(|| {
        let (plane, route, model, code, protocol) = key;
        let handles = (
            counter!(names::REQUESTS, "plane" => plane, "protocol" => protocol, "route" => route, "model" => model, "code" => code),
            histogram!(names::REQUEST_DURATION, "plane" => plane, "protocol" => protocol, "route" => route),
        );
        REQUEST_HANDLES
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, handles.clone());
        handles
    });
    count.increment(1);
    latency.record(elapsed.as_secs_f64());
}

/// The inference-latency histogram handle per model (interned name), so the
/// request path neither allocates the label nor looks the metric up.
static INFERENCE_HANDLES: std::sync::LazyLock<
    std::sync::RwLock<std::collections::HashMap<&'static str, metrics::Histogram>>,
> = std::sync::LazyLock::new(Default::default);

/// One inference call's latency.
pub fn inference(model: &str, elapsed: Duration) {
    let model = intern(model);
    let cached = INFERENCE_HANDLES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(model)
        .cloned();
    let histogram = cached.unwrap_or_else(|| {
        let handle = histogram!(names::INFERENCE_DURATION, "model" => model);
        INFERENCE_HANDLES
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(model, handle.clone());
        handle
    });
    histogram.record(elapsed.as_secs_f64());
}

/// A failed authentication.
pub fn auth_failure(plane: Plane, reason: &'static str) {
    counter!(names::AUTH_FAILURES, "plane" => plane_label(plane), "reason" => reason).increment(1);
}

/// A ban imposed: counted, and logged as an auth-failure-spike alert.
pub fn ban(plane: Plane, subject: &str, seconds: u64) {
    counter!(names::BANS, "plane" => plane_label(plane)).increment(1);
    Alert::AuthFailureSpike.count();
    tracing::warn!(
        alert = Alert::AuthFailureSpike.as_str(),
        subject,
        seconds,
        "banned after repeated authentication failures"
    );
}

/// A request refused from a banned address.
pub fn banned(plane: Plane) {
    counter!(names::BANNED_REQUESTS, "plane" => plane_label(plane)).increment(1);
}

/// A request refused by a rate limit.
pub fn rate_limited(policy: &'static str) {
    counter!(names::RATE_LIMITED, "policy" => policy).increment(1);
}

/// A connection refused at accept (`reason`: `per_address`).
pub fn connection_refused(listener: &'static str, reason: &'static str) {
    counter!(names::CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason).increment(1);
}

/// A connection closed by Warden (`reason`: `idle`, `handshake_timeout`,
/// `too_slow`, `shutdown`).
pub fn connection_closed(listener: &'static str, reason: &'static str) {
    counter!(names::CONNECTIONS_CLOSED, "listener" => listener, "reason" => reason).increment(1);
}

/// A request refused by a quota.
pub fn quota_exceeded(model: &str) {
    counter!(names::QUOTA_EXCEEDED, "model" => model.to_owned()).increment(1);
}

/// An input refused by validation.
pub fn validation_failure(model: &str, reason: &'static str) {
    counter!(names::VALIDATION_FAILURES, "model" => model.to_owned(), "reason" => reason)
        .increment(1);
}

/// The Prometheus text exposition: state gauges are read now, then
/// everything is rendered.
pub fn render(state: &AppState, handle: &PrometheusHandle) -> String {
    let in_use = |s: &tokio::sync::Semaphore, max: usize| max.saturating_sub(s.available_permits());
    gauge!(names::IN_FLIGHT, "plane" => "data")
        .set(in_use(&state.in_flight, state.max_in_flight) as f64);
    gauge!(names::IN_FLIGHT, "plane" => "management")
        .set(in_use(&state.admin_in_flight, crate::ADMIN_IN_FLIGHT) as f64);
    for model in state.repository.models() {
        let name = model.name.as_str().to_owned();
        let mut queued = 0;
        for v in model.versions.values() {
            queued += v.backend.queued();
            gauge!(names::MODEL_LOADED, "model" => name.clone(), "version" => v.version.to_string())
                .set(1.0);
        }
        gauge!(names::INFERENCE_QUEUE, "model" => name).set(queued as f64);
    }
    for served in &state.certificates {
        gauge!(names::CERTIFICATE_EXPIRY, "listener" => served.listener)
            .set(served.not_after() as f64);
    }
    if let Some(audit) = &state.audit {
        let stats = audit.stats();
        gauge!(names::AUDIT_QUEUE).set(audit.queued() as f64);
        gauge!(names::AUDIT_WRITE_LAG).set(stats.lag_us.load(Ordering::Relaxed) as f64 / 1e6);
        counter!(names::AUDIT_RECORDS).absolute(stats.committed.load(Ordering::Relaxed));
        let failures = stats.failures.load(Ordering::Relaxed);
        counter!(names::AUDIT_WRITE_FAILURES).absolute(failures);
        counter!(names::ALERTS, "kind" => Alert::AuditWriteFailed.as_str()).absolute(failures);
    }
    counter!(names::SHARED_STATE_FALLBACKS).absolute(state.limiter.fallbacks());
    handle.render()
}
