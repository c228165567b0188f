//! In-process tests of the whole pipeline with `tower::ServiceExt::oneshot`:
//! real models, real ONNX Runtime, an in-memory store; no sockets.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;
use warden_auth::{Authenticator, KeyAdmin, NewKey};
use warden_core::Roles;
use warden_models::Repository;
use warden_models::card::CardDefaults;
use warden_models::engine::PoolSettings;
use warden_models::repository::LoadSettings;
use warden_models::runtime::Runtime;
use warden_store::SqliteStore;

use super::data_plane;
use crate::client_addr::PeerAddr;
use crate::state::{AppState, Identity, RequestLimits, Shared};

/// A route that panics, to prove the pipeline turns panics into `internal`.
pub(super) async fn panic_route() -> &'static str {
    panic!("test panic with /secret/path")
}

struct Fixture {
    state: AppState,
    admin: String,
    iris_only: String,
}

fn fixture() -> Fixture {
    fixture_with(1024)
}

fn fixture_with(in_flight: usize) -> Fixture {
    let runtime = Runtime::init(None).expect("ONNX Runtime: run ./scripts/setup.sh");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let repository = Repository::load(
        &models,
        LoadSettings {
            runtime,
            pool: PoolSettings {
                sessions: 1,
                queue: 4,
                queue_timeout: std::time::Duration::from_secs(2),
            },
            card: CardDefaults {
                max_batch: 64,
                range_tolerance: 0.25,
            },
            security: &warden_models::repository::UNSIGNED,
        },
    )
    .unwrap();
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let roles = Arc::new(Roles::builtin());
    let admin = KeyAdmin::new(store.as_ref(), &roles);
    let key = |role: &str, models| {
        admin
            .create(&NewKey {
                name: "t".into(),
                role: role.into(),
                models,
                expires_in: None,
            })
            .unwrap()
            .key
            .to_string()
    };
    let admin_key = key("admin", None);
    let iris_only = key("predict", Some(vec!["iris".into()]));
    let state = AppState(Arc::new(Shared {
        repository: Arc::new(repository),
        authenticator: Arc::new(Authenticator::new(store.clone(), roles.clone())),
        limits: RequestLimits {
            body_limit: 1024 * 1024,
            json_max_depth: 32,
            request_timeout: Duration::from_secs(5),
        },
        trusted_proxies: Vec::new(),
        tls: true,
        access_log: None,
        openapi: crate::openapi::document().into(),
        docs: true,
        identity: Arc::new(Identity {
            store,
            roles,
            key_rotation_grace: Duration::from_secs(60),
            oauth: None,
        }),
        limiter: Arc::new(warden_limits::Limiter::in_memory(
            warden_core::config::Config::default_with(&Default::default())
                .unwrap()
                .limits,
            Arc::new(warden_limits::SystemClock),
        )),
        in_flight: tokio::sync::Semaphore::new(in_flight),
        admin_in_flight: tokio::sync::Semaphore::new(16),
        principal_in_flight: crate::fair::PrincipalSlots::new(1024),
        refusals: Arc::default(),
        refusal_lines: Arc::default(),
        audit: None,
        seal_key: None,
        max_in_flight: in_flight,
        metrics: crate::metrics::install(),
        certificates: Vec::new(),
        throttled: Default::default(),
        timeline: Default::default(),
        rate_watch: None,
    }));
    Fixture {
        state,
        admin: admin_key,
        iris_only,
    }
}

fn request(method: &str, uri: &str, key: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
    let mut req = b.body(body).unwrap();
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([127, 0, 0, 1], 50_000))));
    req
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = data_plane(f.state.clone()).oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, headers, value)
}

impl Fixture {
    /// Sends one request through the whole pipeline.
    async fn call(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        send(self, request(method, uri, key, body)).await
    }
}

fn iris_row() -> Value {
    json!({"instances": [[5.1, 3.5, 1.4, 0.2]]})
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let f = fixture();
    for req in [
        request("GET", "/v2/health/live", None, None),
        request("GET", "/nope", None, None),
    ] {
        let (_, h, _) = send(&f, req).await;
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(
            h["strict-transport-security"]
                .to_str()
                .unwrap()
                .starts_with("max-age=")
        );
        assert!(h.contains_key("x-request-id"));
        assert!(!h.contains_key("server"));
    }
}

