//! JWT bearer tokens: verification against configured issuers and against
//! Warden's own token issuer ([`crate::tokens`]).
//!
//! The rules, each pinned by a test (here and in the e2e attack suite):
//! - the token's issuer (`iss`, read before verification only to pick the
//!   issuer's keys) must be configured; the accepted algorithms come from
//!   that issuer's configuration, never from the token's header (`alg:
//!   none` does not even parse; an HS256 token against a public-key issuer
//!   is refused before any key is touched);
//! - the key is chosen by `kid` in the issuer's key set only: `jku`, `x5u`
//!   and embedded `jwk` headers are ignored; an unknown `kid` may trigger
//!   one JWKS refetch (at most once per `jwks_min_refresh`);
//! - `exp` is required; `nbf` and `iat` are honoured; all with the
//!   issuer's leeway; `iss` and `aud` must match;
//! - tokens over 8 KiB are refused before parsing (by the authenticator).
//!
//! A verified token is remembered (by its SHA-256, bounded, for at most
//! [`TOKEN_CACHE_TTL`] and never past its `exp`), so a client reusing its
//! token pays the signature check once a minute rather than on every
//! request. The cost: a key an issuer withdraws from its JWKS keeps
//! validating tokens already seen for up to that minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use warden_core::config::{IssuerKeys, IssuerSettings, ScopeTarget};
use warden_core::{Grant, Grants, ModelScope, Principal, Roles};

use crate::authenticator::Credential;
use crate::keys::unix_now;
use crate::tokens::TokenService;

/// Longest a verified token is remembered.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most verified tokens remembered; when full the cache is emptied.
pub const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// Longest `kid` looked up.
const MAX_KID_LEN: usize = 256;
/// Longest `sub` kept in a principal id.
const MAX_SUB_LEN: usize = 128;

/// Verification keys of one issuer, by `kid`.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    unnamed: Vec<DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("unnamed", &self.unnamed.len())
            .finish()
    }
}

impl KeySet {
    /// One key without a `kid` (an HS256 secret).
    pub fn single(key: DecodingKey) -> Self {
        Self {
            by_kid: HashMap::new(),
            unnamed: vec![key],
        }
    }

    /// Adds a key under `kid`.
    pub fn insert(&mut self, kid: String, key: DecodingKey) {
        self.by_kid.insert(kid, key);
    }

    /// Parses a JWKS document. Keys this version cannot use (unknown `kty`,
    /// encryption keys) are skipped with a warning; a document with no
    /// usable key is an error.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut set = Self::default();
        for raw in doc.keys {
            if raw.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let parsed = serde_json::from_value::<Jwk>(raw)
                .map_err(|e| e.to_string())
                .and_then(|jwk| {
                    DecodingKey::from_jwk(&jwk)
                        .map(|k| (jwk.common.key_id.clone(), k))
                        .map_err(|e| e.to_string())
                });
            match parsed {
                Ok((Some(kid), key)) => set.insert(kid, key),
                Ok((None, key)) => set.unnamed.push(key),
                Err(e) => tracing::warn!(error = %e, "skipping a JWKS key Warden cannot use"),
            }
        }
        if set.by_kid.is_empty() && set.unnamed.is_empty() {
            return Err("the JWKS holds no usable signing key".into());
        }
        Ok(set)
    }

    /// The key for `kid`; without a `kid`, the set's only key.
    pub fn find(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).or_else(|| self.only_unnamed()),
            None => match (self.by_kid.len(), self.unnamed.len()) {
                (0, 1) => self.unnamed.first(),
                (1, 0) => self.by_kid.values().next(),
                _ => None,
            },
        }
    }

    fn only_unnamed(&self) -> Option<&DecodingKey> {
        // An HS256 issuer has one secret and no kids: a token naming a kid
        // is still checked against that one secret.
        (self.by_kid.is_empty() && self.unnamed.len() == 1)
            .then(|| self.unnamed.first())
            .flatten()
    }

    /// Whether `kid` is in the set.
    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

