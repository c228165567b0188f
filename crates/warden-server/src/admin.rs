//! The management API (docs/api.md), served on the management listener only:
//! keys, users, OAuth2 clients, token signing keys, roles, bans, quotas and
//! models (list and reload); the audit trail and `/metrics` are in
//! `observe`. Every route
//! needs a credential (the admission stage) and an admin permission
//! (checked here: a valid credential without it gets `forbidden`).
//!
//! Secrets (new keys, client secrets) appear only in the response to the
//! create or rotate call that made them.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use warden_auth::keys::unix_now;
use warden_auth::{AccountError, Accounts, KeyAdmin, KeyError, NewKey};
use warden_core::{ApiError, ErrorCode, ModelScope, Permission, Principal};
use warden_models::repository::ReloadError;
use warden_store::{ApiKeyRecord, ClientRecord, Store, UserRecord};
use zeroize::Zeroizing;

use crate::extract::{Caller, JsonBody, PathParam};
use crate::routes::json;
use crate::state::AppState;
use crate::steps::TargetNote;

/// The management routes (admission is added by the caller).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{id}/revoke", post(revoke_key))
        .route("/admin/keys/{id}/rotate", post(rotate_key))
        .route("/admin/users", get(list_users).post(create_user))
        .route("/admin/users/{name}/disable", post(disable_user))
        .route("/admin/users/{name}/password", post(set_password))
        .route("/admin/clients", get(list_clients).post(create_client))
        .route("/admin/clients/{id}/revoke", post(revoke_client))
        .route("/admin/clients/{id}/rotate", post(rotate_client))
        .route("/admin/signing-keys", get(list_signing_keys))
        .route("/admin/signing-keys/rotate", post(rotate_signing_key))
        .route("/admin/roles", get(list_roles))
        .route("/admin/bans", get(list_bans))
        .route("/admin/bans/{subject}/lift", post(lift_ban))
        .route("/admin/whoami", get(crate::console::whoami))
        .route("/admin/overview", get(crate::console::overview))
        .route("/admin/audit/verify", get(crate::console::audit_verify))
        .route("/admin/models", get(list_models))
        .route("/admin/models/{model}", get(crate::console::model_detail))
        .route("/admin/models/{model}/reload", post(reload_model))
        .route("/admin/audit", get(crate::observe::audit_query))
        .route(
            "/admin/audit/checkpoint",
            get(crate::observe::audit_checkpoint),
        )
        .route("/metrics", get(crate::observe::metrics))
        .route("/admin/keys/{id}/quota", get(key_quota))
        .route("/admin/users/{id}/quota", get(user_quota))
        .route("/admin/clients/{id}/quota", get(client_quota))
}

/// The audit `action` of a management call, from its method and route
/// template (`None` for reads).
pub fn action(method: &axum::http::Method, route: &str) -> Option<&'static str> {
    // Every write is a POST; GET, HEAD and OPTIONS change nothing.
    if method != axum::http::Method::POST {
        return None;
    }
    Some(match route {
        "/admin/keys" => "key.create",
        "/admin/keys/{id}/revoke" => "key.revoke",
        "/admin/keys/{id}/rotate" => "key.rotate",
        "/admin/users" => "user.create",
        "/admin/users/{name}/disable" => "user.disable",
        "/admin/users/{name}/password" => "user.password",
        "/admin/clients" => "client.create",
        "/admin/clients/{id}/revoke" => "client.revoke",
        "/admin/clients/{id}/rotate" => "client.rotate",
        "/admin/signing-keys/rotate" => "signing_key.rotate",
        "/admin/bans/{subject}/lift" => "ban.lift",
        "/admin/models/{model}/reload" => "model.reload",
        _ => return None,
    })
}

/// Checks that `caller` holds `permission` (`forbidden` otherwise).
pub fn require(caller: &Principal, permission: Permission) -> Result<(), ApiError> {
    if caller.has(permission) {
        Ok(())
    } else {
        tracing::info!(principal = %caller.id, needed = permission.as_str(), "management call refused");
        Err(ErrorCode::Forbidden.into())
    }
}

