//! API keys: format, generation, hashing and lifecycle.
//!
//! A key is `wdn_<id>_<secret>`: the `wdn_` prefix lets secret scanners find
//! leaked keys, `<id>` (12 lowercase letters and digits) finds the record,
//! and `<secret>` (43 base-62 characters, about 256 bits) is checked against
//! the stored SHA-256 in constant time. The secret is random and long, so a
//! plain SHA-256 is enough: a slow password hash (Argon2) would only add
//! ~100 ms to every request without making a 256-bit secret harder to guess.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::{Alphanumeric, Uniform};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warden_core::Roles;
use warden_store::{ApiKeyRecord, Store, StoreError};
use zeroize::Zeroizing;

/// The prefix every Warden API key starts with.
pub const PREFIX: &str = "wdn_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 43;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A presented key, split into its parts. Holds the secret: not `Debug`-printable.
pub struct ApiKey<'a> {
    /// The record id.
    pub id: &'a str,
    secret: &'a str,
}

impl fmt::Debug for ApiKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl<'a> ApiKey<'a> {
    /// Splits a presented key; `None` if it is not shaped like a Warden key.
    pub fn parse(text: &'a str) -> Option<Self> {
        let rest = text.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let id_ok = id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b));
        let secret_ok =
            secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
        (id_ok && secret_ok).then_some(Self { id, secret })
    }

    /// Whether the secret matches the stored hash, in constant time.
    pub fn matches(&self, record: &ApiKeyRecord) -> bool {
        hash_secret(self.secret).ct_eq(&record.secret_hash).into()
    }
}

fn hash_secret(secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"warden-api-key-v1\0");
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a new key should carry.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Human label.
    pub name: String,
    /// Role name (checked against the configured roles).
    pub role: String,
    /// Model allowlist; `None` = every model.
    pub models: Option<Vec<String>>,
    /// Lifetime; `None` = no expiry.
    pub expires_in: Option<Duration>,
}

