//! The Open Inference Protocol over gRPC (docs/grpc.md), from outside:
//! Triton's and KServe's gRPC clients unchanged against every demo model over TLS with an
//! API key in metadata, the REST answer to the same input equal to the gRPC
//! one, and the bad inputs of the gRPC issue each refused with its status
//! and Warden's code, the next call served.

use std::path::Path;

use super::{Warden, python_with, repo};

#[tokio::test(flavor = "multi_thread")]
async fn triton_grpc_client_gets_the_rest_answers_and_attacks_get_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Reflection on (it is off by default), for grpcurl-style discovery.
    std::fs::create_dir_all(dir.path()).unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(&config, "[grpc]\nreflection = true\n").unwrap();
    let w = Warden::start(&data, &["--config", config.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    let grpc = w.grpc.expect("the gRPC listener is on by default");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/grpc_clients.py");
    let out = python_with(&["tritonclient"], &script)
        .arg(format!("localhost:{}", grpc.port()))
        .arg(format!("localhost:{}", w.addr.port()))
        .arg(data.join("tls/cert.pem"))
        .arg(&key)
        .arg(repo().join("models"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpc_clients.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["live"], true, "{seen}");
    assert_eq!(seen["ready"], true, "{seen}");
    for model in [
        "iris",
        "breast-cancer",
        "digits",
        "diabetes",
        "recommender",
        "digits-cnn",
        "sentiment",
    ] {
        let m = &seen["models"][model];
        assert_eq!(m["ready"], true, "{model}: {m}");
        assert!(!m["grpc"].as_object().unwrap().is_empty(), "{model}: {m}");
        // The same outputs, the same values, over both transports.
        assert_eq!(m["grpc"], m["rest"], "{model}");
        if let Some(labels) = m["labels"].as_array() {
            assert_eq!(&m["grpc"]["label"], &serde_json::json!(labels), "{model}");
        }
    }
    // KServe's gRPC client, unchanged, gets the same answers.
    let out = python_with(&["kserve"], &script)
        .arg("kserve")
        .arg(format!("localhost:{}", grpc.port()))
        .arg(data.join("tls/cert.pem"))
        .arg(&key)
        .arg(repo().join("models"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpc_clients.py kserve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kserve: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (model, m) in seen["models"].as_object().unwrap() {
        assert_eq!(kserve[model], m["grpc"], "{model}");
    }
    let bad = &seen["bad"];
    let expect = [
        ("no_credential", "UNAUTHENTICATED", Some("unauthenticated")),
        ("wrong_key", "UNAUTHENTICATED", Some("unauthenticated")),
        ("bearer_garbage", "UNAUTHENTICATED", Some("unauthenticated")),
        ("unknown_model", "NOT_FOUND", Some("not_found")),
        (
            "raw_size_mismatch",
            "INVALID_ARGUMENT",
            Some("validation_failed"),
        ),
        (
            "raw_and_typed",
            "INVALID_ARGUMENT",
            Some("validation_failed"),
        ),
        ("typed", "OK", None),
        ("nan", "INVALID_ARGUMENT", Some("validation_failed")),
        (
            "unknown_input",
            "INVALID_ARGUMENT",
            Some("validation_failed"),
        ),
        ("over_cap", "RESOURCE_EXHAUSTED", Some("payload_too_large")),
        (
            "malformed_protobuf",
            "INVALID_ARGUMENT",
            Some("invalid_request"),
        ),
        ("unknown_method", "UNIMPLEMENTED", None),
        (
            "unknown_service",
            "UNIMPLEMENTED",
            Some("method_not_allowed"),
        ),
        (
            "reflection_no_credential",
            "UNAUTHENTICATED",
            Some("unauthenticated"),
        ),
        ("reflection", "OK", None),
        ("after_all", "OK", None),
    ];
    for (case, status, code) in expect {
        let b = &bad[case];
        assert_eq!(b["status"], status, "{case}: {b}");
        if let Some(code) = code {
            assert_eq!(b["warden_code"], code, "{case}: {b}");
            assert!(b["request_id"].is_string(), "{case}: {b}");
        }
    }
    // A deadline of 1 µs: cut (by the client or by Warden), never a hang.
    let d = bad["deadline_1us"]["status"].as_str().unwrap();
    assert!(["DEADLINE_EXCEEDED", "OK"].contains(&d), "{d}");
    // 300 concurrent calls on one connection: every one answered.
    let concurrent = seen["concurrent"].as_object().unwrap();
    let answered: u64 = concurrent.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(answered, 300, "{concurrent:?}");
    assert!(
        concurrent.get("OK").and_then(|v| v.as_u64()).unwrap_or(0) > 0,
        "{concurrent:?}"
    );
}
