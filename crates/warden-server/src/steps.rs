//! The HTTP-level steps of the pipeline, one function each. Their order is
//! set in `pipeline.rs`, not here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use warden_core::error::PendingError;
use warden_core::{ApiError, ErrorCode};

use crate::client_addr::{ClientAddr, PeerAddr, client_addr};
use crate::extract::declared_length;
use crate::state::AppState;

/// The request id, assigned by Warden (a client-sent `x-request-id` is not
/// trusted: it would let clients forge log correlation).
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The principal id, noted on the response for the access log.
#[derive(Debug, Clone)]
pub struct PrincipalNote(pub Arc<str>);

/// The model, version and rows of an inference, noted for the access log.
#[derive(Debug, Clone)]
pub struct ModelNote {
    /// Model name.
    pub model: String,
    /// Version served.
    pub version: u64,
    /// Rows predicted (0 for metadata).
    pub rows: usize,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Step: request id. A random per-process prefix and a counter: unique, cheap, not guessable across restarts.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let id: Arc<str> = format!("{prefix:08x}{n:012x}").into();
    req.extensions_mut().insert(RequestId(id));
    next.run(req).await
}

/// Step: respond. Renders any error as the flat envelope with the request
/// id, adds the security headers every response carries, and writes the
/// access-log line. Outermost after the request id, so it sees every
/// response, including the router's 404/405 and caught panics.
pub async fn respond(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| Arc::from("-"), |r| r.0.clone());
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(256).collect();

    let mut response = next.run(req).await;

    if let Some(PendingError(error)) = response.extensions_mut().remove::<PendingError>() {
        *response.body_mut() = Body::from(error.to_body(&id));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
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
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    if state.tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }

    if state.access_log {
        let ext = response.extensions();
        let client = ext.get::<ClientAddr>().map(|c| c.0.to_string());
        let principal = ext.get::<PrincipalNote>().map(|p| p.0.clone());
        let model = ext.get::<ModelNote>();
        tracing::info!(
            target: "warden::access",
            request_id = &*id,
            client = client.as_deref().unwrap_or("-"),
            method = method.as_str(),
            path = path.as_str(),
            status = response.status().as_u16(),
            latency_us = started.elapsed().as_micros() as u64,
            principal = principal.as_deref().unwrap_or("-"),
            model = model.map_or("-", |m| m.model.as_str()),
            version = model.map_or(0, |m| m.version),
            rows = model.map_or(0, |m| m.rows),
        );
    }
    response
}

/// Caught panics become `internal`; the panic message goes to the log only.
pub fn panic_to_internal(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "handler panicked");
    ApiError::internal().into_response()
}

/// Step: deadline. The whole request, body reading included, must finish
/// within `server.request_timeout`, or the client is told to retry.
pub async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.limits.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(ErrorCode::Overloaded)
            .with_message("The request took too long.")
            .with_retry_after(1)
            .into_response(),
    }
}

/// Step: body limit. A declared `Content-Length` over the limit is refused
/// before anything else reads the body; bodies without one are cut off at
/// the limit when read.
pub async fn body_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if declared_length(&req).is_some_and(|len| len > state.limits.body_limit) {
        return ApiError::new(ErrorCode::PayloadTooLarge).into_response();
    }
    next.run(req).await
}

/// Step: client address (see `client_addr`).
pub async fn client_address(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(PeerAddr(peer)) = req.extensions().get::<PeerAddr>().copied() else {
        tracing::error!("request without a peer address");
        return ApiError::internal().into_response();
    };
    let client = ClientAddr(client_addr(
        peer.ip(),
        req.headers(),
        &state.trusted_proxies,
    ));
    req.extensions_mut().insert(client);
    let mut response = next.run(req).await;
    response.extensions_mut().insert(client);
    response
}

/// Step: ban check. Clients banned for repeated authentication failures are
/// refused here, before their credential is looked at. The abuse-control
/// work (issue 4) fills this step; until then no client is ever banned.
pub async fn ban_check(req: Request, next: Next) -> Response {
    next.run(req).await
}

/// Step: authenticate. Resolves the credential to a [`Principal`](warden_core::Principal)
/// and puts it in the request; every failure is the same `unauthenticated`.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match state.authenticator.authenticate(req.headers()).await {
        Ok(principal) => {
            let note = PrincipalNote(principal.id.clone());
            req.extensions_mut().insert(principal);
            let mut response = next.run(req).await;
            response.extensions_mut().insert(note);
            response
        }
        Err(reason) => {
            let client = req
                .extensions()
                .get::<ClientAddr>()
                .map(|c| c.0.to_string());
            tracing::info!(
                ?reason,
                client = client.as_deref().unwrap_or("-"),
                path = req.uri().path(),
                "authentication failed"
            );
            reason.to_api_error().into_response()
        }
    }
}

/// Step: rate limit, per principal and route class. The abuse-control work
/// (issue 4) fills this step; until then requests are not rate limited.
pub async fn rate_limit(req: Request, next: Next) -> Response {
    next.run(req).await
}
