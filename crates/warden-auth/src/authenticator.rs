//! The authentication step of the pipeline: reads the credential from the
//! request and resolves it to a [`Principal`].
//!
//! A credential is an API key (`X-API-Key`, or `Authorization: Bearer
//! wdn_…`), a JWT (`Authorization: Bearer <jwt>`, see [`crate::jwt`]), or,
//! when neither header is sent, a client certificate the listener verified
//! (mapped by `[[auth.mtls]]`).
//!
//! Verified keys are cached for `auth.key_cache_ttl` (default 1 s) so the
//! hot path neither touches the database nor blocks; a revocation through
//! the management API of this process drops the entry at once, one made
//! elsewhere (CLI, another replica) takes effect within the TTL. The cache
//! is bounded; when full it is emptied. Last-use times are kept in memory
//! and written to the store every few seconds, at most once per key per
//! second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::AUTHORIZATION;
use warden_core::config::MtlsIdentity;
use warden_core::{ApiError, Principal, Roles};
use warden_store::{ApiKeyRecord, Store};

use crate::jwt::JwtVerifier;
use crate::keys::{ApiKey, PREFIX, unix_now};

/// How long a looked-up key record is trusted before it is read again, by default.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Most key records cached at once.
pub const CACHE_CAPACITY: usize = 10_000;
/// Longest credential accepted; longer ones are refused before parsing.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;
/// How often last-use times are written to the store.
pub const LAST_USED_FLUSH: Duration = Duration::from_secs(5);

/// The header an API key may be sent in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Why a request was not authenticated. Logged; the client only ever sees
/// `unauthenticated`, whatever the reason, so it learns nothing about which
/// keys exist or which check a token failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No credential at all.
    Missing,
    /// Two credentials (X-API-Key and Authorization) at once.
    Ambiguous,
    /// Not a Warden key nor a JWT, or not decodable, or too long.
    Malformed,
    /// No key with that id.
    UnknownKey,
    /// The id exists, the secret is wrong.
    WrongSecret,
    /// Revoked.
    Revoked,
    /// Past its expiry (or its rotation grace period).
    Expired,
    /// The credential's role is not configured (any more).
    UnknownRole,
    /// A JWT that does not parse (`alg: none` included).
    TokenMalformed,
    /// A JWT from an issuer that is not configured.
    TokenUnknownIssuer,
    /// A JWT whose `alg` the issuer does not accept.
    TokenAlgorithm,
    /// A JWT whose `kid` is not in the issuer's keys.
    TokenUnknownKey,
    /// A JWT whose signature does not verify.
    TokenSignature,
    /// A JWT past `exp`.
    TokenExpired,
    /// A JWT before `nbf`, or issued in the future.
    TokenNotYetValid,
    /// A JWT with a wrong or missing `iss`, `aud`, `sub` or malformed claim.
    TokenClaims,
    /// A verified client certificate that maps to no identity.
    UnknownCertificate,
    /// The store failed: the client gets `internal`.
    StoreFailed,
}

impl Credential {
    /// The reason, as a metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Ambiguous => "ambiguous",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::WrongSecret => "wrong_secret",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::UnknownRole => "unknown_role",
            Self::TokenMalformed => "token_malformed",
            Self::TokenUnknownIssuer => "token_unknown_issuer",
            Self::TokenAlgorithm => "token_algorithm",
            Self::TokenUnknownKey => "token_unknown_key",
            Self::TokenSignature => "token_signature",
            Self::TokenExpired => "token_expired",
            Self::TokenNotYetValid => "token_not_yet_valid",
            Self::TokenClaims => "token_claims",
            Self::UnknownCertificate => "unknown_certificate",
            Self::StoreFailed => "store_failed",
        }
    }

    /// Whether this failure counts toward a ban of the client address:
    /// every failure the client caused (a missing or malformed credential
    /// too, so that unauthenticated floods are limited per address), but
    /// not the store failing.
    pub fn counts_toward_ban(self) -> bool {
        !matches!(self, Self::StoreFailed)
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
    last_used: AtomicI64,
}