/// A JWKS fetched over https, refreshed periodically and on unknown kids.
struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    min_refresh: Duration,
    keys: RwLock<Arc<KeySet>>,
    last_fetch: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fetches the JWKS unless one was fetched less than `min_refresh` ago
    /// (`force` skips that check, for the periodic refresh). One fetch at a
    /// time; concurrent callers wait for it.
    async fn refresh(&self, force: bool) {
        let _one = self.fetching.lock().await;
        {
            let last = self
                .last_fetch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && last.is_some_and(|t| t.elapsed() < self.min_refresh) {
                return;
            }
        }
        let result = async {
            let response = self
                .client
                .get(&self.url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            // Read at most 1 MiB, whatever the server says or sends.
            const MAX_JWKS: usize = 1024 * 1024;
            if response
                .content_length()
                .is_some_and(|n| n > MAX_JWKS as u64)
            {
                return Err("the JWKS is over 1 MiB".into());
            }
            let mut response = response;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > MAX_JWKS {
                    return Err("the JWKS is over 1 MiB".into());
                }
                body.extend_from_slice(&chunk);
            }
            KeySet::from_jwks(&body)
        }
        .await;
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        match result {
            Ok(set) => {
                tracing::info!(url = %self.url, kids = ?set.by_kid.keys().collect::<Vec<_>>(), "JWKS fetched");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the previous keys")
            }
        }
    }
}

enum Keys {
    Fixed(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
    Local(Arc<TokenService>),
}

impl Keys {
    fn current(&self) -> Arc<KeySet> {
        match self {
            Self::Fixed(k) => k.clone(),
            Self::Remote(r) => r.current(),
            Self::Local(t) => t.published_keys(),
        }
    }

