//! Warden's own token issuer: short-lived EdDSA (Ed25519) JWTs for the
//! OAuth2 token endpoint, their signing keys, and the JWKS that publishes
//! them.
//!
//! The signing key is either given in config (`auth.tokens.signing_key`, a
//! PKCS#8 PEM secret; rotated by changing the secret) or generated into the
//! store and rotated with [`TokenService::rotate`]. A retired key stops
//! signing at once and stays published until every token it signed has
//! expired (token lifetime + [`TokenService::LEEWAY`]). Other processes
//! sharing the store pick a rotation up within [`RELOAD_EVERY`], or at once
//! when they see a token with an unknown `kid`.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use sha2::{Digest, Sha256};
use warden_core::Grants;
use warden_core::config::TokenSettings;
use warden_store::{SigningKeyRecord, Store};

use crate::jwt::KeySet;
use crate::keys::unix_now;

/// How often a running server rereads the signing keys from the store.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Least time between two rereads caused by unknown `kid`s.
const MIN_RELOAD: Duration = Duration::from_secs(1);

/// A token just issued (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until `exp`.
    pub expires_in: u64,
    /// The granted permissions, space-separated.
    pub scope: String,
}

struct Signing {
    kid: String,
    encoding: EncodingKey,
    published: Arc<KeySet>,
    jwks: Arc<[u8]>,
}

/// Issues and publishes Warden's tokens.
pub struct TokenService {
    issuer: String,
    audience: String,
    lifetime: Duration,
    password_grant: bool,
    store: Arc<dyn Store>,
    /// The key from config, if given (then the store's keys are not used).
    configured: Option<SigningKeyRecord>,
    signing: RwLock<Arc<Signing>>,
    last_reload: Mutex<Instant>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.issuer)
            .field("kid", &self.current().kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    scope: &'a str,
    roles: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

impl TokenService {
    /// Clock skew allowed when verifying Warden's own tokens.
    pub const LEEWAY: Duration = Duration::from_secs(60);

    /// Loads (or, on first use, generates) the signing key. Blocking.
    /// `issuer` is the configured `iss`, or one derived from the address.
    pub fn new(
        settings: &TokenSettings,
        issuer: String,
        store: Arc<dyn Store>,
    ) -> Result<Self, String> {
        let configured = settings
            .signing_key
            .as_ref()
            .map(|pem| {
                let der = PrivatePkcs8KeyDer::from_pem_slice(pem.expose()).map_err(|e| {
                    format!("auth.tokens.signing_key: not a PKCS#8 PEM private key: {e}")
                })?;
                record_from_pkcs8(der.secret_pkcs8_der().to_vec(), unix_now())
                    .map_err(|e| format!("auth.tokens.signing_key: {e}"))
            })
            .transpose()?;
        let signing = load(store.as_ref(), configured.as_ref(), settings.lifetime)?;
        Ok(Self {
            issuer,
            audience: settings.audience.clone(),
            lifetime: settings.lifetime,
            password_grant: settings.password_grant,
            store,
            configured,
            signing: RwLock::new(Arc::new(signing)),
            last_reload: Mutex::new(Instant::now()),
        })
    }

    /// The `iss` of issued tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of issued tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Token lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Whether the password grant is on.
    pub fn password_grant(&self) -> bool {
        self.password_grant
    }

    fn current(&self) -> Arc<Signing> {
        self.signing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The keys tokens are verified with (current and recently retired).
    pub fn published_keys(&self) -> Arc<KeySet> {
        self.current().published.clone()
    }

    /// The JWKS document (`/.well-known/jwks.json`), serialized once per reload.
    pub fn jwks(&self) -> Arc<[u8]> {
        self.current().jwks.clone()
    }

    /// The `kid` new tokens are signed with.
    pub fn current_kid(&self) -> String {
        self.current().kid.clone()
    }

    /// Rereads the keys from the store. Blocking.
    pub fn reload(&self) -> Result<(), String> {
        let signing = load(self.store.as_ref(), self.configured.as_ref(), self.lifetime)?;
        *self
            .signing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(signing);
        Ok(())
    }

    /// Rereads the keys unless that was done less than a second ago.
    pub async fn reload_if_stale(self: &Arc<Self>) {
        {
            let mut last = self
                .last_reload
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.elapsed() < MIN_RELOAD {
                return;
            }
            *last = Instant::now();
        }
        let this = Arc::clone(self);
        match tokio::task::spawn_blocking(move || this.reload()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot reload token signing keys"),
            Err(e) => tracing::error!(error = %e, "signing key reload task failed"),
        }
    }

    /// Rereads the keys every [`RELOAD_EVERY`] while `self` lives.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { break };
                let result = tokio::task::spawn_blocking(move || this.reload()).await;
                if let Ok(Err(e)) = result {
                    tracing::error!(error = %e, "cannot reload token signing keys");
                }
            }
        });
    }

    /// Generates a new signing key; the old one is retired (still published
    /// until its tokens expire). Blocking. Refused when the key comes from config.
    pub fn rotate(&self) -> Result<String, String> {
        if self.configured.is_some() {
            return Err(
                "the signing key is set in config (auth.tokens.signing_key): rotate it there"
                    .into(),
            );
        }
        let now = unix_now();
        let record = generate(now)?;
        self.store
            .rotate_signing_key(&record, now)
            .map_err(|e| e.to_string())?;
        self.reload()?;
        tracing::warn!(kid = %record.kid, "token signing key rotated");
        Ok(record.kid)
    }

    /// Issues a token for `subject` (a principal id such as `client:abc`).
    pub fn issue(
        &self,
        subject: &str,
        roles: &[Arc<str>],
        grants: &Grants,
        client_id: Option<&str>,
    ) -> Result<IssuedToken, String> {
        let signing = self.current();
        let now = unix_now();
        let scope = grants.to_scope();
        let jti: String = {
            let bytes: [u8; 16] = rand::random();
            URL_SAFE_NO_PAD.encode(bytes)
        };
        let claims = Claims {
            iss: &self.issuer,
            sub: subject,
            aud: &self.audience,
            exp: now + self.lifetime.as_secs() as i64,
            iat: now,
            nbf: now,
            jti,
            scope: &scope,
            roles: roles.iter().map(|r| &**r).collect(),
            client_id,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signing.kid.clone());
        header.typ = Some("at+jwt".into());
        let access_token = jsonwebtoken::encode(&header, &claims, &signing.encoding)
            .map_err(|e| format!("cannot sign a token: {e}"))?;
        Ok(IssuedToken {
            access_token,
            token_type: "Bearer",
            expires_in: self.lifetime.as_secs(),
            scope,
        })
    }
}