impl KeyEntry {
    fn new(record: ApiKeyRecord, roles: &Roles) -> Self {
        let principal = roles
            .get(&record.role)
            .ok_or(Credential::UnknownRole)
            .map(|role| {
                let models = match &record.models {
                    None => warden_core::ModelScope::All,
                    Some(m) => warden_core::ModelScope::Only(m.clone().into()),
                };
                Principal::with_role(format!("key:{}", record.id), role, models)
            });
        Self {
            record,
            principal,
            last_used: AtomicI64::new(0),
        }
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
    roles: Arc<Roles>,
    cache_ttl: Duration,
    cache: RwLock<HashMap<String, Cached>>,
    /// Bumped by every forget: a lookup that read the store before a
    /// revocation must not put the old record back afterwards.
    forgets: AtomicU64,
    used: Mutex<HashMap<String, i64>>,
    jwt: Option<JwtVerifier>,
    mtls: HashMap<String, Principal>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for API keys in `store`, with `roles`.
    pub fn new(store: Arc<dyn Store>, roles: Arc<Roles>) -> Self {
        Self {
            store,
            roles,
            cache_ttl: CACHE_TTL,
            cache: RwLock::new(HashMap::new()),
            forgets: AtomicU64::new(0),
            used: Mutex::new(HashMap::new()),
            jwt: None,
            mtls: HashMap::new(),
        }
    }

    /// Sets how long verified keys are cached (zero: every request reads the store).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Also accepts JWTs.
    pub fn with_jwt(mut self, verifier: JwtVerifier) -> Self {
        self.jwt = Some(verifier).filter(|v| !v.is_empty());
        self
    }

    /// Also accepts client certificates mapped by `[[auth.mtls]]`.
    pub fn with_mtls(mut self, identities: &[MtlsIdentity]) -> Self {
        for m in identities {
            if let Some(role) = self.roles.get(&m.role) {
                let p = Principal::with_role(format!("mtls:{}", m.name), role, m.models.clone());
                self.mtls.insert(m.name.clone(), p);
            }
        }
        self
    }

    /// The roles principals are resolved with.
    pub fn roles(&self) -> &Arc<Roles> {
        &self.roles
    }

    /// Authenticates a request from its headers and, when the listener
    /// verified a client certificate, the certificate's names (DNS SANs,
    /// then the subject CN).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        certificate: Option<&[String]>,
    ) -> Result<Principal, Credential> {
        let token = match credential(headers) {
            Err(Credential::Missing) => {
                let names = certificate.ok_or(Credential::Missing)?;
                return names
                    .iter()
                    .find_map(|n| self.mtls.get(n))
                    .cloned()
                    .ok_or(Credential::UnknownCertificate);
            }
            other => other?,
        };
        if token.starts_with(PREFIX) {
            return self.api_key(token).await;
        }
        match &self.jwt {
            Some(jwt) if token.bytes().filter(|b| *b == b'.').count() == 2 => {
                jwt.verify(token).await
            }
            _ => Err(Credential::Malformed),
        }
    }

    async fn api_key(&self, token: &str) -> Result<Principal, Credential> {
        let key = ApiKey::parse(token).ok_or(Credential::Malformed)?;
        let entry = self.lookup(key.id).await?.ok_or(Credential::UnknownKey)?;
        if !key.matches(&entry.record) {
            return Err(Credential::WrongSecret);
        }
        if entry.record.revoked_at.is_some() {
            return Err(Credential::Revoked);
        }
        let now = unix_now();
        if entry.record.expires_at.is_some_and(|e| now >= e) {
            return Err(Credential::Expired);
        }
        let principal = entry.principal.clone()?;
        if entry.last_used.swap(now, Ordering::Relaxed) != now {
            self.used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(entry.record.id.clone(), now);
        }
        Ok(principal)
    }

    /// Drops a key from the cache, so a revocation or rotation made through
    /// this process takes effect at once.
    pub fn forget_key(&self, id: &str) {
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.forgets.fetch_add(1, Ordering::SeqCst);
        cache.remove(id);
    }