    /// After an unknown `kid`: refetch if allowed, and look again.
    async fn refreshed(&self) -> Option<Arc<KeySet>> {
        match self {
            Self::Fixed(_) => None,
            Self::Remote(r) => {
                r.refresh(false).await;
                Some(r.current())
            }
            Self::Local(t) => {
                t.reload_if_stale().await;
                Some(t.published_keys())
            }
        }
    }
}

/// How a verified token's claims become permissions.
enum Mapping {
    /// Warden's own tokens: `scope` holds Warden permissions, `roles` the
    /// role names, `sub` the principal id.
    Local,
    /// An external issuer: the configured claim, through the scope map.
    External {
        claim: String,
        scope_map: HashMap<String, Vec<ScopeTarget>>,
        roles: Arc<Roles>,
    },
}

/// One issuer whose tokens are accepted.
struct Issuer {
    name: Arc<str>,
    /// One validation per accepted algorithm: jsonwebtoken refuses a
    /// validation listing algorithms of another family than the key's, and
    /// an issuer may accept RS256 and ES256 keys side by side.
    validations: Vec<(Algorithm, Validation)>,
    leeway: i64,
    keys: Keys,
    mapping: Mapping,
}

/// Verifies bearer JWTs from every configured issuer.
pub struct JwtVerifier {
    by_iss: HashMap<String, Issuer>,
    verified: RwLock<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.by_iss.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn validations(
    iss: &str,
    audience: &[String],
    algorithms: Vec<Algorithm>,
    leeway: u64,
) -> Vec<(Algorithm, Validation)> {
    algorithms
        .into_iter()
        .map(|a| (a, validation(iss, audience, a, leeway)))
        .collect()
}

fn validation(iss: &str, audience: &[String], algorithm: Algorithm, leeway: u64) -> Validation {
    let mut v = Validation::new(algorithm);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[iss]);
    v.set_audience(audience);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v
}

impl JwtVerifier {
    /// Builds the verifier: reads JWKS files and fetches JWKS URLs once (a
    /// failed fetch is retried later, not fatal: the issuer may be down at
    /// start). `local` is Warden's own issuer, if the token endpoint is on.
    pub async fn new(
        issuers: &[IssuerSettings],
        roles: Arc<Roles>,
        local: Option<Arc<TokenService>>,
    ) -> Result<Self, String> {
        let mut by_iss = HashMap::new();
        for s in issuers {
            let algorithms = s
                .algorithms
                .iter()
                .map(|a| a.parse::<Algorithm>().map_err(|e| format!("{a}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let keys = match &s.keys {
                IssuerKeys::Hs256(secret) => Keys::Fixed(Arc::new(KeySet::single(
                    DecodingKey::from_secret(secret.expose()),
                ))),
                IssuerKeys::JwksFile(path) => {
                    let bytes = std::fs::read(path).map_err(|e| {
                        format!("issuer {}: cannot read {}: {e}", s.name, path.display())
                    })?;
                    Keys::Fixed(Arc::new(KeySet::from_jwks(&bytes).map_err(|e| {
                        format!("issuer {}: {}: {e}", s.name, path.display())
                    })?))
                }
                IssuerKeys::JwksUrl {
                    url,
                    ca,
                    refresh,
                    min_refresh,
                } => {
                    let mut builder = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .connect_timeout(Duration::from_secs(5))
                        .https_only(true);
                    if let Some(ca) = ca {
                        let pem = std::fs::read(ca).map_err(|e| {
                            format!("issuer {}: cannot read {}: {e}", s.name, ca.display())
                        })?;
                        let certs = reqwest::Certificate::from_pem_bundle(&pem)
                            .map_err(|e| format!("issuer {}: {}: {e}", s.name, ca.display()))?;
                        builder = builder.tls_certs_merge(certs);
                    }
                    let remote = Arc::new(RemoteJwks {
                        url: url.clone(),
                        client: builder
                            .build()
                            .map_err(|e| format!("issuer {}: {e}", s.name))?,
                        min_refresh: *min_refresh,
                        keys: RwLock::new(Arc::new(KeySet::default())),
                        last_fetch: Mutex::new(None),
                        fetching: tokio::sync::Mutex::new(()),
                    });
                    remote.refresh(true).await;
                    let periodic = Arc::downgrade(&remote);
                    let every = *refresh;
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        tick.tick().await;
                        loop {
                            tick.tick().await;
                            let Some(remote) = periodic.upgrade() else {
                                break;
                            };
                            remote.refresh(true).await;
                        }
                    });
                    Keys::Remote(remote)
                }
            };
            let leeway = s.leeway.as_secs();
            by_iss.insert(
                s.issuer.clone(),
                Issuer {
                    name: s.name.as_str().into(),
                    validations: validations(&s.issuer, &s.audience, algorithms, leeway),
                    leeway: leeway as i64,
                    keys,
                    mapping: Mapping::External {
                        claim: s.permissions_claim.clone(),
                        scope_map: s.scope_map.clone().into_iter().collect(),
                        roles: roles.clone(),
                    },
                },
            );
        }
        if let Some(local) = local {
            let iss = local.issuer().to_owned();
            if by_iss.contains_key(&iss) {
                return Err(format!(
                    "auth.jwt: issuer {iss:?} is Warden's own token issuer (auth.tokens.issuer)"
                ));
            }
            by_iss.insert(
                iss.clone(),
                Issuer {
                    name: "warden".into(),
                    validations: validations(
                        &iss,
                        &[local.audience().to_owned()],
                        vec![Algorithm::EdDSA],
                        TokenService::LEEWAY.as_secs(),
                    ),
                    leeway: TokenService::LEEWAY.as_secs() as i64,
                    keys: Keys::Local(local),
                    mapping: Mapping::Local,
                },
            );
        }
        Ok(Self {
            by_iss,
            verified: RwLock::new(HashMap::new()),
        })
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.by_iss.is_empty()
    }

    /// Verifies a token and resolves it to a principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, Credential> {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((principal, until)) = self
            .verified
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
            && Instant::now() < *until
        {
            return Ok(principal.clone());
        }
        let (principal, exp) = self.verify_uncached(token).await?;
        let left = Duration::from_secs(u64::try_from(exp - unix_now()).unwrap_or(0));
        if !left.is_zero() {
            let mut cache = self
                .verified
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.len() >= TOKEN_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(
                digest,
                (
                    principal.clone(),
                    Instant::now() + left.min(TOKEN_CACHE_TTL),
                ),
            );
        }
        Ok(principal)
    }

