//! Every metric Warden exports, named once (docs/observability.md lists
//! them; the Grafana dashboard and the alert rules under `deploy/` are
//! checked against a real scrape). Recording goes through the `metrics`
//! facade; the Prometheus recorder is installed by the server, so in a
//! process without one (the CLI, unit tests) these calls cost nothing.
//!
//! Labels are bounded: routes are route templates, never raw paths; models
//! are the configured models; codes are the SPEC's error codes.

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram};

/// Requests answered, by plane, route template, model and outcome code (`ok` or an error code).
pub const REQUESTS: &str = "warden_requests_total";
/// Whole-request latency in seconds, by plane and route template.
pub const REQUEST_DURATION: &str = "warden_request_duration_seconds";
/// Inference latency in seconds (queue wait included), by model.
pub const INFERENCE_DURATION: &str = "warden_inference_duration_seconds";
/// Failed authentications, by plane and reason.
pub const AUTH_FAILURES: &str = "warden_auth_failures_total";
/// Connections refused when accepted, by listener and reason (`per_address`: the client address had its share).
pub const CONNECTIONS_REFUSED: &str = "warden_connections_refused_total";
/// Connections Warden closed, by listener and reason (`idle`, `handshake_timeout`, `too_slow`, `shutdown`).
pub const CONNECTIONS_CLOSED: &str = "warden_connections_closed_total";
/// Requests refused by a rate limit, by policy (`in_flight`: the principal's share of requests in flight).
pub const RATE_LIMITED: &str = "warden_rate_limited_total";
/// Requests refused by a quota, by model.
pub const QUOTA_EXCEEDED: &str = "warden_quota_exceeded_total";
/// Requests refused because the client address is banned, by plane.
pub const BANNED_REQUESTS: &str = "warden_banned_requests_total";
/// Bans imposed after repeated authentication failures, by plane.
pub const BANS: &str = "warden_bans_total";
/// Inputs refused by validation, by model and reason (the error code).
pub const VALIDATION_FAILURES: &str = "warden_validation_failures_total";
/// Inputs flagged by an ML-attack defense, by model and kind.
pub const DEFENSE_FLAGS: &str = "warden_defense_flags_total";
/// Requests in flight, by plane.
pub const IN_FLIGHT: &str = "warden_in_flight_requests";
/// Requests waiting for inference, by model.
pub const INFERENCE_QUEUE: &str = "warden_inference_queue_depth";
/// 1 for each model version loaded and served, by model and version.
pub const MODEL_LOADED: &str = "warden_model_loaded";
/// The served certificate's expiry (Unix seconds), by listener.
pub const CERTIFICATE_EXPIRY: &str = "warden_certificate_expiry_timestamp_seconds";
/// Audit records waiting to be written.
pub const AUDIT_QUEUE: &str = "warden_audit_queue_depth";
/// Seconds between the oldest record of the last committed audit batch being queued and its commit.
pub const AUDIT_WRITE_LAG: &str = "warden_audit_write_lag_seconds";
/// Audit records committed.
pub const AUDIT_RECORDS: &str = "warden_audit_records_total";
/// Failed audit writes (each retried in batched mode; failing the requests in sync mode).
pub const AUDIT_WRITE_FAILURES: &str = "warden_audit_write_failures_total";
/// Alert events written to the log, by kind (see [`Alert`]).
pub const ALERTS: &str = "warden_alerts_total";
/// Shared-state (Redis) operations that fell back to local counters.
pub const SHARED_STATE_FALLBACKS: &str = "warden_shared_state_fallbacks_total";
/// Calls to gateway-mode upstream servers, by model and outcome (`ok`,
/// `connect`, `timeout`, `status`, `invalid`, `transport`, `cancelled`,
/// `breaker_open`).
pub const UPSTREAM_REQUESTS: &str = "warden_upstream_requests_total";
/// 1 while a gateway-mode model's upstream is taking calls (breaker closed), else 0.
pub const UPSTREAM_UP: &str = "warden_upstream_up";
/// 1, labelled with the running version.
pub const BUILD_INFO: &str = "warden_build_info";

/// Latency buckets (seconds): 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The kinds of anomaly alert. Each is a structured log event with an
/// `alert` field of this name, and counts in [`ALERTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// An address reached the ban threshold of authentication failures.
    AuthFailureSpike,
    /// A principal's query rate departed from its own baseline.
    QueryRateAnomaly,
    /// The extraction monitor suspects model extraction.
    ExtractionSuspected,
    /// A principal's query closely resembles an earlier query (its own or
    /// another principal's): a query-based attack is suspected.
    QueryAttackSuspected,
    /// An audit record could not be written.
    AuditWriteFailed,
    /// A served certificate expires within 14 days.
    CertificateExpiry,
    /// A changed certificate or key file did not load; the old pair serves.
    CertificateReloadFailed,
    /// A model version failed its integrity check (hash pin, signature,
    /// decryption) and is not served.
    ModelIntegrityFailed,
    /// A model reload failed; the loaded model keeps serving.
    ModelReloadFailed,
    /// A gateway-mode upstream stopped answering: its circuit breaker opened.
    UpstreamDown,
    /// Inference failed on a validated request (ONNX Runtime refused it, or
    /// the model's answer does not fit its card): a bug in the model or card,
    /// never the client's mistake.
    InferenceFailed,
}

