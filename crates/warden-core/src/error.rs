//! The one table of stable error codes, their HTTP statuses and generic
//! sentences, and the flat error envelope of docs/api.md.
//!
//! A code is never renamed or reused. Handlers return [`ApiError`]; its
//! `IntoResponse` only records the error in the response extensions, and the
//! outermost layer of the pipeline renders the envelope with the request id
//! (so every error, including the router's own 404/405 and caught panics,
//! gets the same body). Library errors never reach a message: messages are
//! `&'static str` written here or by Warden's own code.

use std::borrow::Cow;

use axum_core::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};
use serde::Serialize;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => ($code:literal, $status:expr, $grpc:ident, $sentence:literal), )*) => {
        /// Stable, client-visible error codes (docs/api.md).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire code, e.g. `"rate_limited"`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status this code is always sent with.
            pub const fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// The gRPC status this code is sent with over gRPC (docs/api.md,
            /// "Errors").
            pub const fn grpc(self) -> GrpcCode {
                match self { $(ErrorCode::$variant => GrpcCode::$grpc,)* }
            }

            /// The generic sentence used when no more specific one is given.
            pub const fn sentence(self) -> &'static str {
                match self { $(ErrorCode::$variant => $sentence,)* }
            }
        }
    };
}

error_codes! {
    /// Missing, invalid, revoked or expired credential.
    Unauthenticated => ("unauthenticated", StatusCode::UNAUTHORIZED, Unauthenticated, "A valid credential is required."),
    /// Authenticated but not allowed (admin routes).
    Forbidden => ("forbidden", StatusCode::FORBIDDEN, PermissionDenied, "This credential is not allowed to do that."),
    /// Unknown route, unknown model, or a model the principal may not use.
    NotFound => ("not_found", StatusCode::NOT_FOUND, NotFound, "Not found."),
    /// Client banned after repeated authentication failures.
    Banned => ("banned", StatusCode::FORBIDDEN, PermissionDenied, "Too many failed authentications; try again later."),
    /// Rate limit exceeded.
    RateLimited => ("rate_limited", StatusCode::TOO_MANY_REQUESTS, ResourceExhausted, "Rate limit exceeded; try again later."),
    /// Query budget exhausted.
    QuotaExceeded => ("quota_exceeded", StatusCode::TOO_MANY_REQUESTS, ResourceExhausted, "Quota exhausted for this period."),
    /// Malformed JSON or wrong request shape.
    InvalidRequest => ("invalid_request", StatusCode::BAD_REQUEST, InvalidArgument, "The request is malformed."),
    /// Well-formed request whose values break the model's schema.
    ValidationFailed => ("validation_failed", StatusCode::UNPROCESSABLE_ENTITY, InvalidArgument, "The input does not match the model's schema."),
    /// A defense refused the input.
    InputRejected => ("input_rejected", StatusCode::UNPROCESSABLE_ENTITY, InvalidArgument, "The input was rejected."),
    /// Body over the configured limit.
    PayloadTooLarge => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE, ResourceExhausted, "The request body is too large."),
    /// Explicit non-JSON content type.
    UnsupportedMediaType => ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE, InvalidArgument, "Request bodies must be JSON (application/json)."),
    /// Route exists, method does not.
    MethodNotAllowed => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED, Unimplemented, "Method not allowed on this route."),
    /// Too busy; retry later.
    Overloaded => ("overloaded", StatusCode::SERVICE_UNAVAILABLE, Unavailable, "The server is busy; try again shortly."),
    /// Upstream model server failed (gateway mode).
    UpstreamUnavailable => ("upstream_unavailable", StatusCode::BAD_GATEWAY, Unavailable, "The model server is unavailable."),
    /// Upstream model server timed out (gateway mode); same wire code, status 504.
    UpstreamTimeout => ("upstream_unavailable", StatusCode::GATEWAY_TIMEOUT, DeadlineExceeded, "The model server did not answer in time."),
    /// Anything else. Details go to the log only.
    Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR, Internal, "Internal error."),
}