/// A caller may only create, rotate, reset, revoke or disable a credential
/// whose role (narrowed to its models) it holds itself: `admin:keys` alone
/// must not be a way to mint an admin key or take over one. A credential
/// whose role is no longer configured needs a caller holding everything.
fn may_manage(
    state: &AppState,
    caller: &Principal,
    role: &str,
    models: Option<&[String]>,
) -> Result<(), ApiError> {
    let models = match models {
        None => ModelScope::All,
        Some(m) => ModelScope::Only(m.to_vec().into()),
    };
    let allowed = match state.identity.roles.get(role) {
        Some(r) => caller.may_grant(r, &models),
        None => state
            .identity
            .roles
            .get("admin")
            .is_some_and(|admin| caller.may_grant(admin, &ModelScope::All)),
    };
    if allowed {
        Ok(())
    } else {
        tracing::warn!(principal = %caller.id, target_role = %role, "management call refused: the target holds more than the caller");
        Err(ErrorCode::Forbidden.into())
    }
}

/// [`may_manage`] for an existing key, user or client (404 if none).
async fn may_manage_existing(
    state: &AppState,
    caller: &Principal,
    kind: Kind,
    id: &str,
) -> Result<(), ApiError> {
    let (role, models) = target_of(state, kind, id).await?;
    may_manage(state, caller, &role, models.as_deref())
}

/// Runs a user or client operation on the blocking pool (Argon2 and the
/// store both block).
async fn with_accounts<T: Send + 'static>(
    state: &AppState,
    op: impl FnOnce(Accounts<'_, dyn Store>) -> Result<T, AccountError> + Send + 'static,
) -> Result<T, ApiError> {
    let identity = state.identity.clone();
    blocking(move || {
        op(Accounts::new(identity.store.as_ref(), &identity.roles)).map_err(account_error)
    })
    .await
}

/// Runs a key operation on the blocking pool.
async fn with_keys<T: Send + 'static>(
    state: &AppState,
    op: impl FnOnce(KeyAdmin<'_, dyn Store>) -> Result<T, KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    let identity = state.identity.clone();
    blocking(move || op(KeyAdmin::new(identity.store.as_ref(), &identity.roles)).map_err(key_error))
        .await
}

/// The role and models of an existing key, user or client (404 if none).
async fn target_of(
    state: &AppState,
    kind: Kind,
    id: &str,
) -> Result<(String, Option<Vec<String>>), ApiError> {
    let store = state.identity.store.clone();
    let id = id.to_owned();
    blocking(move || {
        let found = match kind {
            Kind::Key => store.get_key(&id).map(|k| k.map(|k| (k.role, k.models))),
            Kind::User => store.get_user(&id).map(|u| u.map(|u| (u.role, None))),
            Kind::Client => store.get_client(&id).map(|c| c.map(|c| (c.role, None))),
        };
        found.map_err(store_error)?.ok_or_else(ApiError::not_found)
    })
    .await
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Key,
    User,
    Client,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(ErrorCode::InvalidRequest).with_message(format!("The body is not valid: {e}"))
    })
}

/// Runs a blocking store or hashing operation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "management task failed");
        ApiError::internal()
    })?
}

/// `201 Created`, noting the new id (or name) for the audit record.
fn created(value: Value) -> Response {
    with_target(StatusCode::CREATED, value)
}

/// `200 OK` for a change, noting what it changed for the audit record.
fn changed(value: Value) -> Response {
    with_target(StatusCode::OK, value)
}

fn with_target(status: StatusCode, value: Value) -> Response {
    let target = ["id", "client_id", "name", "subject"]
        .iter()
        .find_map(|k| value.get(k).and_then(Value::as_str))
        .map(|t| TargetNote(t.to_owned()));
    let mut response = (status, json(value.to_string())).into_response();
    if let Some(t) = target {
        response.extensions_mut().insert(t);
    }
    response
}

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Invalid(m) => ApiError::new(ErrorCode::InvalidRequest).with_message(m),
        KeyError::NotFound(_) => ApiError::not_found(),
        KeyError::Store(e) => {
            tracing::error!(error = %e, "key store failed");
            ApiError::internal()
        }
    }
}

fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::Invalid(m) => ApiError::new(ErrorCode::InvalidRequest).with_message(m),
        AccountError::Conflict(what) => {
            ApiError::new(ErrorCode::InvalidRequest).with_message(format!("{what} already exists."))
        }
        AccountError::NotFound(_) => ApiError::not_found(),
        AccountError::Store(e) => {
            tracing::error!(error = %e, "account store failed");
            ApiError::internal()
        }
    }
}

fn store_error(e: warden_store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failed");
    ApiError::internal()
}

/// A key as the API shows it: never the secret or its hash.
pub fn key_json(k: &ApiKeyRecord, now: i64) -> Value {
    let status = if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| now >= e) {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": k.id, "name": k.name, "role": k.role, "models": k.models,
        "created_at": k.created_at, "expires_at": k.expires_at, "revoked_at": k.revoked_at,
        "rotated_from": k.rotated_from, "last_used_at": k.last_used_at, "status": status,
    })
}

fn user_json(u: &UserRecord) -> Value {
    json!({"name": u.name, "role": u.role, "created_at": u.created_at, "disabled_at": u.disabled_at,
        "status": if u.disabled_at.is_some() { "disabled" } else { "active" }})
}

fn client_json(c: &ClientRecord) -> Value {
    json!({"client_id": c.id, "name": c.name, "role": c.role, "created_at": c.created_at, "revoked_at": c.revoked_at,
        "status": if c.revoked_at.is_some() { "revoked" } else { "active" }})
}

async fn list_keys(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminKeys)?;
    let store = state.identity.store.clone();
    let keys = blocking(move || store.list_keys().map_err(store_error)).await?;
    let now = unix_now();
    let list: Vec<Value> = keys.iter().map(|k| key_json(k, now)).collect();
    Ok(json(json!({ "keys": list }).to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    role: String,
    #[serde(default)]
    models: Option<Vec<String>>,
    /// e.g. "30d"
    #[serde(default)]
    expires_in: Option<String>,
}

async fn create_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JsonBody(bytes): JsonBody,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminKeys)?;
    let req: CreateKey = body(&bytes)?;
    may_manage(&state, &caller, &req.role, req.models.as_deref())?;
    let expires_in = req
        .expires_in
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t).map_err(|_| {
                ApiError::new(ErrorCode::InvalidRequest)
                    .with_message("expires_in is a duration such as \"30d\" or \"12h\".")
            })
        })
        .transpose()?;
    let issued = with_keys(&state, move |a| {
        a.create(&NewKey {
            name: req.name,
            role: req.role,
            models: req.models,
            expires_in,
        })
    })
    .await?;
    tracing::warn!(principal = %caller.id, key_id = %issued.record.id, role = %issued.record.role, "API key created");
    let mut value = key_json(&issued.record, unix_now());
    value["key"] = Value::String(issued.key.to_string());
    Ok(created(value))
}

