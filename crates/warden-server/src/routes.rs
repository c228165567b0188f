//! The data-plane handlers (docs/api.md). Inference handlers only adapt the
//! route to `pipeline::infer`, where the model half of the pipeline lives.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use warden_core::{ApiError, ErrorCode, Principal};
use warden_models::policy::OutputPolicy;
use warden_models::{Model, Protocol, protocol};

use crate::extract::{Caller, Deferred, JsonBody, ModelRef, V2Body};
use crate::openapi::{
    ErrorBody, InferErrors, LiveBody, ModelMetadata, ModelReady, ReadyBody, ServerMetadata,
    V1Request, V1Response, V2InferRequest, V2InferResponse,
};
use crate::pipeline::{self, ModelCall};
use crate::state::AppState;
use crate::steps::ModelNote;

/// A 200 JSON response from already-serialized bytes.
pub(crate) fn json(body: impl Into<Bytes>) -> Response {
    let mut r = Response::new(axum::body::Body::from(body.into()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Liveness.
#[utoipa::path(get, path = "/v2/health/live", tag = "health", responses((status = 200, body = LiveBody)))]
pub async fn live() -> Response {
    json(&br#"{"live":true}"#[..])
}

/// Readiness: every model in the repository is loaded once the server listens.
#[utoipa::path(get, path = "/v2/health/ready", tag = "health", responses((status = 200, body = ReadyBody)))]
pub async fn ready() -> Response {
    json(&br#"{"ready":true}"#[..])
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    json(state.openapi.clone())
}

/// Server metadata (any valid credential).
#[utoipa::path(get, path = "/v2", tag = "meta",
    responses((status = 200, body = ServerMetadata), (status = 401, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn server_metadata(Caller(_): Caller) -> Response {
    json(format!(
        r#"{{"name":"warden","version":"{}","extensions":[]}}"#,
        env!("CARGO_PKG_VERSION")
    ))
}

/// Model metadata: inputs, outputs, shapes, datatypes, features and classes.
#[utoipa::path(get, path = "/v2/models/{model}", tag = "models",
    params(("model" = String, Path, description = "Model name")),
    responses((status = 200, body = ModelMetadata), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn model_metadata(
    State(state): State<AppState>,
    Caller(caller): Caller,
    target: ModelRef,
) -> Result<Response, ApiError> {
    let (model, note) = readable_model(&state, &caller, &target)?;
    let policy = OutputPolicy::for_caller(&model.card, &caller);
    Ok(noted(json(protocol::v2_metadata(&model, &policy)), note))
}

/// Authorizes reading a model's metadata (unknown or forbidden → the same
/// 404) and notes the model and version for the access log.
fn readable_model(
    state: &AppState,
    caller: &Principal,
    target: &ModelRef,
) -> Result<(Arc<Model>, ModelNote), ApiError> {
    let (model, version) = pipeline::authorize(
        state,
        caller,
        &target.name,
        target.version.as_deref(),
        pipeline::Access::Read,
    )?;
    let note = ModelNote {
        model: model.name.as_str().into(),
        version: version.version,
        rows: 0,
        input_sha256: None,
        inputs: None,
        defense_flags: Vec::new(),
    };
    Ok((model, note))
}

fn noted(mut response: Response, note: ModelNote) -> Response {
    response.extensions_mut().insert(note);
    response
}

/// Metadata of one version.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "models",
    params(("model" = String, Path, description = "Model name"), ("version" = String, Path, description = "Version number")),
    responses((status = 200, body = ModelMetadata), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn model_version_metadata(
    state: State<AppState>,
    caller: Caller,
    target: ModelRef,
) -> Result<Response, ApiError> {
    model_metadata(state, caller, target).await
}

/// Model readiness.
#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "models",
    params(("model" = String, Path, description = "Model name")),
    responses((status = 200, body = ModelReady), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn model_ready(
    State(state): State<AppState>,
    Caller(caller): Caller,
    target: ModelRef,
) -> Result<Response, ApiError> {
    let (model, note) = readable_model(&state, &caller, &target)?;
    // A local model is ready once loaded; a gateway model while its
    // upstream takes calls (breaker closed).
    let ready = model
        .version(target.version.as_deref())
        .is_some_and(|v| v.backend.ready());
    let body = serde_json::json!({"name": model.name, "ready": ready});
    Ok(noted(json(body.to_string()), note))
}

/// Readiness of one version.
#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "models",
    params(("model" = String, Path, description = "Model name"), ("version" = String, Path, description = "Version number")),
    responses((status = 200, body = ModelReady), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn model_version_ready(
    state: State<AppState>,
    caller: Caller,
    target: ModelRef,
) -> Result<Response, ApiError> {
    model_ready(state, caller, target).await
}

/// Open Inference Protocol (KServe v2) inference.
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "inference",
    params(("model" = String, Path, description = "Model name"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Binary tensor data extension: the length of the JSON header; the rest of the body is raw little-endian tensor data, claimed by inputs with parameters.binary_data_size (docs/api.md)")),
    request_body(content = V2InferRequest, content_type = "application/json"),
    responses(
        (status = 200, body = V2InferResponse),
        InferErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn v2_infer(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Deferred(default): Deferred,
    target: ModelRef,
    body: V2Body,
) -> Response {
    let call = ModelCall {
        name: &target.name,
        version: target.version.as_deref(),
        protocol: Protocol::V2,
        body: &body.bytes,
        binary_header: body.binary_header,
        default: default.as_ref(),
    };
    pipeline::infer(&state, &caller, call).await
}

/// Inference on one version.
#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "inference",
    params(("model" = String, Path, description = "Model name"), ("version" = String, Path, description = "Version number"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Binary tensor data extension: the length of the JSON header; the rest of the body is raw little-endian tensor data, claimed by inputs with parameters.binary_data_size (docs/api.md)")),
    request_body(content = V2InferRequest, content_type = "application/json"),
    responses(
        (status = 200, body = V2InferResponse),
        InferErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn v2_infer_version(
    state: State<AppState>,
    caller: Caller,
    default: Deferred,
    target: ModelRef,
    body: V2Body,
) -> Response {
    v2_infer(state, caller, default, target, body).await
}

/// KServe v1 / TF-Serving style prediction. The path is `/v1/models/{model}:predict`.
#[utoipa::path(post, path = "/v1/models/{model}:predict", tag = "inference",
    params(("model" = String, Path, description = "Model name")),
    request_body(content = V1Request, content_type = "application/json"),
    responses(
        (status = 200, body = V1Response),
        InferErrors,
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn v1_predict(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Deferred(default): Deferred,
    target: ModelRef,
    JsonBody(body): JsonBody,
) -> Response {
    // The route is `/v1/models/{model}`; the segment must end in `:predict`.
    match target.name.strip_suffix(":predict") {
        Some(name) => {
            let call = ModelCall {
                name,
                version: None,
                protocol: Protocol::V1,
                body: &body,
                binary_header: None,
                default: default.as_ref(),
            };
            pipeline::infer(&state, &caller, call).await
        }
        None => ApiError::not_found().into_response(),
    }
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ErrorCode::MethodNotAllowed.into()
}
