//! The SQLite implementation of [`Store`]: one connection in WAL mode behind
//! a mutex (SQLite serializes writers anyway; reads are cached by callers).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};
use rusqlite_migration::{M, Migrations};

use crate::{ApiKeyRecord, Store, StoreError};

/// Schema migrations, applied in order and recorded in `PRAGMA user_version`.
/// Append only: never edit a released migration.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(include_str!("../migrations/0001_api_keys.sql"))])
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

const KEY_COLUMNS: &str =
    "id, name, role, models, secret_hash, created_at, expires_at, revoked_at, rotated_from";

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
    }))
}

fn insert(conn: &Connection, key: &ApiKeyRecord) -> Result<(), StoreError> {
    let models = key.models.as_ref().map(|m| m.join(","));
    let result = conn.execute(
        &format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
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
            key.rotated_from
        ],
    );
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Conflict(format!("key {}", key.id)))
        }
        Err(e) => Err(e.into()),
    }
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

    fn rotate_key(&self, old_id: &str, new: &ApiKeyRecord, now: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![old_id, now],
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
        assert!(s.rotate_key("b", &c, 300).unwrap());
        assert!(!s.rotate_key("b", &key("d", "predict"), 301).unwrap());
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
}
