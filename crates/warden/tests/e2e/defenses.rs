//! ML-attack defenses from the outside: an out-of-distribution input is
//! flagged (audit record, metric) or, when the card says so, refused with
//! 422 `input_rejected`; ordinary inputs pass.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Warden, copy_dir, iris, repo};

/// A flower no training row resembles: long narrow sepals, a short petal as
/// wide as the widest.
fn odd_flower() -> Value {
    json!({"instances": [[7.9, 2.0, 1.0, 2.5]]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_distribution_inputs_are_flagged_or_rejected_per_card() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_dir(&repo().join("models"), &models);
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let (status, _, _) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    // Flag (the demo card's action): answered, and counted.
    let (status, _, body) = w
        .post("/v1/models/iris:predict", &key, odd_flower().to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metrics = w.metrics_text(&key).await;
    assert!(
        metrics
            .contains("warden_defense_flags_total{model=\"iris\",kind=\"out_of_distribution\"} 1"),
        "{metrics}"
    );
    // The default audit durability commits within 50 ms.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, page) = w
        .admin_call("GET", "/admin/audit?model=iris&limit=100", Some(&key), None)
        .await;
    let flags: Vec<Value> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"]["request_id"].is_string())
        .map(|r| r["record"]["defense_flags"].clone())
        .collect();
    assert_eq!(flags, vec![json!([]), json!(["out_of_distribution"])]);
    drop(w);

    // Reject: the same card with action = "reject".
    let card = models.join("iris/model.toml");
    let text = std::fs::read_to_string(&card).unwrap();
    let text = text.replacen(
        "[defenses.out_of_distribution]\n",
        "[defenses.out_of_distribution]\naction = \"reject\"\n",
        1,
    );
    let text = text.replacen("action = \"flag\"\nz_threshold", "z_threshold", 1);
    std::fs::write(&card, text).unwrap();
    let w = Warden::start(
        &dir.path().join("data2"),
        &["--models", models.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let (status, _, body) = w
        .post("/v1/models/iris:predict", &key, odd_flower().to_string())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "input_rejected");
    assert!(
        !body.to_string().contains("distribution"),
        "no detail for the prober"
    );
    let (status, _, _) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Sets the action of one `[defenses.<section>]` in a card (the demo
/// cards say `action = "flag"`).
fn set_defense_action(card: &std::path::Path, section: &str, action: &str) {
    let text = std::fs::read_to_string(card).unwrap();
    let at = text.find(&format!("[defenses.{section}]")).unwrap();
    let (head, tail) = text.split_at(at);
    let tail = tail.replacen("action = \"flag\"", &format!("action = \"{action}\""), 1);
    std::fs::write(card, format!("{head}{tail}")).unwrap();
}

/// Copies models/iris to `name` with the extraction monitor's action set.
fn iris_with_extraction_action(models: &std::path::Path, name: &str, action: &str) {
    copy_dir(&repo().join("models/iris"), &models.join(name));
    set_defense_action(&models.join(name).join("model.toml"), "extraction", action);
}

/// One step of a Papernot-style probing walk through iris's feature space:
/// each query a small step from the last, the pattern PRADA detects.
fn walk(q: usize) -> Value {
    let q = q as f64;
    json!({"instances": [[5.0, 3.0, 1.5 + 0.02 * q, 0.2 + 0.01 * q]]})
}

/// The extraction monitor (PRADA) through the server, one model per
/// action, one attacker key each: `flag` answers and records the flag,
/// `reject` refuses the attacker's queries from the flag on (422
/// `input_rejected`, no detail) while other principals are served, and
/// `throttle` charges the flagged attacker's rate limit ten-fold so it meets
/// 429 long before its budget in rows is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extraction_monitor_flags_a_probing_walk_and_applies_the_cards_action() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    for action in ["flag", "throttle", "reject"] {
        iris_with_extraction_action(&models, &format!("iris-{action}"), action);
    }
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let admin = w.printed_key.clone().unwrap();
    let new_key = |name: &'static str| {
        let w = &w;
        let admin = admin.clone();
        async move {
            let (_, created) = w
                .admin_call(
                    "POST",
                    "/admin/keys",
                    Some(&admin),
                    Some(json!({"name": name, "role": "predict"})),
                )
                .await;
            created["key"].as_str().unwrap().to_owned()
        }
    };

    // flag: every query answered; the flag is counted and on the records.
    let attacker = new_key("attacker-flag").await;
    for q in 0..150 {
        let (status, _, body) = w
            .post(
                "/v1/models/iris-flag:predict",
                &attacker,
                walk(q).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "query {q}: {body}");
    }
    let metrics = w.metrics_text(&admin).await;
    let flagged: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("warden_defense_flags_total{model=\"iris-flag\",kind=\"extraction\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!((1..=50).contains(&flagged), "{metrics}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, page) = w
        .admin_call(
            "GET",
            "/admin/audit?model=iris-flag&limit=500",
            Some(&admin),
            None,
        )
        .await;
    let marked = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["record"]["defense_flags"]
                .as_array()
                .is_some_and(|f| f.contains(&json!("extraction")))
        })
        .count() as u64;
    assert_eq!(marked, flagged);

    // reject: refused from the flag on, without saying why; others served.
    let attacker = new_key("attacker-reject").await;
    let mut first_refusal = None;
    for q in 0..150 {
        let (status, _, body) = w
            .post(
                "/v1/models/iris-reject:predict",
                &attacker,
                walk(q).to_string(),
            )
            .await;
        match (status, first_refusal) {
            (StatusCode::OK, None) => {}
            (StatusCode::UNPROCESSABLE_ENTITY, _) => {
                assert_eq!(body["code"], "input_rejected");
                assert!(!body.to_string().contains("extraction"), "{body}");
                first_refusal.get_or_insert(q);
            }
            other => panic!("query {q}: {other:?} {body}"),
        }
    }
    let first = first_refusal.expect("the walk was never refused");
    eprintln!("PRADA: flagged {flagged} of 150 walk queries; reject from query {first}");
    assert!((100..=150).contains(&first), "first refusal at {first}");
    let bystander = new_key("bystander").await;
    let (status, _, _) = w
        .post(
            "/v1/models/iris-reject:predict",
            &bystander,
            iris().to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // A reload of the same card keeps the monitor's state: still refused.
    let (status, _) = w
        .admin_call(
            "POST",
            "/admin/models/iris-reject/reload",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = w
        .post(
            "/v1/models/iris-reject:predict",
            &attacker,
            walk(3).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // throttle: the default `predict` budget is 600 rows at once; one-row
    // queries charged ten-fold once flagged run out within ~50 more.
    let attacker = new_key("attacker-throttle").await;
    let mut limited_at = None;
    for q in 0..400 {
        let (status, _, body) = w
            .post(
                "/v1/models/iris-throttle:predict",
                &attacker,
                walk(q % 150).to_string(),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["code"], "rate_limited");
            limited_at = Some(q);
            break;
        }
        assert_eq!(status, StatusCode::OK, "query {q}: {body}");
    }
    let limited_at = limited_at.expect("the flagged walk was never throttled");
    eprintln!("PRADA throttle: 429 at query {limited_at} (600 one-row queries unthrottled)");
    assert!(limited_at < 300, "throttled only at query {limited_at}");
}

/// Feature squeezing through the server, on held-out digits and FGSM
/// copies of them (eval/make_adversarial_fixture.py): with the card's
/// action set to `reject`, most adversarial digits are refused (422
/// `input_rejected`) and few clean ones (the threshold is calibrated to 5%
/// false positives; eval/ measures 96% detection for FGSM eps 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_squeezing_refuses_adversarial_digits_and_passes_clean_ones() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/e2e/fixtures/digits_fgsm.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_dir(&repo().join("models/digits"), &models.join("digits"));
    set_defense_action(&models.join("digits/model.toml"), "adversarial", "reject");
    // Squeezing alone: the FGSM copies resemble the clean digits sent
    // before them, which query similarity would refuse first.
    let card = models.join("digits/model.toml");
    let text = std::fs::read_to_string(&card).unwrap();
    let text = match (
        text.find("[defenses.similarity]"),
        text.find("# [defenses] end"),
    ) {
        (Some(at), Some(end)) => format!("{}{}", &text[..at], &text[end..]),
        _ => text,
    };
    std::fs::write(&card, text).unwrap();
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let refused = |rows: &Value| {
        let rows = rows.as_array().unwrap().clone();
        let w = &w;
        let key = key.clone();
        async move {
            let mut n = 0;
            for row in &rows {
                let body = json!({"instances": [row]}).to_string();
                let (status, _, answer) = w.post("/v1/models/digits:predict", &key, body).await;
                match status {
                    StatusCode::OK => {}
                    StatusCode::UNPROCESSABLE_ENTITY => {
                        assert_eq!(answer["code"], "input_rejected");
                        n += 1;
                    }
                    other => panic!("{other}: {answer}"),
                }
            }
            (n, rows.len())
        }
    };
    let (clean, of_clean) = refused(&fixture["clean"]).await;
    let (adversarial, of_adversarial) = refused(&fixture["adversarial"]).await;
    assert_eq!((of_clean, of_adversarial), (40, 40));
    eprintln!("feature squeezing refused {clean}/40 clean and {adversarial}/40 FGSM digits");
    assert!(clean <= 6, "{clean} of 40 clean digits refused");
    assert!(
        adversarial >= 32,
        "only {adversarial} of 40 adversarial digits refused"
    );
    let metrics = w.metrics_text(&key).await;
    assert!(
        metrics.contains(&format!(
            "warden_defense_flags_total{{model=\"digits\",kind=\"adversarial\"}} {}",
            clean + adversarial
        )),
        "{metrics}"
    );
}
