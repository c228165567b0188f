//! The request pipeline of docs/pipeline.md, in one place. The order is part of the
//! product contract; docs/pipeline.md draws it and the integration tests pin
//! it. Read [`edge`], [`admission`] and [`infer`] top to bottom:
//!
//! ```text
//! accept → TLS                                            (listener.rs)
//! edge:      request id → client address → body limit → deadline + panic guard
//!            (the gRPC listener: the same edge, its calls noted in grpc.rs)
//!            → … → audit record → respond (metrics, error envelope, security headers, access log)
//! admission: ban check → authenticate → fair share → rate limit   (routes that need a credential)
//! infer:     authorize → parse + validate → rate limit and quota in rows → defenses
//!            → inference → output policy → response               (service.rs, no transport)
//! ```
//!
//! Each step is a plain function in `steps.rs` (or below); the three
//! functions here only fix their order. Two middleware layers rather than
//! one per step: each axum layer costs an allocation and a boxed future per
//! request, and one function per stage reads better anyway.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use warden_core::{ApiError, ErrorCode, Principal};
use warden_models::request::Payload;
use warden_models::{Model, ModelVersion, Protocol, protocol};

use crate::client_addr::ClientCertificate;
use crate::grpc::{self, Transport};
use crate::state::AppState;
use crate::steps::{self, AccessLine, PrincipalNote};
use crate::{admin, oauth, routes, service};
#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;

