//! `[roles]`, `[auth]` and the mTLS settings: the identity half of the
//! configuration, raw and validated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid};
use crate::principal::{Grant, ModelScope, Roles};
use crate::secret::{Secret, SecretSource};

/// Algorithms an external issuer may list (`auth.jwt.algorithms`).
pub const JWT_ALGORITHMS: [&str; 11] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384",
];
/// Shortest HS256 secret accepted without acknowledgement (RFC 7518 §3.2).
pub const MIN_HS256_SECRET: usize = 32;

/// `[roles.<name>]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRole {
    /// What the role is for.
    pub description: Option<String>,
    /// Permissions: `predict:<model>`, `predict:*`, `models:read`,
    /// `metrics:read`, `admin:keys`, `admin:users`, `admin:audit`,
    /// `admin:models`, `admin:*`.
    pub permissions: Vec<String>,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// After `keys rotate`, how long the old key keeps working. Default `1h`.
    #[serde(deserialize_with = "duration")]
    pub key_rotation_grace: Option<Duration>,
    /// How long a verified API key is trusted before the store is read
    /// again: the most a revocation made by another process takes to apply.
    /// `0s` reads the store on every request. Default `1s`, at most `60s`.
    #[serde(deserialize_with = "duration")]
    pub key_cache_ttl: Option<Duration>,
    /// Warden's own OAuth2 token endpoint and the tokens it issues.
    pub tokens: RawTokens,
    /// External JWT issuers whose tokens are accepted.
    pub jwt: Vec<RawIssuer>,
    /// Client-certificate identities (for listeners with `client_ca`).
    pub mtls: Vec<RawMtlsIdentity>,
}

/// `[auth.tokens]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokens {
    /// Serve `POST /oauth/token`, `/.well-known/jwks.json` and the RFC 8414
    /// metadata. Default true.
    pub enabled: Option<bool>,
    /// The `iss` of issued tokens. Default: `https://<data-plane address>`.
    pub issuer: Option<String>,
    /// The `aud` of issued tokens. Default `warden`.
    pub audience: Option<String>,
    /// Lifetime of issued tokens. Default `15m`; at most `24h`.
    #[serde(deserialize_with = "duration")]
    pub lifetime: Option<Duration>,
    /// Allow the `password` grant for users. Default true.
    pub password_grant: Option<bool>,
    /// An Ed25519 private key (PKCS#8 PEM) to sign with, as a secret. Default:
    /// a key generated into the store (rotated with the management API).
    pub signing_key: Option<SecretSource>,
}

/// `[[auth.jwt]]`: one external issuer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIssuer {
    /// A short name, used in principal ids (`jwt:<name>:<sub>`) and logs.
    pub name: String,
    /// The exact `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them.
    pub audience: Vec<String>,
    /// Accepted algorithms, e.g. `["RS256", "ES256"]`. The token's header
    /// never chooses beyond this list.
    pub algorithms: Vec<String>,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (https), fetched at start, refreshed periodically and on
    /// an unknown `kid`.
    pub jwks_url: Option<String>,
    /// A PEM CA bundle to trust for `jwks_url` (default: the system roots).
    pub jwks_ca: Option<PathBuf>,
    /// How often the JWKS URL is refetched. Default `1h`.
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh: Option<Duration>,
    /// Least time between two fetches caused by unknown `kid`s. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub jwks_min_refresh: Option<Duration>,
    /// An HS256 shared secret (at least 32 bytes), as a secret.
    pub hs256_secret: Option<SecretSource>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default `60s`.
    #[serde(deserialize_with = "duration")]
    pub leeway: Option<Duration>,
    /// The claim holding the permissions: a space-separated string or an
    /// array of strings. Default `scope`.
    pub permissions_claim: Option<String>,
    /// Scope value → Warden permissions or `role:<name>`. Values not in the
    /// map are taken as Warden permissions when they are one, else ignored.
    pub scope_map: BTreeMap<String, Vec<String>>,
}

/// `[[auth.mtls]]`: a client certificate identity.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMtlsIdentity {
    /// Matched against the certificate's DNS subject alternative names, then
    /// its subject common name.
    pub name: String,
    /// The role the identity carries.
    pub role: String,
    /// Models it may use. Default: every model its role allows.
    pub models: Option<Vec<String>>,
}

/// Validated `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Grace period of a rotated key.
    pub key_rotation_grace: Duration,
    /// API-key cache lifetime.
    pub key_cache_ttl: Duration,
    /// Warden's token issuer, if enabled.
    pub tokens: Option<TokenSettings>,
    /// External issuers.
    pub issuers: Vec<IssuerSettings>,
    /// Client-certificate identities.
    pub mtls: Vec<MtlsIdentity>,
}

/// Validated `[auth.tokens]`.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss`; `None` = derived from the bound address.
    pub issuer: Option<String>,
    /// `aud`.
    pub audience: String,
    /// Token lifetime.
    pub lifetime: Duration,
    /// Whether users may use the password grant.
    pub password_grant: bool,
    /// A configured signing key (PKCS#8 PEM), else the store's.
    pub signing_key: Option<Secret>,
}

