//! The `Store` conformance suite on SQLite and on a real PostgreSQL server
//! (started by the tests, see `support/pg.rs`), and what only the
//! PostgreSQL store has to get right: concurrent migration, reconnecting
//! after a server restart, being called from async code, TLS, and error
//! messages without the password.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

#[path = "support/pg.rs"]
mod pg;

mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pg::TestPostgres;
use warden_store::{AuditRow, PostgresStore, SqliteStore, Store, StoreError, UserRecord};

mod sqlite {
    use super::*;

    fn open() -> ((), Box<dyn Store>) {
        ((), Box::new(SqliteStore::in_memory().unwrap()))
    }

    crate::conformance::conformance_suite!(open);
}

mod postgres {
    use super::*;

    /// A fresh server and a store on a database whose default collation is
    /// not byte order (ICU en-US), so that a query that forgets
    /// `COLLATE "C"` sorts differently from SQLite and fails the suite.
    fn open() -> (TestPostgres, Box<dyn Store>) {
        let server = TestPostgres::start();
        let url = server.create_database("conformance", true);
        let store = PostgresStore::connect(&url).unwrap();
        (server, Box::new(store))
    }

    crate::conformance::conformance_suite!(open);
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        name: name.into(),
        role: "admin".into(),
        password_hash: "$argon2id$x".into(),
        created_at: 1,
        disabled_at: None,
    }
}

#[test]
fn replicas_starting_together_migrate_once() {
    let server = TestPostgres::start();
    let url = server.create_database("fresh", false);
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::connect(&url)
            })
        })
        .collect();
    let stores: Vec<PostgresStore> = starts
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(
        server.psql(
            "fresh",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM warden_schema_migrations"
        ),
        "1,2,3,4"
    );
    // They share one database.
    stores[0].insert_user(&user("alice")).unwrap();
    assert!(stores[3].get_user("alice").unwrap().is_some());
    // Connecting again migrates nothing; a schema newer than this build is refused.
    drop(PostgresStore::connect(&url).unwrap());
    server.psql(
        "fresh",
        "INSERT INTO warden_schema_migrations (version) VALUES (99)",
    );
    let err = PostgresStore::connect(&url).unwrap_err().to_string();
    assert!(err.contains("version 99"), "{err}");
}

#[test]
fn replicas_starting_together_create_one_first_admin_key() {
    let server = TestPostgres::start();
    let url = server.create_database("bootstrap", false);
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let starts: Vec<_> = (0..4)
        .map(|i| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let store = PostgresStore::connect(&url).unwrap();
                let mut record = warden_store::ApiKeyRecord {
                    id: format!("admin{i}"),
                    name: "bootstrap-admin".into(),
                    role: "admin".into(),
                    models: None,
                    secret_hash: [1; 32],
                    created_at: 100,
                    expires_at: None,
                    revoked_at: None,
                    rotated_from: None,
                    last_used_at: None,
                };
                record.created_at += i;
                barrier.wait();
                store.insert_key_if_role_unused(&record, 200).unwrap()
            })
        })
        .collect();
    let created = starts
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|c| *c)
        .count();
    assert_eq!(created, 1);
    assert_eq!(
        server.psql(
            "bootstrap",
            "SELECT count(*) FROM api_keys WHERE role = 'admin'"
        ),
        "1"
    );
}

#[test]
fn the_schema_matches_sqlite_types() {
    let server = TestPostgres::start();
    let store = PostgresStore::connect(&server.url).unwrap();
    drop(store);
    let columns = server.psql(
        "postgres",
        "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position)
         FROM information_schema.columns WHERE table_name = 'api_keys'",
    );
    assert_eq!(
        columns,
        "id text, name text, role text, models text, secret_hash bytea, created_at bigint, \
         expires_at bigint, revoked_at bigint, rotated_from text, last_used_at bigint"
    );
}

