//! Model integrity and encryption at rest from the outside: a model signed
//! by a trusted key and encrypted with the configured key serves; a changed
//! file, a signature by an unknown key and a file encrypted with another key
//! each refuse to load with a clear message; a refused new version leaves
//! the previous one serving.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;

use super::{BIN, Warden, copy_dir, iris, private_file, repo};

fn warden(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A signing key: (private key file, public key base64).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ok(&warden(&[
        "model",
        "keygen",
        "--out",
        path.to_str().unwrap(),
    ]));
    let public = out
        .trim()
        .strip_prefix("public_key = \"")
        .and_then(|s| s.strip_suffix('"'))
        .unwrap()
        .to_owned();
    (path, public)
}

fn config(dir: &Path, name: &str, public: &str, key_hex: &str) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    private_file(&key, key_hex);
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[models]\nrequire_signature = true\n[[models.trusted_keys]]\nname = \"release\"\npublic_key = \"{public}\"\n[encryption]\nkey = {{ file = {key:?} }}\n"
        ),
    )
    .unwrap();
    cfg
}

fn serve_refused(cfg: &Path, models: &Path, data: &Path) -> String {
    let out = Command::new(BIN)
        .env("WARDEN_GRPC_LISTEN", "127.0.0.1:0")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(cfg)
        .arg("--models")
        .arg(models)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_and_encrypted_models_serve_and_tampered_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (release, public) = keygen(d, "release.pem");
    let (stranger, _) = keygen(d, "stranger.pem");
    let cfg = config(d, "good", &public, &"ab".repeat(32));
    let other_cfg = config(d, "other", &public, &"cd".repeat(32));
    let models = d.join("models");
    copy_dir(&repo().join("models/iris"), &models.join("iris"));
    let v1 = models.join("iris/1");
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    // Sign, then encrypt, then drop the plaintext: verify passes.
    ok(&warden(&[
        "model",
        "sign",
        "--key",
        &s(&release),
        "--name",
        "release",
        &s(&v1.join("model.onnx")),
    ]));
    ok(&warden(&[
        "model",
        "encrypt",
        "--config",
        &s(&cfg),
        &s(&v1.join("model.onnx")),
    ]));
    std::fs::remove_file(v1.join("model.onnx")).unwrap();
    let verified = ok(&warden(&["model", "verify", "--config", &s(&cfg), &s(&v1)]));
    assert!(
        verified.contains("OK") && verified.contains("signature by release"),
        "{verified}"
    );

    // Version 2: signed, then changed on disk. The server starts and serves
    // version 1, with an alert for version 2.
    let v2 = models.join("iris/2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(
        repo().join("models/iris/1/model.onnx"),
        v2.join("model.onnx"),
    )
    .unwrap();
    ok(&warden(&[
        "model",
        "sign",
        "--key",
        &s(&release),
        &s(&v2.join("model.onnx")),
    ]));
    let mut bytes = std::fs::read(v2.join("model.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(v2.join("model.onnx"), &bytes).unwrap();
    let refused = warden(&["model", "verify", "--config", &s(&cfg), &s(&v2)]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the file was changed"));

    let data = d.join("data");
    let w = Warden::start(&data, &["--config", &s(&cfg), "--models", &s(&models)]);
    let key = w.printed_key.clone().unwrap();
    let (status, _, body) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, meta) = w.get("/v2/models/iris", Some(&key)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["versions"], serde_json::json!(["1"]), "{meta}");
    let (status, _) = w.get("/v2/models/iris/versions/2/ready", Some(&key)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let metrics = w.metrics_text(&key).await;
    assert!(
        metrics.contains("warden_alerts_total{kind=\"model_integrity_failed\"} 1"),
        "{metrics}"
    );
    let logs = w.stop_and_collect_logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("\"alert\":\"model_integrity_failed\"")
                && l.contains("the file was changed"))
    );
    std::fs::remove_dir_all(&v2).unwrap();

    // Each of these refuses the start, naming the file and the reason.
    // 1. The only version was changed after signing.
    let only = d.join("m1");
    copy_dir(&repo().join("models/iris"), &only.join("iris"));
    let f = only.join("iris/1/model.onnx");
    ok(&warden(&["model", "sign", "--key", &s(&release), &s(&f)]));
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&f, &bytes).unwrap();
    let err = serve_refused(&cfg, &only, &d.join("d1"));
    assert!(
        err.contains("model.onnx") && err.contains("the file was changed"),
        "{err}"
    );

    // 2. Signed by a key the configuration does not trust.
    let unknown = d.join("m2");
    copy_dir(&repo().join("models/iris"), &unknown.join("iris"));
    let f = unknown.join("iris/1/model.onnx");
    ok(&warden(&[
        "model",
        "sign",
        "--key",
        &s(&stranger),
        "--name",
        "stranger",
        &s(&f),
    ]));
    let err = serve_refused(&cfg, &unknown, &d.join("d2"));
    assert!(
        err.contains("\"stranger\", which is not a trusted key"),
        "{err}"
    );

    // 3. Encrypted with another key.
    let foreign = d.join("m3");
    copy_dir(&repo().join("models/iris"), &foreign.join("iris"));
    let f = foreign.join("iris/1/model.onnx");
    ok(&warden(&["model", "sign", "--key", &s(&release), &s(&f)]));
    ok(&warden(&[
        "model",
        "encrypt",
        "--config",
        &s(&other_cfg),
        &s(&f),
    ]));
    std::fs::remove_file(&f).unwrap();
    let err = serve_refused(&cfg, &foreign, &d.join("d3"));
    assert!(
        err.contains("model.onnx.enc")
            && err.contains("cannot be decrypted with the configured encryption key"),
        "{err}"
    );

    // 4. Unsigned, when signatures are required.
    let unsigned = d.join("m4");
    copy_dir(&repo().join("models/iris"), &unsigned.join("iris"));
    let err = serve_refused(&cfg, &unsigned, &d.join("d4"));
    assert!(err.contains("must be signed"), "{err}");

    // 5. A correctly signed file (and its signature) copied into another
    // version folder: the signature names its place.
    let moved = d.join("m5");
    copy_dir(&repo().join("models/iris"), &moved.join("iris"));
    let f = moved.join("iris/1/model.onnx");
    ok(&warden(&["model", "sign", "--key", &s(&release), &s(&f)]));
    std::fs::rename(moved.join("iris/1"), moved.join("iris/7")).unwrap();
    let err = serve_refused(&cfg, &moved, &d.join("d5"));
    assert!(
        err.contains("the signature is for iris version 1, not iris version 7"),
        "{err}"
    );

    // Decrypt gives back the exact plaintext.
    let out = d.join("plain.onnx");
    ok(&warden(&[
        "model",
        "decrypt",
        "--config",
        &s(&cfg),
        &s(&v1.join("model.onnx.enc")),
        "--out",
        &s(&out),
    ]));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(repo().join("models/iris/1/model.onnx")).unwrap()
    );
}

