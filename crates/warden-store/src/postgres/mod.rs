//! The PostgreSQL implementation of [`Store`], for replicas that share state.
//!
//! A small pool: [`CONNECTIONS`] connections, each owned by a worker thread
//! of the store; each call sends the work to whichever worker is free and
//! waits for the answer, so a key lookup never waits behind an audit batch
//! being inserted. The `postgres` client runs a tokio runtime of its own
//! and blocks on it, which panics on a thread that is already running async
//! code; on its own thread it does not, so the store may be called from
//! anywhere (a `spawn_blocking` closure, a plain thread, or, blocking it as
//! SQLite would, async code) and dropped anywhere. Each call is one
//! connection's work (its statements, its transaction); two calls may run
//! at once, as with replicas sharing the database.
//!
//! The connection is made lazily again after it is lost: a call while the
//! server is down fails (after at most the connect timeout), and the first
//! call after it is back reconnects, so a PostgreSQL restart heals without
//! restarting Warden. Nothing waits forever: connecting is bounded by
//! `connect_timeout`, each statement by `statement_timeout`, a dead peer by
//! TCP keepalives and `tcp_user_timeout`, and each call as a whole by a
//! deadline after which it fails (the work it sent may still complete).

mod connection;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, mpsc};
use std::time::Duration;

use postgres::{Client, Row};

use self::connection::{Session, Settings};

use crate::migrations::{self, Dialect};
use crate::{
    AUDIT_COLUMNS, ApiKeyRecord, AuditAnchor, AuditPage, AuditQuery, AuditRow, CLIENT_COLUMNS,
    ClientRecord, KEY_COLUMNS, SIGNING_COLUMNS, SigningKeyRecord, Store, StoreError, USER_COLUMNS,
    UserRecord, sql_limit,
};

/// Connections (and worker threads) per store: the audit writer's batches
/// on one, key lookups and management calls on the other.
pub(crate) const CONNECTIONS: usize = 2;

/// Budget of a call on top of its connect timeouts: two statement timeouts
/// and a margin.
const CALL_MARGIN: Duration = Duration::from_secs(65);
/// The advisory lock held while migrating, so that replicas starting
/// together against one database migrate one after the other.
const MIGRATION_LOCK: i64 = 0x7761_7264_656e_0001; // "warden" 1
/// The advisory lock held while creating the first key of a role.
const FIRST_KEY_LOCK: i64 = 0x7761_7264_656e_0002; // "warden" 2

/// Warden's state in a PostgreSQL database.
///
/// ```text
/// postgres://USER:PASSWORD@HOST:PORT/DATABASE?OPTION=VALUE&...
/// ```
///
/// `postgresql://` works too. The options are libpq's, as far as the
/// `postgres` crate knows them (`connect_timeout`, `options`,
/// `application_name`, `keepalives*`, `tcp_user_timeout`,
/// `target_session_attrs`, `host` for several hosts or a socket directory,
/// ...), percent-encoded like the password. Warden sets `connect_timeout`
/// (5 s), `statement_timeout` (30 s, when the session has none),
/// `tcp_user_timeout` (30 s), keepalives (30 s idle, 3 probes 10 s apart)
/// and `application_name` (`warden`) unless the URL or the server says
/// otherwise.
///
/// TLS: `sslmode=require`, `verify-ca` and `verify-full` all mean TLS with
/// the server's certificate chain **and host name** verified (rustls, with
/// the aws-lc-rs provider), against the CA certificates of the PEM file
/// `sslrootcert=PATH`, or without it (or with `sslrootcert=system`) the
/// system's. `disable`, `allow`, `prefer` and no `sslmode` mean plain TCP
/// (or a Unix socket): use them on a private network only.
///
/// The tables live in the session's schema (`options=-c search_path=...`
/// chooses another); the role needs to create tables there on the first
/// start. Applied migrations are recorded in `warden_schema_migrations`.
pub struct PostgresStore {
    jobs: mpsc::Sender<Job>,
    deadline: Duration,
    target: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

type Job = Box<dyn FnOnce(&mut Session) + Send>;

impl PostgresStore {
    /// Connects to the database `url` names (see the type's documentation)
    /// and migrates it to the latest schema. Error messages never hold the
    /// URL's password.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let settings = Settings::from_url(url)?;
        let target = settings.target.clone();
        let deadline = settings
            .connect_timeout()
            .saturating_mul(settings.hosts())
            .saturating_add(CALL_MARGIN);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..CONNECTIONS {
            let queue = Arc::clone(&queue);
            let mut session = Session::new(settings.clone());
            std::thread::Builder::new()
                .name("warden-postgres".into())
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job: the
                        // other worker takes the next one.
                        let job = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        let Ok(job) = job else { break };
                        // A panic must not kill the worker (and with it
                        // every later call); the connection's state is then
                        // unknown.
                        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut session))).is_err()
                        {
                            session.reset();
                        }
                    }
                })
                .map_err(|e| {
                    StoreError::Postgres(format!("cannot start the worker thread: {e}"))
                })?;
        }
        let store = Self {
            jobs,
            deadline,
            target,
        };
        store.call(migrate)?;
        Ok(store)
    }

    /// Runs `op` on the worker's connection (connecting first if needed)
    /// and waits for its result, at most until the deadline.
    fn call<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let abandoned = Arc::new(AtomicBool::new(false));
        let given_up = Arc::clone(&abandoned);
        let job: Job = Box::new(move |session: &mut Session| {
            if given_up.load(Ordering::Acquire) {
                return; // the caller has already failed: do not act late
            }
            let _ = reply.send(session.run(op));
        });
        self.jobs.send(job).map_err(|_| {
            StoreError::Postgres(format!("{}: the worker thread has stopped", self.target))
        })?;
        match answer.recv_timeout(self.deadline) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                abandoned.store(true, Ordering::Release);
                Err(StoreError::Postgres(format!(
                    "{}: no answer within {} s",
                    self.target,
                    self.deadline.as_secs()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Postgres(format!(
                "{}: the operation panicked (the connection will be made again)",
                self.target
            ))),
        }
    }
}

