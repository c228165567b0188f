//! Warden's persistent state behind the [`Store`] trait.
//!
//! The embedded default is SQLite ([`SqliteStore`]) in the data dir; for
//! scale-out (several replicas sharing state) the same trait is implemented
//! on PostgreSQL ([`PostgresStore`], chosen by `store.url`). Both apply
//! the same versioned migrations, written once (`migrations.rs`). Records
//! here are plain data: hashing and verification belong to `warden-auth`.

mod migrations;
mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
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
    /// Unix seconds of the last request made with it (flushed periodically).
    pub last_used_at: Option<i64>,
}

impl ApiKeyRecord {
    /// Whether the key may be used at `now` (Unix seconds).
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A user of the OAuth2 password grant.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, if disabled.
    pub disabled_at: Option<i64>,
}

/// An OAuth2 client (client_credentials grant).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The `client_id`.
    pub id: String,
    /// A human label.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Argon2id PHC string of the client secret.
    pub secret_hash: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<i64>,
}

/// An Ed25519 token-signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// Key id (the JWT `kid`).
    pub kid: String,
    /// PKCS#8 v2 DER of the private key.
    pub private_pkcs8: Vec<u8>,
    /// The 32-byte public key.
    pub public_key: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once replaced by a newer key.
    pub retired_at: Option<i64>,
}

// Hand-written so that no hash or private key reaches a log.
impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// One row of the audit chain, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// The replica whose chain this is.
    pub replica: String,
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Canonical JSON of the record.
    pub record: String,
    /// The previous row's MAC (zeros for the first).
    pub prev: Vec<u8>,
    /// HMAC-SHA256 of this row.
    pub mac: Vec<u8>,
}

/// Where a pruned audit chain starts: the signed checkpoint of the last
/// row removed (docs/audit.md, "Retention").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditAnchor {
    /// The chain.
    pub replica: String,
    /// The last sequence number removed.
    pub seq: i64,
    /// That row's MAC.
    pub head: Vec<u8>,
    /// The checkpoint signature over (replica, seq, head).
    pub sig: Vec<u8>,
}

/// A filtered page of one replica's audit chain: records after `after_seq`
/// whose fields match every filter given, in `seq` order.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// The chain.
    pub replica: String,
    /// Only rows after this sequence number (the previous page's last).
    pub after_seq: i64,
    /// Records of this principal id.
    pub principal: Option<String>,
    /// Records about this model.
    pub model: Option<String>,
    /// Records with this outcome code (`ok`, `unauthenticated`, ...).
    pub outcome: Option<String>,
    /// Records at or after this time (µs since the Unix epoch).
    pub since_us: Option<i64>,
    /// Records before this time (µs since the Unix epoch).
    pub until_us: Option<i64>,
    /// Most rows returned.
    pub limit: usize,
    /// Most rows examined (a filter that rarely matches must not hold the
    /// store for long); 0 means no bound.
    pub max_scan: usize,
}

/// A page of [`AuditQuery`] results.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    /// Matching rows, in `seq` order.
    pub rows: Vec<AuditRow>,
    /// Where the next page starts (its `after_seq`), or `None` at the end
    /// of the chain. A page may hold fewer than `limit` rows (even none)
    /// and still have a next one, when the scan bound was reached.
    pub next: Option<i64>,
}

impl AuditQuery {
    /// The last `seq` the scan may examine (`max_scan` rows after
    /// `after_seq`, or the whole chain).
    pub(crate) fn scan_end(&self) -> i64 {
        match self.max_scan {
            0 => i64::MAX,
            n => self.after_seq.saturating_add(n as i64),
        }
    }

    /// `limit` as an SQL `LIMIT` (a bound past `i64::MAX` is no bound).
    pub(crate) fn sql_limit(&self) -> i64 {
        sql_limit(self.limit)
    }

    /// The page made of the rows a scan up to [`Self::scan_end`] matched.
    /// `head` reads the chain's last `seq`; it is only needed when the page
    /// is not full, to tell whether the chain goes on past the scan.
    pub(crate) fn page<E>(
        &self,
        rows: Vec<AuditRow>,
        head: impl FnOnce() -> Result<Option<i64>, E>,
    ) -> Result<AuditPage, E> {
        let next = match rows.last() {
            Some(last) if rows.len() == self.limit => Some(last.seq),
            _ => {
                let end = self.scan_end();
                head()?.filter(|h| *h > end).map(|_| end)
            }
        };
        Ok(AuditPage { rows, next })
    }
}