/// A freshly issued key: the only moment the full key exists in memory.
pub struct IssuedKey {
    /// The stored record.
    pub record: ApiKeyRecord,
    /// The full key text, to be shown once.
    pub key: Zeroizing<String>,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("id", &self.record.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Invalid input from the operator.
    #[error("{0}")]
    Invalid(String),
    /// The key does not exist or is no longer active.
    #[error("no active key with id {0}")]
    NotFound(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Key lifecycle operations over a [`Store`] (used by the CLI and the
/// management API).
#[derive(Debug, Clone, Copy)]
pub struct KeyAdmin<'s, S: ?Sized> {
    store: &'s S,
    roles: &'s Roles,
}

impl<'s, S: Store + ?Sized> KeyAdmin<'s, S> {
    /// Wraps a store; new keys must carry one of `roles`.
    pub fn new(store: &'s S, roles: &'s Roles) -> Self {
        Self { store, roles }
    }

    /// Creates and stores a key; the returned text is shown once.
    pub fn create(&self, new: &NewKey) -> Result<IssuedKey, KeyError> {
        self.issue(new, None, |record| {
            self.store.insert_key(record).map(|()| true)
        })
    }

    /// Creates and stores a key only if no key of its role is active (one
    /// atomic step in the store); `None` if one is. The bootstrap admin key.
    pub fn create_first(&self, new: &NewKey) -> Result<Option<IssuedKey>, KeyError> {
        match self.issue(new, None, |record| {
            self.store.insert_key_if_role_unused(record, unix_now())
        }) {
            Ok(issued) => Ok(Some(issued)),
            Err(KeyError::NotFound(id)) if id.is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Issues a replacement for `id` with the same name, role, models and
    /// lifetime; the old key keeps working for `grace` (zero: it stops at
    /// once), in one transaction.
    pub fn rotate(&self, id: &str, grace: Duration) -> Result<IssuedKey, KeyError> {
        let old = self
            .store
            .get_key(id)?
            .filter(|k| k.is_active(unix_now()))
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        let new = NewKey {
            name: old.name.clone(),
            role: old.role.clone(),
            models: old.models.clone(),
            expires_in: old
                .expires_at
                .map(|e| Duration::from_secs(e.saturating_sub(old.created_at).max(0) as u64)),
        };
        let now = unix_now();
        let old_ends = now.saturating_add(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
        self.issue(&new, Some(id), |record| {
            self.store.rotate_key(id, record, now, old_ends)
        })
    }

    /// Revokes a key.
    pub fn revoke(&self, id: &str) -> Result<(), KeyError> {
        if self.store.revoke_key(id, unix_now())? {
            Ok(())
        } else {
            Err(KeyError::NotFound(id.to_owned()))
        }
    }

    fn issue(
        &self,
        new: &NewKey,
        rotated_from: Option<&str>,
        store: impl Fn(&ApiKeyRecord) -> Result<bool, StoreError>,
    ) -> Result<IssuedKey, KeyError> {
        validate_new(new)?;
        if self.roles.get(&new.role).is_none() {
            return Err(KeyError::Invalid(format!(
                "unknown role {:?} (roles: {})",
                new.role,
                self.roles.names()
            )));
        }
        let mut rng = rand::rng();
        let id_chars =
            Uniform::new(0, ID_ALPHABET.len()).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let id: String = (0..ID_LEN)
            .map(|_| ID_ALPHABET[rng.sample(id_chars)] as char)
            .collect();
        let secret = Zeroizing::new(
            (0..SECRET_LEN)
                .map(|_| rng.sample(Alphanumeric) as char)
                .collect::<String>(),
        );
        let now = unix_now();
        let record = ApiKeyRecord {
            id: id.clone(),
            name: new.name.clone(),
            role: new.role.clone(),
            models: new.models.clone(),
            secret_hash: hash_secret(&secret),
            created_at: now,
            expires_at: new
                .expires_in
                .map(|d| now.saturating_add(d.as_secs() as i64)),
            revoked_at: None,
            rotated_from: rotated_from.map(str::to_owned),
            last_used_at: None,
        };
        if !store(&record)? {
            return Err(KeyError::NotFound(
                rotated_from.unwrap_or_default().to_owned(),
            ));
        }
        let key = Zeroizing::new(format!("{PREFIX}{id}_{}", secret.as_str()));
        Ok(IssuedKey { record, key })
    }
}

fn validate_new(new: &NewKey) -> Result<(), KeyError> {
    if new.name.trim().is_empty() || new.name.len() > 128 {
        return Err(KeyError::Invalid(
            "--name must be 1 to 128 characters".into(),
        ));
    }
    if let Some(models) = &new.models {
        if models.is_empty() {
            return Err(KeyError::Invalid(
                "--models needs at least one model name".into(),
            ));
        }
        if let Some(bad) = models.iter().find(|m| !warden_core::is_model_name(m)) {
            return Err(KeyError::Invalid(format!(
                "{bad:?} is not a model name (letters, digits, '-', '_', '.')"
            )));
        }
    }
    if new.expires_in.is_some_and(|d| d.is_zero()) {
        return Err(KeyError::Invalid("--expires must be longer than 0s".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_store::SqliteStore;

    fn new_key() -> NewKey {
        NewKey {
            name: "ci".into(),
            role: "predict".into(),
            models: None,
            expires_in: None,
        }
    }

    fn roles() -> &'static Roles {
        static ROLES: std::sync::OnceLock<Roles> = std::sync::OnceLock::new();
        ROLES.get_or_init(Roles::builtin)
    }

    #[test]
    fn issued_keys_parse_and_match() {
        let store = SqliteStore::in_memory().unwrap();
        let issued = KeyAdmin::new(&store, roles()).create(&new_key()).unwrap();
        assert!(issued.key.starts_with("wdn_"));
        let parsed = ApiKey::parse(&issued.key).unwrap();
        assert_eq!(parsed.id, issued.record.id);
        assert!(parsed.matches(&store.get_key(parsed.id).unwrap().unwrap()));
        assert!(!format!("{issued:?}").contains(issued.key.as_str()));
        assert!(!format!("{parsed:?}").contains(&issued.key[17..]));
    }

    #[test]
    fn wrong_secret_does_not_match() {
        let store = SqliteStore::in_memory().unwrap();
        let issued = KeyAdmin::new(&store, roles()).create(&new_key()).unwrap();
        let mut forged = issued.key.to_string();
        let last = forged.pop().unwrap();
        forged.push(if last == 'a' { 'b' } else { 'a' });
        let parsed = ApiKey::parse(&forged).unwrap();
        assert!(!parsed.matches(&issued.record));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for text in [
            "",
            "wdn_",
            "wdn_abc_def",
            "xyz_abcdefghijkl_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "wdn_ABCDEFGHIJKL_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "wdn_abcdefghijkl_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-",
            "wdn_abcdefghijkl_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(ApiKey::parse(text).is_none(), "{text}");
        }
        assert!(
            ApiKey::parse("wdn_abcdefghijkl_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_some()
        );
    }

    #[test]
    fn rotate_keeps_attributes_and_ends_the_old_key_after_grace() {
        let store = SqliteStore::in_memory().unwrap();
        let admin = KeyAdmin::new(&store, roles());
        let mut nk = new_key();
        nk.models = Some(vec!["iris".into()]);
        nk.expires_in = Some(Duration::from_secs(3600));
        let old = admin.create(&nk).unwrap();
        let new = admin
            .rotate(&old.record.id, Duration::from_secs(60))
            .unwrap();
        assert_eq!(new.record.models, old.record.models);
        assert_eq!(
            new.record.rotated_from.as_deref(),
            Some(old.record.id.as_str())
        );
        assert_eq!(new.record.expires_at.unwrap() - new.record.created_at, 3600);
        let old_now = store.get_key(&old.record.id).unwrap().unwrap();
        assert_eq!(old_now.expires_at, Some(new.record.created_at + 60));
        assert!(
            old_now.is_active(unix_now()),
            "works during the grace period"
        );
        let newer = admin.rotate(&new.record.id, Duration::ZERO).unwrap();
        assert!(
            !store
                .get_key(&new.record.id)
                .unwrap()
                .unwrap()
                .is_active(unix_now()),
            "no grace: stops at once"
        );
        assert!(matches!(
            admin.rotate(&new.record.id, Duration::ZERO),
            Err(KeyError::NotFound(_))
        ));
        admin.revoke(&newer.record.id).unwrap();
        assert!(matches!(
            admin.revoke(&newer.record.id),
            Err(KeyError::NotFound(_))
        ));
    }

    #[test]
    fn bad_new_keys_are_refused() {
        let store = SqliteStore::in_memory().unwrap();
        let admin = KeyAdmin::new(&store, roles());
        let bad = [
            NewKey {
                name: " ".into(),
                ..new_key()
            },
            NewKey {
                models: Some(vec![]),
                ..new_key()
            },
            NewKey {
                models: Some(vec!["../etc".into()]),
                ..new_key()
            },
            NewKey {
                expires_in: Some(Duration::ZERO),
                ..new_key()
            },
            NewKey {
                role: "root".into(),
                ..new_key()
            },
        ];
        for nk in bad {
            assert!(
                matches!(admin.create(&nk), Err(KeyError::Invalid(_))),
                "{nk:?}"
            );
        }
    }
}