/// Brings the schema up to date, holding an advisory lock so that replicas
/// starting together migrate one after the other (the later one finds
/// nothing left to do). DDL is transactional here: a failed migration
/// leaves the database as it was.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let all = migrations::all(Dialect::Postgres);
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS warden_schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let applied: Option<i32> = tx
        .query_one("SELECT MAX(version) FROM warden_schema_migrations", &[])?
        .try_get(0)?;
    let applied = usize::try_from(applied.unwrap_or(0)).unwrap_or(0);
    if applied > all.len() {
        return Err(StoreError::Postgres(format!(
            "the database schema is at version {applied}, newer than this Warden knows ({})",
            all.len()
        )));
    }
    for (i, sql) in all.iter().enumerate().skip(applied) {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql).map_err(|e| {
            StoreError::Postgres(format!("migration {version} failed: {}", describe(&e)))
        })?;
        tx.execute(
            "INSERT INTO warden_schema_migrations (version) VALUES ($1)",
            &[&version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Postgres(describe(&e))
    }
}

/// The error with its causes (the crate's own text is only the kind: "db
/// error", "error performing TLS handshake").
pub(super) fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Maps an integrity-constraint failure (SQLSTATE class 23, as SQLite's
/// constraint errors) to [`StoreError::Conflict`].
fn conflict<T>(
    result: Result<T, postgres::Error>,
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    result.map_err(|e| match e.code() {
        Some(code) if code.code().starts_with("23") => StoreError::Conflict(what()),
        _ => e.into(),
    })
}

fn key_from_row(row: &Row) -> Result<ApiKeyRecord, StoreError> {
    let id: String = row.try_get(0)?;
    let hash: Vec<u8> = row.try_get(4)?;
    let models: Option<String> = row.try_get(3)?;
    let Ok(secret_hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
        return Err(StoreError::Corrupt {
            table: "api_keys",
            what: format!("hash of key {id}"),
        });
    };
    Ok(ApiKeyRecord {
        id,
        name: row.try_get(1)?,
        role: row.try_get(2)?,
        models: models.map(|m| m.split(',').map(str::to_owned).collect()),
        secret_hash,
        created_at: row.try_get(5)?,
        expires_at: row.try_get(6)?,
        revoked_at: row.try_get(7)?,
        rotated_from: row.try_get(8)?,
        last_used_at: row.try_get(9)?,
    })
}

fn user_from_row(row: &Row) -> Result<UserRecord, postgres::Error> {
    Ok(UserRecord {
        name: row.try_get(0)?,
        role: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        created_at: row.try_get(3)?,
        disabled_at: row.try_get(4)?,
    })
}

fn client_from_row(row: &Row) -> Result<ClientRecord, postgres::Error> {
    Ok(ClientRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        role: row.try_get(2)?,
        secret_hash: row.try_get(3)?,
        created_at: row.try_get(4)?,
        revoked_at: row.try_get(5)?,
    })
}