    /// Full verification; returns the principal and the token's `exp`.
    async fn verify_uncached(&self, token: &str) -> Result<(Principal, i64), Credential> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Credential::TokenMalformed)?;
        #[derive(serde::Deserialize)]
        struct Peek {
            iss: Option<String>,
        }
        let peek: Peek = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Credential::TokenMalformed)?;
        let issuer = peek
            .iss
            .as_deref()
            .and_then(|iss| self.by_iss.get(iss))
            .ok_or(Credential::TokenUnknownIssuer)?;
        let validation = issuer
            .validations
            .iter()
            .find(|(a, _)| *a == header.alg)
            .map(|(_, v)| v)
            .ok_or(Credential::TokenAlgorithm)?;
        let kid = header.kid.as_deref();
        if kid.is_some_and(|k| k.len() > MAX_KID_LEN) {
            return Err(Credential::TokenMalformed);
        }
        let mut keys = issuer.keys.current();
        if keys.find(kid).is_none() {
            keys = issuer
                .keys
                .refreshed()
                .await
                .ok_or(Credential::TokenUnknownKey)?;
        }
        let key = keys.find(kid).ok_or(Credential::TokenUnknownKey)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => Credential::TokenExpired,
                ErrorKind::ImmatureSignature => Credential::TokenNotYetValid,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => Credential::TokenClaims,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    Credential::TokenAlgorithm
                }
                ErrorKind::InvalidSignature => Credential::TokenSignature,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    Credential::TokenClaims
                }
                _ => Credential::TokenMalformed,
            },
        )?;
        let claims = data.claims;
        // `exp` is required and was checked; keep it for the cache.
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or(Credential::TokenClaims)? as i64;
        // `iat` in the future (beyond the leeway) means a wrong clock or a
        // forged token: jsonwebtoken checks exp and nbf, this is the third.
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_f64().ok_or(Credential::TokenClaims)?;
            if iat > (unix_now() + issuer.leeway) as f64 {
                return Err(Credential::TokenNotYetValid);
            }
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(Credential::TokenClaims)?;
        let sub: String = sub.chars().take(MAX_SUB_LEN).collect();
        let principal = match &issuer.mapping {
            Mapping::Local => {
                let grants = Grants::of(
                    &scope_values(claims.get("scope"))
                        .filter_map(Grant::parse)
                        .collect::<Vec<_>>(),
                );
                let roles: Vec<Arc<str>> =
                    scope_values(claims.get("roles")).map(Arc::from).collect();
                Principal {
                    id: sub.into(),
                    roles: roles.into(),
                    grants,
                    models: ModelScope::All,
                }
            }
            Mapping::External {
                claim,
                scope_map,
                roles,
            } => {
                let mut grants = Grants::none();
                let mut names: Vec<Arc<str>> = Vec::new();
                for value in scope_values(claims.get(claim.as_str())) {
                    match scope_map.get(value) {
                        Some(targets) => {
                            for t in targets {
                                match t {
                                    ScopeTarget::Grant(g) => grants.add(g),
                                    ScopeTarget::Role(r) => {
                                        if let Some(role) = roles.get(r) {
                                            grants = grants.union(&role.grants);
                                            names.push(role.name.clone());
                                        }
                                    }
                                }
                            }
                        }
                        // Unmapped values that are Warden permissions count
                        // as such, except admin ones: an external IdP grants
                        // admin rights only through an explicit scope_map entry.
                        None => {
                            if let Some(g) = Grant::parse(value).filter(|g| !g.is_admin()) {
                                grants.add(&g);
                            }
                        }
                    }
                }
                Principal {
                    id: format!("jwt:{}:{sub}", issuer.name).into(),
                    roles: names.into(),
                    grants,
                    models: ModelScope::All,
                }
            }
        };
        Ok((principal, exp))
    }
}

/// The values of a scope-like claim: a space-separated string or an array
/// of strings (anything else: none).
fn scope_values(claim: Option<&Value>) -> Box<dyn Iterator<Item = &str> + '_> {
    match claim {
        Some(Value::String(s)) => Box::new(s.split_whitespace()),
        Some(Value::Array(items)) => Box::new(items.iter().filter_map(Value::as_str)),
        _ => Box::new(std::iter::empty()),
    }
}