    /// Empties the cache (after announcements of changes may have been
    /// missed, e.g. while the subscription to them was down).
    pub fn forget_all(&self) {
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.forgets.fetch_add(1, Ordering::SeqCst);
        cache.clear();
    }

    /// Writes pending last-use times to the store. Blocking.
    pub fn flush_last_used(&self) {
        let pending: Vec<(String, i64)> = std::mem::take(
            &mut *self
                .used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if !pending.is_empty()
            && let Err(e) = self.store.touch_keys(&pending)
        {
            tracing::warn!(error = %e, "cannot record key last-use times");
        }
    }

    /// Flushes last-use times every [`LAST_USED_FLUSH`] while `self` lives.
    pub fn spawn_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LAST_USED_FLUSH);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { break };
                let _ = tokio::task::spawn_blocking(move || this.flush_last_used()).await;
            }
        });
    }

    async fn lookup(&self, id: &str) -> Result<Option<Arc<KeyEntry>>, Credential> {
        if let Some(hit) = self.read_cache(id) {
            return Ok(hit);
        }
        let forgets = self.forgets.load(Ordering::SeqCst);
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
            .map(|record| Arc::new(KeyEntry::new(record, &self.roles)));
        if self.cache_ttl.is_zero() {
            return Ok(record);
        }
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.forgets.load(Ordering::SeqCst) != forgets {
            // A key was revoked or rotated while this record was read: it
            // may be the stale one, so answer from it once, keep nothing.
            return Ok(record);
        }
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
        (entry.fetched.elapsed() < self.cache_ttl).then(|| entry.entry.clone())
    }
}

/// Extracts the presented credential: `X-API-Key: <key>` or
/// `Authorization: Bearer <key-or-jwt>`.
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

    fn roles() -> Arc<Roles> {
        Arc::new(Roles::builtin())
    }

    fn setup(role: &str, models: Option<Vec<String>>) -> (Arc<SqliteStore>, String, String) {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let issued = KeyAdmin::new(store.as_ref(), &roles())
            .create(&NewKey {
                name: "t".into(),
                role: role.into(),
                models,
                expires_in: None,
            })
            .unwrap();
        (store, issued.key.to_string(), issued.record.id)
    }

    #[tokio::test]
    async fn both_headers_work_and_resolve_the_principal() {
        let (store, key, id) = setup("predict", Some(vec!["iris".into()]));
        let auth = Authenticator::new(store, roles());
        let p = auth
            .authenticate(&headers("x-api-key", &key), None)
            .await
            .unwrap();
        assert_eq!(&*p.id, format!("key:{id}"));
        assert!(p.may_predict("iris") && !p.may_predict("digits"));
        let p = auth
            .authenticate(&headers("authorization", &format!("bearer {key}")), None)
            .await
            .unwrap();
        assert!(p.has_role("predict"));
    }

    #[tokio::test]
    async fn every_failure_is_classified() {
        let (store, key, id) = setup("admin", None);
        let auth = Authenticator::new(store.clone(), roles());
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
            assert_eq!(auth.authenticate(&h, None).await.unwrap_err(), expected);
        }
        let mut both = headers("x-api-key", &key);
        both.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        assert_eq!(
            auth.authenticate(&both, None).await.unwrap_err(),
            Credential::Ambiguous
        );

        // Revocation is seen once the cache entry is older than the TTL.
        store.revoke_key(&id, unix_now()).unwrap();
        auth.cache.write().unwrap().clear();
        assert_eq!(
            auth.authenticate(&headers("x-api-key", &key), None)
                .await
                .unwrap_err(),
            Credential::Revoked
        );
    }

    #[tokio::test]
    async fn expired_keys_are_refused() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let issued = KeyAdmin::new(store.as_ref(), &roles())
            .create(&NewKey {
                name: "t".into(),
                role: "predict".into(),
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
        let auth = Authenticator::new(store, roles());
        assert_eq!(
            auth.authenticate(&headers("x-api-key", &presented), None)
                .await
                .unwrap_err(),
            Credential::Expired
        );
    }
}
