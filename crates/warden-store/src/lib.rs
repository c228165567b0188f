//! Warden's persistent state behind the [`Store`] trait.
//!
//! The embedded default is SQLite ([`SqliteStore`]) in the data dir, with
//! versioned migrations from the first release; a PostgreSQL implementation
//! of the same trait is planned for scale-out. Records here are plain data:
//! hashing and verification belong to `warden-auth`.

mod sqlite;

pub use sqlite::SqliteStore;

/// An API key as stored. The secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The public identifier (the `<id>` in `wdn_<id>_<secret>`).
    pub id: String,
    /// A human label.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Model allowlist; `None` means every model.
    pub models: Option<Vec<String>>,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, if the key expires.
    pub expires_at: Option<i64>,
    /// Unix seconds, if the key is revoked.
    pub revoked_at: Option<i64>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<String>,
}

impl ApiKeyRecord {
    /// Whether the key may be used at `now` (Unix seconds).
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A storage failure. The message is for logs and operators, never clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// The data directory could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored row is not what this version of Warden wrote.
    #[error("corrupt row in {table}: {what}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        what: String,
    },
    /// An id that must be unique already exists.
    #[error("{0} already exists")]
    Conflict(String),
}

/// Warden's persistent state. Implementations are blocking: async callers
/// use `spawn_blocking` (and `warden-auth` caches what the hot path needs).
pub trait Store: Send + Sync + 'static {
    /// Adds a key. Fails with [`StoreError::Conflict`] if the id exists.
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// One key by id.
    fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Every key, oldest first.
    fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks a key revoked at `now`. Returns false if it does not exist or
    /// was already revoked.
    fn revoke_key(&self, id: &str, now: i64) -> Result<bool, StoreError>;
    /// Inserts `new` and revokes `old_id` in one transaction. Returns false
    /// (and changes nothing) if `old_id` is missing or already revoked.
    fn rotate_key(&self, old_id: &str, new: &ApiKeyRecord, now: i64) -> Result<bool, StoreError>;
    /// Whether any active key carries `role` at `now`.
    fn has_active_key_with_role(&self, role: &str, now: i64) -> Result<bool, StoreError>;
}
