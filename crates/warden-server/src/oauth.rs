//! The OAuth2 token endpoint (RFC 6749) and what publishes its keys:
//! `POST /oauth/token`, `GET /.well-known/jwks.json` and the RFC 8414
//! metadata at `GET /.well-known/oauth-authorization-server`.
//!
//! Grants: `client_credentials` (client authenticated by HTTP Basic or by
//! `client_id` + `client_secret` in the form, never both) and `password`
//! (users; off with `auth.tokens.password_grant = false`). Errors on this
//! route are RFC 6749 §5.2 bodies, not Warden's envelope, because OAuth2
//! clients parse them: `{"error", "error_description", "request_id"}`.
//!
//! Brute force: every request counts against the strict `token` rate policy
//! (default 5/minute) per client address and per username / client id, and
//! banned addresses and accounts are refused, all before any password work;
//! every failure counts towards a ban of the address and of the account and
//! is logged with both. Limits and bans live in the shared limiter (memory or
//! Redis, `warden_limits`). Secrets are checked with Argon2id at equal cost
//! whether or not the account exists (see `warden_auth::passwords`).

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use warden_auth::TokenService;
use warden_auth::passwords::SecretChecker;
use warden_core::{Grant, Grants};
use warden_limits::RateOutcome;
use zeroize::Zeroizing;

use crate::client_addr::ClientAddr;
use crate::routes::json;
use crate::state::AppState;
use crate::steps::Plane;
use crate::steps::{PrincipalNote, RequestId};

/// Largest token request body.
const MAX_FORM: usize = 16 * 1024;

/// The token endpoint's state.
pub struct OAuth {
    /// The issuer.
    pub tokens: Arc<TokenService>,
    checker: SecretChecker,
    metadata: Bytes,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("issuer", &self.tokens.issuer())
            .finish_non_exhaustive()
    }
}

impl OAuth {
    /// The endpoint for `tokens`. Computes the dummy hash (one Argon2 run).
    pub fn new(tokens: Arc<TokenService>) -> Result<Self, String> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let issuer = tokens.issuer().to_owned();
        let mut grants = vec!["client_credentials"];
        if tokens.password_grant() {
            grants.push("password");
        }
        let metadata = serde_json::json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/oauth/token"),
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "grant_types_supported": grants,
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["predict:*", "models:read", "metrics:read", "admin:keys", "admin:users", "admin:audit", "admin:models", "admin:*"],
            "service_documentation": format!("{issuer}/openapi.json"),
        });
        Ok(Self {
            tokens,
            checker: SecretChecker::new(cpus)?,
            metadata: metadata.to_string().into(),
        })
    }
}

/// An RFC 6749 §5.2 error.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: &'static str,
    retry_after: Option<u64>,
    basic_challenge: bool,
}

impl OAuthError {
    const fn new(status: StatusCode, code: &'static str, description: &'static str) -> Self {
        Self {
            status,
            code,
            description,
            retry_after: None,
            basic_challenge: false,
        }
    }

    fn invalid_request(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client(basic: bool) -> Self {
        Self {
            basic_challenge: basic,
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed.",
            )
        }
    }

    fn invalid_grant() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The username or password is not valid.",
        )
    }

    fn rate_limited(seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many token requests; retry later.",
            )
        }
    }

    fn busy() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The server is busy; retry later.",
            )
        }
    }

    fn banned(seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::FORBIDDEN,
                "banned",
                "Too many failed attempts; retry later.",
            )
        }
    }

    fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server could not complete the request.",
        )
    }

    fn render(self, request_id: &str) -> Response {
        let body = serde_json::json!({
            "error": self.code,
            "error_description": self.description,
            "request_id": request_id,
        });
        let mut response = (self.status, json(body.to_string())).into_response();
        response
            .extensions_mut()
            .insert(crate::steps::OutcomeNote(self.code));
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if self.basic_challenge {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"warden\""),
            );
        }
        response
    }
}

/// The token request's form, each parameter at most once (RFC 6749 §3.2).
#[derive(Default)]
struct Form {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Zeroizing<String>>,
    username: Option<String>,
    password: Option<Zeroizing<String>>,
    scope: Option<String>,
}

