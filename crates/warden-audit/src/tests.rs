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
        retention: Default::default(),
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

/// A SQLite store whose next `append_audit` commits and then reports a
/// failure, as a PostgreSQL connection lost after COMMIT does.
struct CommitsThenFails {
    inner: SqliteStore,
    lie: std::sync::atomic::AtomicBool,
}

macro_rules! delegate {
    ($($name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret { self.inner.$name($($arg),*) })*
    };
}

impl Store for CommitsThenFails {
    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), warden_store::StoreError> {
        self.inner.append_audit(rows)?;
        if self.lie.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(warden_store::StoreError::Conflict("connection lost".into()));
        }
        Ok(())
    }
    delegate! {
        insert_key(&self, key: &warden_store::ApiKeyRecord) -> Result<(), warden_store::StoreError>;
        insert_key_if_role_unused(&self, key: &warden_store::ApiKeyRecord, now: i64) -> Result<bool, warden_store::StoreError>;
        get_key(&self, id: &str) -> Result<Option<warden_store::ApiKeyRecord>, warden_store::StoreError>;
        list_keys(&self) -> Result<Vec<warden_store::ApiKeyRecord>, warden_store::StoreError>;
        revoke_key(&self, id: &str, now: i64) -> Result<bool, warden_store::StoreError>;
        rotate_key(&self, old_id: &str, new: &warden_store::ApiKeyRecord, now: i64, old_ends: i64) -> Result<bool, warden_store::StoreError>;
        has_active_key_with_role(&self, role: &str, now: i64) -> Result<bool, warden_store::StoreError>;
        touch_keys(&self, used: &[(String, i64)]) -> Result<(), warden_store::StoreError>;
        insert_user(&self, user: &warden_store::UserRecord) -> Result<(), warden_store::StoreError>;
        get_user(&self, name: &str) -> Result<Option<warden_store::UserRecord>, warden_store::StoreError>;
        list_users(&self) -> Result<Vec<warden_store::UserRecord>, warden_store::StoreError>;
        set_user_password(&self, name: &str, hash: &str) -> Result<bool, warden_store::StoreError>;
        disable_user(&self, name: &str, now: i64) -> Result<bool, warden_store::StoreError>;
        insert_client(&self, client: &warden_store::ClientRecord) -> Result<(), warden_store::StoreError>;
        get_client(&self, id: &str) -> Result<Option<warden_store::ClientRecord>, warden_store::StoreError>;
        list_clients(&self) -> Result<Vec<warden_store::ClientRecord>, warden_store::StoreError>;
        set_client_secret(&self, id: &str, hash: &str) -> Result<bool, warden_store::StoreError>;
        revoke_client(&self, id: &str, now: i64) -> Result<bool, warden_store::StoreError>;
        list_signing_keys(&self) -> Result<Vec<warden_store::SigningKeyRecord>, warden_store::StoreError>;
        rotate_signing_key(&self, new: &warden_store::SigningKeyRecord, now: i64) -> Result<(), warden_store::StoreError>;
        audit_rows(&self, replica: &str, from_seq: i64, limit: usize) -> Result<Vec<AuditRow>, warden_store::StoreError>;
        audit_head(&self, replica: &str) -> Result<Option<AuditRow>, warden_store::StoreError>;
        audit_replicas(&self) -> Result<Vec<String>, warden_store::StoreError>;
        audit_query(&self, query: &warden_store::AuditQuery) -> Result<warden_store::AuditPage, warden_store::StoreError>;
        prune_audit(&self, anchor: &warden_store::AuditAnchor) -> Result<u64, warden_store::StoreError>;
        audit_anchor(&self, replica: &str) -> Result<Option<warden_store::AuditAnchor>, warden_store::StoreError>;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_committed_despite_a_reported_failure_is_not_written_twice() {
    let store = std::sync::Arc::new(CommitsThenFails {
        inner: SqliteStore::in_memory().unwrap(),
        lie: std::sync::atomic::AtomicBool::new(true),
    });
    let key = || AuditKey::new(b"an audit key of at least 32 bytes!!");
    let log = AuditLog::start(
        store.clone(),
        key(),
        WriterSettings {
            replica: REPLICA.into(),
            sync: true,
            window: std::time::Duration::from_millis(5),
            queue: 16,
            checkpoint_every: std::time::Duration::from_secs(60),
            retention: Default::default(),
        },
    )
    .unwrap();
    for i in 0..3 {
        log.record(format!(r#"{{"request_id":"r{i}","outcome":"ok"}}"#))
            .await
            .unwrap();
    }
    let rows = store.audit_rows(REPLICA, 1, 100).unwrap();
    assert_eq!(rows.len(), 3, "each record once: {rows:?}");
    assert_eq!(
        verify(&key(), REPLICA, rows, 1, None),
        Ok(Verified {
            rows: 3,
            last_seq: 3
        })
    );
}

/// Records with times 1_000 µs apart, for the retention policy.
fn timed_chain(store: &SqliteStore, key: &AuditKey, n: i64) {
    let mut chain = Chain::resume(REPLICA, store.audit_head(REPLICA).unwrap().as_ref());
    let rows: Vec<AuditRow> = (1..=n)
        .map(|i| chain.append(key, format!(r#"{{"time_us":{},"outcome":"ok"}}"#, i * 1000)))
        .collect();
    store.append_audit(&rows).unwrap();
}

fn check_pruned(store: &SqliteStore, key: &AuditKey) -> Result<Verified, Finding> {
    let anchor = store.audit_anchor(REPLICA).unwrap().expect("an anchor");
    verify_anchored(
        key,
        &anchor,
        store.audit_rows(REPLICA, 0, 100_000).unwrap(),
        None,
    )
}

#[test]
fn retention_prunes_by_count_and_age_behind_an_anchor_that_verifies() {
    let (_d, path, key, _) = fixture();
    let store = SqliteStore::open(&path).unwrap();
    // 10 untimed records from the fixture, then 90 timed ones (seq 11..=100).
    timed_chain(&store, &key, 90);
    let by_count = Retention {
        max_age: None,
        max_records: Some(60),
    };
    assert_eq!(prune(&store, &key, REPLICA, by_count, 0).unwrap(), 40);
    assert_eq!(
        check_pruned(&store, &key),
        Ok(Verified {
            rows: 60,
            last_seq: 100
        })
    );
    // Older than 50 ms at 80 ms: times below 30 ms, seq 11..=39, already gone.
    let by_age = Retention {
        max_age: Some(std::time::Duration::from_millis(50)),
        max_records: None,
    };
    let removed = prune(&store, &key, REPLICA, by_age, 80_000).unwrap();
    assert_eq!(removed, 0);
    // Older than 50 ms at 120 ms: times below 70 ms, seq up to 79.
    let removed = prune(&store, &key, REPLICA, by_age, 120_000).unwrap();
    assert_eq!(removed, 39);
    assert_eq!(
        check_pruned(&store, &key),
        Ok(Verified {
            rows: 21,
            last_seq: 100
        })
    );
    // The head is always kept, however old.
    let all = Retention {
        max_age: Some(std::time::Duration::from_micros(1)),
        max_records: Some(1),
    };
    prune(&store, &key, REPLICA, all, i64::MAX).unwrap();
    assert_eq!(
        check_pruned(&store, &key),
        Ok(Verified {
            rows: 1,
            last_seq: 100
        })
    );
    // Writing continues after the kept head.
    timed_chain(&store, &key, 5);
    assert_eq!(
        check_pruned(&store, &key),
        Ok(Verified {
            rows: 6,
            last_seq: 105
        })
    );
}

#[test]
fn a_pruned_chain_still_names_tampering() {
    let (_d, path, key, _) = fixture();
    let store = SqliteStore::open(&path).unwrap();
    timed_chain(&store, &key, 20);
    let keep_ten = Retention {
        max_age: None,
        max_records: Some(10),
    };
    assert_eq!(prune(&store, &key, REPLICA, keep_ten, 0).unwrap(), 20);
    assert!(check_pruned(&store, &key).is_ok());
    // Deleting the first rows left is seen: the next one does not link to the anchor.
    sql(&path, "DELETE FROM audit WHERE seq = 21");
    let err = check_pruned(&store, &key).unwrap_err();
    assert_eq!((err.seq, err.problem), (21, Problem::Missing));
    // Moving the anchor forward to hide that needs the key.
    sql(
        &path,
        "UPDATE audit_anchor SET seq = 21, head = (SELECT prev FROM audit WHERE seq = 22)",
    );
    let err = check_pruned(&store, &key).unwrap_err();
    assert_eq!((err.seq, err.problem), (21, Problem::BadAnchor));
    // Deleting the anchor leaves a chain that starts in the middle.
    sql(&path, "DELETE FROM audit_anchor");
    let err = check(&path, &key, None).unwrap_err();
    assert_eq!((err.seq, err.problem), (1, Problem::Missing));
}

#[test]
fn a_checkpoint_cannot_pass_for_an_anchor() {
    let (_d, path, key, cp) = fixture();
    let store = SqliteStore::open(&path).unwrap();
    // Whoever can write the database takes a logged checkpoint, stores it as
    // the anchor and deletes everything up to it.
    store
        .prune_audit(&warden_store::AuditAnchor {
            replica: REPLICA.into(),
            seq: cp.seq - 1,
            head: store.audit_rows(REPLICA, cp.seq - 1, 1).unwrap()[0]
                .mac
                .clone(),
            sig: hex::decode(&cp.sig).unwrap(),
        })
        .unwrap();
    let err = check_pruned(&store, &key).unwrap_err();
    assert_eq!(err.problem, Problem::BadAnchor);
}

#[test]
fn retention_refuses_to_sign_over_rows_that_do_not_verify() {
    let (_d, path, key, _) = fixture();
    let store = SqliteStore::open(&path).unwrap();
    timed_chain(&store, &key, 20);
    // Rows edited to look old, so that retention would remove them.
    sql(
        &path,
        "UPDATE audit SET record = replace(record, '\"time_us\":15000', '\"time_us\":1') WHERE seq = 25",
    );
    let by_age = Retention {
        max_age: Some(std::time::Duration::from_millis(1)),
        max_records: None,
    };
    let err = prune(&store, &key, REPLICA, by_age, 1_000_000).unwrap_err();
    match err {
        PruneError::Tampered(f) => assert_eq!((f.seq, f.problem), (25, Problem::Modified)),
        other => panic!("{other}"),
    }
    assert!(
        store.audit_anchor(REPLICA).unwrap().is_none(),
        "nothing was removed"
    );
    assert_eq!(store.audit_rows(REPLICA, 1, 100).unwrap().len(), 30);
    // A gap in the rows to remove stops it too.
    let (_d2, path2, key2, _) = fixture();
    let store2 = SqliteStore::open(&path2).unwrap();
    timed_chain(&store2, &key2, 20);
    sql(&path2, "DELETE FROM audit WHERE seq = 12");
    let keep_five = Retention {
        max_age: None,
        max_records: Some(5),
    };
    let err = prune(&store2, &key2, REPLICA, keep_five, 0).unwrap_err();
    assert!(
        matches!(&err, PruneError::Tampered(f) if f.seq == 12),
        "{err}"
    );
}
