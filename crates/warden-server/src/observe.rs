//! Management routes for observing Warden: `GET /metrics` (Prometheus),
//! `GET /admin/audit` (query the audit trail) and
//! `GET /admin/audit/checkpoint` (the latest signed checkpoint, to keep for
//! `warden audit verify --checkpoint`).

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use warden_core::{ApiError, ErrorCode, Permission};
use warden_store::AuditQuery;

use crate::admin::require;
use crate::extract::Caller;
use crate::routes::json;
use crate::state::AppState;

/// Most records per page of `GET /admin/audit`.
pub const MAX_PAGE: usize = 1000;
/// Most rows one page examines, so that a rare filter on a long chain does
/// not hold the store (and with it authentication and the audit writer).
pub const MAX_SCAN: usize = 20_000;

/// `GET /metrics`: the Prometheus text format (`metrics:read`).
pub async fn metrics(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::MetricsRead)?;
    let Some(handle) = &state.metrics else {
        // Another recorder owns this process (only in embedding tests).
        return Err(ApiError::not_found());
    };
    let mut response = crate::metrics::render(&state, handle).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// `GET /admin/audit/checkpoint`: this replica's latest signed checkpoint
/// (`admin:audit`), in the file format `warden audit verify --checkpoint`
/// reads.
pub async fn audit_checkpoint(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminAudit)?;
    let log = state.audit.as_ref().ok_or_else(ApiError::not_found)?;
    let checkpoint = log
        .checkpoint()
        .ok_or_else(|| ApiError::not_found().with_message("The audit chain has no record yet."))?;
    let body = serde_json::to_string(&checkpoint).map_err(|_| ApiError::internal())?;
    Ok(json(body))
}

/// `GET /admin/audit?principal=&model=&outcome=&since=&until=&after=&limit=&replica=`
/// (`admin:audit`): a page of records in sequence order, each with its
/// sequence number; `next` is the `after` of the following page (`null` at
/// the end; a page examines at most [`MAX_SCAN`] rows, so it may hold fewer
/// than `limit` records and still have a next one). `since`/`until` take RFC 3339, Unix seconds, or a duration
/// back from now (`24h`).
pub async fn audit_query(
    State(state): State<AppState>,
    Caller(caller): Caller,
    req: Request,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminAudit)?;
    let log = state.audit.as_ref().ok_or_else(ApiError::not_found)?;
    let mut query = AuditQuery {
        replica: log.replica().to_owned(),
        limit: 100,
        max_scan: MAX_SCAN,
        ..AuditQuery::default()
    };
    let now = crate::steps::unix_micros() as i64;
    let bad = |what: &str| {
        ApiError::new(ErrorCode::InvalidRequest)
            .with_message(format!("The {what} parameter is not valid."))
    };
    let pairs = req.uri().query().unwrap_or("");
    for (name, value) in form_urlencoded::parse(pairs.as_bytes()) {
        let value = value.into_owned();
        match &*name {
            "principal" => query.principal = Some(value),
            "model" => query.model = Some(value),
            "outcome" => query.outcome = Some(value),
            "replica" => {
                if !warden_core::is_model_name(&value) {
                    return Err(bad("replica"));
                }
                query.replica = value;
            }
            "since" => {
                query.since_us =
                    Some(warden_audit::parse_time(&value, now).map_err(|_| bad("since"))?);
            }
            "until" => {
                query.until_us =
                    Some(warden_audit::parse_time(&value, now).map_err(|_| bad("until"))?);
            }
            "after" => query.after_seq = value.parse().map_err(|_| bad("after"))?,
            // A larger page than MAX_PAGE is cut to it (the answer's
            // `next` leads on), not refused.
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad("limit"))?
                    .min(MAX_PAGE);
            }
            other => {
                return Err(ApiError::new(ErrorCode::InvalidRequest).with_message(format!(
                    "Unknown parameter {:?}: use principal, model, outcome, since, until, after, limit, replica.",
                    other.chars().take(32).collect::<String>()
                )));
            }
        }
    }
    let store = state.identity.store.clone();
    let page = tokio::task::spawn_blocking(move || store.audit_query(&query))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| {
            tracing::error!(error = %e, "audit query failed");
            ApiError::internal()
        })?;
    let records: Vec<Value> = page
        .rows
        .iter()
        .map(|r| {
            json!({
                "replica": r.replica,
                "seq": r.seq,
                "record": serde_json::from_str::<Value>(&r.record).unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(json(
        json!({ "records": records, "next": page.next }).to_string(),
    ))
}