async fn revoke_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminKeys)?;
    may_manage_existing(&state, &caller, Kind::Key, &id).await?;
    let key_id = id.clone();
    with_keys(&state, move |a| a.revoke(&key_id)).await?;
    state.authenticator.forget_key(&id);
    state.limiter.announce_key_change(&id).await;
    tracing::warn!(principal = %caller.id, key_id = %id, "API key revoked");
    Ok(changed(json!({"id": id, "status": "revoked"})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    /// How long the old key keeps working, e.g. "10m"; default `auth.key_rotation_grace`.
    #[serde(default)]
    grace: Option<String>,
}

async fn rotate_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(id): PathParam,
    JsonBody(bytes): JsonBody,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminKeys)?;
    may_manage_existing(&state, &caller, Kind::Key, &id).await?;
    let req: RotateKey = if bytes.is_empty() {
        RotateKey::default()
    } else {
        body(&bytes)?
    };
    let grace = match req.grace.as_deref() {
        None => state.identity.key_rotation_grace,
        Some(t) => humantime::parse_duration(t).map_err(|_| {
            ApiError::new(ErrorCode::InvalidRequest)
                .with_message("grace is a duration such as \"10m\" or \"0s\".")
        })?,
    };
    let key_id = id.clone();
    let issued = with_keys(&state, move |a| a.rotate(&key_id, grace)).await?;
    state.authenticator.forget_key(&id);
    state.limiter.announce_key_change(&id).await;
    tracing::warn!(principal = %caller.id, old_key_id = %id, key_id = %issued.record.id, grace = ?grace, "API key rotated");
    let store = state.identity.store.clone();
    let old_id = id.clone();
    let old = blocking(move || store.get_key(&old_id).map_err(store_error)).await?;
    let mut value = key_json(&issued.record, unix_now());
    value["key"] = Value::String(issued.key.to_string());
    value["old_key_expires_at"] = json!(old.and_then(|k| k.expires_at));
    let mut response = json(value.to_string());
    response
        .extensions_mut()
        .insert(TargetNote(issued.record.id.clone()));
    Ok(response)
}