/// The data-plane router with the whole pipeline.
pub fn data_plane(state: AppState) -> Router {
    // Routes that need a credential. `route_layer` runs admission only for
    // matched routes, so an unknown path is a plain 404 for everyone.
    let protected = Router::new()
        .route("/v2", get(routes::server_metadata))
        .route("/v2/models/{model}", get(routes::model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(routes::model_version_metadata),
        )
        .route("/v2/models/{model}/ready", get(routes::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(routes::model_version_ready),
        )
        .route(V2_INFER, post(routes::v2_infer))
        .route(V2_INFER_VERSION, post(routes::v2_infer_version))
        .route(V1_PREDICT, post(routes::v1_predict))
        .route_layer(from_fn_with_state(state.clone(), admission));

    // Routes without a credential. The token endpoint authenticates its
    // clients itself (RFC 6749), has its own strict limit, and is audited.
    let public = Router::new()
        .route(LIVE, get(routes::live))
        .route(READY, get(routes::ready))
        .route(OPENAPI, get(routes::openapi))
        .route("/oauth/token", post(oauth::token))
        .route(JWKS, get(oauth::jwks))
        .route(OAUTH_METADATA, get(oauth::metadata));
    let public = if state.docs {
        public
            .route(DOCS, get(crate::docs::index))
            .route(DOCS_ASSET, get(crate::docs::asset))
    } else {
        public
    };
    #[cfg(test)]
    let public = public.route("/__panic", get(tests::panic_route));

    with_edge(
        public.merge(protected),
        state,
        steps::Plane::Data,
        Transport::Http,
    )
}

/// The gRPC listener's router (docs/grpc.md): the Open Inference
/// Protocol's gRPC service behind the same edge and admission stages as
/// the data plane (it is the data plane, over another protocol). Liveness,
/// readiness and `grpc.health.v1` take no credential, as their REST
/// counterparts; every other call needs one.
pub fn grpc_plane(state: AppState, max_message: usize, reflection: bool) -> Router {
    let service = warden_oip::GrpcInferenceServiceServer::new(grpc::Inference::new(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let (_, health) = tonic_health::server::health_reporter();
    let protected = Router::new().route_service(GRPC_CALLS, service.clone());
    // Server reflection (grpcurl and similar) only when configured, and
    // only to callers with a credential.
    let protected = if reflection {
        grpc::with_reflection(protected)
    } else {
        protected
    };
    let protected = protected.route_layer(from_fn_with_state(state.clone(), admission));
    let public = Router::new()
        .route_service(GRPC_LIVE, service.clone())
        .route_service(GRPC_READY, service)
        .route_service(GRPC_HEALTH, health);
    with_edge(
        public.merge(protected),
        state,
        steps::Plane::Data,
        Transport::Grpc,
    )
}

const GRPC_CALLS: &str = "/inference.GRPCInferenceService/{call}";
const GRPC_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const V2_INFER: &str = "/v2/models/{model}/infer";
const V2_INFER_VERSION: &str = "/v2/models/{model}/versions/{version}/infer";
const V1_PREDICT: &str = "/v1/models/{model}";

/// Whether the request is an inference call, charged in rows: admission
/// then leaves its `default` charge to the inference step
/// ([`steps::DeferredDefault`]).
fn charges_rows(req: &Request) -> bool {
    match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some(V2_INFER | V2_INFER_VERSION | V1_PREDICT) => true,
        Some(GRPC_CALLS) => req.uri().path() == GRPC_INFER,
        _ => false,
    }
}
const GRPC_LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
const GRPC_READY: &str = "/inference.GRPCInferenceService/ServerReady";
const GRPC_HEALTH: &str = "/grpc.health.v1.Health/{call}";

/// The management-plane router (its own listener, docs/api.md): the same edge
/// and admission stages, then the admin handlers, which check admin
/// permissions.
pub fn management_plane(state: AppState) -> Router {
    let protected = admin::routes().route_layer(from_fn_with_state(state.clone(), admission));
    // The console's page and assets need no credential (console.rs); the
    // page then calls the protected routes with the operator's.
    let public = Router::new()
        .route(LIVE, get(routes::live))
        .route(CONSOLE, get(crate::console::index))
        .route(CONSOLE_ASSET, get(crate::console::asset));
    with_edge(
        public.merge(protected),
        state,
        steps::Plane::Management,
        Transport::Http,
    )
}

const LIVE: &str = "/v2/health/live";
const READY: &str = "/v2/health/ready";
const OPENAPI: &str = "/openapi.json";
const DOCS: &str = "/docs";
const DOCS_ASSET: &str = "/docs/{asset}";
const JWKS: &str = "/.well-known/jwks.json";
const OAUTH_METADATA: &str = "/.well-known/oauth-authorization-server";
const CONSOLE: &str = "/console";
const CONSOLE_ASSET: &str = "/console/{asset}";

/// The routes that take no credential and so leave no audit record; every
/// other matched route reaches authentication (admission, or the token
/// endpoint's own) and is audited.
pub(crate) const UNAUDITED: [&str; 12] = [
    LIVE,
    CONSOLE,
    CONSOLE_ASSET,
    READY,
    OPENAPI,
    DOCS,
    DOCS_ASSET,
    JWKS,
    OAUTH_METADATA,
    GRPC_LIVE,
    GRPC_READY,
    GRPC_HEALTH,
];

fn with_edge(
    router: Router<AppState>,
    state: AppState,
    plane: steps::Plane,
    transport: Transport,
) -> Router {
    let router = match transport {
        Transport::Http => router.fallback(routes::not_found),
        // gRPC says UNIMPLEMENTED for a service or method it does not have.
        Transport::Grpc => router.fallback(grpc::unknown_call),
    };
    router
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(from_fn_with_state(state.clone(), edge))
        // Credentials are marked sensitive before anything could log headers.
        .layer(SetSensitiveRequestHeadersLayer::new(sensitive_headers()))
        // Which listener: bans and the in-flight cap are kept per plane;
        // errors are rendered in the listener's protocol.
        .layer(axum::Extension(plane))
        .layer(axum::Extension(transport))
        .with_state(state)
}

fn sensitive_headers() -> [HeaderName; 4] {
    [
        AUTHORIZATION,
        PROXY_AUTHORIZATION,
        COOKIE,
        HeaderName::from_static("x-api-key"),
    ]
}

/// The edge: every request, matched route or not.
async fn edge(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Request id first, so every later step and every response has one.
    let id = steps::assign_request_id(&mut req);
    // Client address, for the ban check, limits and logs.
    let Some(client) = steps::client_address(&state, &mut req) else {
        tracing::error!("request without a peer address");
        return ApiError::internal().into_response();
    };
    let line = AccessLine::start(&req, id, client, started);
    // The in-flight cap of this listener: past it, shed at once rather than
    // queue (the management plane has its own, so a data-plane flood cannot
    // take the management API down with it).
    let in_flight = match req.extensions().get::<steps::Plane>() {
        Some(steps::Plane::Management) => &state.admin_in_flight,
        _ => &state.in_flight,
    };
    let Ok(_in_flight) = in_flight.try_acquire() else {
        let shed = ApiError::new(ErrorCode::Overloaded).with_retry_after(1);
        return steps::respond(&state, shed.into_response(), line);
    };
    // A gRPC call notes its model and outcome here (grpc.rs), and may ask
    // for an earlier deadline than the server's.
    let grpc = (line.transport() == Transport::Grpc).then(grpc::CallNote::default);
    let deadline = grpc
        .as_ref()
        .and_then(|_| grpc::grpc_timeout(req.headers()))
        .map_or(state.limits.request_timeout, |asked| {
            asked.min(state.limits.request_timeout)
        });
    if let Some(note) = &grpc {
        req.extensions_mut().insert(note.clone());
    }
    let response = match steps::body_limit(&state, &req) {
        // Oversized declared bodies are refused before anything reads them.
        Err(e) => e.into_response(),
        // Deadline for the whole request, body reading included; a panic
        // anywhere inside becomes `internal`, never a dropped connection.
        Ok(()) => steps::guarded(deadline, next.run(req)).await,
    };
    let response = match &grpc {
        Some(note) => note.finish(response),
        None => response,
    };
    // Audit record: every request that reached authentication, whatever its
    // outcome — cut by the deadline or a panic included, which is why it is
    // written here and not inside admission. In sync mode the response
    // waits for the commit.
    let response = if steps::is_audited(&line) {
        steps::audit(&state, &line, response).await
    } else {
        response
    };
    // Respond: metrics, error envelope, security headers, access log.
    steps::respond(&state, response, line)
}

/// Admission, for routes that need a credential. The principal's id goes
/// on the response (`PrincipalNote`) for the audit record and the access log.
async fn admission(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // Ban check first: a banned client's credential is never even looked at.
    let client = req.extensions().get().copied();
    let plane = req.extensions().get().copied().unwrap_or_default();
    if let Err(e) = steps::ban_check(&state, plane, client).await {
        return e.into_response();
    }
    // Authenticate: credential → Principal in the request extensions.
    let certificate = req.extensions().get::<ClientCertificate>();
    let principal =
        match steps::authenticate(&state, req.headers(), certificate, plane, client).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
    let id = PrincipalNote(principal.id.clone());
    // Fair share: one principal's requests in flight are capped, so a key
    // holding slow requests cannot take every slot of the listener.
    let _slot = match steps::principal_slot(&state, &principal) {
        Ok(slot) => slot,
        Err(e) => {
            let mut response = e.into_response();
            response.extensions_mut().insert(id);
            return response;
        }
    };
    // Rate limit after authentication, so limits are per principal and an
    // unauthenticated burst gets 401s, not 429s. An inference call's
    // `default` charge goes with its rows, in the inference step (one round
    // trip to shared state); taken here afterwards if the call ended first.
    let mut response = if charges_rows(&req) {
        let deferred =
            steps::DeferredDefault::new(state.limiter.rate_for("default", Some(&principal)));
        req.extensions_mut().insert(principal);
        req.extensions_mut().insert(deferred.clone());
        let mut response = next.run(req).await;
        if deferred.claim() {
            match steps::rate_limit_as(&state, &id.0, deferred.rate).await {
                Ok(rate) => {
                    steps::add_rate_headers(response.headers_mut(), &rate);
                    response
                }
                Err(e) => {
                    // Refused: the refusal replaces the answer; what the
                    // handler noted (the model) stays for the audit record.
                    let mut refused = e.into_response();
                    if let Some(note) = response.extensions_mut().remove::<steps::ModelNote>() {
                        refused.extensions_mut().insert(note);
                    }
                    refused
                }
            }
        } else {
            response
        }
    } else {
        match steps::rate_limit(&state, &principal).await {
            Ok(rate) => {
                req.extensions_mut().insert(principal);
                let mut response = next.run(req).await;
                steps::add_rate_headers(response.headers_mut(), &rate);
                response
            }
            Err(e) => e.into_response(),
        }
    };
    response.extensions_mut().insert(id);
    response
}

/// What a caller wants to do with a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Run inference: `predict:<model>` or `predict:*`.
    Predict,
    /// Read metadata and readiness: `models:read`, or predict on the model.
    Read,
}

/// Step: authorize. The model must exist and the principal must be allowed
/// `access` to it; an unknown model and a forbidden one are the same
/// `not_found`, so callers cannot probe for model names.
pub fn authorize(
    state: &AppState,
    caller: &Principal,
    name: &str,
    version: Option<&str>,
    access: Access,
) -> Result<(Arc<Model>, Arc<ModelVersion>), ApiError> {
    let allowed = match access {
        Access::Predict => caller.may_predict(name),
        Access::Read => caller.may_read_model(name),
    };
    if !allowed {
        return Err(ApiError::not_found());
    }
    let model = state.repository.get(name).ok_or_else(ApiError::not_found)?;
    let version = Arc::clone(model.version(version).ok_or_else(ApiError::not_found)?);
    Ok((model, version))
}

/// One inference request as the handlers hand it to [`infer`].
#[derive(Debug, Clone, Copy)]
pub struct ModelCall<'a> {
    /// The model named in the path.
    pub name: &'a str,
    /// The version named in the path, if any.
    pub version: Option<&'a str>,
    /// The wire protocol of the body.
    pub protocol: Protocol,
    /// The body, already read within the limit.
    pub body: &'a [u8],
    /// v2 binary tensor data extension: the JSON header's length
    /// (`Inference-Header-Content-Length`); the rest of the body is tensor data.
    pub binary_header: Option<usize>,
    /// The `default` charge admission left to this call.
    pub default: Option<&'a steps::DeferredDefault>,
}

/// The model half of the pipeline over HTTP, shared by v1 and v2: the
/// transport-neutral [`service::infer`], its answer rendered in the
/// request's protocol, with the rate-limit and quota headers.
pub async fn infer(state: &AppState, caller: &Principal, call: ModelCall<'_>) -> Response {
    let ModelCall {
        name,
        version,
        protocol,
        body,
        binary_header,
        default,
    } = call;
    let payload = match (protocol, binary_header) {
        (Protocol::V1, _) => Payload::V1(body),
        (Protocol::V2, None) => Payload::V2(body),
        (Protocol::V2, Some(header)) => Payload::V2Binary { body, header },
    };
    let request = service::InferRequest {
        model: name,
        version,
        payload,
        default,
    };
    let mut note = None;
    let served = service::infer(state, caller, request, &mut note, |answer| match protocol {
        Protocol::V1 => protocol::v1_response(&answer.model.card, answer.shown),
        Protocol::V2 => {
            protocol::v2_response(answer.model, answer.version, answer.id, answer.shown)
        }
    })
    .await;
    let mut response = match served {
        Ok(served) => {
            let mut response = routes::json(served.body);
            served.charge.add_headers(response.headers_mut());
            response
        }
        Err(e) => e.into_response(),
    };
    if let Some(note) = note {
        response.extensions_mut().insert(note);
    }
    response
}
