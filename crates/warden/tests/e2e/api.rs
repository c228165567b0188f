//! The API contract, checked by a tool no one here wrote: schemathesis
//! (installed by scripts/setup.sh) generates requests for every operation
//! of the served OpenAPI document and checks every answer against it.

use std::process::Command;

use super::{Warden, repo};

/// Every operation, on each demo model (path parameters pinned, so requests
/// reach the model's validation instead of a 404): no 5xx, and every status,
/// content type, header and body conforms to `/openapi.json`.
///
/// Left out: schemathesis's `positive_data_acceptance`, which expects any
/// body the document allows to be accepted. The document describes the v1
/// and v2 bodies for every model at once; which features and outputs a
/// model has is in its card and its metadata (`GET /v2/models/{model}`), so
/// a schema-valid body for one model is still refused by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_every_answer_conforms() {
    let fuzzer = repo().join(".runtime/schemathesis");
    assert!(
        fuzzer.join("schemathesis").is_dir(),
        "schemathesis is missing: run ./scripts/setup.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warden.toml");
    // Generated requests fail authentication on purpose now and then; bans
    // would turn the rest of the run into 403s. The token endpoint's own
    // strict limit likewise.
    std::fs::write(
        &cfg,
        "[limits.bans]\nenabled = false\n[limits.rates]\ntoken = { rate = \"100000/minute\", burst = 100000 }\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    for model in ["iris", "breast-cancer", "digits"] {
        let settings = dir.path().join(format!("schemathesis-{model}.toml"));
        std::fs::write(
            &settings,
            format!("[parameters]\n\"path.model\" = \"{model}\"\n\"path.version\" = \"1\"\n"),
        )
        .unwrap();
        let out = Command::new("python3")
            .args(["-m", "schemathesis.cli", "--config-file"])
            .arg(&settings)
            .arg("run")
            .arg(w.url("/openapi.json"))
            .args(["-H", &format!("X-API-Key: {key}")])
            .args([
                "--generation-with-security-parameters",
                "false",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
                "--max-examples",
                "25",
                "--seed",
                "20261129",
                "--tls-verify",
            ])
            .arg(data.join("tls/cert.pem"))
            .env("PYTHONPATH", &fuzzer)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis on {model}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Tested: 13"), "{model}: {text}");
    }
}
