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
