//! The plaintext listener (`server.redirect_listen`): it serves nothing but
//! a `308 Permanent Redirect` to the same host and path over HTTPS, so that
//! a client that typed `http://` is sent to TLS before anything else
//! happens. No route, credential or body is ever handled in clear.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, HOST, LOCATION};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

/// The redirecting router, for an HTTPS data plane on `https_port`.
pub fn router(https_port: u16) -> Router {
    Router::new().fallback(move |req: Request| async move { redirect(&req, https_port) })
}

fn redirect(req: &Request, https_port: u16) -> Response {
    // HTTP/1.1 sends Host; HTTP/2 (h2c) sends :authority, in the URI.
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .and_then(host_name);
    let Some(host) = host else {
        return plain(StatusCode::BAD_REQUEST);
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .chars()
        .take(2048)
        .collect::<String>();
    let path = if path.starts_with('/') {
        path
    } else {
        "/".into()
    };
    match HeaderValue::from_str(&format!("https://{host}{port}{path}")) {
        Ok(location) => {
            let mut r = plain(StatusCode::PERMANENT_REDIRECT);
            r.headers_mut().insert(LOCATION, location);
            r
        }
        Err(_) => plain(StatusCode::BAD_REQUEST),
    }
}

fn plain(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The host of a `Host` header without its port, if it is a DNS name or an
/// IP literal (anything else could smuggle a different URL into `Location`).
fn host_name(header: &str) -> Option<&str> {
    let host = if let Some(rest) = header.strip_prefix('[') {
        let end = rest.find(']')?;
        let literal = &header[..end + 2];
        let inner = &rest[..end];
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        let tail = &rest[end + 1..];
        if !(tail.is_empty() || port_suffix(tail)) {
            return None;
        }
        return Some(literal);
    } else {
        match header.rsplit_once(':') {
            Some((h, p)) if port_suffix(&format!(":{p}")) => h,
            Some(_) => return None,
            None => header,
        }
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(host)
}

fn port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn location(host: Option<&str>, uri: &str) -> (StatusCode, Option<String>) {
        let mut req = Request::builder().uri(uri);
        if let Some(h) = host {
            req = req.header(HOST, h);
        }
        let r = router(8443)
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let loc = r
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status(), loc)
    }

    #[tokio::test]
    async fn everything_is_sent_to_https_on_the_same_host() {
        for (host, uri, want) in [
            (
                "example.com",
                "/v1/models/iris:predict?x=1",
                "https://example.com:8443/v1/models/iris:predict?x=1",
            ),
            ("example.com:80", "/", "https://example.com:8443/"),
            ("127.0.0.1:8080", "/v2", "https://127.0.0.1:8443/v2"),
            ("[::1]:8080", "/v2", "https://[::1]:8443/v2"),
        ] {
            assert_eq!(
                location(Some(host), uri).await,
                (StatusCode::PERMANENT_REDIRECT, Some(want.to_owned())),
                "{host}"
            );
        }
    }

    #[tokio::test]
    async fn hosts_that_could_forge_the_location_are_refused() {
        for host in [
            "evil.com/x",
            "a@b",
            "example.com:80:80",
            "[::1",
            "[nothex]:1",
            "ex ample",
            "x:y",
        ] {
            assert_eq!(
                location(Some(host), "/").await,
                (StatusCode::BAD_REQUEST, None),
                "{host}"
            );
        }
        assert_eq!(location(None, "/").await.0, StatusCode::BAD_REQUEST);
    }
}