/// The gRPC status codes Warden answers with (their numbers are gRPC's,
/// <https://grpc.github.io/grpc/core/md_doc_statuscodes.html>), kept here
/// so that the error table needs no gRPC library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GrpcCode {
    /// 0
    Ok = 0,
    /// 1: the client cancelled.
    Cancelled = 1,
    /// 3
    InvalidArgument = 3,
    /// 4
    DeadlineExceeded = 4,
    /// 5
    NotFound = 5,
    /// 7
    PermissionDenied = 7,
    /// 8
    ResourceExhausted = 8,
    /// 12
    Unimplemented = 12,
    /// 13
    Internal = 13,
    /// 14
    Unavailable = 14,
    /// 16
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The number sent as `grpc-status`.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The name gRPC gives the code, e.g. `RESOURCE_EXHAUSTED`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Cancelled => "CANCELLED",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::NotFound => "NOT_FOUND",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// One problem with one of the client's own input fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldProblem {
    /// The client's field, e.g. `instances[0].petal_length_cm`.
    pub field: String,
    /// What is wrong with it, in Warden's words.
    pub problem: Cow<'static, str>,
}

impl FieldProblem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// A generic sentence; never library error text.
    pub message: Cow<'static, str>,
    /// Field problems (only for `validation_failed`).
    pub details: Vec<FieldProblem>,
    /// Seconds for `Retry-After` (banned, rate_limited, quota_exceeded, overloaded).
    pub retry_after: Option<u64>,
    /// Extra response headers (e.g. `RateLimit-Policy` and `RateLimit`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with the code's generic sentence.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: Cow::Borrowed(code.sentence()),
            details: Vec::new(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// The same error with an extra response header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The same error with a more specific sentence of Warden's own.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// A `validation_failed` error listing the client's fields.
    pub fn validation(details: Vec<FieldProblem>) -> Self {
        Self {
            details,
            ..Self::new(ErrorCode::ValidationFailed)
        }
    }

    /// The same error with a `Retry-After` in seconds.
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// Shorthands for the common cases.
    pub fn unauthenticated() -> Self {
        Self::new(ErrorCode::Unauthenticated)
    }
    /// `not_found` with the generic sentence.
    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound)
    }
    /// `invalid_request` with a specific sentence.
    pub fn invalid_request(message: &'static str) -> Self {
        Self::new(ErrorCode::InvalidRequest).with_message(message)
    }
    /// `internal`: the caller logs the cause before returning this.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal)
    }

    /// The envelope body: `{"error", "code", "request_id"[, "details"]}`.
    pub fn to_body(&self, request_id: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: &'a str,
            code: &'static str,
            request_id: &'a str,
            #[serde(skip_serializing_if = "<[FieldProblem]>::is_empty")]
            details: &'a [FieldProblem],
        }
        let envelope = Envelope {
            error: &self.message,
            code: self.code.as_str(),
            request_id,
            details: &self.details,
        };
        // Serializing plain strings into a Vec cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code)
    }
}

/// Marker carried in response extensions: the body is rendered by the
/// pipeline's outermost layer, which knows the request id.
#[derive(Debug, Clone)]
pub struct PendingError(pub ApiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.code.status().into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.code == ErrorCode::Unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="warden", ApiKey header="X-API-Key""#),
            );
        }
        for (name, value) in &self.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response.extensions_mut().insert(PendingError(self));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_spec() {
        let expected = [
            ("unauthenticated", 401),
            ("forbidden", 403),
            ("not_found", 404),
            ("banned", 403),
            ("rate_limited", 429),
            ("quota_exceeded", 429),
            ("invalid_request", 400),
            ("validation_failed", 422),
            ("input_rejected", 422),
            ("payload_too_large", 413),
            ("unsupported_media_type", 415),
            ("method_not_allowed", 405),
            ("overloaded", 503),
            ("upstream_unavailable", 502),
            ("upstream_unavailable", 504),
            ("internal", 500),
        ];
        let actual: Vec<_> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.status().as_u16()))
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn envelope_is_flat_and_details_only_when_present() {
        let body = ApiError::not_found().to_body("req-1");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "Not found.", "code": "not_found", "request_id": "req-1"})
        );
        let body =
            ApiError::validation(vec![FieldProblem::new("instances[0].x", "is NaN")]).to_body("r");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["details"][0]["field"], "instances[0].x");
        assert_eq!(v["code"], "validation_failed");
    }

    #[test]
    fn into_response_sets_status_and_headers() {
        let r = ApiError::new(ErrorCode::RateLimited)
            .with_retry_after(7)
            .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        assert!(r.extensions().get::<PendingError>().is_some());
        let r = ApiError::unauthenticated().into_response();
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
