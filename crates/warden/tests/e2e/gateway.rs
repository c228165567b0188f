//! Gateway mode: Warden in front of a real Seldon MLServer (installed by
//! scripts/setup.sh into .runtime/mlserver) serving the iris RandomForest,
//! and in front of another Warden over HTTPS with a client certificate.

use super::*;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mlserver start` on a folder written by bench/mlserver/train.py.
struct MlServer {
    child: Child,
    port: u16,
    /// Its gRPC port (the Open Inference Protocol over gRPC).
    grpc_port: u16,
    dir: PathBuf,
}

impl MlServer {
    /// Trains the iris model into `dir` (once) and starts MLServer on `port`.
    fn start(dir: &Path, port: u16) -> Self {
        let bin = repo().join(".runtime/mlserver/bin");
        assert!(
            bin.join("mlserver").is_file(),
            ".runtime/mlserver is missing: run ./scripts/setup.sh (it installs MLServer)"
        );
        if !dir.join("iris/model.joblib").is_file() {
            let out = Command::new(bin.join("python"))
                .arg(repo().join("bench/mlserver/train.py"))
                .arg(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "train.py: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let grpc_port = free_port();
        let child = Command::new(bin.join("mlserver"))
            .args(["start", "."])
            .current_dir(dir)
            .env("MLSERVER_HTTP_PORT", port.to_string())
            .env("MLSERVER_GRPC_PORT", grpc_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            port,
            grpc_port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let ready = format!("http://127.0.0.1:{port}/v2/models/iris/ready");
        loop {
            if http_get_ok(&ready) {
                return server;
            }
            assert!(Instant::now() < deadline, "MLServer did not become ready");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What MLServer itself answers for `rows` (labels, probabilities).
    async fn predict(&self, rows: &[Vec<f64>]) -> (Vec<i64>, Vec<Vec<f64>>) {
        let body = json!({
            "inputs": [{"name": "input", "shape": [rows.len(), 4], "datatype": "FP32", "data": rows}],
            "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
        });
        let r: Value = reqwest::Client::new()
            .post(format!("{}/v2/models/iris/infer", self.url()))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let out = |name: &str| {
            r["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == name)
                .unwrap()["data"]
                .clone()
        };
        let labels = out("predict")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let flat: Vec<f64> = out("predict_proba")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        (labels, flat.chunks(3).map(<[f64]>::to_vec).collect())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a plain-HTTP GET answers 200 (a readiness probe with std only,
/// usable from a blocking start-up loop).
fn http_get_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// A copy of the iris card whose `[upstream]` is `table`, with the output
/// names and classes given.
fn gateway_card(models: &Path, name: &str, outputs: (&str, &str), classes: &str, table: &str) {
    let dir = models.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let card = std::fs::read_to_string(repo().join("models/iris/model.toml"))
        .unwrap()
        .replace("label = \"label\"", &format!("label = {:?}", outputs.0))
        .replace(
            "probabilities = \"probabilities\"",
            &format!("probabilities = {:?}", outputs.1),
        )
        .replace(
            "classes = [\"setosa\", \"versicolor\", \"virginica\"]",
            &format!("classes = {classes}"),
        );
    std::fs::write(
        dir.join("model.toml"),
        format!("{card}\n[upstream]\n{table}\n"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("models/iris/ood_stats.json"),
        dir.join("ood_stats.json"),
    )
    .unwrap();
}

const IRIS_CLASSES: &str = "[\"setosa\", \"versicolor\", \"virginica\"]";

fn fixture_rows() -> (Vec<Vec<f64>>, Vec<String>) {
    let f: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/iris/fixtures.json")).unwrap(),
    )
    .unwrap();
    let rows: Vec<Vec<f64>> = f["inputs"].as_array().unwrap()[..8]
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    let labels = f["labels"].as_array().unwrap()[..8]
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    (rows, labels)
}

/// Every upstream call outcome of `model`, summed.
fn upstream_calls(text: &str, model: &str) -> f64 {
    let prefix = format!("warden_upstream_requests_total{{model=\"{model}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn model_ready(w: &Warden, key: &str, model: &str) -> bool {
    w.get(&format!("/v2/models/{model}/ready"), Some(key))
        .await
        .1["ready"]
        == true
}

const UNAVAILABLE: &str = "The model server is unavailable.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mlserver_behind_the_gateway_gets_the_whole_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut mls = MlServer::start(&dir.path().join("mlserver"), port);
    let models = dir.path().join("models");
    let url = mls.url();
    let base = format!(
        "url = \"{url}\"\nmodel = \"iris\"\nconnect_timeout = \"200ms\"\nretries = 1\nhealth_interval = \"200ms\"\nbreaker_failures = 2\nbreaker_open_for = \"500ms\""
    );
    gateway_card(
        &models,
        "iris",
        ("predict", "predict_proba"),
        IRIS_CLASSES,
        &base,
    );
    // Two classes where the upstream has three: its answers do not fit.
    gateway_card(
        &models,
        "iris_narrow",
        ("predict", "predict_proba"),
        "[\"setosa\", \"versicolor\"]",
        &format!("url = \"{url}\"\nmodel = \"iris\""),
    );
    // No upstream answers within a millisecond.
    gateway_card(
        &models,
        "iris_hurried",
        ("predict", "predict_proba"),
        IRIS_CLASSES,
        &format!("url = \"{url}\"\nmodel = \"iris\"\ntimeout = \"1ms\""),
    );
    // The same MLServer over gRPC (grpc:// to loopback).
    let grpc_url = format!("grpc://127.0.0.1:{}", mls.grpc_port);
    gateway_card(
        &models,
        "iris_grpc",
        ("predict", "predict_proba"),
        IRIS_CLASSES,
        &format!("url = \"{grpc_url}\"\nmodel = \"iris\""),
    );
    // `warden model init --upstream` writes a card from MLServer's metadata,
    // over REST and over gRPC.
    let from_metadata = models.join("iris_init");
    std::fs::create_dir_all(&from_metadata).unwrap();
    let out = Command::new(BIN)
        .args(["model", "init"])
        .arg(&from_metadata)
        .args(["--upstream", &url, "--upstream-model", "iris"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(from_metadata.join("model.toml")).unwrap();
    assert!(
        written.contains("[upstream]") && written.contains("name = \"predict_proba\""),
        "{written}"
    );
    let from_grpc = models.join("iris_init_grpc");
    std::fs::create_dir_all(&from_grpc).unwrap();
    let out = Command::new(BIN)
        .args(["model", "init"])
        .arg(&from_grpc)
        .args(["--upstream", &grpc_url, "--upstream-model", "iris"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(from_grpc.join("model.toml")).unwrap();
    assert!(
        written.contains(&grpc_url) && written.contains("name = \"predict_proba\""),
        "{written}"
    );
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    // It serves: admin sees the probabilities; the labels are the class indices' names.
    let one = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let (status, _, body) = w
        .post("/v2/models/iris_init/infer", &key, one.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!(["class_0"]), "{body}");

    // The same answers as MLServer itself (and as the demo model's
    // fixtures: the same forest), through v2 and v1, under the card's
    // output policy (probabilities rounded to 2 decimals).
    let (rows, expected) = fixture_rows();
    let (labels, probabilities) = mls.predict(&rows).await;
    let names = ["setosa", "versicolor", "virginica"];
    let direct: Vec<&str> = labels.iter().map(|l| names[*l as usize]).collect();
    assert_eq!(direct, expected, "MLServer serves the demo forest");
    let v2 =
        json!({"inputs": [{"name": "input", "shape": [8, 4], "datatype": "FP32", "data": rows}]});
    let (status, headers, body) = w.post("/v2/models/iris/infer", &key, v2.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.contains_key("x-request-id"));
    let out = body["outputs"].as_array().unwrap();
    let got_labels: Vec<&str> = out[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(got_labels, expected);
    let got_probs: Vec<f64> = out[1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (got, want) in got_probs.iter().zip(probabilities.iter().flatten()) {
        assert!(
            (got - (want * 100.0).round() / 100.0).abs() < 1e-9,
            "{got} vs {want}"
        );
    }
    let (status, _, body) = w
        .post(
            "/v1/models/iris:predict",
            &key,
            json!({"instances": rows}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["predictions"][0]["label"], expected[0].as_str());
    // Over gRPC to the same MLServer, and from the card model init wrote
    // from its gRPC metadata: the same labels.
    for model in ["iris_grpc", "iris_init_grpc"] {
        let (status, _, body) = w
            .post(
                &format!("/v1/models/{model}:predict"),
                &key,
                json!({"instances": rows}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{model}: {body}");
        let labels: Vec<String> = body["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_str().unwrap_or_default().to_owned())
            .collect();
        if model == "iris_grpc" {
            assert_eq!(labels, expected, "{model}");
        } else {
            assert_eq!(labels.len(), rows.len(), "{model}: {body}");
        }
    }

    // Validation happens before the upstream is called: NaN, out of range,
    // a wrong width and an oversize batch never reach it.
    let before = upstream_calls(&w.metrics_text(&key).await, "iris");
    for bad in [
        r#"{"instances": [[5.1, NaN, 1.4, 0.2]]}"#.to_owned(),
        json!({"instances": [[5.1, 3.5, 1.4, 900.0]]}).to_string(),
        json!({"instances": [[5.1, 3.5, 1.4]]}).to_string(),
        json!({"instances": vec![[5.1, 3.5, 1.4, 0.2]; 65]}).to_string(),
    ] {
        let (status, _, body) = w.post("/v1/models/iris:predict", &key, bad.clone()).await;
        assert!(status.is_client_error(), "{bad}: {status} {body}");
    }
    let after = upstream_calls(&w.metrics_text(&key).await, "iris");
    assert_eq!(before, after, "refused inputs never reach the upstream");

    // An answer that does not fit the card, and a timeout: the SPEC's code,
    // nothing of the upstream in the body.
    let (status, _, body) = w
        .post("/v1/models/iris_narrow:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "upstream_unavailable");
    assert_eq!(body["error"], UNAVAILABLE);
    let (status, _, body) = w
        .post("/v1/models/iris_hurried:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["code"], "upstream_unavailable");
    assert!(
        !body.to_string().contains("127.0.0.1") && !body.to_string().contains(&port.to_string())
    );
    assert!(model_ready(&w, &key, "iris").await);

    // The upstream dies: 502 at once (connection refused, one retry), the
    // breaker opens (the model is not ready, the gauge is 0, an alert), and
    // calls are refused without waiting.
    mls.kill();
    let (status, _, body) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], UNAVAILABLE);
    let deadline = Instant::now() + Duration::from_secs(5);
    while model_ready(&w, &key, "iris").await {
        assert!(Instant::now() < deadline, "the breaker did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = |text: &str| {
        metric(
            text,
            "warden_upstream_requests_total{model=\"iris\",outcome=\"breaker_open\"}",
        )
        .unwrap_or(0.0)
    };
    let text = w.metrics_text(&key).await;
    let (calls, refusals) = (upstream_calls(&text, "iris"), refused(&text));
    let (status, _, _) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let text = w.metrics_text(&key).await;
    assert_eq!(
        (
            upstream_calls(&text, "iris") - calls,
            refused(&text) - refusals
        ),
        (1.0, 1.0),
        "an open breaker refuses without calling"
    );
    let metrics = w.metrics_text(&key).await;
    assert_eq!(
        metric(&metrics, "warden_upstream_up{model=\"iris\"}"),
        Some(0.0)
    );
    assert!(metric(&metrics, "warden_alerts_total{kind=\"upstream_down\"}").unwrap() >= 1.0);
    assert!(
        metric(
            &metrics,
            "warden_upstream_requests_total{model=\"iris\",outcome=\"breaker_open\"}"
        )
        .unwrap()
            >= 1.0
    );

    // It comes back on the same port: the health check closes the breaker.
    let mls = MlServer::start(&mls.dir.clone(), port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !model_ready(&w, &key, "iris").await {
        assert!(
            Instant::now() < deadline,
            "the health check did not close the breaker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, body) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["predictions"][0]["label"], "setosa");
    drop(mls);

    let logs = w.stop_and_collect_logs();
    let alert = logs
        .iter()
        .find(|l| l.contains("\"alert\":\"upstream_down\""))
        .expect("an upstream_down alert in the log");
    assert!(alert.contains("\"model\":\"iris\""), "{alert}");
    assert!(logs.iter().any(|l| l.contains("upstream available again")));
    assert!(
        logs.iter().any(
            |l| l.contains("answer does not match the model card") && l.contains("iris_narrow")
        ),
        "the log says why an answer was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reaches_an_https_upstream_with_its_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream: another Warden that requires a client certificate and
    // maps the gateway's to the predict role.
    let client_ca = identity::ca("gateway client CA");
    let (cert, key) = identity::leaf_pem(&client_ca, "gateway");
    std::fs::write(dir.path().join("client-ca.pem"), client_ca.pem()).unwrap();
    std::fs::write(dir.path().join("gateway.pem"), cert).unwrap();
    private_file(&dir.path().join("gateway.key"), &key);
    let upstream_config = dir.path().join("upstream.toml");
    std::fs::write(
        &upstream_config,
        format!(
            "[tls]\nclient_ca = \"{}\"\nclient_auth = \"optional\"\n\n[[auth.mtls]]\nname = \"gateway\"\nrole = \"predict\"\n",
            dir.path().join("client-ca.pem").display()
        ),
    )
    .unwrap();
    let upstream = Warden::start(
        &dir.path().join("upstream"),
        &["--config", upstream_config.to_str().unwrap()],
    );
    let server_ca = dir.path().join("upstream/tls/ca.pem");
    let url = format!("https://localhost:{}", upstream.addr.port());
    let models = dir.path().join("models");
    let tls = format!(
        "url = \"{url}\"\nmodel = \"iris\"\nca = \"{}\"",
        server_ca.display()
    );
    let with_cert = format!(
        "{tls}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        dir.path().join("gateway.pem").display(),
        dir.path().join("gateway.key").display()
    );
    gateway_card(
        &models,
        "iris",
        ("label", "probabilities"),
        IRIS_CLASSES,
        &with_cert,
    );
    gateway_card(
        &models,
        "iris_nocert",
        ("label", "probabilities"),
        IRIS_CLASSES,
        &tls,
    );
    // A bearer token instead of a certificate: the upstream's API key, from
    // a secret file next to the card.
    let token_file = models.join("upstream-token");
    private_file(&token_file, &upstream.printed_key.clone().unwrap());
    gateway_card(
        &models,
        "iris_token",
        ("label", "probabilities"),
        IRIS_CLASSES,
        &format!("{tls}\nbearer_token = {{ file = \"../upstream-token\" }}"),
    );
    // The same upstream over gRPC (grpcs://, its gRPC listener): with the
    // client certificate, and with the bearer token in the call's metadata.
    let grpc_url = format!("grpcs://localhost:{}", upstream.grpc.unwrap().port());
    let grpc_tls = format!(
        "url = \"{grpc_url}\"\nmodel = \"iris\"\nca = \"{}\"",
        server_ca.display()
    );
    gateway_card(
        &models,
        "iris_grpc",
        ("label", "probabilities"),
        IRIS_CLASSES,
        &format!(
            "{grpc_tls}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            dir.path().join("gateway.pem").display(),
            dir.path().join("gateway.key").display()
        ),
    );
    gateway_card(
        &models,
        "iris_grpc_token",
        ("label", "probabilities"),
        IRIS_CLASSES,
        &format!("{grpc_tls}\nbearer_token = {{ file = \"../upstream-token\" }}"),
    );
    gateway_card(
        &models,
        "iris_grpc_nocert",
        ("label", "probabilities"),
        IRIS_CLASSES,
        &grpc_tls,
    );
    // The system roots do not know the upstream's self-signed certificate.
    gateway_card(
        &models,
        "iris_noca",
        ("label", "probabilities"),
        IRIS_CLASSES,
        &format!("url = \"{url}\"\nmodel = \"iris\""),
    );
    let w = Warden::start(
        &dir.path().join("gateway"),
        &["--models", models.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let (rows, expected) = fixture_rows();
    for model in ["iris", "iris_token", "iris_grpc", "iris_grpc_token"] {
        let (status, _, body) = w
            .post(
                &format!("/v1/models/{model}:predict"),
                &key,
                json!({"instances": rows}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{model}: {body}");
        let labels: Vec<&str> = body["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, expected, "{model}");
    }
    // Neither certificate nor token: the upstream answers 401, the client
    // gets 502. No CA: the handshake fails, 502 too.
    for model in ["iris_nocert", "iris_noca", "iris_grpc_nocert"] {
        let (status, _, body) = w
            .post(
                &format!("/v1/models/{model}:predict"),
                &key,
                iris().to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{model}: {body}");
        assert_eq!(body["error"], UNAVAILABLE);
    }
    // The gRPC upstream's readiness (ModelReady, with the credential) keeps
    // the model ready.
    assert!(model_ready(&w, &key, "iris_grpc").await);
    // The upstream's log names the gateway's certificate and its key, and
    // the token never reaches the gateway's own log.
    let token = upstream.printed_key.clone().unwrap();
    let key_id = token.split('_').nth(1).unwrap().to_owned();
    let logs = upstream.stop_and_collect_logs();
    assert!(
        logs.iter().any(|l| l.contains("mtls:gateway")),
        "the upstream saw the gateway's certificate identity"
    );
    assert!(
        logs.iter().any(|l| l.contains(&format!("key:{key_id}"))),
        "the upstream saw the gateway's bearer token"
    );
    let gateway_logs = w.stop_and_collect_logs();
    assert!(!gateway_logs.iter().any(|l| l.contains(&token)));
}

/// tests/e2e/misbehaving_upstream.py, started on a free port.
struct Misbehaving {
    child: Child,
    port: u16,
}

impl Misbehaving {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/misbehaving_upstream.py"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        Self { child, port }
    }

    async fn seen(&self, model: &str) -> Value {
        reqwest::get(format!("http://127.0.0.1:{}/hits/{model}", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_upstream_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Misbehaving::start();
    let models = dir.path().join("models");
    for name in ["ok", "huge", "redirect", "busy"] {
        gateway_card(
            &models,
            &format!("m-{name}"),
            ("label", "probabilities"),
            IRIS_CLASSES,
            &format!(
                "url = \"http://127.0.0.1:{}\"\nmodel = \"{name}\"\nbreaker_failures = 100",
                upstream.port
            ),
        );
    }
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let predict = |model: &'static str| {
        let (w, key) = (&w, key.clone());
        async move {
            w.post(
                &format!("/v1/models/m-{model}:predict"),
                &key,
                iris().to_string(),
            )
            .await
        }
    };

    // A well-behaved answer passes, and the client's credential is not
    // what reaches the upstream.
    let (status, _, body) = predict("ok").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = upstream.seen("ok").await;
    assert_eq!(seen["hits"], 1);
    assert_eq!(seen["authorization"], Value::Null);
    assert_eq!(seen["x_api_key"], Value::Null);

    // 64 MiB instead of a few hundred bytes: read only up to the bound,
    // then refused; Warden's memory is not the upstream's to fill.
    let (status, _, body) = predict("huge").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], UNAVAILABLE);

    // A redirect is not followed: the target is never called.
    let (status, _, _) = predict("redirect").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(upstream.seen("redirect").await["hits"], 1);
    assert_eq!(
        upstream.seen("ok").await["hits"],
        1,
        "the redirect target was not called"
    );

    // A 503 reached the server: no retry (retries are for connection
    // failures only, when nothing was sent).
    for _ in 0..3 {
        let (status, _, _) = predict("busy").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(upstream.seen("busy").await["hits"], 3);

    let metrics = w.metrics_text(&key).await;
    for (model, outcome) in [
        ("m-huge", "invalid"),
        ("m-redirect", "status"),
        ("m-busy", "status"),
    ] {
        let series =
            format!("warden_upstream_requests_total{{model=\"{model}\",outcome=\"{outcome}\"}}");
        assert!(
            metric(&metrics, &series).unwrap_or(0.0) >= 1.0,
            "{series} in\n{metrics}"
        );
    }
    let logs = w.stop_and_collect_logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("m-huge") && l.contains("answer larger than")),
        "the log says why the huge answer was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_mid_call_do_not_open_the_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Misbehaving::start();
    let models = dir.path().join("models");
    gateway_card(
        &models,
        "m-slow",
        ("label", "probabilities"),
        IRIS_CLASSES,
        &format!(
            "url = \"http://127.0.0.1:{}\"\nmodel = \"slow\"\nbreaker_failures = 5\nmax_in_flight = 32",
            upstream.port
        ),
    );
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        "[limits.rates]\ndefault = { rate = \"100000/minute\", burst = 100000 }\npredict = { rate = \"100000/minute\", burst = 100000 }\n",
    )
    .unwrap();
    let w = Warden::start(
        &dir.path().join("data"),
        &[
            "--models",
            models.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let key = w.printed_key.clone().unwrap();
    // 1,000 requests whose clients give up after 100 ms, while the upstream
    // takes 500 ms: every call is abandoned mid-way, on purpose.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .tls_certs_only([reqwest::Certificate::from_pem(
            &std::fs::read(w.data_dir.join("tls/ca.pem")).unwrap(),
        )
        .unwrap()])
        .build()
        .unwrap();
    for _ in 0..10 {
        let wave = (0..100).map(|_| {
            impatient
                .post(w.url("/v1/models/m-slow:predict"))
                .header("x-api-key", &key)
                .json(&iris())
                .send()
        });
        let gave_up = futures_join_all(wave).await;
        assert!(gave_up.iter().all(Result::is_err), "every client gave up");
    }
    // A client going away says nothing about the upstream: still ready, and
    // the next request is served.
    assert!(model_ready(&w, &key, "m-slow").await);
    let (status, _, body) = w
        .post("/v1/models/m-slow:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metrics = w.metrics_text(&key).await;
    let cancelled = metric(
        &metrics,
        "warden_upstream_requests_total{model=\"m-slow\",outcome=\"cancelled\"}",
    )
    .unwrap_or(0.0);
    assert!(
        cancelled >= 100.0,
        "cancelled calls are counted: {cancelled}"
    );
    assert_eq!(
        metric(&metrics, "warden_upstream_up{model=\"m-slow\"}"),
        Some(1.0)
    );
}

/// Awaits every future (a wave of concurrent requests).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
