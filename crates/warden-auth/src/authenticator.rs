//! The authentication step of the pipeline: reads the credential from the
//! request headers and resolves it to a [`Principal`].
//!
//! Verified keys are cached for [`CACHE_TTL`] so the hot path neither
//! touches the database nor blocks; a revocation (from the CLI, another
//! process, or later the management API) therefore takes effect within that
//! time. The cache is bounded; when full it is emptied.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::AUTHORIZATION;
use warden_core::{ApiError, ModelScope, Principal, Role};
use warden_store::{ApiKeyRecord, Store};

use crate::keys::{ApiKey, unix_now};

/// How long a looked-up key record is trusted before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Most key records cached at once.
pub const CACHE_CAPACITY: usize = 10_000;
/// Longest credential accepted; longer ones are refused before parsing.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// The header an API key may be sent in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Why a request was not authenticated. Logged; the client only ever sees
/// `unauthenticated`, whatever the reason, so it learns nothing about which
/// keys exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No credential at all.
    Missing,
    /// Two credentials (X-API-Key and Authorization) at once.
    Ambiguous,
    /// Not a Warden key, or not decodable, or too long.
    Malformed,
    /// No key with that id.
    UnknownKey,
    /// The id exists, the secret is wrong.
    WrongSecret,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// The key's role is unknown to this version (e.g. written by a newer one).
    UnknownRole,
    /// The store failed: the client gets `internal`.
    StoreFailed,
}

impl Credential {
    /// Whether this failure counts as a guess (for brute-force bans).
    pub fn is_guess(self) -> bool {
        matches!(
            self,
            Self::Malformed | Self::UnknownKey | Self::WrongSecret | Self::Revoked | Self::Expired
        )
    }

    /// The client-facing error.
    pub fn to_api_error(self) -> ApiError {
        match self {
            Self::StoreFailed => ApiError::internal(),
            Self::Ambiguous => ApiError::unauthenticated()
                .with_message("Send one credential: X-API-Key or Authorization, not both."),
            _ => ApiError::unauthenticated(),
        }
    }
}

/// A key record with the principal it resolves to, built once per lookup.
struct KeyEntry {
    record: ApiKeyRecord,
    principal: Result<Principal, Credential>,
}

impl KeyEntry {
    fn new(record: ApiKeyRecord) -> Self {
        let principal = Role::parse(&record.role)
            .ok_or(Credential::UnknownRole)
            .map(|role| Principal {
                id: format!("key:{}", record.id).into(),
                role,
                permissions: role.permissions(),
                models: match &record.models {
                    None => ModelScope::All,
                    Some(m) => ModelScope::Only(m.clone().into()),
                },
            });
        Self { record, principal }
    }
}

#[derive(Clone)]
struct Cached {
    entry: Option<Arc<KeyEntry>>,
    fetched: Instant,
}

/// Resolves request credentials to principals.
pub struct Authenticator {
    store: Arc<dyn Store>,
    cache: RwLock<HashMap<String, Cached>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Authenticates a request from its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Credential> {
        let token = credential(headers)?;
        let key = ApiKey::parse(token).ok_or(Credential::Malformed)?;
        let entry = self.lookup(key.id).await?.ok_or(Credential::UnknownKey)?;
        if !key.matches(&entry.record) {
            return Err(Credential::WrongSecret);
        }
        if entry.record.revoked_at.is_some() {
            return Err(Credential::Revoked);
        }
        if entry.record.expires_at.is_some_and(|e| unix_now() >= e) {
            return Err(Credential::Expired);
        }
        entry.principal.clone()
    }

    async fn lookup(&self, id: &str) -> Result<Option<Arc<KeyEntry>>, Credential> {
        if let Some(hit) = self.read_cache(id) {
            return Ok(hit);
        }
        let store = Arc::clone(&self.store);
        let owned = id.to_owned();
        let record = tokio::task::spawn_blocking(move || store.get_key(&owned))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "key lookup task failed");
                Credential::StoreFailed
            })?
            .map_err(|e| {
                tracing::error!(error = %e, "key lookup failed");
                Credential::StoreFailed
            })?
            .map(|record| Arc::new(KeyEntry::new(record)));
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(
            id.to_owned(),
            Cached {
                entry: record.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(record)
    }

    fn read_cache(&self, id: &str) -> Option<Option<Arc<KeyEntry>>> {
        let cache = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = cache.get(id)?;
        (entry.fetched.elapsed() < CACHE_TTL).then(|| entry.entry.clone())
    }
}