fn signing_from_row(row: &Row) -> Result<SigningKeyRecord, postgres::Error> {
    Ok(SigningKeyRecord {
        kid: row.try_get(0)?,
        private_pkcs8: row.try_get(1)?,
        public_key: row.try_get(2)?,
        created_at: row.try_get(3)?,
        retired_at: row.try_get(4)?,
    })
}

fn audit_from_row(row: &Row) -> Result<AuditRow, postgres::Error> {
    Ok(AuditRow {
        replica: row.try_get(0)?,
        seq: row.try_get(1)?,
        record: row.try_get(2)?,
        prev: row.try_get(3)?,
        mac: row.try_get(4)?,
    })
}

fn insert_key(
    client: &mut impl postgres::GenericClient,
    key: &ApiKeyRecord,
) -> Result<(), StoreError> {
    let models = key.models.as_ref().map(|m| m.join(","));
    let result = client.execute(
        &format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ),
        &[
            &key.id,
            &key.name,
            &key.role,
            &models,
            &key.secret_hash.as_slice(),
            &key.created_at,
            &key.expires_at,
            &key.revoked_at,
            &key.rotated_from,
            &key.last_used_at,
        ],
    );
    conflict(result, || format!("key {}", key.id)).map(drop)
}

/// Whether an `UPDATE` changed exactly one row.
fn changed_one(result: Result<u64, postgres::Error>) -> Result<bool, StoreError> {
    Ok(result? == 1)
}

