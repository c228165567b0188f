//! The HTTP-level steps of the pipeline, one function each. Their order is
//! set in `pipeline.rs` (`edge` and `admission`), not here.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use warden_core::error::PendingError;
use warden_core::{ApiError, ErrorCode, Principal};

use warden_limits::RateOutcome;

use crate::access_log::AccessRecord;
use crate::client_addr::{ClientAddr, ClientCertificate, PeerAddr, client_addr};
use crate::extract::declared_length;
use crate::state::AppState;

/// The request id, assigned by Warden (a client-sent `x-request-id` is not
/// trusted: it would let clients forge log correlation).
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The principal id, noted on the response for the access log.
#[derive(Debug, Clone)]
pub struct PrincipalNote(pub Arc<str>);

/// The outcome code of a response rendered outside the error envelope (the
/// token endpoint's RFC 6749 errors), for metrics and audit.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeNote(pub &'static str);

/// What a management call created or changed (a new key's id), for audit.
#[derive(Debug, Clone)]
pub struct TargetNote(pub String);

/// The outcome code of a response: `ok`, or the error code.
pub fn outcome_code(response: &Response) -> &'static str {
    let ext = response.extensions();
    if let Some(PendingError(e)) = ext.get::<PendingError>() {
        e.code.as_str()
    } else if let Some(OutcomeNote(code)) = ext.get::<OutcomeNote>() {
        code
    } else {
        "ok"
    }
}

/// The model, version and rows of a model request, noted for the access log.
#[derive(Debug, Clone)]
pub struct ModelNote {
    /// Model name.
    pub model: Arc<str>,
    /// Version served.
    pub version: u64,
    /// Rows predicted (0 for metadata).
    pub rows: usize,
    /// SHA-256 of the validated inputs (every input: name, datatype,
    /// shape, little-endian values), for audit.
    pub input_sha256: Option<[u8; 32]>,
    /// The validated inputs, only when the model card opts in
    /// (`[audit] record_inputs = true`).
    pub inputs: Option<Arc<[warden_tensor::Tensor]>>,
    /// Defense flags raised by this request.
    pub defense_flags: Vec<&'static str>,
}