#[test]
fn a_restarted_server_is_reconnected_to() {
    let mut server = TestPostgres::start();
    let store = PostgresStore::connect(&server.url).unwrap();
    store.insert_user(&user("alice")).unwrap();

    // Restarted between two calls: the next call reconnects and succeeds.
    // (The store checks a connection idle for over 250 ms before using it;
    // no real restart is quicker, but this one might be.)
    let idle_since = Instant::now();
    server.stop();
    server.start_again();
    std::thread::sleep(Duration::from_millis(300).saturating_sub(idle_since.elapsed()));
    assert!(store.get_user("alice").unwrap().is_some());

    // Down during a call: an error, promptly, not a hang or a panic. Each
    // of the pool's connections finds its server gone at its next call
    // ("connection closed"); then a call tries to connect and is refused.
    server.stop();
    let mut refused = None;
    for _ in 0..4 {
        let started = Instant::now();
        let err = store.get_user("alice").unwrap_err();
        assert!(matches!(err, StoreError::Postgres(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        if err.to_string().contains("cannot connect") {
            refused = Some(err);
            break;
        }
    }
    assert!(refused.is_some(), "no connection attempt was refused");
    // For a second after a failed connection attempt, calls (on any of the
    // pool's connections) fail at once rather than each waiting for a
    // connect timeout.
    for _ in 0..2 {
        let started = Instant::now();
        let err = store.insert_user(&user("bob")).unwrap_err().to_string();
        assert!(err.contains("not connected"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    server.start_again();
    // Back within that second plus a connection.
    let back = Instant::now();
    while store.get_user("alice").is_err() {
        assert!(back.elapsed() < Duration::from_secs(3), "no reconnection");
        std::thread::sleep(Duration::from_millis(50));
    }
    store.insert_user(&user("bob")).unwrap();
}

#[test]
fn a_server_that_is_not_there_fails_within_the_connect_timeout() {
    // A port nobody listens on refuses at once; an address that never
    // answers is bounded by connect_timeout (here 1 s, from the URL).
    let started = Instant::now();
    let err =
        PostgresStore::connect("postgres://u:pw@127.0.0.1:1/d?connect_timeout=1").unwrap_err();
    assert!(matches!(err, StoreError::Postgres(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_async_code_and_blocking_threads() {
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap();
    let url = server.url.clone();
    let store: Arc<dyn Store> = tokio::task::spawn_blocking(move || {
        Arc::new(PostgresStore::connect(&url).unwrap()) as Arc<dyn Store>
    })
    .await
    .unwrap();

    // The way Warden calls it.
    let s = Arc::clone(&store);
    tokio::task::spawn_blocking(move || s.insert_user(&user("alice")))
        .await
        .unwrap()
        .unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&store);
            tokio::task::spawn_blocking(move || s.get_user("alice"))
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap().is_some());
    }
    // Straight from async code (blocking the worker, as SQLite would):
    // neither a call, a connect nor a drop panics.
    assert!(store.get_user("alice").unwrap().is_some());
    let other = PostgresStore::connect(&server.url).unwrap();
    assert_eq!(other.list_users().unwrap().len(), 1);
    drop(other);
    tokio::spawn(async move { drop(store) }).await.unwrap();
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
}

#[test]
fn errors_never_show_the_password() {
    let mut server = TestPostgres::start();
    let encoded = server.url_for("postgres");
    let encoded = encoded
        .split_once("warden:")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(p, _)| p.to_owned())
        .unwrap();
    let secrets = [server.password.clone(), encoded];
    let check = |e: &StoreError| {
        let text = format!("{e} / {e:?}");
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{text}");
        }
        text
    };

    // The right password for an unknown database, a wrong user.
    let err = PostgresStore::connect(&server.url_for("nope")).unwrap_err();
    assert!(check(&err).contains("nope"));
    let wrong_user = server.url.replace("warden:", "nobody:");
    check(&PostgresStore::connect(&wrong_user).unwrap_err());
    // A URL the parser rejects, a server that is down.
    check(
        &PostgresStore::connect(&format!(
            "{}&port=x",
            server.url.replace("/postgres", "/postgres?a=b")
        ))
        .unwrap_err(),
    );
    let store = PostgresStore::connect(&server.url).unwrap();
    assert!(!format!("{store:?}").contains(&server.password));
    server.stop();
    let err = store.list_users().unwrap_err();
    let text = check(&err);
    assert!(text.contains("127.0.0.1"), "names the server: {text}");
    check(&PostgresStore::connect(&server.url).unwrap_err());
}

#[test]
fn tls_is_verified_and_required_when_asked_for() {
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params(), rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    // Only TLS connections over TCP are let in.
    let (leaf_pem, key_pem) = (leaf.pem(), server_key.serialize_pem());
    let hba = "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n";
    let server = TestPostgres::start_with(
        &[
            ("server.crt", leaf_pem.as_str()),
            ("server.key", key_pem.as_str()),
            ("tls_hba.conf", hba),
        ],
        &[
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
            ("hba_file", "tls_hba.conf"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let other_ca =
        rcgen::CertifiedIssuer::self_signed(ca_params(), rcgen::KeyPair::generate().unwrap())
            .unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other_ca.pem()).unwrap();

    let with = |query: &str| format!("{}?{query}", server.url);
    // Plain TCP is refused by the server.
    assert!(PostgresStore::connect(&server.url).is_err());
    // The right CA and host name: in.
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = with(&format!("sslmode={mode}&sslrootcert={}", ca_file.display()));
        let store = PostgresStore::connect(&url).unwrap();
        store.insert_user(&user(mode)).unwrap();
    }
    // Another CA: refused, as is a name the certificate does not hold.
    let err = PostgresStore::connect(&with(&format!(
        "sslmode=require&sslrootcert={}",
        other_file.display()
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("invalid peer certificate"), "{err}");
    let by_name = with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ))
    .replace("127.0.0.1", "localhost");
    // The certificate names 127.0.0.1, not localhost: refused for its name
    // (not for a refused connection on ::1).
    let err = PostgresStore::connect(&by_name).unwrap_err().to_string();
    assert!(err.contains("certificate"), "{err}");
    // A missing CA file is a clear error.
    let err = PostgresStore::connect(&with("sslmode=verify-full&sslrootcert=/nonexistent.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sslrootcert"), "{err}");
}

fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "warden test CA");
    params
}

#[test]
fn audit_batches_are_one_statement_and_all_or_none() {
    // Also in the suite; here with a batch large enough to matter.
    let server = TestPostgres::start();
    let store = PostgresStore::connect(&server.url).unwrap();
    let rows: Vec<AuditRow> = (1..=2_000)
        .map(|seq| AuditRow {
            replica: "r".into(),
            seq,
            record: format!(r#"{{"seq":{seq}}}"#),
            prev: vec![0; 32],
            mac: vec![1; 32],
        })
        .collect();
    store.append_audit(&rows[..1_000]).unwrap();
    let err = store.append_audit(&rows[999..]).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.audit_head("r").unwrap().unwrap().seq, 1_000);
    store.append_audit(&rows[1_000..]).unwrap();
    assert_eq!(store.audit_rows("r", 1, usize::MAX).unwrap(), rows);
}