async fn list_users(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    let store = state.identity.store.clone();
    let users = blocking(move || store.list_users().map_err(store_error)).await?;
    let list: Vec<Value> = users.iter().map(user_json).collect();
    Ok(json(json!({ "users": list }).to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
    role: String,
    password: Zeroizing<String>,
}

async fn create_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JsonBody(bytes): JsonBody,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    let req: CreateUser = body(&bytes)?;
    may_manage(&state, &caller, &req.role, None)?;
    let user = with_accounts(&state, move |a| {
        a.add_user(&req.name, &req.role, &req.password)
    })
    .await?;
    tracing::warn!(principal = %caller.id, user = %user.name, role = %user.role, "user created");
    Ok(created(user_json(&user)))
}

async fn disable_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    may_manage_existing(&state, &caller, Kind::User, &name).await?;
    let user = name.clone();
    with_accounts(&state, move |a| a.disable_user(&user)).await?;
    tracing::warn!(principal = %caller.id, user = %name, "user disabled");
    Ok(changed(json!({"name": name, "status": "disabled"})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPassword {
    password: Zeroizing<String>,
}

async fn set_password(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(name): PathParam,
    JsonBody(bytes): JsonBody,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    let req: SetPassword = body(&bytes)?;
    may_manage_existing(&state, &caller, Kind::User, &name).await?;
    let user = name.clone();
    with_accounts(&state, move |a| a.set_password(&user, &req.password)).await?;
    tracing::warn!(principal = %caller.id, user = %name, "user password changed");
    Ok(changed(json!({"name": name, "status": "password changed"})))
}

async fn list_clients(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    let store = state.identity.store.clone();
    let clients = blocking(move || store.list_clients().map_err(store_error)).await?;
    let list: Vec<Value> = clients.iter().map(client_json).collect();
    Ok(json(json!({ "clients": list }).to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateClient {
    name: String,
    role: String,
}

async fn create_client(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JsonBody(bytes): JsonBody,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    let req: CreateClient = body(&bytes)?;
    may_manage(&state, &caller, &req.role, None)?;
    let issued = with_accounts(&state, move |a| a.add_client(&req.name, &req.role)).await?;
    tracing::warn!(principal = %caller.id, client_id = %issued.record.id, role = %issued.record.role, "OAuth2 client created");
    let mut value = client_json(&issued.record);
    value["client_secret"] = Value::String(issued.secret.to_string());
    Ok(created(value))
}

async fn revoke_client(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    may_manage_existing(&state, &caller, Kind::Client, &id).await?;
    let client = id.clone();
    with_accounts(&state, move |a| a.revoke_client(&client)).await?;
    tracing::warn!(principal = %caller.id, client_id = %id, "OAuth2 client revoked");
    Ok(changed(json!({"client_id": id, "status": "revoked"})))
}

async fn rotate_client(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    may_manage_existing(&state, &caller, Kind::Client, &id).await?;
    let client = id.clone();
    let issued = with_accounts(&state, move |a| a.rotate_client(&client)).await?;
    tracing::warn!(principal = %caller.id, client_id = %id, "OAuth2 client secret rotated");
    let mut value = client_json(&issued.record);
    value["client_secret"] = Value::String(issued.secret.to_string());
    Ok(changed(value))
}

async fn list_signing_keys(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    let Some(oauth) = state.identity.oauth.clone() else {
        return Err(ApiError::not_found());
    };
    let current = oauth.tokens.current_kid();
    let store = state.identity.store.clone();
    let keys = blocking(move || store.list_signing_keys().map_err(store_error)).await?;
    let list: Vec<Value> = keys
        .iter()
        .map(|k| json!({"kid": k.kid, "created_at": k.created_at, "retired_at": k.retired_at, "signing": k.kid == current}))
        .collect();
    Ok(json(json!({"current": current, "keys": list}).to_string()))
}

async fn rotate_signing_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminUsers)?;
    let Some(oauth) = state.identity.oauth.clone() else {
        return Err(ApiError::not_found());
    };
    let tokens = oauth.tokens.clone();
    let kid = blocking(move || {
        tokens
            .rotate()
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest).with_message(e))
    })
    .await?;
    tracing::warn!(principal = %caller.id, kid = %kid, "token signing key rotated");
    let mut response = json(json!({"current": kid}).to_string());
    response.extensions_mut().insert(TargetNote(kid));
    Ok(response)
}

async fn list_roles(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    if !(caller.has(Permission::AdminKeys) || caller.has(Permission::AdminUsers)) {
        return Err(ErrorCode::Forbidden.into());
    }
    let list: Vec<Value> = state
        .identity
        .roles
        .iter()
        .map(|r| {
            json!({"name": &*r.name, "description": r.description, "builtin": r.builtin,
            "permissions": r.permissions.iter().map(ToString::to_string).collect::<Vec<_>>()})
        })
        .collect();
    Ok(json(json!({ "roles": list }).to_string()))
}

async fn list_bans(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminKeys)?;
    let bans = state
        .limiter
        .bans()
        .await
        .map_err(|_| ApiError::new(ErrorCode::Overloaded).with_retry_after(1))?;
    let list: Vec<Value> = bans
        .iter()
        .map(|b| json!({"subject": b.subject, "seconds_left": b.remaining_us.div_ceil(1_000_000), "level": b.level}))
        .collect();
    Ok(json(json!({ "bans": list }).to_string()))
}

async fn lift_ban(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(subject): PathParam,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminKeys)?;
    let lifted = state
        .limiter
        .lift(&subject)
        .await
        .map_err(|_| ApiError::new(ErrorCode::Overloaded).with_retry_after(1))?;
    if !lifted {
        return Err(ApiError::not_found());
    }
    tracing::warn!(principal = %caller.id, subject = ?subject, "ban lifted");
    Ok(changed(json!({"subject": subject, "status": "lifted"})))
}

async fn key_quota(
    state: State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    quota_of(state, caller, Kind::Key, id).await
}

async fn user_quota(
    state: State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    quota_of(state, caller, Kind::User, id).await
}

async fn client_quota(
    state: State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    quota_of(state, caller, Kind::Client, id).await
}