fn parse_form(body: &[u8]) -> Result<Form, OAuthError> {
    let mut form = Form::default();
    for (k, v) in form_urlencoded::parse(body) {
        let slot_taken = match k.as_ref() {
            "grant_type" => form.grant_type.replace(v.into_owned()).is_some(),
            "client_id" => form.client_id.replace(v.into_owned()).is_some(),
            "client_secret" => form
                .client_secret
                .replace(Zeroizing::new(v.into_owned()))
                .is_some(),
            "username" => form.username.replace(v.into_owned()).is_some(),
            "password" => form
                .password
                .replace(Zeroizing::new(v.into_owned()))
                .is_some(),
            "scope" => form.scope.replace(v.into_owned()).is_some(),
            _ => false, // unknown parameters are ignored (RFC 6749 §3.2)
        };
        if slot_taken {
            return Err(OAuthError::invalid_request("A parameter was sent twice."));
        }
    }
    Ok(form)
}

/// HTTP Basic client credentials (RFC 6749 §2.3.1: both parts form-urlencoded).
fn basic_credentials(
    headers: &HeaderMap,
) -> Result<Option<(String, Zeroizing<String>)>, OAuthError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError::invalid_client(true);
    let text = value.to_str().map_err(|_| bad())?;
    let (scheme, encoded) = text.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad())?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), Zeroizing::new(unescape(secret)))))
}

/// The OAuth2 token endpoint (RFC 6749): client credentials or password grant.
#[utoipa::path(post, path = "/oauth/token", tag = "oauth",
    request_body(content = crate::openapi::TokenForm, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=client_credentials (client_id/client_secret or HTTP Basic), or grant_type=password with username and password; optional scope"),
    responses(
        (status = 200, description = "An access token (RFC 6749 §5.1)", body = crate::openapi::TokenBody),
        (status = 400, description = "RFC 6749 §5.2 error: invalid_request, invalid_grant, unsupported_grant_type, invalid_scope", body = crate::openapi::OAuthErrorBody),
        (status = 401, description = "RFC 6749 §5.2 error: invalid_client (with WWW-Authenticate: Basic when Basic was used)", body = crate::openapi::OAuthErrorBody),
        (status = 403, description = "banned: too many failed attempts from this address or for this account (Retry-After)", body = crate::openapi::OAuthErrorBody),
        (status = 429, description = "rate_limited: too many token requests from this address or for this account (Retry-After)", body = crate::openapi::OAuthErrorBody),
        (status = 500, description = "server_error", body = crate::openapi::OAuthErrorBody),
        (status = 503, description = "temporarily_unavailable: password checks are busy (Retry-After)", body = crate::openapi::OAuthErrorBody),
    ))]
pub async fn token(State(state): State<AppState>, req: Request) -> Response {
    let id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "-".into());
    let client = req.extensions().get::<ClientAddr>().copied();
    let Some(oauth) = state.identity.oauth.clone() else {
        return crate::routes::not_found().await.into_response();
    };
    // The address's `token` limit, for the RateLimit headers every answer
    // carries (docs/api.md, "Headers"); the account's only once it refuses,
    // so that nobody learns from `r=` how often another account is tried.
    let mut tightest = None;
    let mut response = match token_steps(&state, &oauth, req, client, &mut tightest).await {
        Ok((principal, body)) => {
            let mut response = json(body);
            response
                .headers_mut()
                .insert("pragma", HeaderValue::from_static("no-cache"));
            response.extensions_mut().insert(PrincipalNote(principal));
            response
        }
        Err(e) => e.render(&id),
    };
    if let Some(outcome) = &tightest {
        crate::steps::add_rate_headers(response.headers_mut(), outcome);
    }
    response
}

async fn token_steps(
    state: &AppState,
    oauth: &OAuth,
    req: Request,
    client: Option<ClientAddr>,
    tightest: &mut Option<RateOutcome>,
) -> Result<(Arc<str>, String), OAuthError> {
    let address = client.map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0);
    // A banned address, then the per-address limit: nothing else is done
    // for such a client, not even reading the body.
    let address_subject = warden_limits::address_subject("addr", address);
    if let Some(seconds) = state.limiter.banned(&address_subject).await {
        crate::metrics::banned(Plane::Data);
        return Err(OAuthError::banned(seconds));
    }
    limit(state, &address_subject, tightest)
        .await
        .inspect_err(|_| {
            tracing::warn!(client = %address, "token endpoint: address over its limit");
        })?;
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(OAuthError::invalid_request(
            "Send the parameters as application/x-www-form-urlencoded.",
        ));
    }
    let basic = basic_credentials(req.headers())?;
    let body = axum::body::to_bytes(req.into_body(), MAX_FORM)
        .await
        .map_err(|_| OAuthError::invalid_request("The request body could not be read."))?;
    let form = parse_form(&body)?;
    let grant_type = form
        .grant_type
        .as_deref()
        .ok_or(OAuthError::invalid_request("grant_type is required."))?;
    match grant_type {
        "client_credentials" => {
            client_credentials(state, oauth, form, basic, address, tightest).await
        }
        "password" if oauth.tokens.password_grant() => {
            password(state, oauth, form, address, tightest).await
        }
        _ => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "This grant type is not supported.",
        )),
    }
}

