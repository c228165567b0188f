//! Users (OAuth2 password grant) and OAuth2 clients (client_credentials):
//! creation and lifecycle over a [`Store`]. Used by the CLI and the
//! management API. Passwords and secrets are stored as Argon2id only.

use rand::Rng;
use rand::distr::Alphanumeric;
use warden_core::Roles;
use warden_core::principal::is_role_name;
use warden_store::{ClientRecord, Store, StoreError, UserRecord};
use zeroize::Zeroizing;

use crate::keys::unix_now;
use crate::passwords;

/// Shortest password accepted (NIST SP 800-63B: at least 8).
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted (Argon2 takes any length; this bounds work).
pub const MAX_PASSWORD_LEN: usize = 1024;
const CLIENT_ID_LEN: usize = 16;
const CLIENT_SECRET_LEN: usize = 43;

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Invalid input from the operator.
    #[error("{0}")]
    Invalid(String),
    /// No such (active) account.
    #[error("no active {0}")]
    NotFound(String),
    /// The name or id is taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// Storage failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(what),
            other => Self::Store(other),
        }
    }
}

/// A new client's credentials: the only moment the secret exists.
pub struct IssuedClient {
    /// The stored record.
    pub record: ClientRecord,
    /// The client secret, shown once.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for IssuedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClient")
            .field("id", &self.record.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// User and client administration.
#[derive(Debug, Clone, Copy)]
pub struct Accounts<'s, S: ?Sized> {
    store: &'s S,
    roles: &'s Roles,
}

impl<'s, S: Store + ?Sized> Accounts<'s, S> {
    /// Wraps a store; accounts must carry one of `roles`.
    pub fn new(store: &'s S, roles: &'s Roles) -> Self {
        Self { store, roles }
    }

    fn check_role(&self, role: &str) -> Result<(), AccountError> {
        if self.roles.get(role).is_none() {
            return Err(AccountError::Invalid(format!(
                "unknown role {role:?} (roles: {})",
                self.roles.names()
            )));
        }
        Ok(())
    }

    /// Adds a user with an Argon2id password hash. Blocking (~100 ms).
    pub fn add_user(
        &self,
        name: &str,
        role: &str,
        password: &str,
    ) -> Result<UserRecord, AccountError> {
        if !is_role_name(name) {
            return Err(AccountError::Invalid(format!(
                "{name:?} is not a user name (1 to 64 letters, digits, '-', '_', '.')"
            )));
        }
        self.check_role(role)?;
        check_password(password)?;
        let user = UserRecord {
            name: name.to_owned(),
            role: role.to_owned(),
            password_hash: passwords::hash(password).map_err(AccountError::Invalid)?,
            created_at: unix_now(),
            disabled_at: None,
        };
        self.store.insert_user(&user)?;
        Ok(user)
    }

    /// Replaces a user's password. Blocking (~100 ms).
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), AccountError> {
        check_password(password)?;
        let hash = passwords::hash(password).map_err(AccountError::Invalid)?;
        if self.store.set_user_password(name, &hash)? {
            Ok(())
        } else {
            Err(AccountError::NotFound(format!("user {name}")))
        }
    }

    /// Disables a user: the password grant refuses them from now on.
    pub fn disable_user(&self, name: &str) -> Result<(), AccountError> {
        if self.store.disable_user(name, unix_now())? {
            Ok(())
        } else {
            Err(AccountError::NotFound(format!("user {name}")))
        }
    }

    /// Adds a client with a random id and secret. Blocking (~100 ms).
    pub fn add_client(&self, name: &str, role: &str) -> Result<IssuedClient, AccountError> {
        if name.trim().is_empty() || name.len() > 128 {
            return Err(AccountError::Invalid(
                "a client name is 1 to 128 characters".into(),
            ));
        }
        self.check_role(role)?;
        let secret = random_secret();
        let record = ClientRecord {
            id: random_id(),
            name: name.to_owned(),
            role: role.to_owned(),
            secret_hash: passwords::hash(&secret).map_err(AccountError::Invalid)?,
            created_at: unix_now(),
            revoked_at: None,
        };
        self.store.insert_client(&record)?;
        Ok(IssuedClient { record, secret })
    }

    /// Gives a client a new secret (the old one stops at once). Blocking.
    pub fn rotate_client(&self, id: &str) -> Result<IssuedClient, AccountError> {
        let secret = random_secret();
        let hash = passwords::hash(&secret).map_err(AccountError::Invalid)?;
        if !self.store.set_client_secret(id, &hash)? {
            return Err(AccountError::NotFound(format!("client {id}")));
        }
        let record = self
            .store
            .get_client(id)?
            .ok_or_else(|| AccountError::NotFound(format!("client {id}")))?;
        Ok(IssuedClient { record, secret })
    }

    /// Revokes a client.
    pub fn revoke_client(&self, id: &str) -> Result<(), AccountError> {
        if self.store.revoke_client(id, unix_now())? {
            Ok(())
        } else {
            Err(AccountError::NotFound(format!("client {id}")))
        }
    }
}

fn check_password(password: &str) -> Result<(), AccountError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(AccountError::Invalid(format!(
            "a password needs at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AccountError::Invalid(format!(
            "a password has at most {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..CLIENT_ID_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn random_secret() -> Zeroizing<String> {
    let mut rng = rand::rng();
    Zeroizing::new(
        (0..CLIENT_SECRET_LEN)
            .map(|_| rng.sample(Alphanumeric) as char)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_store::SqliteStore;

    #[test]
    fn users_and_clients_lifecycle() {
        let store = SqliteStore::in_memory().unwrap();
        let roles = Roles::builtin();
        let a = Accounts::new(&store, &roles);
        let user = a.add_user("alice", "predict", "a long passphrase").unwrap();
        assert!(passwords::verify("a long passphrase", &user.password_hash));
        assert!(matches!(
            a.add_user("alice", "predict", "a long passphrase"),
            Err(AccountError::Conflict(_))
        ));
        for (name, role, pw) in [
            ("bob", "predict", "short"),
            ("bob", "root", "a long passphrase"),
            ("bad name", "predict", "a long passphrase"),
        ] {
            assert!(matches!(
                a.add_user(name, role, pw),
                Err(AccountError::Invalid(_))
            ));
        }
        a.set_password("alice", "another long one").unwrap();
        a.disable_user("alice").unwrap();
        assert!(matches!(
            a.disable_user("alice"),
            Err(AccountError::NotFound(_))
        ));

        let c = a.add_client("billing", "predict").unwrap();
        assert_eq!((c.record.id.len(), c.secret.len()), (16, 43));
        assert!(passwords::verify(&c.secret, &c.record.secret_hash));
        assert!(!format!("{c:?}").contains(c.secret.as_str()));
        let rotated = a.rotate_client(&c.record.id).unwrap();
        assert!(!passwords::verify(&c.secret, &rotated.record.secret_hash));
        a.revoke_client(&c.record.id).unwrap();
        assert!(matches!(
            a.rotate_client(&c.record.id),
            Err(AccountError::NotFound(_))
        ));
    }
}
