//! The offline API docs at `/docs`: Swagger UI over `/openapi.json`.
//!
//! Swagger UI's assets are vendored from the npm registry
//! (`scripts/vendor_swagger_ui.sh`, version and integrity in
//! `assets/swagger-ui/VERSION`, licence alongside) and embedded in the
//! binary, so the page needs no CDN and no network at run time. The page is
//! ours, not Swagger UI's `index.html`: its start-up script is a file rather
//! than inline, so the Content-Security-Policy can allow scripts, styles and
//! connections from this origin only.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use warden_core::{ApiError, ErrorCode};

/// The docs pages' policy: everything from this origin only. Images may
/// also be `data:` URIs, which is how Swagger UI's stylesheet carries its
/// icons (an image cannot run script). No inline script, no `eval`, no
/// framing, no form posting elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const INDEX: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Warden API</title>
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"##;

/// Starts Swagger UI on this server's document. Paths are relative to the
/// page, so the docs also work behind a proxy that adds a path prefix.
const INIT: &str = r##""use strict";
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  // No call to the public validator service: nothing leaves this origin.
  validatorUrl: null,
  // Credentials typed into "Authorize" stay in this page only.
  persistAuthorization: false,
  tryItOutEnabled: false,
});
"##;

const BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");
const ICON: &[u8] = include_bytes!("../assets/swagger-ui/favicon-32x32.png");
const LICENSE: &[u8] = include_bytes!("../assets/swagger-ui/LICENSE");

/// The docs page.
#[utoipa::path(get, path = "/docs", tag = "meta",
    responses((status = 200, description = "The API documentation (Swagger UI, served offline)", content_type = "text/html")))]
pub async fn index() -> Response {
    with_type(INDEX.as_bytes(), "text/html; charset=utf-8")
}

/// The docs page's assets: Swagger UI's script and stylesheet, the start-up
/// script, and Swagger UI's licence.
#[utoipa::path(get, path = "/docs/{asset}", tag = "meta",
    params(("asset" = String, Path, description = "swagger-ui-bundle.js, swagger-ui.css, init.js, favicon-32x32.png or LICENSE")),
    responses(
        (status = 200, description = "The asset", content_type = "application/javascript"),
        (status = 404, body = crate::openapi::ErrorBody)))]
pub async fn asset(crate::extract::PathParam(asset): crate::extract::PathParam) -> Response {
    let (body, content_type): (&'static [u8], _) = match asset.as_str() {
        "swagger-ui-bundle.js" => (BUNDLE, "application/javascript; charset=utf-8"),
        "swagger-ui.css" => (CSS, "text/css; charset=utf-8"),
        "init.js" => (INIT.as_bytes(), "application/javascript; charset=utf-8"),
        "favicon-32x32.png" => (ICON, "image/png"),
        "LICENSE" => (LICENSE, "text/plain; charset=utf-8"),
        _ => return ApiError::new(ErrorCode::NotFound).into_response(),
    };
    with_type(body, content_type)
}

fn with_type(body: &'static [u8], content_type: &'static str) -> Response {
    static_asset(body, content_type, CSP)
}

/// An embedded asset with its type and its page's policy (the docs page's
/// or the console's). The edge keeps a handler's own policy (every other
/// response gets `default-src 'none'`). Cache-Control stays `no-store`, as
/// on every response (docs/api.md).
pub(crate) fn static_asset(
    body: &'static [u8],
    content_type: &'static str,
    csp: &'static str,
) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    r
}
