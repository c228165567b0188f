//! Query similarity (docs/defenses.md, "Query-based attacks: similarity")
//! from the outside, on the shipped digits card: a recorded HopSkipJump
//! query sequence (eval/art.sh wrote the fixture from a real ART run) is
//! refused within its first queries, also when spread over 10 keys and
//! across a model reload; natural traffic — every digits test row sent by
//! each of 20 keys, and a client re-sending the same rows — is not; a
//! `throttle` action gives a flagged client that honours Retry-After a
//! tenth of its rate; two replicas share the store through Redis; and a
//! card's `[budget]` bounds every principal but admin.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::limits::Redis;
use super::{Warden, copy_dir, repo};

fn fixture() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/e2e/fixtures/hsj_digits.json"),
        )
        .unwrap(),
    )
    .unwrap()
}

fn rows(v: &Value) -> Vec<Value> {
    v.as_array().unwrap().clone()
}

/// Rate limits high enough for the attack replay: only the defenses refuse.
const OPEN_LIMITS: &str = "[limits.rates]\ndefault = { rate = \"100000000/hour\", burst = 1000000 }\npredict = { rate = \"100000000/hour\", burst = 1000000 }\n";

async fn new_key(w: &Warden, admin: &str, name: &str, role: &str) -> String {
    let (status, created) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(admin),
            Some(json!({"name": name, "role": role})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["key"].as_str().unwrap().to_owned()
}

/// Starts Warden in `dir` on the models in `dir/models`, with `config`.
fn start(dir: &std::path::Path, config: &str) -> Warden {
    let path = dir.join("warden.toml");
    std::fs::write(&path, config).unwrap();
    Warden::start(
        &dir.join("data"),
        &[
            "--models",
            dir.join("models").to_str().unwrap(),
            "--config",
            path.to_str().unwrap(),
        ],
    )
}

/// Sends `queries` one row per request to `model`, key `keys[i % len]`:
/// the index of the first refusal and how many were refused.
async fn replay(
    w: &Warden,
    model: &str,
    keys: &[String],
    queries: &[Value],
) -> (Option<usize>, usize) {
    let (mut first, mut refused) = (None, 0);
    for (i, q) in queries.iter().enumerate() {
        let body = json!({"instances": [q]}).to_string();
        let (status, _, answer) = w
            .post(
                &format!("/v1/models/{model}:predict"),
                &keys[i % keys.len()],
                body,
            )
            .await;
        match status {
            StatusCode::OK => {}
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(answer["code"], "input_rejected", "{answer}");
                assert!(
                    !answer.to_string().contains("similar"),
                    "no detail: {answer}"
                );
                first.get_or_insert(i);
                refused += 1;
            }
            other => panic!("query {i}: {other} {answer}"),
        }
    }
    (first, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_hopskipjump_is_refused_early_and_natural_traffic_is_served() {
    let fixture = fixture();
    let attack = rows(&fixture["hsj_queries"]);
    let natural = rows(&fixture["test_rows"]);
    assert!(attack.len() >= 600 && natural.len() == 450);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    // Three copies of the shipped card: each has its own store.
    for name in ["digits", "digits-spread", "digits-natural"] {
        copy_dir(&repo().join("models/digits"), &models.join(name));
    }
    let w = start(dir.path(), OPEN_LIMITS);
    let admin = w.printed_key.clone().unwrap();
    let attacker = vec![new_key(&w, &admin, "attacker", "predict").await];
    let (first, refused) = replay(&w, "digits", &attacker, &attack).await;
    let first = first.expect("the attack was never refused");
    eprintln!(
        "similarity: HopSkipJump replay refused from query {first}, {refused} of {}",
        attack.len()
    );
    assert!(first < 30, "first refusal at query {first}");
    assert!(
        refused * 10 >= (attack.len() - first) * 9,
        "only {refused} of the {} queries after the first refusal",
        attack.len() - first
    );

    // The same attack spread over 10 keys: one attack all the same.
    let mut spread = Vec::new();
    for i in 0..10 {
        spread.push(new_key(&w, &admin, &format!("spread-{i}"), "predict").await);
    }
    let (first, refused) = replay(&w, "digits-spread", &spread, &attack).await;
    let first = first.expect("the spread attack was never refused");
    eprintln!(
        "similarity: over 10 keys, refused from query {first}, {refused} of {}",
        attack.len()
    );
    assert!(first < 30, "first refusal at query {first}");
    assert!(refused * 10 >= (attack.len() - first) * 9, "{refused}");

    // A reload of the same card keeps the store: the attack's next step,
    // from a key that has sent nothing, is still refused.
    let (status, _) = w
        .admin_call("POST", "/admin/models/digits/reload", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let fresh = vec![new_key(&w, &admin, "after-reload", "predict").await];
    let mut next = attack[attack.len() - 1].clone();
    if let Some(v) = next.as_array_mut().and_then(|a| a.get_mut(20)) {
        *v = json!(v.as_f64().unwrap() + 0.01);
    }
    let (first, _) = replay(&w, "digits", &fresh, &[next]).await;
    assert_eq!(first, Some(0), "the store did not survive the reload");

    // Flags, metric and alert name the detector.
    let metrics = w.metrics_text(&admin).await;
    assert!(
        metrics.contains("warden_defense_flags_total{model=\"digits\",kind=\"similarity\"}"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l
            .starts_with("warden_alerts_total{kind=\"query_attack_suspected\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Natural traffic: every test digit once per key, 20 keys, shuffled
    // batches of 1 to 16 rows; then one client re-sending 5 digits 50 times.
    let mut keys = Vec::new();
    for i in 0..20 {
        keys.push(new_key(&w, &admin, &format!("user-{i}"), "predict").await);
    }
    let mut plan: Vec<(usize, usize)> = (0..20)
        .flat_map(|k| (0..natural.len()).map(move |i| (k, i)))
        .collect();
    // A fixed shuffle (xorshift), so a failure reproduces.
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..plan.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        plan.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let (mut sent, mut refused) = (0usize, 0usize);
    let mut at = 0;
    while at < plan.len() {
        let n = 1 + (at * 7919) % 16;
        let batch = &plan[at..(at + n).min(plan.len())];
        at += n;
        for (k, key) in keys.iter().enumerate() {
            let mine: Vec<&Value> = batch
                .iter()
                .filter(|(kk, _)| *kk == k)
                .map(|(_, i)| &natural[*i])
                .collect();
            if mine.is_empty() {
                continue;
            }
            let body = json!({ "instances": mine }).to_string();
            let (status, _, answer) = w.post("/v1/models/digits-natural:predict", key, body).await;
            sent += mine.len();
            match status {
                StatusCode::OK => {}
                StatusCode::UNPROCESSABLE_ENTITY => refused += mine.len(),
                other => panic!("{other}: {answer}"),
            }
        }
    }
    let retry = new_key(&w, &admin, "retrying", "predict").await;
    let five = json!({ "instances": &natural[..5] }).to_string();
    for _ in 0..50 {
        let (status, _, answer) = w
            .post("/v1/models/digits-natural:predict", &retry, five.clone())
            .await;
        sent += 5;
        match status {
            StatusCode::OK => {}
            StatusCode::UNPROCESSABLE_ENTITY => refused += 5,
            other => panic!("{other}: {answer}"),
        }
    }
    eprintln!("similarity: natural traffic, {refused} of {sent} rows refused");
    assert_eq!(sent, 20 * 450 + 250);
    // At most 0.1% of natural rows.
    assert!(
        refused * 1000 <= sent,
        "{refused} of {sent} natural rows refused"
    );
}

/// `throttle`: a flagged principal's rows cost ten times against its rate
/// limit, so a client that honours Retry-After gets a tenth of the rate an
/// unflagged client gets (docs/defenses.md, "Actions").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_gives_a_flagged_client_a_tenth_of_its_rate() {
    let fixture = fixture();
    let attack = rows(&fixture["hsj_queries"]);
    let natural = rows(&fixture["test_rows"]);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_dir(&repo().join("models/digits"), &models.join("digits"));
    let card = models.join("digits/model.toml");
    let text = std::fs::read_to_string(&card).unwrap();
    let at = text.find("[defenses.similarity]").unwrap();
    let (head, tail) = text.split_at(at);
    std::fs::write(
        &card,
        format!(
            "{head}{}",
            tail.replacen("action = \"reject\"", "action = \"throttle\"", 1)
        ),
    )
    .unwrap();
    let w = start(
        dir.path(),
        "[limits.rates]\ndefault = { rate = \"100000/minute\", burst = 10000 }\npredict = { rate = \"10/second\", burst = 20 }\n",
    );
    let admin = w.printed_key.clone().unwrap();
    let honest = new_key(&w, &admin, "honest", "predict").await;
    let prober = new_key(&w, &admin, "prober", "predict").await;
    // Each client sends one row per request for 10 s, sleeping Retry-After
    // (whole seconds) whenever it is told to; answers after the first 2 s
    // (past the burst and the prober's first, unflagged queries) count.
    let run = |key: String, queries: Vec<Value>| {
        let w = &w;
        async move {
            let start = Instant::now();
            let (mut served, mut i) = (0usize, 0usize);
            while start.elapsed() < Duration::from_secs(10) {
                let body = json!({"instances": [queries[i % queries.len()]]}).to_string();
                i += 1;
                let (status, headers, answer) =
                    w.post("/v1/models/digits:predict", &key, body).await;
                match status {
                    StatusCode::OK if start.elapsed() >= Duration::from_secs(2) => served += 1,
                    StatusCode::OK => {}
                    StatusCode::TOO_MANY_REQUESTS => {
                        let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    other => panic!("{other}: {answer}"),
                }
            }
            served
        }
    };
    // The prober is flagged from its first similar query; the honest
    // client's distinct digits never are.
    let (honest_served, prober_served) = tokio::join!(run(honest, natural), run(prober, attack));
    let ratio = prober_served as f64 / honest_served as f64;
    eprintln!(
        "throttle: honest {honest_served}, flagged {prober_served} answers in 8 s ({ratio:.3})"
    );
    // The honest client gets its rate (10/s); the flagged one a tenth.
    assert!(honest_served >= 60, "the honest client got {honest_served}");
    assert!(
        (0.06..=0.15).contains(&ratio),
        "flagged/honest = {ratio:.3}"
    );
}

/// Two replicas with limits in Redis share the similarity store: a step of
/// an attack on one replica is refused on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_similarity_store_through_redis() {
    let fixture = fixture();
    let attack = rows(&fixture["hsj_queries"]);
    let redis = Redis::start(None);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n\n{OPEN_LIMITS}",
            redis.port
        ),
    )
    .unwrap();
    let a = Warden::start(
        &dir.path().join("a"),
        &["--config", config.to_str().unwrap()],
    );
    let b = Warden::start(
        &dir.path().join("b"),
        &["--config", config.to_str().unwrap()],
    );
    let key_a = vec![a.printed_key.clone().unwrap()];
    let key_b = vec![b.printed_key.clone().unwrap()];
    // The attack's first query on A is answered; its second, on B (whose
    // own memory has seen nothing), is refused; and so on alternately.
    // (Past the attack's first queries, which search for any adversarial
    // starting point with unrelated random images.)
    let mut refused_on_b = Vec::new();
    for pair in attack[100..140].chunks(2) {
        replay(&a, "digits", &key_a, &pair[..1]).await;
        refused_on_b.push(replay(&b, "digits", &key_b, &pair[1..]).await.0.is_some());
    }
    assert!(
        refused_on_b[0],
        "B's first step, like A's query, was served"
    );
    let refused_on_b = refused_on_b.iter().filter(|r| **r).count();
    eprintln!(
        "similarity through Redis: {refused_on_b} of 20 attack steps refused on the second replica"
    );
    assert!(refused_on_b >= 15, "{refused_on_b}");
    // A natural digit is still served on both.
    let digit = json!({"instances": [fixture["test_rows"][7]]}).to_string();
    assert_eq!(
        b.post("/v1/models/digits:predict", &key_b[0], digit.clone())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        a.post("/v1/models/digits:predict", &key_a[0], digit)
            .await
            .0,
        StatusCode::OK
    );
}

/// A card's `[budget]` (docs/defenses.md, "Budgets"): a non-admin principal
/// gets its rows per day on that model, sees what is left in
/// `x-quota-remaining`, then `429 quota_exceeded`; admin is not budgeted,
/// and other models are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_budget_bounds_every_principal_but_admin() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_dir(&repo().join("models/digits"), &models.join("digits"));
    copy_dir(&repo().join("models/iris"), &models.join("iris"));
    let card = models.join("digits/model.toml");
    let text = std::fs::read_to_string(&card).unwrap();
    std::fs::write(&card, format!("{text}\n[budget]\nper_day = 5\n")).unwrap();
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let admin = w.printed_key.clone().unwrap();
    let user = new_key(&w, &admin, "user", "predict").await;
    // Distinct natural digits (query similarity stays out of the way).
    let rows = rows(&fixture()["test_rows"]);
    let digit = |i: usize| json!({"instances": [rows[i]]}).to_string();
    let mut left = Vec::new();
    for i in 0..5 {
        let (status, headers, body) = w.post("/v1/models/digits:predict", &user, digit(i)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        left.push(headers["x-quota-remaining"].to_str().unwrap().to_owned());
    }
    assert_eq!(left, ["4", "3", "2", "1", "0"]);
    let (status, headers, body) = w.post("/v1/models/digits:predict", &user, digit(5)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "quota_exceeded");
    assert!(headers.contains_key("retry-after"));
    // Another model, and the admin on this one: not budgeted.
    let iris = json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}).to_string();
    assert_eq!(
        w.post("/v1/models/iris:predict", &user, iris).await.0,
        StatusCode::OK
    );
    for i in 0..10 {
        let (status, headers, body) = w
            .post("/v1/models/digits:predict", &admin, digit(20 + i))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(!headers.contains_key("x-quota-remaining"));
    }
}