async fn client_credentials(
    state: &AppState,
    oauth: &OAuth,
    form: Form,
    basic: Option<(String, Zeroizing<String>)>,
    address: IpAddr,
    tightest: &mut Option<RateOutcome>,
) -> Result<(Arc<str>, String), OAuthError> {
    let by_basic = basic.is_some();
    let (client_id, secret) = match (basic, form.client_id, form.client_secret) {
        (Some(_), _, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "Authenticate the client one way: HTTP Basic or the form, not both.",
            ));
        }
        (Some((id, secret)), _, None) => (id, secret),
        (None, Some(id), Some(secret)) => (id, secret),
        _ => return Err(OAuthError::invalid_client(false)),
    };
    if client_id.is_empty() || client_id.len() > 64 {
        return Err(OAuthError::invalid_client(by_basic));
    }
    let account = format!("client:{client_id}");
    guard_account(state, &account, address, tightest).await?;
    let store = state.identity.store.clone();
    let lookup = client_id.clone();
    let record = tokio::task::spawn_blocking(move || store.get_client(&lookup))
        .await
        .map_err(|_| OAuthError::server_error())?
        .map_err(|e| {
            tracing::error!(error = %e, "client lookup failed");
            OAuthError::server_error()
        })?
        .filter(|c| c.revoked_at.is_none());
    let role = record.as_ref().map(|c| c.role.clone());
    let matched = oauth
        .checker
        .check(secret, record.map(|c| c.secret_hash))
        .await
        .map_err(|_| OAuthError::busy())?;
    let role = role
        .filter(|_| matched)
        .and_then(|r| state.identity.roles.get(&r).cloned());
    let Some(role) = role else {
        tracing::warn!(client = %address, client_id = ?client_id, "token endpoint: client authentication failed");
        failed(state, &account, address).await;
        return Err(OAuthError::invalid_client(by_basic));
    };
    let grants = scoped(&role.grants, form.scope.as_deref())?;
    let subject: Arc<str> = format!("client:{client_id}").into();
    let token = oauth
        .tokens
        .issue(
            &subject,
            std::slice::from_ref(&role.name),
            &grants,
            Some(&client_id),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot issue a token");
            OAuthError::server_error()
        })?;
    tracing::info!(client = %address, client_id = ?client_id, scope = %token.scope, "token issued");
    Ok((subject, serde_json::to_string(&token).unwrap_or_default()))
}

async fn password(
    state: &AppState,
    oauth: &OAuth,
    form: Form,
    address: IpAddr,
    tightest: &mut Option<RateOutcome>,
) -> Result<(Arc<str>, String), OAuthError> {
    let (Some(username), Some(password)) = (form.username, form.password) else {
        return Err(OAuthError::invalid_request(
            "username and password are required.",
        ));
    };
    if username.is_empty() || username.len() > 64 || password.len() > 1024 {
        return Err(OAuthError::invalid_grant());
    }
    let account = format!("user:{username}");
    guard_account(state, &account, address, tightest).await?;
    let store = state.identity.store.clone();
    let lookup = username.clone();
    let record = tokio::task::spawn_blocking(move || store.get_user(&lookup))
        .await
        .map_err(|_| OAuthError::server_error())?
        .map_err(|e| {
            tracing::error!(error = %e, "user lookup failed");
            OAuthError::server_error()
        })?;
    // A disabled user's password is still checked, so that time does not
    // tell disabled from active or unknown.
    let active = record.as_ref().is_some_and(|u| u.disabled_at.is_none());
    let role = record.as_ref().map(|u| u.role.clone());
    let matched = oauth
        .checker
        .check(password, record.map(|u| u.password_hash))
        .await
        .map_err(|_| OAuthError::busy())?;
    let role = role
        .filter(|_| matched && active)
        .and_then(|r| state.identity.roles.get(&r).cloned());
    let Some(role) = role else {
        tracing::warn!(client = %address, username = ?username, "token endpoint: login failed");
        failed(state, &account, address).await;
        return Err(OAuthError::invalid_grant());
    };
    let grants = scoped(&role.grants, form.scope.as_deref())?;
    let subject: Arc<str> = format!("user:{username}").into();
    let token = oauth
        .tokens
        .issue(&subject, std::slice::from_ref(&role.name), &grants, None)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot issue a token");
            OAuthError::server_error()
        })?;
    tracing::info!(client = %address, username = ?username, scope = %token.scope, "token issued");
    Ok((subject, serde_json::to_string(&token).unwrap_or_default()))
}