impl Store for PostgresStore {
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.call(move |c| insert_key(c, &key))
    }

    fn insert_key_if_role_unused(&self, key: &ApiKeyRecord, now: i64) -> Result<bool, StoreError> {
        let key = key.clone();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            // Serializes replicas starting together on an empty database.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FIRST_KEY_LOCK])?;
            let taken: bool = tx
                .query_one(
                    "SELECT EXISTS(SELECT 1 FROM api_keys WHERE role = $1 AND revoked_at IS NULL
                     AND (expires_at IS NULL OR expires_at > $2))",
                    &[&key.role, &now],
                )?
                .try_get(0)?;
            if taken {
                return Ok(false);
            }
            insert_key(&mut tx, &key)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(key_from_row)
            .transpose()
        })
    }

    fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.call(|c| {
            c.query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id COLLATE \"C\""
                ),
                &[],
            )?
            .iter()
            .map(key_from_row)
            .collect()
        })
    }

    fn revoke_key(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            changed_one(c.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            ))
        })
    }

    fn rotate_key(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        now: i64,
        old_ends: i64,
    ) -> Result<bool, StoreError> {
        let old_id = old_id.to_owned();
        let new = new.clone();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            let changed = tx.execute(
                "UPDATE api_keys SET expires_at = LEAST(COALESCE(expires_at, $3), $3)
                 WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
                &[&old_id, &now, &old_ends],
            )?;
            if changed != 1 {
                return Ok(false); // dropping the transaction rolls it back
            }
            insert_key(&mut tx, &new)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn has_active_key_with_role(&self, role: &str, now: i64) -> Result<bool, StoreError> {
        let role = role.to_owned();
        self.call(move |c| {
            Ok(c.query_one(
                "SELECT EXISTS(SELECT 1 FROM api_keys WHERE role = $1 AND revoked_at IS NULL
                 AND (expires_at IS NULL OR expires_at > $2))",
                &[&role, &now],
            )?
            .try_get(0)?)
        })
    }

    fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let (ids, times): (Vec<String>, Vec<i64>) = used.iter().cloned().unzip();
        self.call(move |c| {
            // One statement for the batch; the latest time per key wins, and
            // never goes back (as SQLite's MAX(COALESCE(last_used_at, 0), t)).
            c.execute(
                "UPDATE api_keys k SET last_used_at = GREATEST(COALESCE(k.last_used_at, 0), u.used_at)
                 FROM (SELECT id, MAX(used_at) AS used_at FROM unnest($1::text[], $2::bigint[]) AS t(id, used_at)
                       GROUP BY id) u
                 WHERE k.id = u.id",
                &[&ids, &times],
            )?;
            Ok(())
        })
    }

    fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let user = user.clone();
        self.call(move |c| {
            let result = c.execute(
                &format!("INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"),
                &[
                    &user.name,
                    &user.role,
                    &user.password_hash,
                    &user.created_at,
                    &user.disabled_at,
                ],
            );
            conflict(result, || format!("user {}", user.name)).map(drop)
        })
    }

    fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        self.call(move |c| {
            Ok(c.query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"),
                &[&name],
            )?
            .as_ref()
            .map(user_from_row)
            .transpose()?)
        })
    }

    fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.call(|c| {
            Ok(c.query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, name COLLATE \"C\""
                ),
                &[],
            )?
            .iter()
            .map(user_from_row)
            .collect::<Result<_, _>>()?)
        })
    }

    fn set_user_password(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let (name, hash) = (name.to_owned(), hash.to_owned());
        self.call(move |c| {
            changed_one(c.execute(
                "UPDATE users SET password_hash = $2 WHERE name = $1",
                &[&name, &hash],
            ))
        })
    }

    fn disable_user(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.call(move |c| {
            changed_one(c.execute(
                "UPDATE users SET disabled_at = $2 WHERE name = $1 AND disabled_at IS NULL",
                &[&name, &now],
            ))
        })
    }

    fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let client = client.clone();
        self.call(move |c| {
            let result = c.execute(
                &format!(
                    "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
                ),
                &[
                    &client.id,
                    &client.name,
                    &client.role,
                    &client.secret_hash,
                    &client.created_at,
                    &client.revoked_at,
                ],
            );
            conflict(result, || format!("client {}", client.id)).map(drop)
        })
    }

    fn get_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            Ok(c.query_opt(
                &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(client_from_row)
            .transpose()?)
        })
    }

    fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.call(|c| {
            Ok(c.query(
                &format!(
                    "SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY created_at, id COLLATE \"C\""
                ),
                &[],
            )?
            .iter()
            .map(client_from_row)
            .collect::<Result<_, _>>()?)
        })
    }

    fn set_client_secret(&self, id: &str, hash: &str) -> Result<bool, StoreError> {
        let (id, hash) = (id.to_owned(), hash.to_owned());
        self.call(move |c| {
            changed_one(c.execute(
                "UPDATE oauth_clients SET secret_hash = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &hash],
            ))
        })
    }

    fn revoke_client(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            changed_one(c.execute(
                "UPDATE oauth_clients SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            ))
        })
    }

    fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.call(|c| {
            Ok(c.query(
                &format!(
                    "SELECT {SIGNING_COLUMNS} FROM signing_keys ORDER BY created_at DESC, kid COLLATE \"C\""
                ),
                &[],
            )?
            .iter()
            .map(signing_from_row)
            .collect::<Result<_, _>>()?)
        })
    }

    fn rotate_signing_key(&self, new: &SigningKeyRecord, now: i64) -> Result<(), StoreError> {
        let new = new.clone();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL",
                &[&now],
            )?;
            let result = tx.execute(
                &format!(
                    "INSERT INTO signing_keys ({SIGNING_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
                ),
                &[
                    &new.kid,
                    &new.private_pkcs8,
                    &new.public_key,
                    &new.created_at,
                    &new.retired_at,
                ],
            );
            conflict(result, || format!("signing key {}", new.kid))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn append_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let what = match (rows.first(), rows.last()) {
            (Some(first), Some(last)) if rows.len() == 1 => {
                format!("audit row {}:{}", first.replica, last.seq)
            }
            (Some(first), Some(last)) => {
                format!(
                    "an audit row of {}:{}..={}",
                    first.replica, first.seq, last.seq
                )
            }
            _ => return Ok(()),
        };
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            columns.0.push(r.replica.clone());
            columns.1.push(r.seq);
            columns.2.push(r.record.clone());
            columns.3.push(r.prev.clone());
            columns.4.push(r.mac.clone());
        }
        self.call(move |c| {
            // One statement: all rows or none.
            let (replicas, seqs, records, prevs, macs) = &columns;
            let result = c.execute(
                &format!(
                    "INSERT INTO audit ({AUDIT_COLUMNS})
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[], $5::bytea[])"
                ),
                &[replicas, seqs, records, prevs, macs],
            );
            conflict(result, || what).map(drop)
        })
    }

    fn prune_audit(&self, anchor: &AuditAnchor) -> Result<u64, StoreError> {
        let anchor = anchor.clone();
        self.call(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO audit_anchor (replica, seq, head, sig) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (replica) DO UPDATE SET seq = excluded.seq, head = excluded.head, sig = excluded.sig",
                &[&anchor.replica, &anchor.seq, &anchor.head, &anchor.sig],
            )?;
            let removed = tx.execute(
                "DELETE FROM audit WHERE replica = $1 AND seq <= $2",
                &[&anchor.replica, &anchor.seq],
            )?;
            tx.commit()?;
            Ok(removed)
        })
    }

    fn audit_anchor(&self, replica: &str) -> Result<Option<AuditAnchor>, StoreError> {
        let replica = replica.to_owned();
        self.call(move |c| {
            c.query_opt(
                "SELECT replica, seq, head, sig FROM audit_anchor WHERE replica = $1",
                &[&replica],
            )?
            .map(|r| {
                Ok::<_, StoreError>(AuditAnchor {
                    replica: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    head: r.try_get(2)?,
                    sig: r.try_get(3)?,
                })
            })
            .transpose()
        })
    }

    fn audit_rows(
        &self,
        replica: &str,
        from_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let replica = replica.to_owned();
        self.call(move |c| {
            Ok(c.query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit
                     WHERE replica = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
                ),
                &[&replica, &from_seq, &sql_limit(limit)],
            )?
            .iter()
            .map(audit_from_row)
            .collect::<Result<_, _>>()?)
        })
    }

    fn audit_head(&self, replica: &str) -> Result<Option<AuditRow>, StoreError> {
        let replica = replica.to_owned();
        self.call(move |c| {
            Ok(c.query_opt(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit WHERE replica = $1 ORDER BY seq DESC LIMIT 1"
                ),
                &[&replica],
            )?
            .as_ref()
            .map(audit_from_row)
            .transpose()?)
        })
    }

    fn audit_replicas(&self) -> Result<Vec<String>, StoreError> {
        self.call(|c| {
            Ok(c.query(
                "SELECT replica FROM audit GROUP BY replica ORDER BY replica COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
        })
    }

    fn audit_query(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let q = q.clone();
        self.call(move |c| {
            let rows = c
                .query(
                    AUDIT_QUERY.as_str(),
                    &[
                        &q.replica,
                        &q.after_seq,
                        &q.principal,
                        &q.model,
                        &q.outcome,
                        &q.since_us,
                        &q.until_us,
                        &q.sql_limit(),
                        &q.scan_end(),
                    ],
                )?
                .iter()
                .map(audit_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            q.page(rows, || {
                c.query_one(
                    "SELECT MAX(seq) FROM audit WHERE replica = $1",
                    &[&q.replica],
                )?
                .try_get(0)
            })
            .map_err(StoreError::from)
        })
    }
}

/// The record as `jsonb`, or NULL (matching no filter) for the rare record
/// that `jsonb` cannot hold: one with a `\u0000` escape (a NUL taken from
/// a request, say), which would otherwise fail every query whose scan
/// reaches it.
const RECORD: &str = r"(CASE WHEN strpos(record, E'\\u0000') = 0 THEN record::jsonb END)";

/// A filtered scan of one chain ([`Store::audit_query`]). As SQLite's
/// `json_extract` comparisons: a text filter matches a JSON string only;
/// time bounds compare JSON numbers (a `time_us` that is not a number
/// matches no bound).
static AUDIT_QUERY: LazyLock<String> = LazyLock::new(|| {
    let time_us = format!(
        "(CASE WHEN jsonb_typeof({RECORD} -> 'time_us') = 'number' \
         THEN ({RECORD} -> 'time_us')::numeric END)"
    );
    format!(
        "SELECT {AUDIT_COLUMNS} FROM audit
         WHERE replica = $1 AND seq > $2 AND seq <= $9
           AND ($3::text IS NULL OR {RECORD} -> 'principal' = to_jsonb($3::text))
           AND ($4::text IS NULL OR {RECORD} -> 'model' = to_jsonb($4::text))
           AND ($5::text IS NULL OR {RECORD} -> 'outcome' = to_jsonb($5::text))
           AND ($6::bigint IS NULL OR {time_us} >= $6)
           AND ($7::bigint IS NULL OR {time_us} < $7)
         ORDER BY seq LIMIT $8"
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_are_accepted() {
        for url in [
            "sqlite:///tmp/x.db",
            "/var/lib/warden/w.db",
            "host=db password=hunter2",
        ] {
            let err = PostgresStore::connect(url).unwrap_err().to_string();
            assert!(err.contains("expected a postgres://"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
