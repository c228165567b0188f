//! The audit trail from the outside: every request through admission leaves
//! a record, committed before the response in sync mode, and `warden audit
//! verify` finds tampering with the stored rows.

use std::process::Command;

use reqwest::StatusCode;

use super::{BIN, Warden, iris};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_leave_a_verifiable_chain_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warden.toml");
    std::fs::write(&cfg, "[audit]\ndurability = \"sync\"\nreplica = \"e2e\"\n").unwrap();
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

    let verify = || {
        Command::new(BIN)
            .args([
                "audit",
                "verify",
                "--config",
                cfg.to_str().unwrap(),
                "--data-dir",
            ])
            .arg(&data)
            .output()
            .unwrap()
    };
    // Sync mode: every answered request is already recorded.
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("4 records verified"), "{text}");

    // The records hold who, what and the outcome, never the key or the input.
    let db = data.join("warden.db");
    let dump = Command::new("python3")
        .args(["-c", "import sqlite3,sys; print('\\n'.join(r[0] for r in sqlite3.connect(sys.argv[1]).execute('select record from audit order by seq')))"])
        .arg(&db)
        .output()
        .unwrap();
    let records = String::from_utf8(dump.stdout).unwrap();
    assert!(
        records.contains("\"outcome\":\"unauthenticated\"")
            && records.contains("\"input_sha256\":\""),
        "{records}"
    );
    assert!(
        !records.contains(&key[17..]) && !records.contains("5.1"),
        "no credential, no raw input"
    );

    // Someone with write access to the database edits a record.
    let tamper = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"update audit set record=replace(record,'unauthenticated','ok') where seq=4\"); c.commit()"])
        .arg(&db)
        .status()
        .unwrap();
    assert!(tamper.success());
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("first bad record at sequence 4"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_records_are_committed_before_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The default: batched, with a long window so that records are still
    // queued when SIGTERM arrives.
    let cfg = dir.path().join("warden.toml");
    std::fs::write(&cfg, "[audit]\nbatch_window = \"5s\"\n").unwrap();
    let w = Warden::start(&data, &["--config", cfg.to_str().unwrap()]);
    let key = w.printed_key.clone().unwrap();
    for _ in 0..5 {
        let (status, _, _) = w
            .post("/v1/models/iris:predict", &key, iris().to_string())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(w.terminate().code(), Some(0));
    let out = Command::new(BIN)
        .args([
            "audit",
            "verify",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("5 records verified"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