/// The SHA-256 of a request's validated inputs: the canonical input, the
/// same whatever wire format or JSON spelling the client used. Every input
/// counts, each as its name, datatype and shape (lengths first, so that no
/// two requests share an encoding) and its binary encoding. Raw inputs are
/// never recorded. (A single FP32 input hashes differently from the first
/// card format's digest of its values alone: docs/audit.md.)
pub fn input_digest(inputs: &[warden_tensor::Tensor]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut bytes = Vec::new();
    for t in inputs {
        h.update((t.name.len() as u64).to_le_bytes());
        h.update(t.name.as_bytes());
        h.update(t.datatype().as_str().as_bytes());
        h.update((t.shape.len() as u64).to_le_bytes());
        for d in &t.shape {
            h.update((*d as u64).to_le_bytes());
        }
        match &t.data {
            // The common case hashed in place, without a copy.
            warden_tensor::TensorData::F32(v) => {
                h.update(((v.len() * 4) as u64).to_le_bytes());
                for x in v {
                    h.update(x.to_le_bytes());
                }
            }
            data => {
                bytes.clear();
                data.write_le_bytes(&mut bytes);
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
        }
    }
    h.finalize().into()
}

/// Whether a request leaves an audit record: it matched a route that takes
/// a credential (see `pipeline::UNAUDITED`).
pub fn is_audited(line: &AccessLine) -> bool {
    line.template
        .as_ref()
        .is_some_and(|t| !crate::pipeline::UNAUDITED.contains(&t.as_str()))
}

/// Step: audit record, for every request that reached authentication. Who
/// (the principal, from the response), from where, what, the outcome, and a
/// digest of the input; never a credential, and the raw input only when the
/// model card opts in. In sync mode the response waits for the commit, and
/// a record that cannot be committed fails the request with `internal`.
pub async fn audit(state: &AppState, line: &AccessLine, response: Response) -> Response {
    let Some(log) = &state.audit else {
        return response;
    };
    let outcome = outcome_code(&response);
    let ext = response.extensions();
    // Cheap refusals are tallied, not recorded one by one (refusals.rs).
    if crate::refusals::is_counted(outcome) {
        state.refusals.add(crate::refusals::Refusal {
            plane: line.plane,
            client: line.client.0,
            principal: ext.get::<PrincipalNote>().map(|p| &p.0),
            model: ext.get::<ModelNote>().map(|m| &m.model),
            outcome,
            route: &line.path,
        });
        return response;
    }
    let model = ext.get::<ModelNote>();
    let action = match (line.plane, &line.template) {
        (Plane::Management, Some(t)) => crate::admin::action(&line.method, t.as_str()),
        _ => None,
    };
    let record = RequestRecord {
        time_us: unix_micros(),
        request_id: &line.id,
        plane: crate::metrics::plane_label(line.plane),
        protocol: line.transport.as_str(),
        principal: ext.get::<PrincipalNote>().map(|p| &*p.0),
        client: line.client.0,
        method: line.method.as_str(),
        route: &line.path,
        action,
        target: ext.get::<TargetNote>().map(|t| t.0.as_str()),
        status: response.status().as_u16(),
        outcome,
        model: model.map(|m| &*m.model),
        version: model.map(|m| m.version),
        rows: model.map_or(0, |m| m.rows),
        input_sha256: model.and_then(|m| m.input_sha256.as_ref()).map(Hex),
        inputs_sealed: model
            .and_then(|m| m.inputs.as_deref())
            .and_then(|v| seal_inputs(state, v)),
        defense_flags: model.map_or(&[], |m| m.defense_flags.as_slice()),
        latency_us: line.started.elapsed().as_micros() as u64,
    };
    // Serialized straight from borrowed fields: one allocation, the string.
    let record = match serde_json::to_string(&record) {
        Ok(r) => r,
        Err(_) => return ApiError::internal().into_response(),
    };
    match log.record(record).await {
        Ok(()) => response,
        Err(_) => {
            tracing::error!(
                request_id = &*line.id,
                "audit record not committed: request failed"
            );
            ApiError::internal().into_response()
        }
    }
}

/// One request's audit record (docs/audit.md).
#[derive(serde::Serialize)]
struct RequestRecord<'a> {
    time_us: u64,
    request_id: &'a str,
    plane: &'static str,
    /// `http` or `grpc` (docs/grpc.md).
    protocol: &'static str,
    principal: Option<&'a str>,
    client: std::net::IpAddr,
    method: &'a str,
    route: &'a str,
    action: Option<&'static str>,
    target: Option<&'a str>,
    status: u16,
    outcome: &'static str,
    model: Option<&'a str>,
    version: Option<u64>,
    rows: usize,
    input_sha256: Option<Hex<'a>>,
    inputs_sealed: Option<String>,
    defense_flags: &'a [&'a str],
    latency_us: u64,
}

/// A raw-input snapshot (card opt-in), sealed with the encryption-at-rest
/// key: base64 of the WDNENC file format around the JSON array of input
/// tensors (`[{"name", "datatype", "shape", "data"}]`).
/// Start-up refuses an opt-in without a key, so `None` here means the
/// sealing itself failed (logged).
fn seal_inputs(state: &AppState, values: &[warden_tensor::Tensor]) -> Option<String> {
    use base64::Engine as _;
    let key = state.seal_key.as_ref()?;
    let json = serde_json::to_vec(values).ok()?;
    match key.seal(&json, warden_models::sealed::AUDIT_INPUTS) {
        Ok(sealed) => Some(base64::engine::general_purpose::STANDARD.encode(sealed)),
        Err(e) => {
            tracing::error!(error = %e, "cannot seal a raw-input snapshot: recorded without it");
            None
        }
    }
}

/// Lower-case hex of a digest, serialized without an intermediate String.
struct Hex<'a>(&'a [u8; 32]);

impl serde::Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Table lookup into a stack buffer: `write!("{b:02x}")` per byte went
        // through the formatting machinery 32 times per audit record (1.6% of
        // the server's CPU in a profile).
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