/// A row count as an SQL `LIMIT` (a bound past `i64::MAX` is no bound).
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The columns of each table, in the order the row readers expect.
pub(crate) const KEY_COLUMNS: &str = "id, name, role, models, secret_hash, created_at, expires_at, revoked_at, rotated_from, last_used_at";
pub(crate) const USER_COLUMNS: &str = "name, role, password_hash, created_at, disabled_at";
pub(crate) const CLIENT_COLUMNS: &str = "id, name, role, secret_hash, created_at, revoked_at";
pub(crate) const SIGNING_COLUMNS: &str = "kid, private_pkcs8, public_key, created_at, retired_at";
pub(crate) const AUDIT_COLUMNS: &str = "replica, seq, record, prev, mac";

/// A storage failure. The message is for logs and operators, never clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// PostgreSQL refused or failed, could not be reached, or its URL is
    /// not usable. The text never holds the URL's password.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
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
    /// Inserts `new` and makes `old_id` expire at `old_ends` (or earlier,
    /// if it already expired sooner), in one transaction. Returns false (and
    /// changes nothing) if `old_id` is missing or not active at `now`.
    fn rotate_key(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        now: i64,
        old_ends: i64,
    ) -> Result<bool, StoreError>;
    /// Adds `key` only if no key with its role is active at `now`, as one
    /// atomic step (replicas starting together create one bootstrap admin
    /// key, not one each). Returns whether it was added.
    fn insert_key_if_role_unused(&self, key: &ApiKeyRecord, now: i64) -> Result<bool, StoreError>;
    /// Whether any active key carries `role` at `now`.
    fn has_active_key_with_role(&self, role: &str, now: i64) -> Result<bool, StoreError>;
    /// Records last-use times (id, Unix seconds), keeping the later time.
    fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError>;

    /// Adds a user. Fails with [`StoreError::Conflict`] if the name exists.
    fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    /// One user by name.
    fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Every user, oldest first.
    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Replaces a user's password hash; false if there is no such user.
    fn set_user_password(&self, name: &str, hash: &str) -> Result<bool, StoreError>;
    /// Disables a user; false if missing or already disabled.
    fn disable_user(&self, name: &str, now: i64) -> Result<bool, StoreError>;

    /// Adds a client. Fails with [`StoreError::Conflict`] if the id exists.
    fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError>;
    /// One client by id.
    fn get_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError>;
    /// Every client, oldest first.
    fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError>;
    /// Replaces an active client's secret hash; false if missing or revoked.
    fn set_client_secret(&self, id: &str, hash: &str) -> Result<bool, StoreError>;
    /// Revokes a client; false if missing or already revoked.
    fn revoke_client(&self, id: &str, now: i64) -> Result<bool, StoreError>;

    /// Every signing key, newest first.
    fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    /// Retires every active signing key at `now` and adds `new`, in one transaction.
    fn rotate_signing_key(&self, new: &SigningKeyRecord, now: i64) -> Result<(), StoreError>;

    /// Appends audit rows in one transaction (all or none).
    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError>;
    /// Removes `anchor.replica`'s rows up to and including `anchor.seq` and
    /// keeps `anchor` as the chain's start, in one transaction; returns the
    /// rows removed.
    fn prune_audit(&self, anchor: &AuditAnchor) -> Result<u64, StoreError>;
    /// The anchor of `replica`'s chain, if it was ever pruned.
    fn audit_anchor(&self, replica: &str) -> Result<Option<AuditAnchor>, StoreError>;
    /// Up to `limit` rows of `replica`'s chain from `from_seq`, in stored
    /// order of `seq`.
    fn audit_rows(
        &self,
        replica: &str,
        from_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError>;
    /// The last row of `replica`'s chain.
    fn audit_head(&self, replica: &str) -> Result<Option<AuditRow>, StoreError>;
    /// Every replica id with an audit chain.
    fn audit_replicas(&self) -> Result<Vec<String>, StoreError>;
    /// A filtered page of a chain (the rows are returned as stored, MACs
    /// included, so a reader can check them).
    fn audit_query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;
}
