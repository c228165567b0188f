//! Transport from the outside: certificates swapped on disk are served to
//! new handshakes without a restart while open connections keep theirs, and
//! a bad new pair leaves the old one in service. The client is Python's
//! ssl module (OpenSSL) with the `cryptography` package reading serials.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{BIN, Warden, repo};

fn tls_peer(args: &[&str]) -> String {
    let py = repo().join(".runtime/py");
    assert!(
        py.join("cryptography").is_dir(),
        "the Python test peers are missing: run ./scripts/setup.sh"
    );
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/tls_peer.py"))
        .args(args)
        .env("PYTHONPATH", &py)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tls_peer.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn generate(dir: &Path, days: &str) {
    let out = Command::new(BIN)
        .args(["cert", "generate", "--days", days, "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_restart_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let live = data.join("tls");
    let next = dir.path().join("next");
    generate(&live, "30");
    generate(&next, "90");
    // The client trusts both certificates (copies: the live files move).
    let (ca_old, ca_new) = (dir.path().join("old.pem"), dir.path().join("new.pem"));
    std::fs::copy(live.join("cert.pem"), &ca_old).unwrap();
    std::fs::copy(next.join("cert.pem"), &ca_new).unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nredirect_listen = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {{ file = {:?} }}\nreload_interval = \"200ms\"\n",
            live.join("cert.pem"),
            live.join("key.pem")
        ),
    )
    .unwrap();
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let port = w.addr.port().to_string();

    // The plaintext listener only redirects, to the same host and path.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = w.redirect.expect("the redirect listener");
    for (method, path) in [
        ("GET", "/v2/health/live"),
        ("POST", "/v1/models/iris:predict?x=1"),
    ] {
        let r = plain
            .request(
                method.parse().unwrap(),
                format!("http://127.0.0.1:{}{path}", redirect.port()),
            )
            .header("x-api-key", "wdn_sent_in_clear")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()["location"],
            format!("https://127.0.0.1:{port}{path}").as_str()
        );
        assert_eq!(r.text().await.unwrap(), "", "nothing served in clear");
    }
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    let swapped: Value = serde_json::from_str(&tls_peer(&[
        "swap",
        &port,
        &s(&live.join("cert.pem")),
        &s(&live.join("key.pem")),
        &s(&next.join("cert.pem")),
        &s(&next.join("key.pem")),
        &s(&ca_old),
        &s(&ca_new),
    ]))
    .unwrap();
    assert_ne!(swapped["old"], swapped["new"], "{swapped}");
    assert_eq!(swapped["kept_alive"], true, "{swapped}");
    assert!(swapped["seconds"].as_f64().unwrap() < 5.0, "{swapped}");

    // A broken certificate file: the new pair stays in service, on file
    // change and on SIGHUP alike, and the server keeps answering.
    std::fs::write(
        live.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    Command::new("kill")
        .args(["-HUP", &w.child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // (The peer's GET /v2/health/live succeeding shows the server answering.)
    let serving = tls_peer(&["serial", &port, &s(&ca_new)]);
    assert_eq!(serde_json::json!(serving), swapped["new"]);

    let logs = w.stop_and_collect_logs();
    assert!(
        logs.iter().any(|l| l.contains("TLS certificate reloaded")),
        "no reload logged"
    );
    assert!(
        logs.iter()
            .filter(|l| l.contains("\"alert\":\"certificate_reload_failed\""))
            .count()
            >= 2,
        "a bad file alerts on change and on SIGHUP"
    );
}