/// Where an external issuer's keys come from.
#[derive(Debug, Clone)]
pub enum IssuerKeys {
    /// A JWKS file, read at start.
    JwksFile(PathBuf),
    /// A JWKS URL.
    JwksUrl {
        /// The https URL.
        url: String,
        /// Extra CA to trust.
        ca: Option<PathBuf>,
        /// Periodic refresh.
        refresh: Duration,
        /// Least time between unknown-`kid` fetches.
        min_refresh: Duration,
    },
    /// An HS256 secret.
    Hs256(Secret),
}

/// What one scope value maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeTarget {
    /// A Warden permission.
    Grant(Grant),
    /// A role: its permissions, and its name for per-role output policies.
    Role(String),
}

/// A validated external issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// Short name.
    pub name: String,
    /// Exact `iss`.
    pub issuer: String,
    /// Accepted audiences (at least one).
    pub audience: Vec<String>,
    /// Accepted algorithm names (from [`JWT_ALGORITHMS`]).
    pub algorithms: Vec<String>,
    /// Key source.
    pub keys: IssuerKeys,
    /// Clock skew.
    pub leeway: Duration,
    /// Claim with the permissions.
    pub permissions_claim: String,
    /// Scope value mapping.
    pub scope_map: BTreeMap<String, Vec<ScopeTarget>>,
}

/// A validated client-certificate identity.
#[derive(Debug, Clone)]
pub struct MtlsIdentity {
    /// Certificate DNS name or common name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Model allowlist.
    pub models: ModelScope,
}

/// Validates `[roles]`.
pub(super) fn roles(raw: BTreeMap<String, RawRole>) -> Result<Roles, ConfigError> {
    let mut roles = Roles::builtin();
    for (name, role) in raw {
        roles
            .define(
                &name,
                role.description.unwrap_or_default(),
                &role.permissions,
            )
            .map_err(|e| invalid("roles", e))?;
    }
    Ok(roles)
}

/// Validates `[auth]` against the roles.
pub(super) fn auth(
    raw: RawAuth,
    roles: &Roles,
    allow_readable: bool,
    allow_short_hs256: bool,
) -> Result<AuthSettings, ConfigError> {
    let RawAuth {
        key_rotation_grace,
        key_cache_ttl,
        tokens,
        jwt,
        mtls,
    } = raw;
    let key_cache_ttl = key_cache_ttl.unwrap_or(Duration::from_secs(1));
    if key_cache_ttl > Duration::from_secs(60) {
        return Err(invalid("auth.key_cache_ttl", "at most 60s"));
    }
    let tokens = if tokens.enabled.unwrap_or(true) {
        let lifetime = tokens.lifetime.unwrap_or(Duration::from_secs(15 * 60));
        if lifetime.is_zero() || lifetime > Duration::from_secs(24 * 3600) {
            return Err(invalid(
                "auth.tokens.lifetime",
                "must be between 1s and 24h",
            ));
        }
        if let Some(iss) = &tokens.issuer
            && !iss.starts_with("https://")
            && !iss.starts_with("http://")
        {
            return Err(invalid(
                "auth.tokens.issuer",
                "must be a URL (RFC 8414), e.g. https://warden.example.com",
            ));
        }
        Some(TokenSettings {
            issuer: tokens.issuer.map(|i| i.trim_end_matches('/').to_owned()),
            audience: tokens.audience.unwrap_or_else(|| "warden".into()),
            lifetime,
            password_grant: tokens.password_grant.unwrap_or(true),
            signing_key: tokens
                .signing_key
                .map(|s| s.read(allow_readable))
                .transpose()
                .map_err(|e| invalid("auth.tokens.signing_key", e.to_string()))?,
        })
    } else {
        None
    };

    let mut issuers: Vec<IssuerSettings> = Vec::with_capacity(jwt.len());
    for raw in jwt {
        let issuer = issuer(raw, roles, allow_readable, allow_short_hs256)?;
        if issuers
            .iter()
            .any(|i| i.name == issuer.name || i.issuer == issuer.issuer)
        {
            return Err(invalid(
                "auth.jwt",
                format!(
                    "two issuers share the name {:?} or the issuer {:?}",
                    issuer.name, issuer.issuer
                ),
            ));
        }
        issuers.push(issuer);
    }

    let mut identities = Vec::with_capacity(mtls.len());
    for m in mtls {
        if m.name.is_empty() {
            return Err(invalid("auth.mtls.name", "must not be empty"));
        }
        if roles.get(&m.role).is_none() {
            return Err(invalid(
                "auth.mtls.role",
                format!("unknown role {:?} (roles: {})", m.role, roles.names()),
            ));
        }
        identities.push(MtlsIdentity {
            name: m.name,
            role: m.role,
            models: model_list("auth.mtls.models", m.models)?,
        });
    }

    Ok(AuthSettings {
        key_rotation_grace: key_rotation_grace.unwrap_or(Duration::from_secs(3600)),
        key_cache_ttl,
        tokens,
        issuers,
        mtls: identities,
    })
}

