//! The SQLite implementation of [`Store`]: one connection in WAL mode behind
//! a mutex (SQLite serializes writers anyway; reads are cached by callers).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};
use rusqlite_migration::{M, Migrations};

use crate::{
    ApiKeyRecord, AuditPage, AuditQuery, AuditRow, ClientRecord, SigningKeyRecord, Store,
    StoreError, UserRecord,
};

/// Schema migrations, applied in order and recorded in `PRAGMA user_version`.
/// Append only: never edit a released migration.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../migrations/0001_api_keys.sql")),
        M::up(include_str!("../migrations/0002_identities.sql")),
        M::up(include_str!("../migrations/0003_audit.sql")),
    ])
}

/// State in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it to
    /// the latest schema. The parent directory is created with mode 0700.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let conn = Connection::open(path)?;
        Self::with_connection(conn)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations().to_latest(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Makes every commit wait for the disk (`PRAGMA synchronous = FULL`):
    /// a committed transaction then survives power loss, not only a crash
    /// of the process. Used with `audit.durability = "sync"`.
    pub fn sync_to_disk(&self) -> Result<(), StoreError> {
        self.conn().pragma_update(None, "synchronous", "FULL")?;
        Ok(())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(io)
    }
}

const KEY_COLUMNS: &str = "id, name, role, models, secret_hash, created_at, expires_at, revoked_at, rotated_from, last_used_at";
const USER_COLUMNS: &str = "name, role, password_hash, created_at, disabled_at";
const CLIENT_COLUMNS: &str = "id, name, role, secret_hash, created_at, revoked_at";
const SIGNING_COLUMNS: &str = "kid, private_pkcs8, public_key, created_at, retired_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        name: row.get(0)?,
        role: row.get(1)?,
        password_hash: row.get(2)?,
        created_at: row.get(3)?,
        disabled_at: row.get(4)?,
    })
}

fn client_from_row(row: &Row<'_>) -> rusqlite::Result<ClientRecord> {
    Ok(ClientRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        secret_hash: row.get(3)?,
        created_at: row.get(4)?,
        revoked_at: row.get(5)?,
    })
}

fn signing_from_row(row: &Row<'_>) -> rusqlite::Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: row.get(0)?,
        private_pkcs8: row.get(1)?,
        public_key: row.get(2)?,
        created_at: row.get(3)?,
        retired_at: row.get(4)?,
    })
}

/// Maps a unique-constraint failure to [`StoreError::Conflict`].
fn conflict(
    result: rusqlite::Result<usize>,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Conflict(what()))
        }
        Err(e) => Err(e.into()),
    }
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ApiKeyRecord, StoreError>> {
    let hash: Vec<u8> = row.get(4)?;
    let models: Option<String> = row.get(3)?;
    let id: String = row.get(0)?;
    let Ok(secret_hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
        return Ok(Err(StoreError::Corrupt {
            table: "api_keys",
            what: format!("hash of key {id}"),
        }));
    };
    Ok(Ok(ApiKeyRecord {
        id,
        name: row.get(1)?,
        role: row.get(2)?,
        models: models.map(|m| m.split(',').map(str::to_owned).collect()),
        secret_hash,
        created_at: row.get(5)?,
        expires_at: row.get(6)?,
        revoked_at: row.get(7)?,
        rotated_from: row.get(8)?,
        last_used_at: row.get(9)?,
    }))
}

fn insert(conn: &Connection, key: &ApiKeyRecord) -> Result<(), StoreError> {
    let models = key.models.as_ref().map(|m| m.join(","));
    let result = conn.execute(
        &format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            key.id,
            key.name,
            key.role,
            models,
            key.secret_hash.as_slice(),
            key.created_at,
            key.expires_at,
            key.revoked_at,
            key.rotated_from,
            key.last_used_at
        ],
    );
    conflict(result, || format!("key {}", key.id))
}