/// Models are listed and reloaded through the management API while the
/// server serves: a new version folder is picked up by a reload; a reload
/// whose files do not load (a broken card, a broken graph, a changed file
/// under a hash pin) changes nothing, answers `invalid_request` without
/// naming any file, and raises an alert; the model keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_reload_while_serving_and_a_bad_reload_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_dir(&repo().join("models/iris"), &models.join("iris"));
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let w = Warden::start(&dir.path().join("data"), &["--models", &s(&models)]);
    let key = w.printed_key.clone().unwrap();
    let predicts = || async {
        let (status, _, body) = w
            .post("/v1/models/iris:predict", &key, iris().to_string())
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };

    let (status, list) = w.admin_call("GET", "/admin/models", Some(&key), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["models"][0]["name"], "iris");
    assert_eq!(list["models"][0]["serving"], 1);

    // A new version on disk: served after a reload.
    copy_dir(&models.join("iris/1"), &models.join("iris/2"));
    let (status, reloaded) = w
        .admin_call("POST", "/admin/models/iris/reload", Some(&key), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{reloaded}");
    assert_eq!(reloaded["serving"], 2);
    assert_eq!(reloaded["versions"], serde_json::json!([1, 2]));
    let (_, meta) = w.get("/v2/models/iris", Some(&key)).await;
    assert_eq!(meta["versions"], serde_json::json!(["1", "2"]), "{meta}");
    predicts().await;

    // Each bad state of the folder: the reload is refused, version 2 serves on.
    let card = models.join("iris/model.toml");
    let good_card = std::fs::read_to_string(&card).unwrap();
    let graph = models.join("iris/2/model.onnx");
    let good_graph = std::fs::read(&graph).unwrap();
    let digest = {
        let out = Command::new("sha256sum").arg(&graph).output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_owned()
    };
    let mut changed = good_graph.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    type Break<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let breaks: Vec<Break<'_>> = vec![
        (
            "broken card",
            Box::new(|| std::fs::write(&card, "max_batch = \"many\"\n").unwrap()),
        ),
        (
            "broken graph",
            Box::new(|| std::fs::write(&graph, b"not onnx").unwrap()),
        ),
        (
            "changed file under a pin",
            Box::new(|| {
                // Pin both versions; version 2's file then changes. Version 1
                // passes, so the reload would serve 1: the operator asked for
                // 2 by pinning it, so it is refused.
                std::fs::write(
                    &card,
                    format!("version = 2\n{good_card}\n[integrity.sha256]\n\"2\" = \"{digest}\"\n"),
                )
                .unwrap();
                std::fs::write(&graph, &changed).unwrap();
            }),
        ),
    ];
    let mut failures = 0;
    for (what, apply) in &breaks {
        apply();
        let (status, body) = w
            .admin_call("POST", "/admin/models/iris/reload", Some(&key), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["code"], "invalid_request", "{what}");
        let text = body.to_string();
        assert!(
            !text.contains("model.toml") && !text.contains("model.onnx"),
            "{what}: {text}"
        );
        failures += 1;
        let (_, list) = w.admin_call("GET", "/admin/models", Some(&key), None).await;
        assert_eq!(list["models"][0]["serving"], 2, "{what}");
        predicts().await;
        std::fs::write(&card, &good_card).unwrap();
        std::fs::write(&graph, &good_graph).unwrap();
    }
    let metrics = w.metrics_text(&key).await;
    assert!(
        metrics.contains(&format!(
            "warden_alerts_total{{kind=\"model_reload_failed\"}} {failures}"
        )),
        "{metrics}"
    );

    // Unknown models are 404; a caller without admin:models is refused.
    let (status, _) = w
        .admin_call("POST", "/admin/models/nope/reload", Some(&key), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, created) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&key),
            Some(serde_json::json!({"name": "p", "role": "predict"})),
        )
        .await;
    let predict_key = created["key"].as_str().unwrap().to_owned();
    for (method, path) in [
        ("GET", "/admin/models"),
        ("POST", "/admin/models/iris/reload"),
    ] {
        let (status, _) = w.admin_call(method, path, Some(&predict_key), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    let logs = w.stop_and_collect_logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("\"alert\":\"model_reload_failed\"") && l.contains("model.toml"))
    );
}