/// A `--models` style allowlist: `None` = every model.
pub fn model_list(
    key: &'static str,
    models: Option<Vec<String>>,
) -> Result<ModelScope, ConfigError> {
    match models {
        None => Ok(ModelScope::All),
        Some(list) => {
            if let Some(bad) = list.iter().find(|m| !crate::is_model_name(m)) {
                return Err(invalid(key, format!("{bad:?} is not a model name")));
            }
            Ok(ModelScope::Only(list.into()))
        }
    }
}

fn issuer(
    raw: RawIssuer,
    roles: &Roles,
    allow_readable: bool,
    allow_short_hs256: bool,
) -> Result<IssuerSettings, ConfigError> {
    if !crate::principal::is_role_name(&raw.name) {
        return Err(invalid(
            "auth.jwt.name",
            format!("{:?}: 1 to 64 letters, digits, '-', '_', '.'", raw.name),
        ));
    }
    if raw.issuer.is_empty() {
        return Err(invalid("auth.jwt.issuer", "must not be empty"));
    }
    if raw.audience.is_empty() {
        return Err(invalid(
            "auth.jwt.audience",
            format!("issuer {:?}: list the accepted audiences", raw.name),
        ));
    }
    if raw.algorithms.is_empty() {
        return Err(invalid(
            "auth.jwt.algorithms",
            format!("issuer {:?}: list the accepted algorithms", raw.name),
        ));
    }
    for a in &raw.algorithms {
        if !JWT_ALGORITHMS.contains(&a.as_str()) {
            return Err(invalid(
                "auth.jwt.algorithms",
                format!("{a:?} is not one of {}", JWT_ALGORITHMS.join(", ")),
            ));
        }
    }
    // Public keys never verify HMAC tokens (that is the algorithm-confusion
    // attack: an HS256 token "signed" with the public key), and a shared
    // secret is only ever an HMAC key.
    let symmetric = raw.algorithms.iter().any(|a| a.starts_with("HS"));
    let keys = match (raw.hs256_secret, raw.jwks_file, raw.jwks_url) {
        (Some(secret), None, None) => {
            if raw.algorithms != ["HS256"] {
                return Err(invalid(
                    "auth.jwt.algorithms",
                    format!(
                        "issuer {:?}: hs256_secret goes with algorithms = [\"HS256\"] only",
                        raw.name
                    ),
                ));
            }
            let secret = secret
                .read(allow_readable)
                .map_err(|e| invalid("auth.jwt.hs256_secret", e.to_string()))?;
            if secret.expose().len() < MIN_HS256_SECRET && !allow_short_hs256 {
                return Err(invalid(
                    "auth.jwt.hs256_secret",
                    format!(
                        "issuer {:?}: an HS256 secret needs at least {MIN_HS256_SECRET} bytes; set insecure.short_hs256_secret = true to acknowledge a shorter one",
                        raw.name
                    ),
                ));
            }
            IssuerKeys::Hs256(secret)
        }
        (None, file, url) if symmetric && (file.is_some() ^ url.is_some()) => {
            return Err(invalid(
                "auth.jwt.algorithms",
                format!(
                    "issuer {:?}: HS* algorithms need hs256_secret, never a JWKS",
                    raw.name
                ),
            ));
        }
        (None, Some(file), None) => IssuerKeys::JwksFile(file),
        (None, None, Some(url)) => {
            if !url.starts_with("https://") {
                return Err(invalid(
                    "auth.jwt.jwks_url",
                    format!("{url:?}: keys are fetched over https only"),
                ));
            }
            IssuerKeys::JwksUrl {
                url,
                ca: raw.jwks_ca,
                refresh: raw.jwks_refresh.unwrap_or(Duration::from_secs(3600)),
                min_refresh: raw.jwks_min_refresh.unwrap_or(Duration::from_secs(30)),
            }
        }
        _ => {
            return Err(invalid(
                "auth.jwt",
                format!(
                    "issuer {:?}: give exactly one of jwks_file, jwks_url, hs256_secret",
                    raw.name
                ),
            ));
        }
    };

    let mut scope_map = BTreeMap::new();
    for (scope, targets) in raw.scope_map {
        let mut parsed = Vec::with_capacity(targets.len());
        for t in targets {
            if let Some(role) = t.strip_prefix("role:") {
                if roles.get(role).is_none() {
                    return Err(invalid(
                        "auth.jwt.scope_map",
                        format!("unknown role {role:?} (roles: {})", roles.names()),
                    ));
                }
                parsed.push(ScopeTarget::Role(role.to_owned()));
            } else {
                parsed.push(ScopeTarget::Grant(Grant::parse(&t).ok_or_else(|| {
                    invalid(
                        "auth.jwt.scope_map",
                        format!("{t:?} is neither a permission nor role:<name>"),
                    )
                })?));
            }
        }
        scope_map.insert(scope, parsed);
    }

    Ok(IssuerSettings {
        name: raw.name,
        issuer: raw.issuer,
        audience: raw.audience,
        algorithms: raw.algorithms,
        keys,
        leeway: raw.leeway.unwrap_or(Duration::from_secs(60)),
        permissions_claim: raw.permissions_claim.unwrap_or_else(|| "scope".into()),
        scope_map,
    })
}