impl Store for SqliteStore {
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        insert(&self.conn(), key)
    }

    fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?;
        stmt.query_row([id], key_from_row).optional()?.transpose()
    }

    fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], key_from_row)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|k| k))
            .collect()
    }

    fn revoke_key(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now],
        )?;
        Ok(changed == 1)
    }

    fn rotate_key(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        now: i64,
        old_ends: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE api_keys SET expires_at = MIN(COALESCE(expires_at, ?3), ?3)
             WHERE id = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)",
            params![old_id, now, old_ends],
        )?;
        if changed != 1 {
            return Ok(false); // dropping the transaction rolls it back
        }
        insert(&tx, new)?;
        tx.commit()?;
        Ok(true)
    }

    fn has_active_key_with_role(&self, role: &str, now: i64) -> Result<bool, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM api_keys WHERE role = ?1 AND revoked_at IS NULL
             AND (expires_at IS NULL OR expires_at > ?2))",
        )?;
        Ok(stmt.query_row(params![role, now], |r| r.get(0))?)
    }

    fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE id = ?1",
            )?;
            for (id, at) in used {
                stmt.execute(params![id, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let result = self.conn().execute(
            &format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
            params![
                user.name,
                user.role,
                user.password_hash,
                user.created_at,
                user.disabled_at
            ],
        );
        conflict(result, || format!("user {}", user.name))
    }

    fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"))?;
        Ok(stmt.query_row([name], user_from_row).optional()?)
    }

    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, name"
        ))?;
        let rows = stmt.query_map([], user_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn set_user_password(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE users SET password_hash = ?2 WHERE name = ?1",
            params![name, hash],
        )?;
        Ok(changed == 1)
    }

    fn disable_user(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE users SET disabled_at = ?2 WHERE name = ?1 AND disabled_at IS NULL",
            params![name, now],
        )?;
        Ok(changed == 1)
    }

    fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let result = self.conn().execute(
            &format!(
                "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            params![
                client.id,
                client.name,
                client.role,
                client.secret_hash,
                client.created_at,
                client.revoked_at
            ],
        );
        conflict(result, || format!("client {}", client.id))
    }

    fn get_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = ?1"
        ))?;
        Ok(stmt.query_row([id], client_from_row).optional()?)
    }

    fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], client_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn set_client_secret(&self, id: &str, hash: &str) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE oauth_clients SET secret_hash = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, hash],
        )?;
        Ok(changed == 1)
    }

    fn revoke_client(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE oauth_clients SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now],
        )?;
        Ok(changed == 1)
    }

    fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SIGNING_COLUMNS} FROM signing_keys ORDER BY created_at DESC, kid"
        ))?;
        let rows = stmt.query_map([], signing_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn rotate_signing_key(&self, new: &SigningKeyRecord, now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL",
            params![now],
        )?;
        let result = tx.execute(
            &format!("INSERT INTO signing_keys ({SIGNING_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
            params![
                new.kid,
                new.private_pkcs8,
                new.public_key,
                new.created_at,
                new.retired_at
            ],
        );
        conflict(result, || format!("signing key {}", new.kid))?;
        tx.commit()?;
        Ok(())
    }

    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit (replica, seq, record, prev, mac) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in rows {
                let result = stmt.execute(params![r.replica, r.seq, r.record, r.prev, r.mac]);
                conflict(result, || format!("audit row {}:{}", r.replica, r.seq))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn audit_rows(
        &self,
        replica: &str,
        from_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT replica, seq, record, prev, mac FROM audit
             WHERE replica = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![replica, from_seq, limit as i64], audit_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn audit_head(&self, replica: &str) -> Result<Option<AuditRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT replica, seq, record, prev, mac FROM audit
             WHERE replica = ?1 ORDER BY seq DESC LIMIT 1",
        )?;
        Ok(stmt.query_row([replica], audit_from_row).optional()?)
    }

    fn audit_replicas(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT DISTINCT replica FROM audit ORDER BY replica")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn audit_query(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        // A scan in `seq` order that stops at `limit` matches or `max_scan`
        // rows: no index on the record's fields, so writes stay cheap.
        let end = match q.max_scan {
            0 => i64::MAX,
            n => q.after_seq.saturating_add(n as i64),
        };
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT replica, seq, record, prev, mac FROM audit
             WHERE replica = ?1 AND seq > ?2 AND seq <= ?9
               AND (?3 IS NULL OR json_extract(record, '$.principal') = ?3)
               AND (?4 IS NULL OR json_extract(record, '$.model') = ?4)
               AND (?5 IS NULL OR json_extract(record, '$.outcome') = ?5)
               AND (?6 IS NULL OR json_extract(record, '$.time_us') >= ?6)
               AND (?7 IS NULL OR json_extract(record, '$.time_us') < ?7)
             ORDER BY seq LIMIT ?8",
        )?;
        let rows = stmt
            .query_map(
                params![
                    q.replica,
                    q.after_seq,
                    q.principal,
                    q.model,
                    q.outcome,
                    q.since_us,
                    q.until_us,
                    q.limit as i64,
                    end
                ],
                audit_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next = match rows.last() {
            Some(last) if rows.len() == q.limit => Some(last.seq),
            _ => {
                let head: Option<i64> = conn.query_row(
                    "SELECT MAX(seq) FROM audit WHERE replica = ?1",
                    [&q.replica],
                    |r| r.get(0),
                )?;
                head.filter(|h| *h > end).map(|_| end)
            }
        };
        Ok(AuditPage { rows, next })
    }
}

