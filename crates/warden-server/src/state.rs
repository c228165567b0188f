//! What every request handler shares.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use warden_auth::Authenticator;
use warden_core::Roles;
use warden_models::Repository;
use warden_store::Store;

use crate::oauth::OAuth;

/// Per-request limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest body in bytes.
    pub body_limit: usize,
    /// Deepest JSON nesting.
    pub json_max_depth: usize,
    /// Whole-request deadline.
    pub request_timeout: Duration,
}

/// The shared state of the data plane.
#[derive(Debug)]
pub struct Shared {
    /// Models served.
    pub repository: Arc<Repository>,
    /// Credential → principal.
    pub authenticator: Arc<Authenticator>,
    /// Request limits.
    pub limits: RequestLimits,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether the listener speaks TLS (adds HSTS).
    pub tls: bool,
    /// Where access-log lines go; `None` turns the access log off.
    pub access_log: Option<Arc<dyn crate::access_log::LineSink>>,
    /// The OpenAPI document, serialized once.
    pub openapi: axum::body::Bytes,
    /// Whether `/docs` (Swagger UI over the document) is served.
    pub docs: bool,
    /// Accounts, roles and the token endpoint.
    pub identity: Arc<Identity>,
    /// Rate limits, quotas, bans.
    pub limiter: Arc<warden_limits::Limiter>,
    /// The data plane's in-flight cap.
    pub in_flight: tokio::sync::Semaphore,
    /// The in-flight cap per principal (both planes).
    pub principal_in_flight: crate::fair::PrincipalSlots,
    /// The management plane's in-flight cap.
    pub admin_in_flight: tokio::sync::Semaphore,
    /// The audit trail, unless disabled.
    pub audit: Option<Arc<warden_audit::AuditLog>>,
    /// Cheap refusals waiting to be written to the audit trail as tallies.
    pub refusals: Arc<crate::refusals::Refusals>,
    /// The access log's budget of refusal lines.
    pub refusal_lines: Arc<crate::access_log::RefusalLines>,
    /// The encryption-at-rest key (raw-input snapshots), if configured.
    pub seal_key: Option<Arc<warden_models::sealed::SealKey>>,
    /// The data plane's in-flight limit (for the in-flight gauge).
    pub max_in_flight: usize,
    /// The Prometheus recorder's handle, if this process installed it.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Each TLS listener's served certificate.
    pub certificates: Vec<Arc<crate::certs::ServedCert>>,
    /// Per-principal query-rate baselines.
    pub rate_watch: Option<crate::anomaly::RateWatch>,
    /// Principals a defense's `throttle` action has marked.
    pub throttled: crate::defend::Throttled,
    /// The data plane's last 15 minutes, for the console's overview.
    pub timeline: crate::console::Timeline,
}

/// What the token endpoint and the management API work with.
pub struct Identity {
    /// Keys, users, clients, signing keys.
    pub store: Arc<dyn Store>,
    /// Every role.
    pub roles: Arc<Roles>,
    /// Default grace period of a rotated key.
    pub key_rotation_grace: Duration,
    /// The OAuth2 token endpoint, unless disabled.
    pub oauth: Option<Arc<OAuth>>,
}

/// Cheap-to-clone handle on [`Shared`].
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("roles", &self.roles.names())
            .field("oauth", &self.oauth)
            .finish_non_exhaustive()
    }
}
