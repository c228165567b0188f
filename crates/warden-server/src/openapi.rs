//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the schema types below. The schema types document the wire format; the
//! parser in `warden_models::request` is the one that enforces it.

#![allow(
    dead_code,
    reason = "fields exist to be described in the OpenAPI document"
)]

use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2, Scopes,
    SecurityScheme,
};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error envelope every failure has (docs/api.md).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "The input does not match the model's schema.", "code": "validation_failed", "request_id": "5f3a9c1e000000000007", "details": [{"field": "instances[0].petal_length_cm", "problem": "is outside the range this model accepts"}]}))]
pub struct ErrorBody {
    /// A generic sentence.
    error: String,
    /// The stable code: unauthenticated, forbidden, not_found, banned, rate_limited, quota_exceeded, invalid_request, validation_failed, input_rejected, payload_too_large, unsupported_media_type, method_not_allowed, overloaded, upstream_unavailable, internal.
    code: String,
    /// The request id, also in the `x-request-id` header.
    request_id: String,
    /// For validation_failed: the client's fields and what is wrong with each.
    details: Option<Vec<FieldProblemBody>>,
}

/// An OAuth2 access token (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"access_token": "eyJhbGciOiJFZERTQSIsImtpZCI6Ii4uLiJ9...", "token_type": "Bearer", "expires_in": 900, "scope": "predict:* models:read"}))]
pub struct TokenBody {
    /// A JWT signed by Warden (EdDSA), verifiable with `/.well-known/jwks.json`.
    access_token: String,
    /// Always `Bearer`.
    token_type: String,
    /// Seconds until it expires.
    expires_in: u64,
    /// The granted permissions, space-separated.
    scope: String,
}

/// The token request (RFC 6749 §4.4 and §4.3), form-encoded. A client
/// authenticates with `client_id` and `client_secret` here or with HTTP
/// Basic; the password grant takes `username` and `password`. Unknown
/// parameters are ignored (RFC 6749 §3.2).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // Only its schema is used: oauth.rs parses the form itself.
pub struct TokenForm {
    /// The grant.
    grant_type: GrantType,
    /// The OAuth2 client's id (client_credentials).
    #[schema(nullable = false, max_length = 64, example = "reporting")]
    client_id: Option<String>,
    /// The OAuth2 client's secret (client_credentials).
    #[schema(nullable = false, max_length = 1024)]
    client_secret: Option<String>,
    /// The user's name (password grant).
    #[schema(nullable = false, max_length = 64, example = "alice")]
    username: Option<String>,
    /// The user's password (password grant).
    #[schema(nullable = false, max_length = 1024)]
    password: Option<String>,
    /// Space-separated permissions to narrow the token to, e.g. `predict:iris`.
    #[schema(nullable = false, max_length = 1024, example = "predict:iris")]
    scope: Option<String>,
}

/// An OAuth2 grant type Warden's token endpoint takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// A client's own credentials (RFC 6749 §4.4).
    ClientCredentials,
    /// A user's name and password (RFC 6749 §4.3), when `auth.tokens.password_grant` is on.
    Password,
}

/// The token endpoint's error body (RFC 6749 §5.2), which OAuth2 clients parse.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "invalid_client", "error_description": "Client authentication failed.", "request_id": "5f3a9c1e000000000009"}))]
pub struct OAuthErrorBody {
    /// invalid_request, invalid_client, invalid_grant, unsupported_grant_type,
    /// invalid_scope, rate_limited, banned, temporarily_unavailable, server_error.
    error: String,
    /// A generic sentence.
    error_description: String,
    /// The request id, also in the `x-request-id` header.
    request_id: String,
}

/// The errors every inference route can answer.
#[derive(Debug, utoipa::IntoResponses)]
pub enum InferErrors {
    /// Malformed JSON or the wrong request shape.
    #[response(status = 400, description = "invalid_request")]
    InvalidRequest(ErrorBody),
    /// Missing, invalid, revoked or expired credential (with WWW-Authenticate).
    #[response(status = 401, description = "unauthenticated")]
    Unauthenticated(ErrorBody),
    /// Unknown model, or one this credential may not use: the same answer.
    #[response(status = 404, description = "not_found")]
    NotFound(ErrorBody),
    /// Body over the limit.
    #[response(status = 413, description = "payload_too_large")]
    PayloadTooLarge(ErrorBody),
    /// An explicit Content-Type other than JSON.
    #[response(status = 415, description = "unsupported_media_type")]
    UnsupportedMediaType(ErrorBody),
    /// The input breaks the model's schema; `details` names the fields.
    #[response(status = 422, description = "validation_failed, with details")]
    ValidationFailed(ErrorBody),
    /// Too busy, or the request took too long; retry after Retry-After.
    #[response(status = 503, description = "overloaded, with Retry-After")]
    Overloaded(ErrorBody),
}

/// One problem with one input field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldProblemBody {
    field: String,
    problem: String,
}

/// `{"live": true}`
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveBody {
    live: bool,
}

/// `{"ready": true}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    ready: bool,
}

/// Server metadata.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "warden", "version": "0.1.0", "extensions": []}))]
pub struct ServerMetadata {
    name: String,
    version: String,
    extensions: Vec<String>,
}

/// Model readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelReady {
    name: String,
    ready: bool,
}

/// A tensor's description in model metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    name: String,
    datatype: String,
    shape: Vec<i64>,
}