/// Records an event that is not a request (a ban imposed, a model loaded)
/// in the audit trail, with `event` naming it. A failure is logged; the
/// event's cause is not undone.
pub async fn audit_event(state: &AppState, event: &str, mut fields: serde_json::Value) {
    let Some(log) = &state.audit else {
        return;
    };
    if let Some(map) = fields.as_object_mut() {
        map.insert("time_us".into(), unix_micros().into());
        map.insert("event".into(), event.into());
    }
    if log.record(fields.to_string()).await.is_err() {
        tracing::error!(event, "audit event not committed");
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the access-log line needs from the request, taken before the
/// request is handed on.
#[derive(Debug)]
pub struct AccessLine {
    started: Instant,
    id: Arc<str>,
    client: ClientAddr,
    method: Method,
    path: String,
    plane: Plane,
    transport: crate::grpc::Transport,
    template: Option<MatchedPath>,
}

/// Step: request id. A random per-process prefix and a counter: unique,
/// cheap, not guessable across restarts.
pub fn assign_request_id(req: &mut Request) -> Arc<str> {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // 8 hex digits of process prefix and 12 of counter, written without the
    // formatting machinery (this runs on every request).
    let mut raw = [0u8; 10];
    raw[..4].copy_from_slice(&prefix.to_be_bytes());
    raw[4..].copy_from_slice(&n.to_be_bytes()[2..]);
    let mut buf = [0u8; 20];
    let id: Arc<str> = match hex::encode_to_slice(raw, &mut buf) {
        Ok(()) => Arc::from(std::str::from_utf8(&buf).unwrap_or_default()),
        Err(_) => format!("{prefix:08x}{n:012x}").into(),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    id
}

/// Step: client address (see `client_addr`). `None` only if the listener
/// did not record the peer, which is a bug.
pub fn client_address(state: &AppState, req: &mut Request) -> Option<ClientAddr> {
    let PeerAddr(peer) = req.extensions().get::<PeerAddr>().copied()?;
    let client = ClientAddr(client_addr(
        peer.ip(),
        req.headers(),
        &state.trusted_proxies,
    ));
    req.extensions_mut().insert(client);
    Some(client)
}

impl AccessLine {
    /// Notes the request's method and path (cut to 256 characters).
    pub fn start(req: &Request, id: Arc<str>, client: ClientAddr, started: Instant) -> Self {
        let path = req.uri().path();
        let path = match path.char_indices().nth(256) {
            Some((cut, _)) => path[..cut].to_owned(),
            None => path.to_owned(),
        };
        Self {
            started,
            id,
            client,
            method: req.method().clone(),
            path,
            plane: req.extensions().get().copied().unwrap_or_default(),
            transport: req.extensions().get().copied().unwrap_or_default(),
            template: req.extensions().get::<MatchedPath>().cloned(),
        }
    }

    /// The protocol of the listener the request came in on.
    pub fn transport(&self) -> crate::grpc::Transport {
        self.transport
    }
}

/// Step: body limit. A declared `Content-Length` over the limit is refused
/// before anything reads the body; bodies without one are cut off at the
/// limit when read (`extract::JsonBody`).
pub fn body_limit(state: &AppState, req: &Request) -> Result<(), ApiError> {
    match declared_length(req) {
        Some(len) if len > state.limits.body_limit => Err(ErrorCode::PayloadTooLarge.into()),
        _ => Ok(()),
    }
}

/// Step: deadline and panic guard around the rest of the pipeline. The
/// whole request, body reading included, must finish within `deadline`
/// (`server.request_timeout`, or a gRPC call's earlier `grpc-timeout`), or
/// the client is told to retry; a panic
/// anywhere inside becomes `internal`, its message going to the log only.
pub async fn guarded(deadline: Duration, inner: impl Future<Output = Response>) -> Response {
    let guarded = AssertUnwindSafe(inner).catch_unwind();
    match tokio::time::timeout(deadline, guarded).await {
        Ok(Ok(response)) => response,
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %message, "handler panicked");
            ApiError::internal().into_response()
        }
        Err(_) => {
            let mut response = ApiError::new(ErrorCode::Overloaded)
                .with_message("The request took too long.")
                .with_retry_after(1)
                .into_response();
            response.extensions_mut().insert(DeadlinePassed);
            response
        }
    }
}

/// Marks an answer cut by the deadline (gRPC answers DEADLINE_EXCEEDED).
#[derive(Debug, Clone, Copy)]
pub struct DeadlinePassed;

/// Step: respond. Counts the request in the metrics, renders any error as
/// the flat envelope with the request id, adds the security headers every
/// response carries, and writes the access-log line.
pub fn respond(state: &AppState, mut response: Response, line: AccessLine) -> Response {
    let outcome = outcome_code(&response);
    if line.plane == Plane::Data {
        let note = response.extensions().get::<ModelNote>();
        state.timeline.record(
            unix_micros() / 1_000_000,
            outcome,
            line.started.elapsed(),
            note.filter(|n| !n.defense_flags.is_empty())
                .map(|n| (&n.model, &n.defense_flags[..])),
        );
    }
    crate::metrics::request(
        line.plane,
        line.transport.as_str(),
        line.template
            .as_ref()
            .map_or("unmatched", MatchedPath::as_str),
        response.extensions().get::<ModelNote>().map(|m| &*m.model),
        outcome,
        line.started.elapsed(),
    );
    let grpc = line.transport == crate::grpc::Transport::Grpc;
    if let Some(PendingError(error)) = response.extensions_mut().remove::<PendingError>() {
        if grpc {
            let deadline = response.extensions().get::<DeadlinePassed>().is_some();
            response = crate::grpc::error_response(response, &error, &line.id, deadline);
        } else {
            *response.body_mut() = Body::from(error.to_body(&line.id));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    if grpc {
        // gRPC answers carry the request id as metadata; the browser
        // headers mean nothing to a gRPC client.
        if let Ok(v) = HeaderValue::from_str(&line.id) {
            response.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
    } else {
        security_headers(response.headers_mut(), &line.id, state.tls);
    }
    if let Some(sink) = &state.access_log
        && state
            .refusal_lines
            .allow(outcome, unix_micros() / 1_000_000)
    {
        let ext = response.extensions();
        let record = AccessRecord {
            request_id: &line.id,
            client: line.client.0,
            method: line.method.as_str(),
            path: &line.path,
            status: response.status().as_u16(),
            latency: line.started.elapsed(),
            principal: ext.get::<PrincipalNote>().map(|p| &*p.0),
            model: ext
                .get::<ModelNote>()
                .map(|m| (&*m.model, m.version, m.rows)),
        };
        sink.write_record(&record);
    }
    response
}

fn security_headers(headers: &mut HeaderMap, id: &str, tls: bool) {
    // Room for these six at once, rather than growing the map twice.
    headers.reserve(6);
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Nothing in an API response may load or run anything; the docs page
    // sets its own self-only policy, which is kept.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    if tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
}

/// Which listener a request came in on. Bans are kept apart per plane, so
/// that abuse of the data plane from an address (a NAT, a proxy) cannot lock
/// operators out of the management API, and guessing there is banned there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Plane {
    /// The data plane.
    #[default]
    Data,
    /// The management plane.
    Management,
}

/// The ban subject of a client address on a plane.
pub fn ban_subject(plane: Plane, client: ClientAddr) -> String {
    match plane {
        Plane::Data => warden_limits::address_subject("addr", client.0),
        Plane::Management => warden_limits::address_subject("admin-addr", client.0),
    }
}

/// Step: ban check. Clients banned for repeated authentication failures are
/// refused here, before their credential is looked at.
pub async fn ban_check(
    state: &AppState,
    plane: Plane,
    client: Option<ClientAddr>,
) -> Result<(), ApiError> {
    let Some(client) = client else {
        return Ok(());
    };
    if !state.limiter.may_have_bans() {
        return Ok(());
    }
    match state.limiter.banned(&ban_subject(plane, client)).await {
        Some(seconds) => {
            crate::metrics::banned(plane);
            Err(ApiError::new(ErrorCode::Banned).with_retry_after(seconds))
        }
        None => Ok(()),
    }
}

/// Step: authenticate. Resolves the credential (API key, JWT, or the
/// client certificate the listener verified) to a principal; every failure
/// is the same `unauthenticated` (the reason goes to the log).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    certificate: Option<&ClientCertificate>,
    plane: Plane,
    client: Option<ClientAddr>,
) -> Result<Principal, ApiError> {
    let result = state
        .authenticator
        .authenticate(headers, certificate.map(|c| &*c.0))
        .await
        .inspect_err(|reason| {
            let address = client.map(|c| c.0.to_string());
            tracing::info!(
                reason = reason.as_str(),
                client = address.as_deref().unwrap_or("-"),
                "authentication failed"
            );
            crate::metrics::auth_failure(plane, reason.as_str());
        });
    match result {
        Ok(p) => Ok(p),
        Err(reason) => {
            // Every failure the client caused — a missing or malformed
            // credential as much as a wrong, forged, revoked or expired one —
            // counts towards a ban of the client address: that is the
            // per-address limit on unauthenticated requests, applied before
            // anything is written to disk (docs/limits.md). Only the store
            // failing is not the client's doing.
            if reason.counts_toward_ban()
                && let Some(c) = client
            {
                let subject = ban_subject(plane, c);
                if let Some(seconds) = state.limiter.failure(&subject).await {
                    banned_now(state, plane, &subject, seconds).await;
                }
            }
            Err(reason.to_api_error())
        }
    }
}

/// A ban was just imposed: alert, count, and record it in the audit trail.
pub async fn banned_now(state: &AppState, plane: Plane, subject: &str, seconds: u64) {
    crate::metrics::ban(plane, subject, seconds);
    let fields = serde_json::json!({
        "plane": crate::metrics::plane_label(plane),
        "target": subject,
        "seconds": seconds,
    });
    audit_event(state, "ban", fields).await;
}

/// Step: fair share. A principal with `server.max_in_flight_per_principal`
/// requests in flight is refused at once with `429 rate_limited` and
/// `Retry-After: 1` (its own requests hold the slots, so waiting for one of
/// them to end is the remedy); the slot is held until the response is made.
pub fn principal_slot(
    state: &AppState,
    principal: &Principal,
) -> Result<crate::fair::PrincipalSlot, ApiError> {
    state
        .principal_in_flight
        .try_acquire(&principal.id)
        .ok_or_else(|| {
            crate::metrics::rate_limited("in_flight");
            ApiError::new(ErrorCode::RateLimited)
                .with_message("Too many requests of this credential are in progress; retry when one has finished.")
                .with_retry_after(1)
        })
}

/// Step: rate limit, per principal, one unit per request of the `default`
/// policy. (Inference also takes its rows from the `predict` policy once
/// they are counted; see `pipeline::infer`.)
pub async fn rate_limit(state: &AppState, principal: &Principal) -> Result<RateOutcome, ApiError> {
    let rate = state.limiter.rate_for("default", Some(principal));
    rate_limit_as(state, &principal.id, rate).await
}

/// [`rate_limit`] for a principal known by its id and `default` rate.
pub async fn rate_limit_as(
    state: &AppState,
    principal: &str,
    rate: warden_core::config::Rate,
) -> Result<RateOutcome, ApiError> {
    let outcome = state.limiter.rate("default", principal, rate, 1).await;
    if outcome.decision.allowed {
        Ok(outcome)
    } else {
        crate::metrics::rate_limited("default");
        Err(rate_limited(&outcome))
    }
}

/// The `default` policy's charge of a request that charges rows (an
/// inference call), which admission leaves to the inference step: that step
/// takes it in the same round trip as the `predict` rate and the quota
/// (`Limiter::charge`). If the request ends before that step (the model is
/// unknown, the body does not validate), admission takes it afterwards and
/// a refusal replaces the answer. Either way every request is charged once,
/// and a client over its `default` limit gets `rate_limited` whatever it
/// sent (docs/pipeline.md).
#[derive(Debug, Clone)]
pub struct DeferredDefault {
    taken: Arc<std::sync::atomic::AtomicBool>,
    /// The principal's `default` rate, looked up once by admission.
    pub rate: warden_core::config::Rate,
}

impl DeferredDefault {
    /// A charge of one request at `rate`, not yet taken.
    pub fn new(rate: warden_core::config::Rate) -> Self {
        Self {
            taken: Arc::default(),
            rate,
        }
    }

    /// Claims the charge: true the first time only (the claimer takes it).
    pub fn claim(&self) -> bool {
        !self.taken.swap(true, Ordering::AcqRel)
    }
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `429 rate_limited` with `Retry-After` and the IETF RateLimit headers.
pub fn rate_limited(outcome: &RateOutcome) -> ApiError {
    let mut e = ApiError::new(ErrorCode::RateLimited).with_retry_after(outcome.retry_after());
    for (name, value) in rate_headers(outcome) {
        if let Some(value) = value {
            e = e.with_header(name, value);
        }
    }
    e
}

fn rate_headers(outcome: &RateOutcome) -> [(HeaderName, Option<HeaderValue>); 2] {
    // `TryFrom<String>` takes the string's buffer instead of copying it.
    [
        (
            RATELIMIT_POLICY.clone(),
            HeaderValue::try_from(outcome.policy_header()).ok(),
        ),
        (
            RATELIMIT.clone(),
            HeaderValue::try_from(outcome.limit_header()).ok(),
        ),
    ]
}

/// Puts a rate check's RateLimit headers on a response, unless a more
/// specific check (inference's rows) already did.
pub fn add_rate_headers(headers: &mut HeaderMap, outcome: &RateOutcome) {
    if headers.contains_key(&RATELIMIT) {
        return;
    }
    for (name, value) in rate_headers(outcome) {
        if let Some(value) = value {
            headers.insert(name, value);
        }
    }
}