impl Alert {
    /// Every kind.
    pub const ALL: [Self; 11] = [
        Self::AuthFailureSpike,
        Self::QueryRateAnomaly,
        Self::ExtractionSuspected,
        Self::QueryAttackSuspected,
        Self::AuditWriteFailed,
        Self::CertificateExpiry,
        Self::CertificateReloadFailed,
        Self::ModelIntegrityFailed,
        Self::ModelReloadFailed,
        Self::UpstreamDown,
        Self::InferenceFailed,
    ];

    /// The `alert` field and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailureSpike => "auth_failure_spike",
            Self::QueryRateAnomaly => "query_rate_anomaly",
            Self::ExtractionSuspected => "extraction_suspected",
            Self::QueryAttackSuspected => "query_attack_suspected",
            Self::AuditWriteFailed => "audit_write_failed",
            Self::CertificateExpiry => "certificate_expiry",
            Self::CertificateReloadFailed => "certificate_reload_failed",
            Self::ModelIntegrityFailed => "model_integrity_failed",
            Self::ModelReloadFailed => "model_reload_failed",
            Self::UpstreamDown => "upstream_down",
            Self::InferenceFailed => "inference_failed",
        }
    }

    /// Counts one event of this kind (the caller writes the log event),
    /// and keeps it among the [`recent_alerts`].
    pub fn count(self) {
        counter!(ALERTS, "kind" => self.as_str()).increment(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut recent = RECENT_ALERTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT_ALERTS_KEPT {
            recent.pop_front();
        }
        recent.push_back((now, self));
    }
}

/// How many alerts [`recent_alerts`] keeps.
pub const RECENT_ALERTS_KEPT: usize = 200;

static RECENT_ALERTS: std::sync::Mutex<std::collections::VecDeque<(u64, Alert)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The last [`RECENT_ALERTS_KEPT`] alerts this process raised, oldest
/// first, each with its Unix time in seconds (the console's overview).
pub fn recent_alerts() -> Vec<(u64, Alert)> {
    RECENT_ALERTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .copied()
        .collect()
}

/// The defense kinds of [`DEFENSE_FLAGS`].
pub const DEFENSE_KINDS: [&str; 4] = [
    "out_of_distribution",
    "adversarial",
    "extraction",
    "similarity",
];

/// Registers help text and units, and creates the label-free and
/// fixed-label series at zero so that dashboards and alert rules see them
/// before the first event.
pub fn describe() {
    describe_counter!(
        REQUESTS,
        "Requests answered, by plane, route, model and outcome code."
    );
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Whole-request latency.");
    describe_histogram!(
        INFERENCE_DURATION,
        Unit::Seconds,
        "Inference latency, queue wait included."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Failed authentications, by plane and reason."
    );
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by policy.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused when accepted, by listener and reason."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections Warden closed, by listener and reason."
    );
    describe_counter!(QUOTA_EXCEEDED, "Requests refused by a quota, by model.");
    describe_counter!(
        BANNED_REQUESTS,
        "Requests refused from a banned address, by plane."
    );
    describe_counter!(BANS, "Bans imposed after repeated authentication failures.");
    describe_counter!(
        VALIDATION_FAILURES,
        "Inputs refused by validation, by model and reason."
    );
    describe_counter!(
        DEFENSE_FLAGS,
        "Inputs flagged by an ML-attack defense, by model and kind."
    );
    describe_gauge!(IN_FLIGHT, "Requests in flight, by plane.");
    describe_gauge!(INFERENCE_QUEUE, "Requests waiting for inference, by model.");
    describe_gauge!(MODEL_LOADED, "1 for each model version served.");
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "Expiry of the served certificate (Unix time)."
    );
    describe_gauge!(AUDIT_QUEUE, "Audit records waiting to be written.");
    describe_gauge!(
        AUDIT_WRITE_LAG,
        Unit::Seconds,
        "Queue-to-commit time of the last audit batch."
    );
    describe_counter!(AUDIT_RECORDS, "Audit records committed.");
    describe_counter!(AUDIT_WRITE_FAILURES, "Failed audit writes.");
    describe_counter!(ALERTS, "Alert events written to the log, by kind.");
    describe_counter!(
        SHARED_STATE_FALLBACKS,
        "Shared-state operations served by local counters."
    );
    describe_counter!(
        UPSTREAM_REQUESTS,
        "Calls to gateway-mode upstream servers, by model and outcome."
    );
    describe_gauge!(
        UPSTREAM_UP,
        "1 while a gateway-mode upstream takes calls (breaker closed), by model."
    );
    describe_gauge!(BUILD_INFO, "1, labelled with the running version.");
    for alert in Alert::ALL {
        counter!(ALERTS, "kind" => alert.as_str()).absolute(0);
    }
    for plane in ["data", "management"] {
        counter!(BANNED_REQUESTS, "plane" => plane).absolute(0);
        counter!(BANS, "plane" => plane).absolute(0);
    }
    counter!(AUDIT_RECORDS).absolute(0);
    counter!(AUDIT_WRITE_FAILURES).absolute(0);
    counter!(SHARED_STATE_FALLBACKS).absolute(0);
}