fn audit_from_row(row: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        replica: row.get(0)?,
        seq: row.get(1)?,
        record: row.get(2)?,
        prev: row.get(3)?,
        mac: row.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, role: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: format!("{id}-name"),
            role: role.into(),
            models: Some(vec!["iris".into(), "digits".into()]),
            secret_hash: [7; 32],
            created_at: 100,
            expires_at: None,
            revoked_at: None,
            rotated_from: None,
            last_used_at: None,
        }
    }

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn keys_round_trip_revoke_and_rotate() {
        let s = SqliteStore::in_memory().unwrap();
        s.insert_key(&key("a", "admin")).unwrap();
        assert!(matches!(
            s.insert_key(&key("a", "admin")),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.get_key("a").unwrap().unwrap(), key("a", "admin"));
        assert!(s.get_key("zz").unwrap().is_none());
        assert!(s.has_active_key_with_role("admin", 200).unwrap());

        assert!(s.revoke_key("a", 150).unwrap());
        assert!(
            !s.revoke_key("a", 160).unwrap(),
            "second revoke changes nothing"
        );
        assert_eq!(s.get_key("a").unwrap().unwrap().revoked_at, Some(150));
        assert!(!s.has_active_key_with_role("admin", 200).unwrap());

        s.insert_key(&key("b", "predict")).unwrap();
        let mut c = key("c", "predict");
        c.rotated_from = Some("b".into());
        assert!(s.rotate_key("b", &c, 300, 360).unwrap());
        assert_eq!(s.get_key("b").unwrap().unwrap().expires_at, Some(360));
        assert!(!s.rotate_key("b", &key("d", "predict"), 400, 460).unwrap());
        assert!(
            s.get_key("d").unwrap().is_none(),
            "failed rotation inserts nothing"
        );
        let ids: Vec<_> = s.list_keys().unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn expiry_counts_for_active() {
        let s = SqliteStore::in_memory().unwrap();
        let mut k = key("e", "admin");
        k.expires_at = Some(200);
        s.insert_key(&k).unwrap();
        assert!(s.has_active_key_with_role("admin", 199).unwrap());
        assert!(!s.has_active_key_with_role("admin", 200).unwrap());
        assert!(k.is_active(199) && !k.is_active(200));
    }

    #[test]
    fn last_use_keeps_the_latest_time() {
        let s = SqliteStore::in_memory().unwrap();
        s.insert_key(&key("a", "admin")).unwrap();
        s.touch_keys(&[("a".into(), 500), ("a".into(), 400), ("zz".into(), 1)])
            .unwrap();
        assert_eq!(s.get_key("a").unwrap().unwrap().last_used_at, Some(500));
    }

    #[test]
    fn users_clients_and_signing_keys() {
        let s = SqliteStore::in_memory().unwrap();
        let user = UserRecord {
            name: "alice".into(),
            role: "predict".into(),
            password_hash: "$argon2id$x".into(),
            created_at: 1,
            disabled_at: None,
        };
        s.insert_user(&user).unwrap();
        assert!(matches!(s.insert_user(&user), Err(StoreError::Conflict(_))));
        assert!(s.set_user_password("alice", "$argon2id$y").unwrap());
        assert!(s.disable_user("alice", 5).unwrap());
        assert!(!s.disable_user("alice", 6).unwrap());
        let got = s.get_user("alice").unwrap().unwrap();
        assert_eq!(
            (got.password_hash.as_str(), got.disabled_at),
            ("$argon2id$y", Some(5))
        );
        assert!(
            !format!("{got:?}").contains("argon2"),
            "Debug hides the hash"
        );

        let client = ClientRecord {
            id: "c1".into(),
            name: "svc".into(),
            role: "predict".into(),
            secret_hash: "$argon2id$s".into(),
            created_at: 1,
            revoked_at: None,
        };
        s.insert_client(&client).unwrap();
        assert!(s.set_client_secret("c1", "$argon2id$t").unwrap());
        assert!(s.revoke_client("c1", 9).unwrap());
        assert!(!s.set_client_secret("c1", "$argon2id$u").unwrap());
        assert_eq!(s.list_clients().unwrap().len(), 1);

        let k = |kid: &str, at| SigningKeyRecord {
            kid: kid.into(),
            private_pkcs8: vec![1],
            public_key: vec![2],
            created_at: at,
            retired_at: None,
        };
        s.rotate_signing_key(&k("k1", 10), 10).unwrap();
        s.rotate_signing_key(&k("k2", 20), 20).unwrap();
        let keys = s.list_signing_keys().unwrap();
        assert_eq!(keys[0].kid, "k2");
        assert_eq!((keys[0].retired_at, keys[1].retired_at), (None, Some(20)));
    }

    #[test]
    fn reopening_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("w.db");
        SqliteStore::open(&path)
            .unwrap()
            .insert_key(&key("a", "admin"))
            .unwrap();
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.get_key("a").unwrap().is_some());
    }

    #[test]
    fn audit_queries_filter_page_and_bound_their_scan() {
        let s = SqliteStore::in_memory().unwrap();
        let rows: Vec<AuditRow> = (1..=50)
            .map(|seq| AuditRow {
                replica: "r".into(),
                seq,
                record: format!(
                    r#"{{"principal":"{}","time_us":{seq},"outcome":"ok"}}"#,
                    if seq % 10 == 0 { "rare" } else { "common" }
                ),
                prev: vec![0; 32],
                mac: vec![0; 32],
            })
            .collect();
        s.append_audit(&rows).unwrap();
        assert_eq!(s.audit_replicas().unwrap(), ["r"]);
        let mut q = AuditQuery {
            replica: "r".into(),
            principal: Some("rare".into()),
            limit: 100,
            max_scan: 15,
            ..AuditQuery::default()
        };
        // Pages of at most 15 examined rows: [10] [20, 30] [40] [50].
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = s.audit_query(&q).unwrap();
            pages += 1;
            seen.extend(page.rows.iter().map(|r| r.seq));
            match page.next {
                Some(n) => q.after_seq = n,
                None => break,
            }
        }
        assert_eq!(seen, [10, 20, 30, 40, 50]);
        assert_eq!(pages, 4);
        // A full page ends at its last row; time bounds are half-open.
        let page = s
            .audit_query(&AuditQuery {
                replica: "r".into(),
                since_us: Some(5),
                until_us: Some(8),
                limit: 2,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(page.rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(page.next, Some(6));
    }
}
