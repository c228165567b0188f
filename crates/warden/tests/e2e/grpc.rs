//! The Open Inference Protocol over gRPC (docs/grpc.md), from outside:
//! Triton's and KServe's gRPC clients unchanged against every demo model over TLS with an
//! API key in metadata, the REST answer to the same input equal to the gRPC
//! one, and the bad inputs of the gRPC issue each refused with its status
//! and Warden's code, the next call served.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::exhaustion::tls_to;
use super::{Warden, python_with, repo};

#[tokio::test(flavor = "multi_thread")]
async fn triton_grpc_client_gets_the_rest_answers_and_attacks_get_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Reflection on (it is off by default), for grpcurl-style discovery.
    std::fs::create_dir_all(dir.path()).unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        "[grpc]\nreflection = true\n\n[roles.app]\npermissions = [\"predict:iris\"]\n",
    )
    .unwrap();
    let w = Warden::start(&data, &["--config", config.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    // A key allowed iris only (digits is hidden from it), and a revoked one.
    let mut keys = Vec::new();
    for name in ["app", "gone"] {
        let (status, body) = w
            .admin_json(
                "POST",
                "/admin/keys",
                &key,
                Some(serde_json::json!({"name": name, "role": "app"})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
        keys.push((
            body["key"].as_str().unwrap().to_owned(),
            body["id"].as_str().unwrap().to_owned(),
        ));
    }
    let (status, body) = w
        .admin_json(
            "POST",
            &format!("/admin/keys/{}/revoke", keys[1].1),
            &key,
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    let grpc = w.grpc.expect("the gRPC listener is on by default");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/grpc_clients.py");
    let out = python_with(&["tritonclient"], &script)
        .arg(format!("localhost:{}", grpc.port()))
        .arg(format!("localhost:{}", w.addr.port()))
        .arg(data.join("tls/ca.pem"))
        .arg(&key)
        .arg(repo().join("models"))
        .arg(&keys[0].0)
        .arg(&keys[1].0)
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
        .arg(data.join("tls/ca.pem"))
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
        // A model the key may not use: exactly as unknown.
        ("hidden_model", "NOT_FOUND", Some("not_found")),
        ("hidden_model_metadata", "NOT_FOUND", Some("not_found")),
        ("allowed_model", "OK", None),
        ("revoked_key", "UNAUTHENTICATED", Some("unauthenticated")),
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
    // An HTTP/2 rapid-reset burst on the gRPC listener: the connection is
    // told to go away (GOAWAY) or closed, and the next client is served.
    assert!(rapid_reset(&w, grpc), "no GOAWAY after a rapid-reset burst");
    let out = python_with(&["tritonclient"], &script)
        .args(["live", &format!("localhost:{}", grpc.port())])
        .arg(data.join("tls/ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("True"),
        "after the burst: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A deadline of 1 µs: cut (by the client or by Warden), never a hang.
    let d = bad["deadline_1us"]["status"].as_str().unwrap();
    assert!(["DEADLINE_EXCEEDED", "OK"].contains(&d), "{d}");
    // 10,000 concurrent calls on one connection: every one answered (the
    // listener serves 256 streams at once; the rest wait for a stream, or
    // are refused by the rate limit), none hangs.
    let concurrent = seen["concurrent"].as_object().unwrap();
    let answered: u64 = concurrent.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(answered, 10_000, "{concurrent:?}");
    assert!(
        concurrent.get("OK").and_then(|v| v.as_u64()).unwrap_or(0) > 0,
        "{concurrent:?}"
    );
}

/// Opens an HTTP/2 connection to the gRPC listener and sends 2,000 streams,
/// each HEADERS at once followed by RST_STREAM (CVE-2023-44487's rapid
/// reset), written as raw frames. True if the server answered with GOAWAY
/// (or closed the connection) within 10 s.
fn rapid_reset(w: &Warden, grpc: std::net::SocketAddr) -> bool {
    let mut tls = tls_to(w, grpc, "127.0.0.1", "h2").unwrap();
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    // HPACK: :method POST (static 3), :scheme https (static 7), then
    // literal fields without indexing, new names.
    let literal = |name: &str, value: &str| {
        let mut b = vec![0u8, name.len() as u8];
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
        b
    };
    let mut headers = vec![0x83u8, 0x87];
    headers.extend(literal(
        ":path",
        "/inference.GRPCInferenceService/ModelInfer",
    ));
    headers.extend(literal(":authority", "localhost"));
    headers.extend(literal("content-type", "application/grpc"));
    headers.extend(literal("te", "trailers"));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        // HEADERS with END_HEADERS, then RST_STREAM(CANCEL = 8).
        out.extend(frame(0x1, 0x4, id, &headers));
        out.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    if tls.write_all(&out).and_then(|()| tls.flush()).is_err() {
        return true;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        // Walk the frames read so far, looking for a GOAWAY (type 7).
        let mut at = 0;
        while at + 9 <= seen.len() {
            let len = (usize::from(seen[at]) << 16)
                | (usize::from(seen[at + 1]) << 8)
                | usize::from(seen[at + 2]);
            if seen[at + 3] == 0x7 && at + 17 <= seen.len() {
                // The error code: ENHANCE_YOUR_CALM (0xb), the reset limit,
                // not a framing or compression error of this test's frames.
                let code = u32::from_be_bytes([
                    seen[at + 13],
                    seen[at + 14],
                    seen[at + 15],
                    seen[at + 16],
                ]);
                assert_eq!(code, 0xb, "GOAWAY with error code {code}");
                return true;
            }
            at += 9 + len;
        }
    }
    false
}
