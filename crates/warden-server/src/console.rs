//! The operator's console (docs/console.md): a single-page application at
//! `/console` on the management listener, embedded in the binary, and the
//! few management routes only it needs (`/admin/whoami`, `/admin/overview`,
//! `/admin/models/{model}`, `/admin/audit/verify`).
//!
//! The page holds no secret of its own and gets no cookie: the operator's
//! credential lives in the script's memory and is sent as a header on every
//! call, and every call goes through the management API with its permission
//! checks, so the console can do nothing its credential could not do with
//! curl. Its assets need no credential, as `/docs` on the data plane.
//!
//! The front end is plain JavaScript without a framework or a build step
//! (assets/console/): five pages of tables and forms do not need one, and
//! every value is put in the page with `textContent`, never as HTML, so a
//! model description or key name full of markup shows as text. The charts
//! are uPlot, a small time-series library (MIT), vendored by
//! `scripts/vendor_uplot.sh`.

use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use warden_core::{ApiError, ErrorCode, Permission};
use warden_models::defenses::Action;

use crate::admin::require;
use crate::extract::{Caller, PathParam};
use crate::routes::json;
use crate::state::AppState;

/// The console's policy: scripts, styles, images and calls from this origin
/// only (images also `data:`, which uPlot does not use but a browser's own
/// form controls may); no inline script or style element, no `eval`, no
/// framing, no form posting elsewhere.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const INDEX: &[u8] = include_bytes!("../assets/console/index.html");
const APP_JS: &[u8] = include_bytes!("../assets/console/app.js");
const APP_CSS: &[u8] = include_bytes!("../assets/console/app.css");
const UPLOT_JS: &[u8] = include_bytes!("../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &[u8] = include_bytes!("../assets/uplot/uPlot.min.css");
const UPLOT_LICENSE: &[u8] = include_bytes!("../assets/uplot/LICENSE");

/// `GET /console`: the page.
pub async fn index() -> Response {
    asset_response(INDEX, "text/html; charset=utf-8")
}

/// `GET /console/{asset}`: the page's script and stylesheet, uPlot's, and
/// uPlot's licence.
pub async fn asset(PathParam(asset): PathParam) -> Response {
    let (body, content_type): (&'static [u8], _) = match asset.as_str() {
        "app.js" => (APP_JS, "application/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "uPlot.iife.min.js" => (UPLOT_JS, "application/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        "uPlot.LICENSE" => (UPLOT_LICENSE, "text/plain; charset=utf-8"),
        _ => return ApiError::new(ErrorCode::NotFound).into_response(),
    };
    asset_response(body, content_type)
}

fn asset_response(body: &'static [u8], content_type: &'static str) -> Response {
    crate::docs::static_asset(body, content_type, CSP)
}

// ---------------------------------------------------------------------------
// The timeline behind the overview's charts.

/// Seconds per bucket of the [`Timeline`].
pub const STEP_S: u64 = 10;
/// Buckets kept: 15 minutes.
pub const BUCKETS: usize = 90;
/// Latency histogram: 4 sub-buckets per power of two of microseconds, up to
/// 2^28 µs (about 4.5 minutes, past any request deadline).
const LATENCY_BINS: usize = 4 * 28;

#[derive(Debug, Clone)]
struct Bucket {
    /// `unix_s / STEP_S` of the bucket's period; stale buckets are reset.
    epoch: u64,
    requests: u64,
    /// Refusals (every outcome but `ok`) by code.
    refusals: Vec<(&'static str, u64)>,
    latency: [u32; LATENCY_BINS],
    /// Defense flags by (model, kind).
    flags: Vec<(std::sync::Arc<str>, &'static str, u64)>,
}

impl Bucket {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            requests: 0,
            refusals: Vec::new(),
            latency: [0; LATENCY_BINS],
            flags: Vec::new(),
        }
    }
}

/// The data plane's last 15 minutes in 10-second buckets: requests, the
/// latency distribution, refusals by code and defense flags by model. One
/// short, uncontended-in-the-common-case lock per request (a few small
/// increments inside); read only by the console's overview.
#[derive(Debug)]
pub struct Timeline(Mutex<Vec<Bucket>>);

impl Default for Timeline {
    fn default() -> Self {
        Self(Mutex::new(vec![Bucket::new(u64::MAX); BUCKETS]))
    }
}

fn latency_bin(elapsed: Duration) -> usize {
    let us = elapsed.as_micros().clamp(1, (1u128 << 28) - 1) as u64;
    let power = 63 - u64::from(us.leading_zeros());
    // The two bits below the leading one pick the sub-bucket.
    let sub = if power >= 2 {
        (us >> (power - 2)) & 3
    } else {
        (us << (2 - power)) & 3
    };
    ((power * 4 + sub) as usize).min(LATENCY_BINS - 1)
}

/// The upper bound of a latency bin, in milliseconds.
fn bin_upper_ms(bin: usize) -> f64 {
    let power = (bin / 4) as i32;
    let sub = (bin % 4) as f64;
    2f64.powi(power) * (1.0 + (sub + 1.0) / 4.0) / 1000.0
}

impl Timeline {
    /// Records one answered data-plane request.
    pub fn record(
        &self,
        now_s: u64,
        code: &'static str,
        elapsed: Duration,
        flags: Option<(&std::sync::Arc<str>, &[&'static str])>,
    ) {
        let epoch = now_s / STEP_S;
        let mut buckets = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = &mut buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket::new(epoch);
        }
        bucket.requests += 1;
        bucket.latency[latency_bin(elapsed)] += 1;
        if code != "ok" {
            match bucket.refusals.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => bucket.refusals.push((code, 1)),
            }
        }
        if let Some((model, kinds)) = flags {
            for kind in kinds {
                match bucket
                    .flags
                    .iter_mut()
                    .find(|(m, k, _)| m == model && k == kind)
                {
                    Some((_, _, n)) => *n += 1,
                    None => bucket.flags.push((model.clone(), kind, 1)),
                }
            }
        }
    }

    /// The series of the overview, oldest first, ending with the bucket of
    /// `now_s`.
    pub fn series(&self, now_s: u64) -> Value {
        let last = now_s / STEP_S;
        let buckets = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut t = Vec::with_capacity(BUCKETS);
        let mut rps = Vec::with_capacity(BUCKETS);
        let mut p50 = Vec::with_capacity(BUCKETS);
        let mut p99 = Vec::with_capacity(BUCKETS);
        let mut codes: Vec<&'static str> = Vec::new();
        let mut window = Vec::with_capacity(BUCKETS);
        for epoch in (last + 1).saturating_sub(BUCKETS as u64)..=last {
            let b = &buckets[(epoch % BUCKETS as u64) as usize];
            let b = (b.epoch == epoch).then_some(b);
            if let Some(b) = b {
                for (c, _) in &b.refusals {
                    if !codes.contains(c) {
                        codes.push(c);
                    }
                }
            }
            t.push(epoch * STEP_S);
            window.push(b);
        }
        codes.sort_unstable();
        let mut refusals: Vec<Vec<f64>> = vec![Vec::with_capacity(BUCKETS); codes.len()];
        let (mut total, mut refused) = (0u64, 0u64);
        for b in &window {
            let requests = b.map_or(0, |b| b.requests);
            total += requests;
            rps.push(requests as f64 / STEP_S as f64);
            let quantile = |q: f64| -> Value {
                let Some(b) = b.filter(|b| b.requests > 0) else {
                    return Value::Null;
                };
                let rank = ((b.requests as f64) * q).ceil().max(1.0) as u64;
                let mut seen = 0u64;
                for (bin, n) in b.latency.iter().enumerate() {
                    seen += u64::from(*n);
                    if seen >= rank {
                        return json!((bin_upper_ms(bin) * 1000.0).round() / 1000.0);
                    }
                }
                Value::Null
            };
            p50.push(quantile(0.5));
            p99.push(quantile(0.99));
            for (i, code) in codes.iter().enumerate() {
                let n = b
                    .and_then(|b| b.refusals.iter().find(|(c, _)| c == code))
                    .map_or(0, |(_, n)| *n);
                refused += n;
                refusals[i].push(n as f64 / STEP_S as f64);
            }
        }
        let refusals: serde_json::Map<String, Value> = codes
            .iter()
            .zip(refusals)
            .map(|(c, v)| ((*c).to_owned(), json!(v)))
            .collect();
        json!({
            "step_s": STEP_S,
            "window_s": STEP_S * BUCKETS as u64,
            "t": t,
            "requests_per_s": rps,
            "p50_ms": p50,
            "p99_ms": p99,
            "refusals_per_s": refusals,
            "totals": {"requests": total, "refused": refused},
        })
    }

    /// Defense flags of `model` over the window, by kind.
    pub fn flags(&self, now_s: u64, model: &str) -> Vec<(&'static str, u64)> {
        let first = (now_s / STEP_S + 1).saturating_sub(BUCKETS as u64);
        let buckets = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for b in buckets
            .iter()
            .filter(|b| b.epoch != u64::MAX && b.epoch >= first)
        {
            for (m, kind, n) in &b.flags {
                if &**m == model {
                    match out.iter_mut().find(|(k, _)| k == kind) {
                        Some((_, total)) => *total += n,
                        None => out.push((kind, *n)),
                    }
                }
            }
        }
        out
    }
}

fn now_s() -> u64 {
    crate::steps::unix_micros() / 1_000_000
}

// ---------------------------------------------------------------------------
// The console's management routes.

/// `GET /admin/whoami` (any credential): who the caller is and which
/// management permissions it holds, so that the console shows only the
/// pages and buttons the API would allow. The API checks every call anyway.
pub async fn whoami(Caller(caller): Caller) -> Response {
    let permissions: Vec<&str> = Permission::ALL
        .iter()
        .filter(|p| caller.has(**p))
        .map(|p| p.as_str())
        .collect();
    json(
        json!({
            "principal": &*caller.id,
            "roles": caller.roles.iter().map(|r| &**r).collect::<Vec<_>>(),
            "permissions": permissions,
        })
        .to_string(),
    )
}

/// `GET /admin/overview` (`metrics:read`): models and their readiness, the
/// last 15 minutes of the data plane in 10-second steps (requests/s, p50 and
/// p99 latency, refusals/s by code) and the alerts raised recently.
pub async fn overview(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::MetricsRead)?;
    let now = now_s();
    let mut models: Vec<Value> = state
        .repository
        .models()
        .iter()
        .map(|m| {
            let ready = m.version(None).is_some_and(|v| v.backend.ready());
            json!({
                "name": m.name,
                "versions": m.versions.keys().collect::<Vec<_>>(),
                "serving": m.default_version,
                "ready": ready,
                "gateway": m.card.upstream.is_some(),
            })
        })
        .collect();
    models.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let alerts: Vec<Value> = warden_core::metrics::recent_alerts()
        .into_iter()
        .rev()
        .take(50)
        .map(|(at, alert)| json!({"at": at, "alert": alert.as_str()}))
        .collect();
    let certificates: Vec<Value> = state
        .certificates
        .iter()
        .map(|c| json!({"listener": c.listener, "not_after": c.not_after()}))
        .collect();
    Ok(json(
        json!({
            "now": now,
            "version": env!("CARGO_PKG_VERSION"),
            "models": models,
            "series": state.timeline.series(now),
            "alerts": alerts,
            "certificates": certificates,
        })
        .to_string(),
    ))
}

/// `GET /admin/models/{model}` (`admin:models`): the model's card as the
/// console's tables show it: inputs and outputs with datatypes, shapes and
/// what they accept; the output policy per role; each defense with its
/// action and what it flagged over the last 15 minutes; the budget.
pub async fn model_detail(
    State(state): State<AppState>,
    Caller(caller): Caller,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminModels)?;
    let model = state
        .repository
        .get(&name)
        .ok_or_else(ApiError::not_found)?;
    let card = &model.card;
    let inputs: Vec<Value> = card
        .inputs
        .iter()
        .map(|i| {
            let accepts = match &i.valid {
                warden_models::card::Valid::Range { lo, hi } => json!({"range": [lo, hi]}),
                warden_models::card::Valid::Ids(n) => json!({"ids": n}),
                warden_models::card::Valid::Categories(c) => json!({"categories": c}),
                warden_models::card::Valid::Any => json!("any"),
            };
            json!({
                "name": i.name,
                "datatype": i.datatype.as_str(),
                "shape": i.shape,
                "accepts": accepts,
                "max_elements": i.max_elements,
                "image": i.image,
                "features": i.features.iter().map(|f| json!({
                    "name": f.name,
                    "range": f.train_range,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let outputs: Vec<Value> = card
        .outputs
        .iter()
        .map(|o| json!({"name": o.name, "datatype": o.datatype.as_str(), "shape": o.shape}))
        .collect();
    let policy = |role: &str, p: &warden_models::card::PolicyDefaults| {
        json!({
            "role": role,
            "probabilities": p.probabilities,
            "outputs": p.outputs,
            "decimals": p.decimals,
            "top_k": p.top_k,
            "confidence_threshold": p.confidence_threshold,
            "noise": p.noise,
            "clamp": p.clamp,
        })
    };
    let mut policies = vec![policy("(every role)", &card.policy)];
    policies.extend(card.role_policies.iter().map(|(r, p)| policy(r, p)));
    let flagged = state.timeline.flags(now_s(), &model.name);
    let d = &card.defenses;
    let defenses: Vec<Value> = [
        (
            warden_models::defenses::OUT_OF_DISTRIBUTION,
            d.out_of_distribution.as_ref().map(|s| s.action),
        ),
        (
            warden_models::defenses::ADVERSARIAL,
            d.adversarial.as_ref().map(|s| s.action),
        ),
        (
            warden_models::defenses::EXTRACTION,
            d.extraction.as_ref().map(|s| s.action),
        ),
        (
            warden_models::defenses::SIMILARITY,
            d.similarity.as_ref().map(|s| s.action),
        ),
    ]
    .into_iter()
    .map(|(kind, action)| {
        json!({
            "name": kind,
            "action": action.map_or("off", action_str),
            "flagged_15m": flagged.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n),
        })
    })
    .collect();
    Ok(json(
        json!({
            "name": model.name,
            "description": card.description,
            "task": card.task.as_str(),
            "versions": model.versions.keys().collect::<Vec<_>>(),
            "serving": model.default_version,
            "max_batch": card.max_batch,
            "gateway": card.upstream.is_some(),
            "inputs": inputs,
            "outputs": outputs,
            "policies": policies,
            "defenses": defenses,
            "budget": card.budget.map(|b| json!({"per_day": b.per_day, "per_month": b.per_month})),
        })
        .to_string(),
    ))
}

fn action_str(action: Action) -> &'static str {
    match action {
        Action::Flag => "flag",
        Action::Throttle => "throttle",
        Action::Reject => "reject",
    }
}

/// One verification at a time: it reads every chain.
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// `GET /admin/audit/verify` (`admin:audit`): verifies every audit chain in
/// the store with the audit key, as `warden audit verify` does (this
/// replica's chain also against its latest checkpoint), and names the first
/// bad record of each chain that does not verify. One verification runs at
/// a time; another caller meanwhile gets `429 rate_limited`.
pub async fn audit_verify(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    require(&caller, Permission::AdminAudit)?;
    let log = state.audit.clone().ok_or_else(ApiError::not_found)?;
    // The permit moves into the blocking task: a caller that hangs up does
    // not free it while the scan still runs.
    let Ok(permit) = VERIFYING.try_acquire() else {
        return Err(ApiError::new(ErrorCode::RateLimited)
            .with_message("A verification is already running; retry when it has finished.")
            .with_retry_after(5));
    };
    let store = state.identity.store.clone();
    let reports = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        log.verify_stored(store.as_ref())
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|e| {
        tracing::error!(error = %e, "audit verification could not read the store");
        ApiError::internal()
    })?;
    let chains: Vec<Value> = reports
        .iter()
        .map(|r| match &r.result {
            Ok(v) => json!({
                "replica": r.replica, "ok": true, "records": v.rows,
                "from": r.from, "last_seq": v.last_seq, "pruned_through": r.pruned_through,
            }),
            Err(f) => json!({
                "replica": r.replica, "ok": false, "from": r.from,
                "first_bad": {"seq": f.seq, "problem": f.problem.as_str()},
                "pruned_through": r.pruned_through,
            }),
        })
        .collect();
    let ok = reports.iter().all(|r| r.result.is_ok());
    if !ok {
        tracing::error!(principal = %caller.id, "audit verification (console or API) found a bad record");
    }
    Ok(json(json!({"ok": ok, "chains": chains}).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_bins_grow_and_bound_their_values() {
        let mut last = 0;
        for us in [
            1u64, 2, 3, 10, 100, 999, 1_000, 5_000, 1_000_000, 60_000_000,
        ] {
            let bin = latency_bin(Duration::from_micros(us));
            assert!(bin >= last, "{us}");
            last = bin;
            let upper_us = bin_upper_ms(bin) * 1000.0;
            assert!(upper_us >= us as f64, "{us} ≤ {upper_us}");
            assert!(upper_us <= us as f64 * 1.5 + 1.0, "{us}: {upper_us}");
        }
    }

    #[test]
    fn the_series_counts_requests_refusals_and_quantiles_per_bucket() {
        let t = Timeline::default();
        let now = 1_000_000;
        let model: std::sync::Arc<str> = "iris".into();
        for i in 0..100 {
            let code = if i < 10 { "rate_limited" } else { "ok" };
            t.record(now, code, Duration::from_micros(1000 + i * 10), None);
        }
        t.record(
            now,
            "input_rejected",
            Duration::from_millis(50),
            Some((&model, &["similarity"])),
        );
        // A bucket older than the window is not shown.
        t.record(now - 2_000, "ok", Duration::from_millis(1), None);
        let s = t.series(now);
        assert_eq!(s["t"].as_array().unwrap().len(), BUCKETS);
        assert_eq!(s["totals"]["requests"], 101);
        assert_eq!(s["totals"]["refused"], 11);
        let last = |k: &str| s[k].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last("requests_per_s"), json!(10.1));
        let p50 = last("p50_ms").as_f64().unwrap();
        assert!((1.4..=2.0).contains(&p50), "{p50}");
        let p99 = last("p99_ms").as_f64().unwrap();
        assert!(p99 > p50, "{p99}");
        assert_eq!(
            s["refusals_per_s"]["rate_limited"]
                .as_array()
                .unwrap()
                .last(),
            Some(&json!(1.0))
        );
        assert_eq!(t.flags(now, "iris"), [("similarity", 1)]);
        assert!(t.flags(now + 1_000, "iris").is_empty(), "15 minutes later");
    }
}
