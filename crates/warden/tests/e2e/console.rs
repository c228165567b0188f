//! The operator's console (docs/console.md), in a real headless Chromium
//! (Debian's, driven by playwright-core from npm) against a real server
//! with traffic: console.mjs signs in, watches the charts move after a
//! burst, reads a model card, creates and revokes a key, filters the audit
//! trail and verifies the chain, lifts a ban, is stopped when its key is
//! revoked, and, with a `metrics` key, sees the overview only. Markup in a
//! model description and in a key name must render as text. Screenshots of
//! every page go to target/ci-artifacts/console/ (docs/console.md shows them).

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Warden, repo};

/// Text that runs script if a page ever puts it in as HTML.
const XSS: &str = r#"<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>"#;
/// The same, short enough for a key name (64 characters at most).
const XSS_NAME: &str = "ops <img src=x onerror=window.__xss=1><b>key</b>";

fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("1")).unwrap();
    for f in ["model.toml", "ood_stats.json", "fixtures.json"] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
    std::fs::copy(from.join("1/model.onnx"), to.join("1/model.onnx")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_headless_chromium_and_escapes_what_clients_control() {
    let modules = repo().join(".runtime/node/node_modules");
    assert!(
        modules.join("playwright-core").is_dir(),
        "playwright-core is missing: run ./scripts/setup.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    // iris, with markup and script in its card's description; and digits.
    let models = dir.path().join("models");
    copy_model(&repo().join("models/iris"), &models.join("iris"));
    copy_model(&repo().join("models/digits"), &models.join("digits"));
    let card = models.join("iris/model.toml");
    let text = std::fs::read_to_string(&card).unwrap();
    let text = text.replacen(
        "description = \"Iris species from four flower measurements (random forest)\"",
        &format!("description = {:?}", format!("Iris {XSS} species")),
        1,
    );
    assert!(text.contains("__xss"));
    // A budget, so that the Abuse page has quota usage to show.
    std::fs::write(&card, format!("{text}\n[budget]\nper_day = 1000\n")).unwrap();
    // Six failed authentications ban an address (on each plane apart:
    // console.mjs makes eight on the data plane, fewer on the management).
    let cfg = dir.path().join("warden.toml");
    std::fs::write(&cfg, "[limits.bans]\nfailures = 6\n").unwrap();
    let data = dir.path().join("data");
    let w = Warden::start(
        &data,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--models",
            models.to_str().unwrap(),
        ],
    );
    let admin = w.printed_key.clone().unwrap();

    // The console is on the management listener only.
    for path in ["/console", "/console/app.js", "/console/uPlot.iife.min.js"] {
        let r = w.client.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "data plane {path}");
        let r = w.client.get(w.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "management {path}");
        assert_eq!(
            r.headers()["content-security-policy"],
            warden_server::console::CSP
        );
    }
    let r = w
        .client
        .get(w.admin_url("/console/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A metrics-role key, and a spare admin key to revoke mid-session.
    let (status, metrics) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "prometheus", "role": "metrics"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{metrics}");
    let (status, spare) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "second operator", "role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spare}");
    // An application key that has used some of its iris budget.
    let (status, app) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&admin),
            Some(json!({"name": "reporting-app", "role": "predict", "models": ["iris"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    for _ in 0..7 {
        let r = w
            .client
            .post(w.url("/v1/models/iris:predict"))
            .header("x-api-key", app["key"].as_str().unwrap())
            .json(&json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The metrics key may read the overview and nothing else.
    let (status, overview) = w
        .admin_call("GET", "/admin/overview", metrics["key"].as_str(), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["series"]["t"].as_array().unwrap().len(), 90);
    for path in [
        "/admin/keys",
        "/admin/models/iris",
        "/admin/audit/verify",
        "/admin/bans",
    ] {
        let (status, _) = w
            .admin_call("GET", path, metrics["key"].as_str(), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }

    let shots = repo().join("target/ci-artifacts/console");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let config = dir.path().join("console.json");
    std::fs::write(
        &config,
        json!({
            "admin": w.admin_url("").trim_end_matches('/'),
            "data": w.url("").trim_end_matches('/'),
            "adminKey": admin,
            "metricsKey": metrics["key"],
            "spareKey": spare["key"],
            "spareKeyId": spare["id"],
            "xssName": XSS_NAME,
            "shots": shots,
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/console.mjs"))
        .arg(&config)
        .env("WARDEN_NODE_MODULES", &modules)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_else(|_| {
            panic!(
                "console.mjs: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        out.status.success(),
        "console.mjs: {seen:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The page: served with its policy, nothing from elsewhere, no error.
    assert_eq!(seen["status"], 200);
    assert_eq!(seen["csp"], warden_server::console::CSP);
    assert_eq!(seen["offOrigin"], json!([]), "{seen:#}");
    assert_eq!(seen["pageErrors"], json!([]), "{seen:#}");
    assert_eq!(seen["consoleErrors"], json!([]), "{seen:#}");
    assert_eq!(seen["cspBeforeReload"], json!([]), "{seen:#}");
    assert_eq!(seen["cspViolations"], json!([]), "{seen:#}");
    // Sign-in: a wrong key is refused; the right one is kept nowhere.
    assert_eq!(
        seen["wrongCredential"],
        "This credential is not accepted here."
    );
    assert_eq!(seen["wrongCredentialNavHidden"], true);
    assert_eq!(
        seen["noCertificate"],
        "No client certificate was accepted: sign in with a key."
    );
    assert_eq!(seen["skipFocus"], "main");
    assert_eq!(
        seen["storage"],
        json!({"cookies": "", "local": 0, "session": 0})
    );
    assert_eq!(
        seen["navAdmin"],
        json!(["Overview", "Models", "Access", "Audit", "Abuse"])
    );
    // The charts moved with the burst, refusals by code among them.
    assert_eq!(seen["answered"], 60);
    assert!(
        seen["requestsAfter"].as_u64().unwrap() >= seen["requestsBefore"].as_u64().unwrap() + 83
    );
    let legend = seen["refusalLegend"].to_string();
    for code in ["validation_failed", "unauthenticated"] {
        assert!(legend.contains(code), "{code} in {legend}");
    }
    assert!(seen["charts"].as_u64().unwrap() >= 3);
    // Markup shows as text and never runs.
    assert_eq!(seen["description"], format!("Iris {XSS} species"));
    assert!(
        seen["keyRowText"].as_str().unwrap().contains(XSS_NAME),
        "{seen:#}"
    );
    assert_eq!(seen["xssBeforeReload"], "none");
    assert_eq!(seen["xss"], "none");
    for table in ["Inputs", "Outputs", "Output policy per role", "Defenses"] {
        assert!(seen["modelTables"].to_string().contains(table), "{table}");
    }
    // The new key's secret was shown once, and revoking it took effect.
    let created = seen["createdSecret"].as_str().unwrap().trim().to_owned();
    assert!(created.starts_with("wdn_"));
    // Audit: the filter found the refusals; the chain verifies.
    let rows = seen["auditRows"].as_array().unwrap();
    assert!(rows.len() >= 15, "{seen:#}");
    assert!(
        rows.iter()
            .all(|r| r.as_str().unwrap().contains("validation_failed"))
    );
    assert_eq!(seen["verify"], "chain intact");
    // Abuse: the ban from the burst, then lifted; the data plane serves again.
    assert!(
        seen["bansBefore"].to_string().contains("addr:127.0.0.1"),
        "{seen:#}"
    );
    assert_eq!(seen["bansAfter"], 0);
    let quotas = seen["quotaRows"].to_string();
    assert!(
        quotas.contains("reporting-app") && quotas.contains("7 / 1,000"),
        "{quotas}"
    );
    let r = w
        .client
        .post(w.url("/v1/models/iris:predict"))
        .header("x-api-key", &admin)
        .json(&json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The key the console created and revoked is refused.
    let r = w
        .client
        .post(w.url("/v1/models/iris:predict"))
        .header("x-api-key", &created)
        .json(&json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The revoked operator's session ended at its next action.
    assert_eq!(seen["spareRevoked"], 200);
    assert!(
        seen["afterRevoke"]
            .as_str()
            .unwrap()
            .contains("no longer accepted"),
        "{seen:#}"
    );
    // A metrics key: the overview only, no write button, and the API says 403.
    assert_eq!(seen["navMetrics"], json!(["Overview"]));
    assert_eq!(seen["metricsAccessPage"], "Not available");
    assert_eq!(seen["metricsButtons"], json!([]));
    assert_eq!(seen["metricsWrite"], 403);
    assert_eq!(seen["afterReloadSignedOut"], true);
    for page in ["signin", "overview", "models", "access", "audit", "abuse"] {
        let shot = shots.join(format!("{page}.png"));
        assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "{page}");
    }

    // A 10,000-record page is cut to the API's largest, 1,000.
    let (status, page) = w
        .admin_call("GET", "/admin/audit?limit=10000", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let n = page["records"].as_array().unwrap().len();
    assert!((100..=1000).contains(&n), "{n}");

    // Tampering: the verification names the first bad record.
    let (_, before) = w
        .admin_call("GET", "/admin/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(before["ok"], true, "{before}");
    let db = data.join("warden.db");
    let ok = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute(\"UPDATE audit SET record = replace(record, 'validation_failed', 'ok') WHERE seq = (SELECT min(seq) FROM audit WHERE record LIKE '%validation_failed%')\"); c.commit()",
        ])
        .arg(&db)
        .status()
        .unwrap();
    assert!(ok.success());
    let (status, after) = w
        .admin_call("GET", "/admin/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["ok"], false, "{after}");
    let chain = &after["chains"][0];
    assert_eq!(chain["first_bad"]["problem"], "modified", "{after}");
    assert!(chain["first_bad"]["seq"].as_i64().unwrap() > 1);
}
