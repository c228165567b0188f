//! End to end: the real `warden` binary on an ephemeral port, over real TLS,
//! driven the way a client (or an attacker) would.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

#[path = "e2e/api.rs"]
mod api;
#[path = "e2e/audit.rs"]
mod audit;
#[path = "e2e/console.rs"]
mod console;
#[path = "e2e/defenses.rs"]
mod defenses;
#[path = "e2e/deploy.rs"]
mod deploy;
#[path = "e2e/exhaustion.rs"]
mod exhaustion;
#[path = "e2e/gateway.rs"]
mod gateway;
#[path = "e2e/grpc.rs"]
mod grpc;
#[path = "e2e/identity.rs"]
mod identity;
#[path = "e2e/integrity.rs"]
mod integrity;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/observe.rs"]
mod observe;
#[path = "e2e/replicas.rs"]
mod replicas;
#[path = "e2e/similarity.rs"]
mod similarity;
#[path = "e2e/tensors.rs"]
mod tensors;
#[path = "e2e/transport.rs"]
mod transport;

const BIN: &str = env!("CARGO_BIN_EXE_warden");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `warden serve`.
struct Warden {
    child: Child,
    addr: SocketAddr,
    /// The management listener.
    admin: Option<SocketAddr>,
    /// The plaintext redirect listener.
    redirect: Option<SocketAddr>,
    /// The gRPC listener.
    grpc: Option<SocketAddr>,
    /// The admin key printed on first start, if this start printed one.
    printed_key: Option<String>,
    data_dir: PathBuf,
    client: reqwest::Client,
    scheme: &'static str,
    stderr: mpsc::Receiver<String>,
    /// The log lines up to and including "listening".
    startup_logs: Vec<String>,
}

