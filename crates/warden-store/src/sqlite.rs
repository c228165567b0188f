//! The SQLite implementation of [`Store`]: one connection in WAL mode behind
//! a mutex (SQLite serializes writers anyway; reads are cached by callers).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};
use rusqlite_migration::{M, Migrations};

use crate::migrations::{self, Dialect};
use crate::{
    AUDIT_COLUMNS, ApiKeyRecord, AuditAnchor, AuditPage, AuditQuery, AuditRow, CLIENT_COLUMNS,
    ClientRecord, KEY_COLUMNS, SIGNING_COLUMNS, SigningKeyRecord, Store, StoreError, USER_COLUMNS,
    UserRecord, sql_limit,
};

/// The schema migrations ([`crate::migrations`]), applied in order and
/// recorded in `PRAGMA user_version`.
fn migrations() -> Migrations<'static> {
    Migrations::new(
        migrations::all(Dialect::Sqlite)
            .iter()
            .map(|sql| M::up(sql))
            .collect(),
    )
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

    fn insert_key_if_role_unused(&self, key: &ApiKeyRecord, now: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        // IMMEDIATE: the write lock is taken before the check, so another
        // process on the same file cannot insert in between.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM api_keys WHERE role = ?1 AND revoked_at IS NULL
             AND (expires_at IS NULL OR expires_at > ?2))",
            params![key.role, now],
            |r| r.get(0),
        )?;
        if taken {
            return Ok(false);
        }
        insert(&tx, key)?;
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
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
            ))?;
            for r in rows {
                let result = stmt.execute(params![r.replica, r.seq, r.record, r.prev, r.mac]);
                conflict(result, || format!("audit row {}:{}", r.replica, r.seq))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn prune_audit(&self, anchor: &AuditAnchor) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO audit_anchor (replica, seq, head, sig) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (replica) DO UPDATE SET seq = excluded.seq, head = excluded.head, sig = excluded.sig",
            params![anchor.replica, anchor.seq, anchor.head, anchor.sig],
        )?;
        let removed = tx.execute(
            "DELETE FROM audit WHERE replica = ?1 AND seq <= ?2",
            params![anchor.replica, anchor.seq],
        )?;
        tx.commit()?;
        Ok(removed as u64)
    }

    fn audit_anchor(&self, replica: &str) -> Result<Option<AuditAnchor>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT replica, seq, head, sig FROM audit_anchor WHERE replica = ?1",
        )?;
        Ok(stmt
            .query_row([replica], |r| {
                Ok(AuditAnchor {
                    replica: r.get(0)?,
                    seq: r.get(1)?,
                    head: r.get(2)?,
                    sig: r.get(3)?,
                })
            })
            .optional()?)
    }

    fn audit_rows(
        &self,
        replica: &str,
        from_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE replica = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3"),
        )?;
        let rows = stmt.query_map(params![replica, from_seq, sql_limit(limit)], audit_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn audit_head(&self, replica: &str) -> Result<Option<AuditRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE replica = ?1 ORDER BY seq DESC LIMIT 1"
        ))?;
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
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit
             WHERE replica = ?1 AND seq > ?2 AND seq <= ?9
               AND (?3 IS NULL OR json_extract(record, '$.principal') = ?3)
               AND (?4 IS NULL OR json_extract(record, '$.model') = ?4)
               AND (?5 IS NULL OR json_extract(record, '$.outcome') = ?5)
               AND (?6 IS NULL OR json_extract(record, '$.time_us') >= ?6)
               AND (?7 IS NULL OR json_extract(record, '$.time_us') < ?7)
             ORDER BY seq LIMIT ?8"
        ))?;
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
                    q.sql_limit(),
                    q.scan_end()
                ],
                audit_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        q.page(rows, || {
            conn.query_row(
                "SELECT MAX(seq) FROM audit WHERE replica = ?1",
                [&q.replica],
                |r| r.get(0),
            )
        })
        .map_err(StoreError::from)
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
    // The behaviour of every `Store` method is tested against both backends
    // in `tests/postgres.rs` (the conformance suite); here only what is
    // SQLite's own.
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn reopening_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("w.db");
        SqliteStore::open(&path)
            .unwrap()
            .insert_user(&UserRecord {
                name: "alice".into(),
                role: "admin".into(),
                password_hash: "$argon2id$x".into(),
                created_at: 1,
                disabled_at: None,
            })
            .unwrap();
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.get_user("alice").unwrap().is_some());
    }

    #[test]
    fn the_schema_is_the_released_one() {
        // Databases created before the migrations were shared with
        // PostgreSQL must keep working: same tables, same declared types.
        let s = SqliteStore::in_memory().unwrap();
        let conn = s.conn();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 4);
        let strict: i64 = conn
            .query_row("SELECT COUNT(*) FROM pragma_table_list WHERE strict = 1 AND name IN ('api_keys', 'users', 'oauth_clients', 'signing_keys', 'audit', 'audit_anchor')", [], |r| r.get(0))
            .unwrap();
        assert_eq!(strict, 6, "every table is STRICT");
        let types: String = conn
            .query_row(
                "SELECT group_concat(name || ' ' || type, ', ') FROM pragma_table_info('api_keys')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            types,
            "id TEXT, name TEXT, role TEXT, models TEXT, secret_hash BLOB, created_at INTEGER, \
             expires_at INTEGER, revoked_at INTEGER, rotated_from TEXT, last_used_at INTEGER"
        );
    }
}