/// Quota usage of a key, user or client on every model: the budgets its
/// role has, the rows used, and when each window resets.
async fn quota_of(
    State(state): State<AppState>,
    Caller(caller): Caller,
    kind: Kind,
    id: String,
) -> Result<Response, ApiError> {
    require(
        &caller,
        match kind {
            Kind::Key => Permission::AdminKeys,
            Kind::User | Kind::Client => Permission::AdminUsers,
        },
    )?;
    let (role, models) = target_of(&state, kind, &id).await?;
    let principal_id = match kind {
        Kind::Key => format!("key:{id}"),
        Kind::User => format!("user:{id}"),
        Kind::Client => format!("client:{id}"),
    };
    let scope = models.map_or(ModelScope::All, |m| ModelScope::Only(m.into()));
    let principal = match state.identity.roles.get(&role) {
        Some(r) => Principal::with_role(principal_id.as_str(), r, scope),
        None => return Err(ApiError::not_found()),
    };
    let names: Vec<String> = state
        .repository
        .models()
        .into_iter()
        .map(|m| m.name.clone())
        .filter(|m| principal.may_predict(m))
        .collect();
    let usage = state
        .limiter
        .quota_usage(&principal, &names)
        .await
        .map_err(|_| ApiError::new(ErrorCode::Overloaded).with_retry_after(1))?;
    let list: Vec<Value> = usage
        .iter()
        .map(|u| {
            json!({"model": u.model, "window": u.window, "limit": u.limit, "used": u.used,
            "remaining": u.limit.saturating_sub(u.used), "resets_in": u.resets_in})
        })
        .collect();
    Ok(json(
        json!({"principal": principal_id, "quotas": list}).to_string(),
    ))
}

/// One model as the management API shows it.
fn model_json(m: &warden_models::Model) -> Value {
    let d = &m.card.defenses;
    let defenses: Vec<&str> = [
        d.out_of_distribution
            .as_ref()
            .map(|_| "out_of_distribution"),
        d.adversarial.as_ref().map(|_| "adversarial"),
        d.extraction.as_ref().map(|_| "extraction"),
        d.similarity.as_ref().map(|_| "similarity"),
    ]
    .into_iter()
    .flatten()
    .collect();
    json!({
        "name": m.name,
        "versions": m.versions.keys().collect::<Vec<_>>(),
        "serving": m.default_version,
        "task": m.card.task.as_str(),
        "inputs": m.card.inputs.iter().map(|i| json!({"name": i.name, "datatype": i.datatype.as_str(), "shape": i.shape})).collect::<Vec<_>>(),
        "outputs": m.card.outputs.iter().map(|o| json!({"name": o.name, "datatype": o.datatype.as_str(), "shape": o.shape})).collect::<Vec<_>>(),
        "features": m.card.tabular().map_or(0, |t| t.features.len()),
        "classes": m.card.classes(),
        "max_batch": m.card.max_batch,
        "defenses": defenses,
    })
}

/// `GET /admin/models`: every model loaded, its versions and the one served.
async fn list_models(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminModels)?;
    let list: Vec<Value> = state
        .repository
        .models()
        .iter()
        .map(|m| model_json(m))
        .collect();
    Ok(json(json!({ "models": list }).to_string()))
}

/// `POST /admin/models/{model}/reload`: loads the model's folder again and
/// serves it if (and only if) it loads; a model new on disk is added.
/// Requests in flight finish on the model they started with. A model that
/// does not load changes nothing: `invalid_request`, a `model_reload_failed`
/// alert, and the reason (naming the file) in the server log only.
async fn reload_model(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(model): PathParam,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminModels)?;
    let repository = state.repository.clone();
    let name = model.clone();
    let reloaded = blocking(move || Ok(repository.reload(&name))).await?;
    let mut response = match reloaded {
        Ok(m) => {
            tracing::warn!(principal = %caller.id, model = %m.name, serving = m.default_version, "model reloaded");
            json(model_json(&m).to_string())
        }
        Err(ReloadError::NoSuchModel) => ApiError::not_found().into_response(),
        Err(ReloadError::Load(_)) => ApiError::new(ErrorCode::InvalidRequest)
            .with_message(
                "The model did not load (the server log says why); the model loaded before keeps serving.",
            )
            .into_response(),
    };
    if warden_core::is_model_name(&model) {
        response.extensions_mut().insert(TargetNote(model));
    }
    Ok(response)
}