impl Warden {
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            // An ephemeral gRPC port: tests run side by side.
            .env("WARDEN_GRPC_LISTEN", "127.0.0.1:0")
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(if extra.contains(&"--models") {
                vec![]
            } else {
                vec!["--models".into(), repo().join("models")]
            })
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Logs are JSON lines on stderr; the "listening" line has the real port.
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut startup_logs = Vec::new();
        let (addr, admin, redirect, grpc, tls) = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    std::thread::sleep(Duration::from_millis(200));
                    let status = child.try_wait().unwrap();
                    panic!(
                        "warden did not start (exit {status:?}); its log:\n{}",
                        startup_logs.join("\n")
                    )
                });
            startup_logs.push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == "listening"
            {
                break (
                    v["addr"].as_str().unwrap().parse().unwrap(),
                    v["admin"].as_str().and_then(|a| a.parse().ok()),
                    v["redirect"].as_str().and_then(|a| a.parse().ok()),
                    v["grpc"].as_str().and_then(|a| a.parse().ok()),
                    v["tls"] == true,
                );
            }
        };
        // stdout holds only the one-time admin key banner, written before "listening".
        let mut stdout = String::new();
        let mut out = child.stdout.take().unwrap();
        let (otx, orx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || otx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        while let Ok(chunk) = orx.recv_timeout(Duration::from_millis(300)) {
            stdout.push_str(&String::from_utf8_lossy(&chunk));
        }
        let printed_key = stdout
            .split_whitespace()
            .find(|w| w.starts_with("wdn_"))
            .map(str::to_owned);

        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if tls {
            // The development CA of the embedded default (docs/tls.md), and
            // the certificate itself where a test put its own CA there.
            let trusted = ["tls/ca.pem", "tls/cert.pem"]
                .iter()
                .filter_map(|f| std::fs::read(data_dir.join(f)).ok())
                .map(|pem| reqwest::Certificate::from_pem(&pem).unwrap());
            builder = builder.tls_certs_only(trusted);
        }
        Self {
            child,
            addr,
            admin,
            redirect,
            grpc,
            printed_key,
            data_dir: data_dir.to_owned(),
            client: builder.build().unwrap(),
            scheme: if tls { "https" } else { "http" },
            stderr: rx,
            startup_logs,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://localhost:{}{path}", self.scheme, self.addr.port())
    }

    async fn post(
        &self,
        path: &str,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        let mut r = self.client.get(self.url(path));
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        let r = r.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .unwrap()
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        self.stop()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "warden did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (which flushes its buffered logs) and returns every
    /// line it wrote to stderr.
    fn stop_and_collect_logs(mut self) -> Vec<String> {
        assert_eq!(self.stop().code(), Some(0));
        // The reader thread ends at EOF, which closes the channel.
        let mut lines = std::mem::take(&mut self.startup_logs);
        lines.extend(self.stderr.iter());
        lines
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python test peer from tests/e2e with the packages scripts/setup.sh
/// installs into .runtime/py; `needs` is one of them, checked first.
fn python_peer(script: &str, needs: &str, args: &[&str]) -> String {
    let py = repo().join(".runtime/py");
    assert!(
        py.join(needs).is_dir(),
        "{needs} is missing: run ./scripts/setup.sh (it installs the test peers)"
    );
    let out = Command::new("python3")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/e2e")
                .join(script),
        )
        .args(args)
        .env("PYTHONPATH", &py)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `python3 SCRIPT` with the tools scripts/setup.sh installs into
/// `.runtime/<dir>` (one folder per tool) on its path, each checked first.
fn python_with(dirs: &[&str], script: &Path) -> Command {
    for d in dirs {
        assert!(
            repo().join(".runtime").join(d).is_dir(),
            ".runtime/{d} is missing: run ./scripts/setup.sh"
        );
    }
    let path = std::env::join_paths(dirs.iter().map(|d| repo().join(".runtime").join(d))).unwrap();
    let mut c = Command::new("python3");
    c.arg(script).env("PYTHONPATH", path);
    c
}

/// Writes a secret file with mode 0600 (what Warden accepts for secrets).
fn private_file(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Copies a folder tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn iris() -> Value {
    json!({"instances": [[5.1, 3.5, 1.4, 0.2]]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_key_once_and_it_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let first = Warden::start(dir.path(), &[]);
    let key = first
        .printed_key
        .clone()
        .expect("first start prints the admin key");
    let (status, _, body) = first
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][0]["label"], "setosa");
    let cert = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
    assert_eq!(first.terminate().code(), Some(0), "SIGTERM is a clean stop");

    let second = Warden::start(dir.path(), &[]);
    assert_eq!(second.printed_key, None, "the key is printed only once");
    assert_eq!(
        std::fs::read(dir.path().join("tls/cert.pem")).unwrap(),
        cert,
        "the certificate is kept"
    );
    let (status, _, _) = second
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, 200);
    // Only a hash is stored: the key text is nowhere in the data dir.
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{:?} holds the key",
                entry.path()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_over_https_on_every_demo_model() {
    let dir = tempfile::tempdir().unwrap();
    let w = Warden::start(dir.path(), &[]);
    let key = w.printed_key.clone().unwrap();
    for model in ["iris", "breast-cancer", "digits"] {
        let fixture: Value = serde_json::from_slice(
            &std::fs::read(repo().join("models").join(model).join("fixtures.json")).unwrap(),
        )
        .unwrap();
        let rows = fixture["inputs"].as_array().unwrap();
        let labels = &fixture["labels"];
        let (status, _, body) = w
            .post(
                &format!("/v1/models/{model}:predict"),
                &key,
                json!({"instances": rows}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{model}: {body}");
        let got: Vec<&Value> = body["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["label"])
            .collect();
        assert_eq!(
            got,
            labels.as_array().unwrap().iter().collect::<Vec<_>>(),
            "{model}"
        );

        let width = rows[0].as_array().unwrap().len();
        let flat: Vec<Value> = rows
            .iter()
            .flat_map(|r| r.as_array().unwrap().clone())
            .collect();
        let v2 = json!({"id": "e2e", "inputs": [{"name": "input", "shape": [rows.len(), width], "datatype": "FP32", "data": flat}]});
        let (status, _, body) = w
            .post(&format!("/v2/models/{model}/infer"), &key, v2.to_string())
            .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["id"], "e2e");
        assert_eq!(&body["outputs"][0]["data"], labels, "{model}");
    }
    // Health needs no credential; metadata does.
    assert_eq!(w.get("/v2/health/live", None).await.0, 200);
    assert_eq!(w.get("/v2/health/ready", None).await.0, 200);
    assert_eq!(w.get("/v2/models/iris", None).await.0, 401);
    assert_eq!(w.get("/v2/models/iris", Some(&key)).await.0, 200);
    // HTTP/1.1 works as well as the HTTP/2 ALPN picks by default.
    let pem = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(w.url("/v2/health/live")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    let r = w.client.get(w.url("/v2/health/live")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(r.headers().contains_key("strict-transport-security"));
}

/// Every bad input of the issue gets its SPEC code, never a 500 or a hang,
/// and the next request is served normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_spec_code_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let w = Warden::start(dir.path(), &[]);
    let admin = w.printed_key.clone().unwrap();
    let created = w.cli(&[
        "keys", "create", "--name", "iris-app", "--role", "predict", "--models", "iris",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let iris_only = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let revoked = String::from_utf8(
        w.cli(&["keys", "create", "--name", "old", "--role", "predict"])
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    assert!(w.cli(&["keys", "revoke", &revoked_id]).status.success());

    let deep = format!(r#"{{"instances": {}{}}}"#, "[".repeat(200), "]".repeat(200));
    let huge = format!(r#"{{"instances": [[{}]]}}"#, "1,".repeat(1024 * 1024));
    let batch = json!({"instances": vec![[5.1, 3.5, 1.4, 0.2]; 10_000]}).to_string();
    // The real key with its last character changed (never to itself: a key
    // that already ends in 'x' gets a 'y').
    let last = if admin.ends_with('x') { 'y' } else { 'x' };
    let wrong_key = format!("{}{last}", &admin[..admin.len() - 1]);
    let cases: Vec<(&str, String, &str, &str, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "wrong content type",
            admin.clone(),
            "/v1/models/iris:predict",
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "2 MiB body",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "nested 200 deep",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "NaN",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "1e400",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "wrong feature count",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "feature of 1e9",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "unknown field",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "unknown feature name",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "unknown model",
            admin.clone(),
            "/v1/models/nosuch:predict",
            "application/json",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "model the key may not use",
            iris_only.clone(),
            "/v1/models/digits:predict",
            "application/json",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "wrong key",
            wrong_key,
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "revoked key",
            revoked.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "not a key",
            "hunter2".into(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "10,000-row batch",
            admin.clone(),
            "/v1/models/iris:predict",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ];
    let bodies = [
        r#"{"instances": [[5.1, 3.5"#.to_string(),
        iris().to_string(),
        huge,
        deep,
        r#"{"instances": [[NaN, 3.5, 1.4, 0.2]]}"#.into(),
        r#"{"instances": [[1e400, 3.5, 1.4, 0.2]]}"#.into(),
        r#"{"instances": [[5.1, 3.5, 1.4]]}"#.into(),
        r#"{"instances": [[1e9, 3.5, 1.4, 0.2]]}"#.into(),
        r#"{"instances": [[5.1, 3.5, 1.4, 0.2]], "signature": "x"}"#.into(),
        r#"{"instances": [{"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2, "colour": 1}]}"#.into(),
        iris().to_string(),
        iris().to_string(),
        iris().to_string(),
        iris().to_string(),
        iris().to_string(),
        batch,
    ];
    assert_eq!(cases.len(), bodies.len());
    for ((what, key, path, content_type, status, code), body) in cases.into_iter().zip(bodies) {
        let r = w
            .client
            .post(w.url(path))
            .header("x-api-key", key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = r.status();
        let request_id = r
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let envelope: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        assert_eq!(
            (got, envelope["code"].as_str().unwrap_or_default()),
            (status, code),
            "{what}: {envelope}"
        );
        assert_eq!(
            envelope["request_id"].as_str(),
            request_id.as_deref(),
            "{what}"
        );
        let text = envelope.to_string();
        for leak in [
            "/root", "src/", ".rs", "serde", "onnx", "panicked", "sqlite",
        ] {
            assert!(!text.contains(leak), "{what} leaks {leak:?}: {text}");
        }
        if code == "validation_failed" {
            assert!(
                envelope["details"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty()),
                "{what}: {envelope}"
            );
        }
        // The server answers the next request normally.
        let (status, _, _) = w
            .post("/v1/models/iris:predict", &admin, iris().to_string())
            .await;
        assert_eq!(status, 200, "after {what}");
    }

    // Credentials never reach the logs.
    let logs = w.stop_and_collect_logs().join("\n");
    assert!(
        logs.contains("warden::access"),
        "access log lines are written"
    );
    for secret in [&admin, &iris_only, &revoked] {
        assert!(!logs.contains(&secret[17..]), "a key secret is in the logs");
    }
    assert!(!logs.contains("5.1, 3.5"), "raw inputs are not logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lifecycle_through_the_cli_reaches_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let w = Warden::start(dir.path(), &[]);
    let out = w.cli(&[
        "keys",
        "create",
        "--name",
        "app",
        "--role",
        "predict",
        "--models",
        "iris,digits",
    ]);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let id = key.split('_').nth(1).unwrap().to_owned();
    assert_eq!(
        w.post("/v1/models/iris:predict", &key, iris().to_string())
            .await
            .0,
        200
    );

    // list shows the key without its secret.
    let list = w.cli(&["keys", "list", "--json"]);
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(text.contains(&id) && !text.contains(&key[17..]));
    let record: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["id"] == id.as_str())
        .unwrap();
    assert_eq!(record["models"], json!(["iris", "digits"]));
    assert_eq!(record["status"], "active");

    // rotate without a grace period: the new key works, the old one is
    // refused within about a second (the grace period itself is tested
    // through the management API in e2e/identity.rs).
    let rotated = w.cli(&["keys", "rotate", &id, "--grace", "0s"]);
    assert!(rotated.status.success());
    let new_key = String::from_utf8(rotated.stdout).unwrap().trim().to_owned();
    assert_eq!(
        w.post("/v1/models/iris:predict", &new_key, iris().to_string())
            .await
            .0,
        200
    );
    wait_until_refused(&w, &key).await;

    // revoke the new one.
    let new_id = new_key.split('_').nth(1).unwrap();
    assert!(w.cli(&["keys", "revoke", new_id]).status.success());
    wait_until_refused(&w, &new_key).await;
    assert_eq!(
        w.cli(&["keys", "revoke", new_id]).status.code(),
        Some(2),
        "revoking twice is a usage error"
    );

    // An expiring key stops working when it expires.
    let out = w.cli(&[
        "keys",
        "create",
        "--name",
        "short",
        "--role",
        "predict",
        "--expires",
        "2s",
    ]);
    let short = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        w.post("/v1/models/iris:predict", &short, iris().to_string())
            .await
            .0,
        200
    );
    wait_until_refused(&w, &short).await;

    // Bad usage exits 2.
    assert_eq!(
        w.cli(&["keys", "create", "--name", "x", "--role", "root"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        w.cli(&[
            "keys",
            "create",
            "--name",
            "x",
            "--role",
            "predict",
            "--expires",
            "soon"
        ])
        .status
        .code(),
        Some(2)
    );
    assert_eq!(
        Command::new(BIN)
            .args(["keys", "frobnicate"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

/// Polls until `key` is refused (revocation takes effect within the 1 s
/// cache lifetime; the bound here leaves room for a loaded CI machine).
async fn wait_until_refused(w: &Warden, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = w
            .post("/v1/models/iris:predict", key, iris().to_string())
            .await;
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["code"], "unauthenticated");
            return;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "key still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first ten minutes (README.md): on a terminal (a pseudo-terminal from
/// util-linux `script`), `warden serve` prints the start-up banner —
/// listeners, the console, the models, the data dir, the CA to trust,
/// where the admin key is, a curl to try — and logs compact text lines;
/// with `NO_COLOR` no escape sequence at all.
#[test]
fn a_terminal_gets_a_banner_and_text_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let command = format!(
        "{BIN} serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
         --models {} --data-dir {}",
        repo().join("models").display(),
        data.display()
    );
    let mut child = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The banner ends with the curl to try; "listening" is logged before it.
    while !seen.iter().any(|l: &String| l.contains("try:")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("pkill")
        .args(["-f", &data.display().to_string()])
        .status();
    let text = seen.join("\n");
    for expected in [
        "Warden ",
        "data plane   https://127.0.0.1:",
        "console      https://127.0.0.1:",
        "/console",
        "iris v1",
        "digits-cnn v1",
        &format!("trust        {}", data.join("tls/ca.pem").display()),
        "admin key    printed above, this once only",
        &format!("curl --cacert {}", data.join("tls/ca.pem").display()),
        // A text log line, not JSON.
        "INFO warden::commands: listening addr=127.0.0.1:",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    assert!(!text.contains("{\"timestamp\""), "{text}");
    assert!(!text.contains('\u{1b}'), "NO_COLOR: {text}");
}

/// `log.format = "text"` applies when stderr is not a terminal too, and the
/// access log keeps its fields (`name=value`); the default there is JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_keep_the_access_log_fields() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let w = Warden::start(&data, &[]);
    let key = w.printed_key.clone().unwrap();
    assert!(
        w.startup_logs
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "JSON when stderr is not a terminal: {:?}",
        w.startup_logs
    );
    drop(w);
    let cfg = dir.path().join("warden.toml");
    std::fs::write(&cfg, "[log]\nformat = \"text\"\n").unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--grpc-listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--models")
        .arg(repo().join("models"))
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains(" listening "))
        .expect("a listening line");
    assert!(!listening.contains('\u{1b}'), "no colour off a terminal");
    let addr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .to_owned();
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(data.join("tls/ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let r = client
        .post(format!("https://{addr}/v1/models/iris:predict"))
        .header("x-api-key", &key)
        .json(&json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let access = lines
        .map_while(Result::ok)
        .find(|l| l.contains("warden::access"))
        .expect("an access line");
    let _ = child.kill();
    let _ = child.wait();
    for field in [
        "method=POST ",
        "path=/v1/models/iris:predict ",
        "status=200 ",
        "latency_us=",
        "principal=key:",
        "model=iris ",
        "version=1 ",
        "rows=1 ",
        "client=127.0.0.1 ",
        "request_id=",
    ] {
        assert!(access.contains(field), "{field} in {access}");
    }
}

#[test]
fn config_check_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good = write("good.toml", "[server]\nlisten = \"127.0.0.1:9000\"\n");
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (text, key) in [
        (
            "[server]\nlisten = \"0.0.0.0:80\"\n[tls]\nenabled = false\n",
            "tls.enabled",
        ),
        ("[server]\nlistne = \"x\"\n", "listne"),
        ("[tls]\nmin_version = \"1.0\"\n", "tls.min_version"),
        (
            "[tls]\ncert = \"c.pem\"\nkey = { env = \"WARDEN_TEST_UNSET_VARIABLE\" }\n",
            "tls.key",
        ),
    ] {
        let bad = write("bad.toml", text);
        let out = Command::new(BIN)
            .args(["config", "check"])
            .arg(&bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    // serve refuses the same way before binding anything.
    let bad = write(
        "bad.toml",
        "[server]\nlisten = \"0.0.0.0:80\"\n[tls]\nenabled = false\n",
    );
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Every verb has --help.
    for verb in [
        &["serve"][..],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
        &["keys", "rotate"],
        &["config", "check"],
        &["cert", "generate"],
    ] {
        let out = Command::new(BIN).args(verb).arg("--help").output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{verb:?}");
    }
}

#[test]
fn a_missing_runtime_library_is_a_clear_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .env("WARDEN_GRPC_LISTEN", "127.0.0.1:0")
        .arg(dir.path())
        .env("ORT_DYLIB_PATH", dir.path().join("nope.so"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("./scripts/setup.sh"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cert_generate_writes_a_private_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let run = |force: bool| {
        let mut c = Command::new(BIN);
        c.args(["cert", "generate", "--name", "warden.internal", "--out"])
            .arg(&out_dir);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    assert!(run(false).status.success());
    let mode = std::fs::metadata(out_dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Read by OpenSSL's peer (Python cryptography), not by Warden's code.
    let sans: Value = serde_json::from_str(&python_peer(
        "tls_peer.py",
        "cryptography",
        &["sans", out_dir.join("cert.pem").to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(
        sans["dns"],
        json!(["localhost", "warden.internal"]),
        "{sans}"
    );
    assert_eq!(sans["ip"], json!(["127.0.0.1", "::1"]), "{sans}");
    assert_eq!(run(false).status.code(), Some(2));
    assert!(run(true).status.success());
}

/// SIGTERM stops accepting but lets an in-flight request finish.
#[test]
fn sigterm_drains_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plain.toml");
    std::fs::write(&config, "[tls]\nenabled = false\n").unwrap();
    let w = Warden::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    let body = iris().to_string();
    let mut stream = std::net::TcpStream::connect(w.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // `Expect: 100-continue` makes the server say when the handler starts
    // reading the body: from then on the request is in flight.
    write!(
        stream,
        "POST /v1/models/iris:predict HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 100"), "{status}");
    Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .unwrap();
    // Give the signal time to arrive, so the body really comes after it.
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = reader.read_to_string(&mut response);
    assert!(
        response.trim_start().starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.contains("setosa"), "{response}");
    assert_eq!(w.terminate().code(), Some(0));
}

/// The commented example configuration is valid as shipped.
#[test]
fn the_example_config_is_valid() {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(repo().join("warden.example.toml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
