//! Tampering with a real SQLite audit table in each way an attacker with
//! write access to the database could, and the first bad row named.

use rusqlite::{Connection, params};
use warden_store::{SqliteStore, Store};

use super::*;

const REPLICA: &str = "r1";

fn chain(store: &SqliteStore, key: &AuditKey, n: usize) -> Checkpoint {
    let mut chain = Chain::resume(REPLICA, store.audit_head(REPLICA).unwrap().as_ref());
    let rows: Vec<AuditRow> = (0..n)
        .map(|i| chain.append(key, format!(r#"{{"request_id":"r{i}","outcome":"ok"}}"#)))
        .collect();
    store.append_audit(&rows).unwrap();
    chain.checkpoint(key)
}

fn check(
    path: &std::path::Path,
    key: &AuditKey,
    checkpoint: Option<&Checkpoint>,
) -> Result<Verified, Finding> {
    let store = SqliteStore::open(path).unwrap();
    verify(
        key,
        REPLICA,
        store.audit_rows(REPLICA, 1, 1000).unwrap(),
        1,
        checkpoint,
    )
}

fn fixture() -> (tempfile::TempDir, std::path::PathBuf, AuditKey, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let key = AuditKey::new(b"an audit key of at least 32 bytes!!");
    let store = SqliteStore::open(&path).unwrap();
    let cp = chain(&store, &key, 10);
    (dir, path, key, cp)
}

fn sql(path: &std::path::Path, statements: &str) {
    Connection::open(path)
        .unwrap()
        .execute_batch(statements)
        .unwrap();
}

#[test]
fn an_untouched_chain_verifies_and_resumes() {
    let (_d, path, key, cp) = fixture();
    assert_eq!(
        check(&path, &key, Some(&cp)),
        Ok(Verified {
            rows: 10,
            last_seq: 10
        })
    );
    // A restarted writer continues the same chain.
    let store = SqliteStore::open(&path).unwrap();
    let cp2 = chain(&store, &key, 3);
    assert_eq!(check(&path, &key, Some(&cp2)).unwrap().last_seq, 13);
    // A stretch from the middle verifies too.
    let rows = store.audit_rows(REPLICA, 6, 100).unwrap();
    assert_eq!(verify(&key, REPLICA, rows, 6, None).unwrap().rows, 8);
}

#[test]
fn every_kind_of_tampering_is_found_at_the_first_bad_row() {
    let cases: [(&str, &str, i64, Problem); 5] = [
        ("modified", "UPDATE audit SET record = replace(record, 'ok', 'denied') WHERE seq = 5", 5, Problem::Modified),
        ("deleted", "DELETE FROM audit WHERE seq = 5", 5, Problem::Missing),
        (
            "inserted",
            "UPDATE audit SET seq = seq + 100 WHERE seq >= 5; UPDATE audit SET seq = seq - 99 WHERE seq >= 105;
             INSERT INTO audit SELECT replica, 5, '{\"request_id\":\"forged\"}', prev, mac FROM audit WHERE seq = 4",
            5,
            Problem::BrokenLink,
        ),
        (
            "reordered",
            "UPDATE audit SET seq = 100 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 100",
            3,
            Problem::BrokenLink,
        ),
        ("tail truncated", "DELETE FROM audit WHERE seq >= 8", 8, Problem::Truncated),
    ];
    for (what, statements, seq, problem) in cases {
        let (_d, path, key, cp) = fixture();
        sql(&path, statements);
        assert_eq!(
            check(&path, &key, Some(&cp)),
            Err(Finding { seq, problem }),
            "{what}"
        );
    }
}

#[test]
fn a_chain_recomputed_without_the_key_is_rejected() {
    let (_d, path, key, _) = fixture();
    // The attacker rewrites every row with a key of their own.
    let forger = AuditKey::new(b"the attacker's guess at the key!!!!");
    let store = SqliteStore::open(&path).unwrap();
    let rows = store.audit_rows(REPLICA, 1, 100).unwrap();
    let conn = Connection::open(&path).unwrap();
    let mut prev = GENESIS.to_vec();
    for r in rows {
        let record = r.record.replace("ok", "denied");
        let mac = forger.row_mac(REPLICA, r.seq, &prev, &record).to_vec();
        conn.execute(
            "UPDATE audit SET record = ?1, prev = ?2, mac = ?3 WHERE seq = ?4",
            params![record, prev, mac, r.seq],
        )
        .unwrap();
        prev = mac;
    }
    assert_eq!(
        check(&path, &key, None),
        Err(Finding {
            seq: 1,
            problem: Problem::Modified
        })
    );
}

#[test]
fn checkpoints_are_signed() {
    let (_d, path, key, mut cp) = fixture();
    cp.seq = 7; // a doctored checkpoint
    assert_eq!(
        check(&path, &key, Some(&cp)).unwrap_err().problem,
        Problem::BadCheckpoint
    );
    assert!(!format!("{key:?}").contains("audit key"));
}

#[test]
fn times_parse_in_three_spellings() {
    let now = 1_764_410_400_000_000;
    assert_eq!(
        crate::parse_time("2025-11-29T10:00:00Z", now),
        Ok(1_764_410_400_000_000)
    );
    assert_eq!(crate::parse_time("1764410400", now), Ok(now));
    assert_eq!(crate::parse_time("1h", now), Ok(now - 3_600_000_000));
    assert!(crate::parse_time("yesterday", now).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_chain_interleave_without_forking_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let key = || AuditKey::new(b"an audit key of at least 32 bytes!!");
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
    let settings = |sync| WriterSettings {
        replica: REPLICA.into(),
        sync,
        window: std::time::Duration::from_millis(5),
        queue: 100,
        checkpoint_every: std::time::Duration::from_secs(60),
    };
    let a = AuditLog::start(store.clone(), key(), settings(true)).unwrap();
    let b = AuditLog::start(store.clone(), key(), settings(false)).unwrap();
    for i in 0..50 {
        a.record(format!(r#"{{"w":"a","i":{i}}}"#)).await.unwrap();
        b.record(format!(r#"{{"w":"b","i":{i}}}"#)).await.unwrap();
    }
    b.flush().await.unwrap();
    a.flush().await.unwrap();
    let verified = check(&path, &key(), None).unwrap();
    assert_eq!(verified.rows, 100);
    assert_eq!(
        a.stats()
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
