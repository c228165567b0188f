//! The audit trail from the outside: every request through admission and
//! every management action leaves a record (committed before the response
//! in sync mode, even across `kill -9`), the management API and the CLI
//! query and export it, and `warden audit verify` names the first bad record
//! whichever way the stored rows were tampered with.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{BIN, Warden, copy_dir, iris};

/// The demo models in the repository's `models/` (3 tabular, 4 tensor).
const DEMO_MODELS: i64 = 7;

/// The first records of a first start: `server.start`, one `model.load` per
/// demo model, and the `key.create` of the bootstrap admin key.
const START_RECORDS: i64 = 1 + DEMO_MODELS + 1;

pub(super) fn verify(cfg: &Path, data: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--config"])
        .arg(cfg)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn export(cfg: &Path, data: &Path) -> Vec<Value> {
    export_with(cfg, data, &[])
}

pub(super) fn export_with(cfg: &Path, data: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["audit", "export", "--since", "1h", "--config"])
        .arg(cfg)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sqlite(db: &Path, script: &str) {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        ])
        .arg(db)
        .arg(script)
        .status()
        .unwrap();
    assert!(ok.success(), "{script}");
}

impl Warden {
    async fn admin_get(&self, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        self.admin_call("GET", path, key, None).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_management_actions_leave_a_chain_that_names_any_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        "[audit]\ndurability = \"sync\"\nreplica = \"e2e\"\nrefusal_window = \"200ms\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    for _ in 0..3 {
        let (status, _, _) = w
            .post("/v1/models/iris:predict", &key, iris().to_string())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = w
        .post("/v1/models/iris:predict", "wdn_nope", iris().to_string())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A refusal before any work is tallied: its record (with a count) is
    // written when the refusal window ends.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A management action through the API, with the id it created.
    let (status, created) = w
        .admin_call(
            "POST",
            "/admin/keys",
            Some(&key),
            Some(json!({"name": "ops", "role": "predict"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_id = created["id"].as_str().unwrap().to_owned();
    let predict_key = created["key"].as_str().unwrap().to_owned();
    // The audit API needs admin:audit.
    for path in ["/admin/audit", "/admin/audit/checkpoint"] {
        let (status, body) = w.admin_get(path, Some(&predict_key)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    // A management action through the CLI goes to the CLI's own chain.
    let out = w.cli(&["keys", "revoke", &new_id, "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The latest signed checkpoint, kept by a careful reader.
    let (status, checkpoint) = w.admin_get("/admin/audit/checkpoint", Some(&key)).await;
    assert_eq!(status, StatusCode::OK, "{checkpoint}");
    assert_eq!(checkpoint["replica"], "e2e");
    // start records, 4 predictions, 2 forbidden calls, the key creation.
    assert_eq!(checkpoint["seq"], START_RECORDS + 4 + 2 + 1);
    let kept = dir.path().join("checkpoint.json");
    std::fs::write(&kept, checkpoint.to_string()).unwrap();

    // Query by outcome: the refused request, with who-what-where and no key.
    let (status, page) = w
        .admin_get("/admin/audit?outcome=unauthenticated", Some(&key))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let refused = &page["records"].as_array().unwrap()[0];
    let refused_seq = refused["seq"].as_i64().unwrap();
    assert_eq!(refused_seq, START_RECORDS + 4);
    assert_eq!(refused["record"]["route"], "/v1/models/iris:predict");
    assert_eq!(refused["record"]["client"], "127.0.0.1");
    assert_eq!(refused["record"]["principal"], Value::Null);
    assert_eq!(refused["record"]["event"], "refusals");
    assert_eq!(refused["record"]["count"], 1);
    assert_eq!(page["next"], Value::Null);
    // Query by model, in pages.
    let (_, first) = w
        .admin_get("/admin/audit?model=iris&outcome=ok&limit=2", Some(&key))
        .await;
    assert_eq!(first["records"].as_array().unwrap().len(), 2);
    let principal = first["records"][0]["record"]["principal"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(first["records"][0]["record"]["input_sha256"].is_string());
    let after = first["next"].as_i64().unwrap();
    let (_, second) = w
        .admin_get(
            &format!("/admin/audit?model=iris&outcome=ok&limit=2&after={after}"),
            Some(&key),
        )
        .await;
    assert_eq!(second["records"].as_array().unwrap().len(), 1);
    assert_eq!(second["next"], Value::Null);
    // Query by principal and time: the management action, named, with its target.
    let (_, mine) = w
        .admin_get(
            &format!("/admin/audit?principal={principal}&since=1h&limit=1000"),
            Some(&key),
        )
        .await;
    let action = mine["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["record"]["action"] == "key.create")
        .unwrap_or_else(|| panic!("no key.create record: {mine}"));
    assert_eq!(action["record"]["target"], new_id.as_str());
    let (_, future) = w
        .admin_get("/admin/audit?since=2099-01-01T00:00:00Z", Some(&key))
        .await;
    assert_eq!(future["records"], json!([]));
    // A page larger than 1,000 records is cut to 1,000, not refused.
    let (status, big) = w.admin_get("/admin/audit?limit=5000", Some(&key)).await;
    assert_eq!(status, StatusCode::OK, "{big}");
    assert!(big["records"].as_array().unwrap().len() <= 1000);
    for bad in [
        "limit=0",
        "limit=-1",
        "since=yesterday",
        "after=x",
        "bogus=1",
    ] {
        let (status, body) = w
            .admin_get(&format!("/admin/audit?{bad}"), Some(&key))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["code"], "invalid_request");
    }

    // Sync mode: everything answered is already committed and verifies.
    let (code, text) = verify(&cfg, &data, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("audit chain e2e:"), "{text}");
    assert!(
        text.contains("audit chain e2e.cli: 1 records verified"),
        "{text}"
    );
    // Export: JSON lines of both chains, the CLI's action among them.
    let lines = export(&cfg, &data);
    assert!(lines.iter().any(|l| l["replica"] == "e2e.cli"
        && l["record"]["action"] == "key.revoke"
        && l["record"]["target"] == new_id.as_str()));
    let records = serde_json::to_string(&lines).unwrap();
    assert!(
        !records.contains(&key[17..]) && !records.contains(&predict_key[17..]),
        "no credential in the audit trail"
    );
    assert!(!records.contains("5.1"), "no raw input in the audit trail");
    assert!(records.contains("\"event\":\"model.load\""));
    assert_eq!(w.terminate().code(), Some(0));

    // Someone who can write the database tampers with it, each way in turn,
    // on a copy; verify names the first bad record and exits 1.
    let e2e = "replica = 'e2e' AND";
    let cases = [
        (
            "modified",
            format!("UPDATE audit SET record = replace(record, 'unauthenticated', 'ok') WHERE {e2e} seq = {refused_seq}"),
            refused_seq,
            "Modified",
        ),
        (
            "deleted",
            format!("DELETE FROM audit WHERE {e2e} seq = 5"),
            5,
            "Missing",
        ),
        (
            "inserted",
            format!(
                "UPDATE audit SET seq = seq + 100 WHERE {e2e} seq >= 5; UPDATE audit SET seq = seq - 99 WHERE {e2e} seq >= 105;
                 INSERT INTO audit SELECT replica, 5, '{{\"outcome\":\"ok\"}}', prev, mac FROM audit WHERE {e2e} seq = 4"
            ),
            5,
            "BrokenLink",
        ),
        (
            "reordered",
            format!(
                "UPDATE audit SET seq = 1000 WHERE {e2e} seq = 5; UPDATE audit SET seq = 5 WHERE {e2e} seq = 6; UPDATE audit SET seq = 6 WHERE {e2e} seq = 1000"
            ),
            5,
            "BrokenLink",
        ),
        (
            "truncated",
            format!("DELETE FROM audit WHERE {e2e} seq >= 8"),
            8,
            "Truncated",
        ),
    ];
    for (i, (what, script, seq, problem)) in cases.iter().enumerate() {
        let copy = dir.path().join(format!("tampered-{i}"));
        copy_dir(&data, &copy);
        sqlite(&copy.join("warden.db"), script);
        if *what == "truncated" {
            // Without a checkpoint a cut tail looks like a shorter chain...
            let (code, text) = verify(&cfg, &copy, &["--replica", "e2e"]);
            assert_eq!(code, Some(0), "{text}");
        }
        // ... which the kept checkpoint exposes.
        let (code, text) = verify(&cfg, &copy, &["--checkpoint", kept.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{what}: {text}");
        assert!(
            text.contains(&format!(
                "audit chain e2e: first bad record at sequence {seq}: {problem}"
            )),
            "{what}: {text}"
        );
    }

    // Without the HMAC key, a recomputed chain is still rejected.
    let copy = dir.path().join("recomputed");
    copy_dir(&data, &copy);
    let forge = r#"
import hashlib, hmac, sqlite3, struct, sys
db, start = sys.argv[1], int(sys.argv[2])
key = b"the attacker's best guess at the key"
c = sqlite3.connect(db)
rows = c.execute("SELECT seq, record, prev FROM audit WHERE replica = 'e2e' AND seq >= ? ORDER BY seq", (start,)).fetchall()
prev = rows[0][2]
for seq, record, _ in rows:
    record = record.replace("unauthenticated", "ok")
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in [b"warden-audit-row-v1", b"e2e", struct.pack(">q", seq), prev, record.encode()]:
        mac.update(struct.pack(">Q", len(part)) + part)
    mac = mac.digest()
    c.execute("UPDATE audit SET record = ?, prev = ?, mac = ? WHERE replica = 'e2e' AND seq = ?", (record, prev, mac, seq))
    prev = mac
c.commit()
"#;
    let ok = Command::new("python3")
        .args(["-c", forge])
        .arg(copy.join("warden.db"))
        .arg(refused_seq.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let (code, text) = verify(&cfg, &copy, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "first bad record at sequence {refused_seq}: Modified"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_records_are_committed_before_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The default: batched, with a long window so that records are still
    // queued when SIGTERM arrives.
    let cfg = dir.path().join("warden.toml");
    let seal = dir.path().join("seal.key");
    std::fs::write(&seal, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&seal, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        &cfg,
        format!("[audit]\nbatch_window = \"5s\"\n[encryption]\nkey = {{ file = {seal:?} }}\n"),
    )
    .unwrap();
    // The iris card opts in to keeping raw inputs (stored encrypted); the
    // others do not.
    let models = dir.path().join("models");
    copy_dir(&super::repo().join("models"), &models);
    let card = models.join("iris/model.toml");
    let text = std::fs::read_to_string(&card).unwrap();
    std::fs::write(&card, format!("{text}\n[audit]\nrecord_inputs = true\n")).unwrap();
    let w = Warden::start(
        &data,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--models",
            models.to_str().unwrap(),
        ],
    );
    let key = w.printed_key.clone().unwrap();
    for _ in 0..5 {
        let (status, _, _) = w
            .post("/v1/models/iris:predict", &key, iris().to_string())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let digits = json!({"instances": [vec![0.0; 64]]});
    let (status, _, _) = w
        .post("/v1/models/digits:predict", &key, digits.to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(w.terminate().code(), Some(0));
    let (code, text) = verify(&cfg, &data, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("{} records verified", START_RECORDS + 6)),
        "{text}"
    );
    // In the database the snapshot is sealed: no input value in clear.
    let sealed = export(&cfg, &data);
    let iris_records: Vec<&Value> = sealed
        .iter()
        .filter(|l| l["record"]["model"] == "iris" && l["record"]["request_id"].is_string())
        .collect();
    assert!(
        iris_records
            .iter()
            .all(|l| l["record"]["inputs_sealed"].is_string() && l["record"]["inputs"].is_null())
    );
    assert!(!serde_json::to_string(&sealed).unwrap().contains("5.1"));
    let lines = export_with(&cfg, &data, &["--decrypt-inputs"]);
    let inputs = |model: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["record"]["model"] == model && l["record"]["request_id"].is_string())
            .map(|l| l["record"]["inputs"].clone())
            .collect()
    };
    let kept = inputs("iris");
    assert_eq!(kept.len(), 5);
    for v in kept {
        // The validated input tensors: [{"name", "datatype", "shape", "data"}].
        assert_eq!(v[0]["name"], "input", "{v}");
        assert_eq!(v[0]["shape"], json!([1, 4]), "{v}");
        let data: Vec<f64> = serde_json::from_value(v[0]["data"].clone()).unwrap();
        assert_eq!(data.len(), 4);
        assert!((data[0] - 5.1).abs() < 1e-6, "{data:?}");
    }
    assert_eq!(inputs("digits"), vec![Value::Null], "no opt-in, no inputs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_keeps_every_acknowledged_request_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("warden.toml");
    std::fs::write(&cfg, "[audit]\ndurability = \"sync\"\n").unwrap();
    let mut w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();

    // Four clients send requests as fast as they can and note the request
    // id of every 2xx they receive.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, url, key, acknowledged) = (
            w.client.clone(),
            w.url("/v1/models/iris:predict"),
            key.clone(),
            acknowledged.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let sent = client
                    .post(&url)
                    .header("x-api-key", &key)
                    .json(&iris())
                    .send()
                    .await;
                let Ok(r) = sent else { break };
                if r.status().is_success() {
                    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
                    acknowledged.lock().unwrap().push(id);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGKILL: no drain, no flush.
    w.child.kill().unwrap();
    w.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 20, "{} requests", acknowledged.len());

    // After a restart the chain continues and verifies, and holds every
    // acknowledged request.
    drop(w);
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let (status, _, _) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (code, text) = verify(&cfg, &data, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_all_recorded(&acknowledged, &export(&cfg, &data));
}

/// Every acknowledged request id has a record among the exported lines.
pub(super) fn assert_all_recorded(acknowledged: &[String], exported: &[Value]) {
    let recorded: std::collections::HashSet<&str> = exported
        .iter()
        .filter_map(|l| l["record"]["request_id"].as_str())
        .collect();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !recorded.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged requests have no record: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_store_fails_sync_requests_and_holds_back_batched_ones() {
    let fail = "CREATE TRIGGER audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END;";
    let heal = "DROP TRIGGER audit_down;";

    // Sync: the request whose record cannot be committed fails with
    // `internal` (nothing about the store reaches the client), and an alert
    // is logged; once the store heals, requests succeed and the chain holds.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("warden.toml");
    std::fs::write(&cfg, "[audit]\ndurability = \"sync\"\n").unwrap();
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    sqlite(&data.join("warden.db"), fail);
    let (status, _, body) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["code"], "internal");
    assert!(!body.to_string().contains("disk"), "{body}");
    sqlite(&data.join("warden.db"), heal);
    let (status, _, _) = w
        .post("/v1/models/iris:predict", &key, iris().to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let logs = w.stop_and_collect_logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("\"alert\":\"audit_write_failed\"")),
        "no audit_write_failed alert"
    );
    // The checkpoint written to the log at shutdown is one a reader can keep.
    let logged: Value = logs
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "audit_checkpoint")
        .expect("a checkpoint in the log");
    let kept = dir.path().join("checkpoint.json");
    let checkpoint = json!({
        "replica": logged["replica"], "seq": logged["seq"],
        "head": logged["head"], "sig": logged["sig"],
    });
    std::fs::write(&kept, checkpoint.to_string()).unwrap();
    let (code, text) = verify(&cfg, &data, &["--checkpoint", kept.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("{} records verified", START_RECORDS + 1)),
        "{text}"
    );

    // Batched: records wait in the bounded queue while the store fails; once
    // it is full, requests wait too (backpressure) instead of dropping
    // records; when the store heals, every request is answered and recorded.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("warden.toml");
    std::fs::write(&cfg, "[audit]\nqueue = 4\nbatch_window = \"1ms\"\n").unwrap();
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    sqlite(&data.join("warden.db"), fail);
    let mut sent = Vec::new();
    // One at a time: the first record's batch fails and is retried, the
    // next four fill the queue, the rest must wait.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (client, url, key) = (
            w.client.clone(),
            w.url("/v1/models/iris:predict"),
            key.clone(),
        );
        sent.push(tokio::spawn(async move {
            client
                .post(&url)
                .header("x-api-key", &key)
                .json(&iris())
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = sent.iter().filter(|t| !t.is_finished()).count();
    assert!(
        waiting >= 6,
        "a full queue holds requests back ({waiting} waiting)"
    );
    sqlite(&data.join("warden.db"), heal);
    for t in sent {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(w.terminate().code(), Some(0));
    let (code, text) = verify(&cfg, &data, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("{} records verified", START_RECORDS + 12)),
        "{text}"
    );
}

/// Every management action the API offers leaves a record naming the
/// action and its target: key, user and client create / rotate / revoke /
/// disable, a ban (from failed guesses) and its lift, a model reload; and
/// the model loads at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_management_action_is_an_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(
        &cfg,
        "[audit]\ndurability = \"sync\"\n[limits.bans]\nfailures = 3\n",
    )
    .unwrap();
    let w = Warden::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let w = &w;
        let key = key.clone();
        async move {
            let (status, out) = w.admin_call(method, &path, Some(&key), body).await;
            assert!(status.is_success(), "{method} {path}: {status} {out}");
            out
        }
    };
    let k = call(
        "POST",
        "/admin/keys".into(),
        Some(json!({"name": "k", "role": "predict"})),
    )
    .await;
    let k = k["id"].as_str().unwrap().to_owned();
    call("POST", format!("/admin/keys/{k}/rotate"), None).await;
    call("POST", format!("/admin/keys/{k}/revoke"), None).await;
    call(
        "POST",
        "/admin/users".into(),
        Some(json!({"name": "ana", "role": "predict", "password": "a long enough passphrase 42"})),
    )
    .await;
    call("POST", "/admin/users/ana/disable".into(), None).await;
    let c = call(
        "POST",
        "/admin/clients".into(),
        Some(json!({"name": "svc", "role": "predict"})),
    )
    .await;
    let c = c["client_id"].as_str().unwrap().to_owned();
    call("POST", format!("/admin/clients/{c}/rotate"), None).await;
    call("POST", format!("/admin/clients/{c}/revoke"), None).await;
    // Three wrong keys from this address: banned, then lifted.
    for _ in 0..3 {
        let (status, _, _) = w
            .post("/v1/models/iris:predict", "wdn_guess", iris().to_string())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let bans = call("GET", "/admin/bans".into(), None).await;
    let subject = bans["bans"][0]["subject"].as_str().unwrap().to_owned();
    call("POST", format!("/admin/bans/{subject}/lift"), None).await;
    call("POST", "/admin/models/iris/reload".into(), None).await;

    let page = call("GET", "/admin/audit?limit=500".into(), None).await;
    let records: Vec<&Value> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["record"])
        .collect();
    let named = |what: &str| -> Vec<&Value> {
        records
            .iter()
            .copied()
            .filter(|r| r["action"] == what || (what == "ban" && r["event"] == what))
            .collect()
    };
    for action in [
        "key.create",
        "key.rotate",
        "key.revoke",
        "user.create",
        "user.disable",
        "client.create",
        "client.rotate",
        "client.revoke",
        "ban",
        "ban.lift",
        "model.reload",
    ] {
        let found = named(action);
        assert_eq!(found.len(), 1, "{action}: {records:?}");
        let r = found[0];
        if action != "ban" {
            assert_eq!(r["outcome"], "ok", "{action}: {r}");
            assert!(r["principal"].as_str().is_some(), "{action}: {r}");
        }
        let names_target = r["target"].is_string()
            || r["route"]
                .as_str()
                .is_some_and(|p| p.len() > "/admin/xxxxx".len());
        assert!(names_target, "{action} names no target: {r}");
    }
    assert_eq!(named("model.reload")[0]["target"], "iris");
    assert_eq!(named("ban")[0]["target"], subject.as_str());
    assert_eq!(named("key.revoke")[0]["target"], k.as_str());
    assert_eq!(named("client.revoke")[0]["target"], c.as_str());
    assert_eq!(named("ban.lift")[0]["target"], subject.as_str());
    let loads = records
        .iter()
        .filter(|r| r["event"] == "model.load")
        .count();
    assert_eq!(loads as i64, DEMO_MODELS, "{records:?}");
    // None of them holds a credential.
    let text = page.to_string();
    assert!(!text.contains(&key) && !text.contains("a long enough passphrase"));
}