/// Builds the signing state from config or the store (generating the first key).
fn load(
    store: &dyn Store,
    configured: Option<&SigningKeyRecord>,
    lifetime: Duration,
) -> Result<Signing, String> {
    let now = unix_now();
    let records = match configured {
        Some(record) => vec![record.clone()],
        None => {
            let mut records = store.list_signing_keys().map_err(|e| e.to_string())?;
            if !records.iter().any(|r| r.retired_at.is_none()) {
                let record = generate(now)?;
                store
                    .rotate_signing_key(&record, now)
                    .map_err(|e| e.to_string())?;
                tracing::info!(kid = %record.kid, "generated the token signing key");
                records = store.list_signing_keys().map_err(|e| e.to_string())?;
            }
            records
        }
    };
    let publish_for = (lifetime + TokenService::LEEWAY).as_secs() as i64;
    let current = records
        .iter()
        .find(|r| r.retired_at.is_none())
        .ok_or("no active signing key")?;
    let mut published = KeySet::default();
    let mut jwks = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.retired_at.is_none_or(|t| t + publish_for > now))
    {
        let x = URL_SAFE_NO_PAD.encode(&r.public_key);
        let key = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
        published.insert(r.kid.clone(), key);
        jwks.push(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": r.kid, "alg": "EdDSA", "use": "sig",
        }));
    }
    Ok(Signing {
        kid: current.kid.clone(),
        encoding: EncodingKey::from_ed_der(&current.private_pkcs8),
        published: Arc::new(published),
        jwks: serde_json::json!({ "keys": jwks })
            .to_string()
            .into_bytes()
            .into(),
    })
}

fn generate(now: i64) -> Result<SigningKeyRecord, String> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|e| format!("cannot generate a signing key: {e}"))?;
    record_from_pkcs8(pkcs8.as_ref().to_vec(), now)
}

fn record_from_pkcs8(pkcs8: Vec<u8>, now: i64) -> Result<SigningKeyRecord, String> {
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
    let public_key = pair.public_key().as_ref().to_vec();
    Ok(SigningKeyRecord {
        kid: thumbprint(&public_key),
        private_pkcs8: pkcs8,
        public_key,
        created_at: now,
        retired_at: None,
    })
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 §2).
fn thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authenticator::Credential;
    use crate::jwt::JwtVerifier;
    use base64::engine::general_purpose::STANDARD;
    use warden_core::{Grant, Roles};
    use warden_store::SqliteStore;

    fn settings(signing_key: Option<warden_core::Secret>) -> TokenSettings {
        TokenSettings {
            issuer: None,
            audience: "warden".into(),
            lifetime: Duration::from_secs(300),
            password_grant: true,
            signing_key,
        }
    }

    #[tokio::test]
    async fn issued_tokens_verify_and_survive_a_rotation() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let svc = Arc::new(
            TokenService::new(&settings(None), "https://w.test".into(), store.clone()).unwrap(),
        );
        let verifier = JwtVerifier::new(&[], Arc::new(Roles::builtin()), Some(svc.clone()))
            .await
            .unwrap();
        let grants = Grants::of(&[Grant::Predict("iris".into())]);
        let token = svc
            .issue("client:abc", &[Arc::from("analyst")], &grants, Some("abc"))
            .unwrap();
        assert_eq!(token.scope, "predict:iris");
        let p = verifier.verify(&token.access_token).await.unwrap();
        assert_eq!(&*p.id, "client:abc");
        assert!(p.may_predict("iris") && !p.may_predict("digits") && p.has_role("analyst"));

        let old_kid = svc.current_kid();
        let new_kid = svc.rotate().unwrap();
        assert_ne!(old_kid, new_kid);
        let jwks: serde_json::Value = serde_json::from_slice(&svc.jwks()).unwrap();
        assert_eq!(
            jwks["keys"].as_array().unwrap().len(),
            2,
            "retired key still published"
        );
        assert!(verifier.verify(&token.access_token).await.is_ok());

        // A second process sharing the store sees the same keys.
        let other = TokenService::new(&settings(None), "https://w.test".into(), store).unwrap();
        assert_eq!(other.current_kid(), new_kid);

        // Tampering with the scope breaks the signature.
        let parts: Vec<&str> = token.access_token.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["scope"] = "admin:*".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            verifier.verify(&forged).await.unwrap_err(),
            Credential::TokenSignature
        );
    }

    #[test]
    fn a_configured_key_is_used_and_not_rotated_here() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let svc = TokenService::new(
            &settings(Some(warden_core::Secret::new(pem.into_bytes()))),
            "https://w.test".into(),
            store.clone(),
        )
        .unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        assert_eq!(svc.current_kid(), thumbprint(pair.public_key().as_ref()));
        assert!(svc.rotate().is_err());
        assert!(
            store.list_signing_keys().unwrap().is_empty(),
            "nothing stored"
        );
    }
}