/// Extracts the presented credential: `X-API-Key: <key>` or
/// `Authorization: Bearer <key>`.
fn credential(headers: &HeaderMap) -> Result<&str, Credential> {
    let api_key = headers.get(API_KEY_HEADER);
    let authorization = headers.get(AUTHORIZATION);
    let raw = match (api_key, authorization) {
        (None, None) => return Err(Credential::Missing),
        (Some(_), Some(_)) => return Err(Credential::Ambiguous),
        (Some(v), None) => v.to_str().map_err(|_| Credential::Malformed)?,
        (None, Some(v)) => {
            let v = v.to_str().map_err(|_| Credential::Malformed)?;
            let (scheme, rest) = v.split_once(' ').ok_or(Credential::Malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Credential::Malformed);
            }
            rest
        }
    };
    let token = raw.trim();
    if token.is_empty() || token.len() > MAX_CREDENTIAL_LEN {
        return Err(Credential::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyAdmin, NewKey};
    use http::HeaderValue;
    use warden_store::SqliteStore;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    fn setup(role: Role, models: Option<Vec<String>>) -> (Arc<SqliteStore>, String, String) {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let issued = KeyAdmin::new(store.as_ref())
            .create(&NewKey {
                name: "t".into(),
                role,
                models,
                expires_in: None,
            })
            .unwrap();
        (store, issued.key.to_string(), issued.record.id)
    }

    #[tokio::test]
    async fn both_headers_work_and_resolve_the_principal() {
        let (store, key, id) = setup(Role::Predict, Some(vec!["iris".into()]));
        let auth = Authenticator::new(store);
        let p = auth
            .authenticate(&headers("x-api-key", &key))
            .await
            .unwrap();
        assert_eq!(&*p.id, format!("key:{id}"));
        assert!(p.may_predict("iris") && !p.may_predict("digits"));
        let p = auth
            .authenticate(&headers("authorization", &format!("bearer {key}")))
            .await
            .unwrap();
        assert_eq!(p.role, Role::Predict);
    }

    #[tokio::test]
    async fn every_failure_is_classified() {
        let (store, key, id) = setup(Role::Admin, None);
        let auth = Authenticator::new(store.clone());
        let forged = format!(
            "{}{}",
            &key[..key.len() - 1],
            if key.ends_with('a') { 'b' } else { 'a' }
        );
        let unknown = format!("wdn_zzzzzzzzzzzz_{}", &key[key.len() - 43..]);
        let long = "a".repeat(MAX_CREDENTIAL_LEN + 1);
        let cases = [
            (HeaderMap::new(), Credential::Missing),
            (headers("x-api-key", "nope"), Credential::Malformed),
            (headers("x-api-key", &long), Credential::Malformed),
            (
                headers("authorization", &format!("Basic {key}")),
                Credential::Malformed,
            ),
            (headers("x-api-key", &forged), Credential::WrongSecret),
            (headers("x-api-key", &unknown), Credential::UnknownKey),
        ];
        for (h, expected) in cases {
            assert_eq!(auth.authenticate(&h).await.unwrap_err(), expected);
        }
        let mut both = headers("x-api-key", &key);
        both.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        assert_eq!(
            auth.authenticate(&both).await.unwrap_err(),
            Credential::Ambiguous
        );

        // Revocation is seen once the cache entry is older than the TTL.
        store.revoke_key(&id, unix_now()).unwrap();
        auth.cache.write().unwrap().clear();
        assert_eq!(
            auth.authenticate(&headers("x-api-key", &key))
                .await
                .unwrap_err(),
            Credential::Revoked
        );
    }

    #[tokio::test]
    async fn expired_keys_are_refused() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let issued = KeyAdmin::new(store.as_ref())
            .create(&NewKey {
                name: "t".into(),
                role: Role::Predict,
                models: None,
                expires_in: Some(Duration::from_secs(60)),
            })
            .unwrap();
        let mut record = store.get_key(&issued.record.id).unwrap().unwrap();
        // Move the key's expiry into the past, as time passing would.
        record.id = "expiredkey01".into();
        record.expires_at = Some(unix_now() - 1);
        store.insert_key(&record).unwrap();
        let presented = format!("wdn_expiredkey01_{}", &issued.key[issued.key.len() - 43..]);
        let auth = Authenticator::new(store);
        assert_eq!(
            auth.authenticate(&headers("x-api-key", &presented))
                .await
                .unwrap_err(),
            Credential::Expired
        );
    }
}