/// Takes one request from the `token` policy for `subject`. The first
/// outcome (the address's) is kept in `tightest` for the RateLimit headers;
/// a later one (the account's) replaces it only when it refuses.
async fn limit(
    state: &AppState,
    subject: &str,
    tightest: &mut Option<RateOutcome>,
) -> Result<(), OAuthError> {
    let rate = state.limiter.rate_for("token", None);
    let outcome = state.limiter.rate("token", subject, rate, 1).await;
    let allowed = outcome.decision.allowed;
    let retry_after = outcome.retry_after();
    if tightest.is_none() || !allowed {
        *tightest = Some(outcome);
    }
    if allowed {
        Ok(())
    } else {
        crate::metrics::rate_limited("token");
        Err(OAuthError::rate_limited(retry_after))
    }
}

/// The account's ban and limit, before any password work.
async fn guard_account(
    state: &AppState,
    account: &str,
    address: IpAddr,
    tightest: &mut Option<RateOutcome>,
) -> Result<(), OAuthError> {
    if let Some(seconds) = state.limiter.banned(account).await {
        crate::metrics::banned(Plane::Data);
        tracing::warn!(client = %address, account = ?account, "token endpoint: account banned");
        return Err(OAuthError::banned(seconds));
    }
    limit(state, account, tightest).await.inspect_err(|_| {
        tracing::warn!(client = %address, account = ?account, "token endpoint: account over its limit");
    })
}

/// A failed login counts towards bans of the address and of the account.
async fn failed(state: &AppState, account: &str, address: IpAddr) {
    let address = warden_limits::address_subject("addr", address);
    for subject in [address.as_str(), account] {
        if let Some(seconds) = state.limiter.failure(subject).await {
            crate::steps::banned_now(state, Plane::Data, subject, seconds).await;
        }
    }
}

/// The grants of a token: the role's, or the requested subset of them.
fn scoped(role: &Grants, scope: Option<&str>) -> Result<Grants, OAuthError> {
    let Some(scope) = scope.filter(|s| !s.trim().is_empty()) else {
        return Ok(role.clone());
    };
    let invalid = || {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "The requested scope is not allowed for this account.",
        )
    };
    let mut requested = Vec::new();
    for s in scope.split_whitespace() {
        let grant = Grant::parse(s).ok_or_else(invalid)?;
        if !role.covers(&grant) {
            return Err(invalid());
        }
        requested.push(grant);
    }
    Ok(Grants::of(&requested))
}

/// The public keys of the tokens Warden issues (JWKS).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oauth",
    responses((status = 200, description = "JSON Web Key Set (RFC 7517)", content_type = "application/json")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    match &state.identity.oauth {
        Some(o) => json(Bytes::from(o.tokens.jwks().to_vec())),
        None => crate::routes::not_found().await.into_response(),
    }
}

/// Authorization server metadata (RFC 8414).
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "oauth",
    responses((status = 200, description = "Authorization server metadata (RFC 8414)", content_type = "application/json")))]
pub async fn metadata(State(state): State<AppState>) -> Response {
    match &state.identity.oauth {
        Some(o) => json(o.metadata.clone()),
        None => crate::routes::not_found().await.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_refuse_repeated_parameters() {
        assert!(parse_form(b"grant_type=password&grant_type=client_credentials").is_err());
        let f = parse_form(b"grant_type=password&username=a%20b&password=p%26q&extra=1").unwrap();
        assert_eq!(f.username.as_deref(), Some("a b"));
        assert_eq!(f.password.as_deref().map(String::as_str), Some("p&q"));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let raw = base64::engine::general_purpose::STANDARD.encode("my%20id:s%3Acret");
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {raw}")).unwrap(),
        );
        let (id, secret) = basic_credentials(&h).unwrap().unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("my id", "s:cret"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(basic_credentials(&h).is_err());
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let key = |ip| warden_limits::address_subject("addr", ip);
        assert_eq!(key(a), key(b));
        assert_eq!(key(a), "addr:2001:db8:1:2::");
        let v4: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key(v4), "addr:10.0.0.1");
    }

    #[test]
    fn scope_requests_are_subsets_of_the_role() {
        let role = Grants::of(&[
            Grant::PredictAll,
            Grant::Other(warden_core::Permission::ModelsRead),
        ]);
        assert_eq!(scoped(&role, None).unwrap(), role);
        assert_eq!(
            scoped(&role, Some("predict:iris")).unwrap().to_scope(),
            "predict:iris"
        );
        assert!(scoped(&role, Some("admin:keys")).is_err());
        assert!(scoped(&role, Some("nonsense")).is_err());
    }
}