#[tokio::test]
async fn errors_are_the_flat_envelope_with_the_request_id() {
    let f = fixture();
    let (status, h, body) = f
        .call("POST", "/v1/models/iris:predict", None, Some(iris_row()))
        .await;
    assert_eq!(status, 401);
    assert!(h.contains_key(header::WWW_AUTHENTICATE));
    assert_eq!(body["code"], "unauthenticated");
    assert_eq!(body["request_id"], h["x-request-id"].to_str().unwrap());
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    insta::assert_json_snapshot!("unauthenticated_envelope", body, {".request_id" => "[request id]"});

    let (status, _, body) = f
        .call("GET", "/v2/models/iris/infer", Some(&f.admin), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (status, _, body) = f.call("GET", "/no/such/route", None, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn panics_become_internal_without_detail() {
    let f = fixture();
    let (status, _, body) = f.call("GET", "/__panic", None, None).await;
    assert_eq!(status, 500);
    assert_eq!(body["code"], "internal");
    assert!(!body.to_string().contains("secret"), "{body}");
}

#[tokio::test]
async fn v1_and_v2_predict_and_policy() {
    let f = fixture();
    let (status, _, body) = f
        .call(
            "POST",
            "/v1/models/iris:predict",
            Some(&f.admin),
            Some(iris_row()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][0]["label"], "setosa");
    let p = &body["predictions"][0]["probabilities"];
    let sum: f64 = ["setosa", "versicolor", "virginica"]
        .iter()
        .map(|c| p[c].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 0.02, "{p}");

    let v2 = json!({"id": "abc", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[6.7, 3.0, 5.2, 2.3]]}]});
    let (status, _, body) = f
        .call(
            "POST",
            "/v2/models/iris/versions/1/infer",
            Some(&f.iris_only),
            Some(v2),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "abc");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["outputs"][0]["data"][0], "virginica");
    assert_eq!(body["outputs"][1]["shape"], json!([1, 3]));

    // breast-cancer is label-only by its card: no probabilities, even when asked.
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/breast-cancer/fixtures.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let row = fixture["inputs"][0].clone();
    let (status, _, body) = f
        .call(
            "POST",
            "/v1/models/breast-cancer:predict",
            Some(&f.admin),
            Some(json!({"instances": [row.clone()]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["predictions"][0].get("probabilities").is_none());
    let asks = json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}], "outputs": [{"name": "probabilities"}]});
    let (status, _, body) = f
        .call(
            "POST",
            "/v2/models/breast-cancer/infer",
            Some(&f.admin),
            Some(asks),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
    );
}

#[tokio::test]
async fn unknown_and_forbidden_models_are_the_same_404() {
    let f = fixture();
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    let (s1, _, unknown) = f
        .call(
            "POST",
            "/v1/models/nosuch:predict",
            Some(&f.iris_only),
            Some(iris_row()),
        )
        .await;
    let (s2, _, forbidden) = f
        .call(
            "POST",
            "/v1/models/digits:predict",
            Some(&f.iris_only),
            Some(iris_row()),
        )
        .await;
    let (s3, _, meta) = f
        .call("GET", "/v2/models/digits", Some(&f.iris_only), None)
        .await;
    let (s4, _, version) = f
        .call(
            "GET",
            "/v2/models/iris/versions/9",
            Some(&f.iris_only),
            None,
        )
        .await;
    assert_eq!([s1, s2, s3, s4], [StatusCode::NOT_FOUND; 4]);
    let unknown = strip(unknown);
    assert_eq!(unknown, strip(forbidden));
    assert_eq!(unknown, strip(meta));
    assert_eq!(unknown, strip(version));
}

#[tokio::test]
async fn media_type_and_body_limit() {
    let f = fixture();
    let mut req = request(
        "POST",
        "/v1/models/iris:predict",
        Some(&f.admin),
        Some(iris_row()),
    );
    req.headers_mut()
        .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    let (status, _, body) = send(&f, req).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );

    // No content type at all is JSON (tritonclient sends none).
    let (status, _, _) = f
        .call(
            "POST",
            "/v1/models/iris:predict",
            Some(&f.admin),
            Some(iris_row()),
        )
        .await;
    assert_eq!(status, 200);

    // Declared too large: refused before authentication reads anything.
    let mut req = request("POST", "/v1/models/iris:predict", None, None);
    req.headers_mut().insert(
        header::CONTENT_LENGTH,
        (2 * 1024 * 1024).to_string().parse().unwrap(),
    );
    let (status, _, body) = send(&f, req).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    // Undeclared (streamed) and too large: cut off while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let mut req = request("POST", "/v1/models/iris:predict", Some(&f.admin), None);
    *req.body_mut() = Body::from_stream(futures_stream(chunks));
    let (status, _, body) = send(&f, req).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

fn futures_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct Iter(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn metadata_lists_what_the_caller_may_see() {
    let f = fixture();
    let (status, _, body) = f
        .call("GET", "/v2/models/iris", Some(&f.iris_only), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 4]})
    );
    assert_eq!(body["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["parameters"]["classes"],
        json!(["setosa", "versicolor", "virginica"])
    );
    let (_, _, body) = f
        .call("GET", "/v2/models/digits", Some(&f.admin), None)
        .await;
    assert_eq!(
        body["outputs"].as_array().unwrap().len(),
        1,
        "digits is label-only"
    );
    let (status, _, body) = f
        .call("GET", "/v2/models/iris/ready", Some(&f.admin), None)
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"name": "iris", "ready": true}))
    );
    let (status, _, body) = f.call("GET", "/v2", Some(&f.admin), None).await;
    assert_eq!(
        (status, body["name"].as_str()),
        (StatusCode::OK, Some("warden"))
    );
}

#[tokio::test]
async fn openapi_lists_every_route_with_its_errors() {
    let f = fixture();
    let (status, _, doc) = f.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/versions/{version}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/infer",
        "/v1/models/{model}:predict",
        "/openapi.json",
        "/oauth/token",
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    // The whole document is pinned: any change to the API shows up in review.
    insta::assert_json_snapshot!("openapi", doc);
    let infer = &doc["paths"]["/v2/models/{model}/infer"]["post"]["responses"];
    for code in ["200", "400", "401", "404", "413", "415", "422", "503"] {
        assert!(infer.get(code).is_some(), "{code} missing");
    }
    assert!(
        doc["components"]["securitySchemes"]
            .get("api_key")
            .is_some()
    );
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_are_shed_at_once() {
    let f = fixture_with(0);
    let (status, headers, body) = f.call("GET", "/v2/health/live", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "overloaded");
    assert_eq!(headers["retry-after"], "1");
    assert!(headers.contains_key("x-request-id"));
}
