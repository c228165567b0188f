//! Warden's own extractors, whose rejections are Warden errors, so that a
//! malformed request gets the same envelope as everything else.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::HeaderName;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use warden_core::{ApiError, ErrorCode, Principal};

use crate::state::AppState;

/// A JSON request body, read up to the body limit. A missing
/// `Content-Type` is read as JSON (Open Inference Protocol clients send
/// none); any explicit type other than `application/json` or `*+json` is
/// `unsupported_media_type`.
#[derive(Debug)]
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE)
            && !is_json(ct.to_str().unwrap_or_default())
        {
            return Err(ErrorCode::UnsupportedMediaType.into());
        }
        read_body(req, state).await.map(Self)
    }
}

/// Reads the body up to the limit. A declared length over the limit was
/// refused by the edge's body-limit step; here the limit holds for bodies
/// that declared none.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(req.into_body(), state.limits.body_limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) if is_length_limit(&e) => Err(ErrorCode::PayloadTooLarge.into()),
        Err(e) if caused_by::<crate::listener::pacing::BodyTooSlow>(&e) => Err(
            ApiError::invalid_request("The request body arrived too slowly."),
        ),
        Err(_) => Err(ApiError::invalid_request(
            "The request body could not be read.",
        )),
    }
}

static INFERENCE_HEADER_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

/// A v2 inference body: JSON, or (with `Inference-Header-Content-Length`)
/// the binary tensor data extension, a JSON header followed by raw tensor
/// bytes, which tritonclient and KServe's client send by default. With the
/// header, `application/octet-stream` (KServe's client) is accepted as well
/// as a JSON type or none (tritonclient).
#[derive(Debug)]
pub struct V2Body {
    /// The whole body.
    pub bytes: Bytes,
    /// The JSON header's length, with the binary extension.
    pub binary_header: Option<usize>,
}

impl FromRequest<AppState> for V2Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let mut declared = req
            .headers()
            .get_all(&INFERENCE_HEADER_CONTENT_LENGTH)
            .iter();
        let (first, second) = (declared.next(), declared.next());
        if second.is_some() {
            return Err(ApiError::invalid_request(
                "Inference-Header-Content-Length is given more than once.",
            ));
        }
        let binary_header = match first {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::invalid_request(
                            "Inference-Header-Content-Length must be a byte count.",
                        )
                    })?,
            ),
        };
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default();
            let binary_type = binary_header.is_some() && is_octet_stream(ct);
            if !is_json(ct) && !binary_type {
                return Err(ErrorCode::UnsupportedMediaType.into());
            }
        }
        Ok(Self {
            bytes: read_body(req, state).await?,
            binary_header,
        })
    }
}

fn is_octet_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("application/octet-stream")
}

/// The `Content-Length` the client declared, if any.
pub(crate) fn declared_length(req: &Request) -> Option<usize> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn is_length_limit(e: &axum::Error) -> bool {
    caused_by::<http_body_util::LengthLimitError>(e)
}

/// Whether `E` is in `e`'s chain of sources.
fn caused_by<E: std::error::Error + 'static>(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<E>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// The model (and optional version) named in the path. A path that does not
/// decode is the same `not_found` as an unknown model.
#[derive(Debug)]
pub struct ModelRef {
    /// The `{model}` segment, as sent.
    pub name: String,
    /// The `{version}` segment, if the route has one.
    pub version: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ModelRef {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found())?;
        let mut name = None;
        let mut version = None;
        for (k, v) in params {
            match k.as_str() {
                "model" => name = Some(v),
                "version" => version = Some(v),
                _ => {}
            }
        }
        Ok(Self {
            name: name.ok_or_else(ApiError::not_found)?,
            version,
        })
    }
}

/// One path parameter (a key id, user name, ban subject, asset name). A
/// segment that does not decode (invalid UTF-8 such as an overlong `%c0%ae`)
/// names nothing that exists: the same `not_found` envelope as an unknown
/// name, never axum's plain-text rejection.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|_| ApiError::not_found())
    }
}

/// The authenticated principal, put in the request by the authenticate step.
#[derive(Debug)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.remove::<Principal>() {
            Some(p) => Ok(Self(p)),
            None => {
                tracing::error!(
                    path = parts.uri.path(),
                    "handler reached without the authenticate step"
                );
                Err(ApiError::internal())
            }
        }
    }
}

/// The `default` charge admission left to an inference handler
/// (`steps::DeferredDefault`), if it did.
#[derive(Debug)]
pub struct Deferred(pub Option<crate::steps::DeferredDefault>);

impl<S: Send + Sync> FromRequestParts<S> for Deferred {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get().cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.x+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "json",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
