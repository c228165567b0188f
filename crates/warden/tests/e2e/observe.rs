//! `/metrics` from the outside: only `metrics:read` may scrape it; a real
//! Prometheus text parser reads it; its counters equal the requests sent,
//! by outcome; and the Grafana dashboard and alert rules use only metrics
//! that a real scrape has (scripts/check_observability.py, with promtool).

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Warden, copy_dir, iris, repo};

impl Warden {
    /// `GET /metrics` on the management listener with `key`, as text.
    pub(super) async fn metrics_text(&self, key: &str) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The value of the sample `name` whose labels include all of `labels`
/// (summed when several match).
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_and_back_the_dashboard_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    // The demo models, and one gateway-mode model whose upstream is not
    // there, so that the upstream series are in the scrape too.
    let models = dir.path().join("models");
    copy_dir(&repo().join("models"), &models);
    let port = super::gateway::free_port();
    gateway_card_for_port(&models, port);
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let admin = w.printed_key.clone().unwrap();
    let (status, _, _) = w
        .post(
            "/v1/models/iris-upstream:predict",
            &admin,
            iris().to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    let v1 = "/v1/models/iris:predict";
    for _ in 0..5 {
        assert_eq!(
            w.post(v1, &admin, iris().to_string()).await.0,
            StatusCode::OK
        );
    }
    for _ in 0..3 {
        let (status, _, _) = w.post(v1, "wdn_nope", iris().to_string()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    for body in [
        json!({"instances": [[1.0, 2.0, 3.0]]}),
        json!({"instances": []}),
    ] {
        let (status, _, _) = w.post(v1, &admin, body.to_string()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let (status, _, _) = w
        .post("/v1/models/nope:predict", &admin, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v2 = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let (status, _, body) = w
        .post("/v2/models/iris/infer", &admin, v2.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A Prometheus credential: the metrics role, and nothing else.
    let (status, created) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "prometheus", "role": "metrics"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let prometheus = created["key"].as_str().unwrap().to_owned();
    let (status, _, _) = w.post(v1, &prometheus, iris().to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "metrics cannot predict");
    let (status, created) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "app", "role": "predict"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let app = created["key"].as_str().unwrap().to_owned();
    let scrape = |key: Option<String>| {
        let r = w.client.get(w.admin_url("/metrics"));
        let r = match key {
            Some(k) => r.bearer_auth(k),
            None => r,
        };
        async move {
            let r = r.send().await.unwrap();
            let status = r.status();
            let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
            (status, content_type, r.text().await.unwrap())
        }
    };
    assert_eq!(scrape(None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(scrape(Some(app)).await.0, StatusCode::FORBIDDEN);
    let (status, content_type, text) = scrape(Some(prometheus)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let file = dir.path().join("scrape.txt");
    std::fs::write(&file, &text).unwrap();

    let py = repo().join(".runtime/py");
    assert!(
        py.join("prometheus_client").is_dir() && py.join("yaml").is_dir(),
        "prometheus_client and PyYAML are missing: run ./scripts/setup.sh"
    );
    let out = Command::new("python3")
        .arg(repo().join("scripts/check_observability.py"))
        .arg(&file)
        .arg("--dump")
        .env("PYTHONPATH", &py)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_observability.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();

    let requests = "warden_requests_total";
    let route = ("route", "/v1/models/{model}");
    let data = ("plane", "data");
    let count = |code: &str, model: &str| {
        sample(
            &samples,
            requests,
            &[data, route, ("code", code), ("model", model)],
        )
    };
    assert_eq!(count("ok", "iris"), 5.0, "{text}");
    assert_eq!(count("unauthenticated", ""), 3.0);
    assert_eq!(count("validation_failed", "iris"), 2.0);
    assert_eq!(
        count("not_found", ""),
        2.0,
        "unknown model, and metrics' predict"
    );
    assert_eq!(
        sample(
            &samples,
            requests,
            &[data, ("route", "/v2/models/{model}/infer"), ("code", "ok")]
        ),
        1.0
    );
    assert_eq!(sample(&samples, "warden_auth_failures_total", &[data]), 3.0);
    assert_eq!(
        sample(
            &samples,
            "warden_validation_failures_total",
            &[("model", "iris"), ("reason", "validation_failed")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &samples,
            "warden_inference_duration_seconds_count",
            &[("model", "iris")]
        ),
        6.0
    );
    assert_eq!(
        sample(
            &samples,
            "warden_request_duration_seconds_count",
            &[data, route]
        ),
        13.0, // twelve to iris, one to iris-upstream
    );
    // Management calls are counted on their own plane.
    assert_eq!(
        sample(
            &samples,
            requests,
            &[
                ("plane", "management"),
                ("route", "/admin/keys"),
                ("code", "ok")
            ]
        ),
        2.0
    );
    assert_eq!(
        sample(&samples, "warden_model_loaded", &[("model", "digits")]),
        1.0
    );
    // The gateway model's upstream is not there: the breaker is open (gauge
    // 0), and the one call was refused by it or failed to connect (whichever
    // came first, the call or the first readiness check).
    assert_eq!(
        sample(
            &samples,
            "warden_upstream_up",
            &[("model", "iris-upstream")]
        ),
        0.0
    );
    let refused: f64 = ["connect", "breaker_open"]
        .iter()
        .map(|o| {
            sample(
                &samples,
                "warden_upstream_requests_total",
                &[("model", "iris-upstream"), ("outcome", o)],
            )
        })
        .sum();
    assert_eq!(refused, 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = sample(
        &samples,
        "warden_certificate_expiry_timestamp_seconds",
        &[("listener", "data")],
    );
    // The development certificate lasts 90 days (docs/tls.md).
    assert!(expiry > now + 89.0 * 86_400.0, "{expiry}");
    assert!(expiry <= now + 90.0 * 86_400.0, "{expiry}");
    assert!(text.contains("# HELP warden_requests_total"));
    assert!(!text.contains(&admin[17..]), "no credential in the metrics");
}

/// A copy of the iris card answered by an upstream on `port` of loopback,
/// where nothing listens.
fn gateway_card_for_port(models: &std::path::Path, port: u16) {
    let dir = models.join("iris-upstream");
    std::fs::create_dir_all(&dir).unwrap();
    let card = std::fs::read_to_string(models.join("iris/model.toml")).unwrap();
    std::fs::write(
        dir.join("model.toml"),
        format!("{card}\n[upstream]\nurl = \"http://127.0.0.1:{port}\"\nmodel = \"iris\"\nretries = 0\nbreaker_failures = 1\nhealth_interval = \"100ms\"\n"),
    )
    .unwrap();
    std::fs::copy(
        models.join("iris/ood_stats.json"),
        dir.join("ood_stats.json"),
    )
    .unwrap();
}