/// Model metadata (Open Inference Protocol, with Warden's parameters).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"name": "iris", "versions": ["1"], "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]}, {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    "parameters": {"description": "Iris species", "max_batch": 64, "features": [{"name": "sepal_length_cm", "min": 3.5, "max": 8.8}], "classes": ["setosa", "versicolor", "virginica"]}}))]
pub struct ModelMetadata {
    name: String,
    versions: Vec<String>,
    platform: String,
    inputs: Vec<TensorMetadata>,
    /// Only the outputs this credential may receive.
    outputs: Vec<TensorMetadata>,
    /// description, task, max_batch, classes, features (a tabular input's
    /// columns, each with its accepted min/max or categories), input_limits
    /// (per input: min/max, ids or categories, max_shape, max_elements).
    parameters: serde_json::Value,
}

/// KServe v1 / TF-Serving request: `instances` (row format: the single
/// input's value per row, an array or object of named features for a
/// tabular model, an object keyed by input name for several inputs) or
/// `inputs` (columnar: the single input's batch, or an object of batches
/// keyed by input name). Exactly one of the two.
#[derive(Debug, Serialize, ToSchema)]
// The parser refuses unknown fields, so the document says so
// (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(example = json!({"instances": [[5.1, 3.5, 1.4, 0.2], {"sepal_length_cm": 6.7, "sepal_width_cm": 3.0, "petal_length_cm": 5.2, "petal_width_cm": 2.3}]}))]
pub struct V1Request {
    instances: Option<Vec<serde_json::Value>>,
    inputs: Option<serde_json::Value>,
    /// Accepted and ignored (TF-Serving clients send it).
    signature_name: Option<String>,
}

/// KServe v1 response: one prediction per row — for a classifier
/// `{"label", "probabilities"?}` (probabilities only when the policy
/// allows), otherwise the output's row value, or an object of the outputs
/// shown.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"predictions": [{"label": "setosa", "probabilities": {"setosa": 1.0, "versicolor": 0.0, "virginica": 0.0}}]}))]
pub struct V1Response {
    predictions: Vec<serde_json::Value>,
}

/// An input tensor. `data` may be flat or nested; its length must equal the product of `shape`.
#[derive(Debug, Serialize, ToSchema)]
// The parser refuses unknown fields, so the document says so
// (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct V2Input {
    name: String,
    /// The tensor's dimensions, the batch first.
    shape: Vec<i64>,
    /// BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 or BYTES: the
    /// card's (an FP input also takes other number datatypes).
    datatype: String,
    /// `binary_data_size`: the tensor's values are that many bytes of the
    /// binary part (with `Inference-Header-Content-Length`); others are
    /// accepted and ignored.
    parameters: Option<serde_json::Value>,
    /// The values, flat or nested, row-major; absent when they are in the
    /// binary part.
    data: Option<serde_json::Value>,
}

/// A requested output.
#[derive(Debug, Serialize, ToSchema)]
// The parser refuses unknown fields, so the document says so
// (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct V2RequestedOutput {
    /// An output of the model (metadata lists those this credential may see).
    name: String,
    parameters: Option<serde_json::Value>,
}

/// Open Inference Protocol inference request.
#[derive(Debug, Serialize, ToSchema)]
// The parser refuses unknown fields, so the document says so
// (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "req-1", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}))]
pub struct V2InferRequest {
    /// Echoed in the response.
    id: Option<String>,
    /// Accepted and ignored (KServe's client sends it): the path names the model.
    model_name: Option<String>,
    /// Accepted and ignored.
    parameters: Option<serde_json::Value>,
    /// One tensor per input of the model.
    #[schema(min_items = 1)]
    inputs: Vec<V2Input>,
    outputs: Option<Vec<V2RequestedOutput>>,
}

/// An output tensor.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2Output {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    data: Vec<serde_json::Value>,
}

/// Open Inference Protocol inference response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"model_name": "iris", "model_version": "1", "id": "req-1", "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["setosa"]}, {"name": "probabilities", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 0.0, 0.0]}]}))]
pub struct V2InferResponse {
    model_name: String,
    model_version: String,
    id: Option<String>,
    outputs: Vec<V2Output>,
}

#[derive(Debug)]
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A Warden API key, wdn_<id>_<secret>",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Authorization: Bearer <API key or JWT> (a token from /oauth/token or a configured issuer)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::with_description(
                [Flow::ClientCredentials(ClientCredentials::new(
                    "/oauth/token",
                    Scopes::from_iter([
                        ("predict:*", "inference on every model the role allows"),
                        ("models:read", "model metadata"),
                        ("metrics:read", "Prometheus metrics"),
                    ]),
                ))],
                "OAuth2 client credentials (and the password grant for users) at /oauth/token",
            )),
        );
    }
}

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Warden", description = "A secure-by-default model server and ML security gateway."),
    paths(
        crate::routes::live,
        crate::routes::ready,
        crate::routes::openapi,
        crate::docs::index,
        crate::docs::asset,
        crate::routes::server_metadata,
        crate::routes::model_metadata,
        crate::routes::model_version_metadata,
        crate::routes::model_ready,
        crate::routes::model_version_ready,
        crate::routes::v2_infer,
        crate::routes::v2_infer_version,
        crate::routes::v1_predict,
        crate::oauth::token,
        crate::oauth::jwks,
        crate::oauth::metadata,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Open Inference Protocol health, no credential"),
        (name = "meta", description = "Server metadata, this document and its offline docs page"),
        (name = "models", description = "Model metadata and readiness"),
        (name = "inference", description = "Predictions, v1 and v2 protocols"),
        (name = "oauth", description = "OAuth2 token endpoint (RFC 6749), its JWKS and RFC 8414 metadata"),
    )
)]
pub struct ApiDoc;

/// The document as JSON bytes (built once at start).
pub fn document() -> Vec<u8> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json()
        .map(String::into_bytes)
        .unwrap_or_default()
}
