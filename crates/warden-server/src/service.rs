//! The model half of the pipeline, with no transport in it:
//! [`infer`]`(state, caller, InferRequest) -> Result<Served, ApiError>`.
//! The HTTP routes call it (`pipeline::infer`), and so can any other
//! transport (gRPC): each hands in the payload it received and a renderer
//! for its own wire format, and gets back the rendered answer and the
//! limits' [`Charge`] (for its rate-limit metadata).
//!
//! ```text
//! authorize → parse + validate → charge (rate limit and quota, in rows)
//!   → defenses → inference → output policy → render
//! ```
//!
//! The order is part of the product contract (docs/pipeline.md); the
//! integration tests pin it.

use std::time::Instant;

use axum::http::{HeaderMap, HeaderName};
use warden_core::metrics::Alert;
use warden_core::{ApiError, ErrorCode, Principal};
use warden_limits::{QuotaCharge, RateCheck, RateOutcome};
use warden_models::engine::EngineError;
use warden_models::policy::{OutputPolicy, Shown};
use warden_models::request::{self, Payload};
use warden_models::{Model, defenses};

use crate::defend;
use crate::pipeline::{Access, authorize};
use crate::state::AppState;
use crate::steps::{self, ModelNote};

/// An inference request as a transport received it.
#[derive(Debug)]
pub struct InferRequest<'a> {
    /// The model named by the caller.
    pub model: &'a str,
    /// The version named by the caller, if any.
    pub version: Option<&'a str>,
    /// The body, not yet parsed.
    pub payload: Payload<'a>,
    /// The `default` charge admission left to this call, taken with the
    /// rows (`steps::DeferredDefault`).
    pub default: Option<&'a steps::DeferredDefault>,
}

/// What a renderer gets: the model's answer as the caller may see it.
#[derive(Debug)]
pub struct Answer<'a> {
    /// The model.
    pub model: &'a Model,
    /// The version that answered.
    pub version: u64,
    /// The request id the caller sent (v2 `id`), echoed.
    pub id: Option<&'a str>,
    /// The outputs, after the output policy.
    pub shown: &'a Shown<'a>,
}

/// A served request: the rendered answer and what it was charged.
#[derive(Debug)]
pub struct Served<R> {
    /// The answer in the transport's format.
    pub body: R,
    /// The rows taken from the rate limit and the quota.
    pub charge: Charge,
}

/// The inference half of the pipeline.
pub async fn infer<R>(
    state: &AppState,
    caller: &Principal,
    request: InferRequest<'_>,
    note: &mut Option<ModelNote>,
    render: impl FnOnce(Answer<'_>) -> R,
) -> Result<Served<R>, ApiError> {
    let InferRequest {
        model: name,
        version,
        payload,
        default,
    } = request;
    // Authorize: unknown OR forbidden model → the same 404.
    let (model, version) = authorize(state, caller, name, version, Access::Predict)?;
    *note = Some(ModelNote {
        model: model.name.as_str().into(),
        version: version.version,
        rows: 0,
        input_sha256: None,
        inputs: None,
        defense_flags: Vec::new(),
    });
    // Parse + validate against the model's card: the only way to get a
    // ValidInferRequest.
    let request = request::validate(&model.card, payload, state.limits.json_max_depth)
        .inspect_err(|e| crate::metrics::validation_failure(&model.name, e.code.as_str()))?;
    let rows = request.rows();
    if let Some(n) = note.as_mut() {
        n.rows = rows;
        n.input_sha256 = Some(steps::input_digest(&request.batch.inputs));
        if model.card.record_inputs {
            n.inputs = Some(request.batch.inputs.as_slice().into());
        }
    }
    // The caller's output policy; asking for an output it withholds fails
    // before anything is counted.
    let policy = OutputPolicy::for_caller(&model.card, caller);
    let outputs = match &request.outputs {
        Some(asked) => {
            policy.check_requested(&model.card, asked)?;
            asked.clone()
        }
        None => policy.default_outputs(&model.card),
    };
    // Rate limit and quota, counted in rows: this is the first point where
    // the row count is known, and before any model work. The `default`
    // policy's one request, left here by admission, goes in the same
    // round trip.
    let charge = Charge::take(state, caller, &model.name, rows, default).await?;
    // Defenses: out-of-distribution, query similarity and the extraction
    // monitor's verdict before inference, feature squeezing in the
    // inference batch (see defend.rs). An input a defense rejects has cost
    // its rows; a throttled principal pays ten times its rows from now on.
    let mut screen = defend::Screen::default();
    let watched = defend::watched(&model, &request.batch);
    let checked = defend::before(
        &state.limiter,
        &model,
        caller,
        watched.as_deref(),
        &mut screen,
    )
    .await;
    note_flags(note, &screen);
    if screen.throttle {
        charge.throttle(state, caller, rows).await;
    }
    checked?;
    // Inference, batched and bounded per model (inline for cheap models, on
    // the blocking pool for slow ones: engine.rs). Rows that were not
    // predicted (shed under load, or failed) go back to the quota.
    let inference = Instant::now();
    let inferred = defend::infer(&model, &version, request.batch, watched.as_deref()).await;
    let (answer, squeezed) = match inferred {
        Ok(p) => {
            crate::metrics::inference(&model.name, inference.elapsed());
            if let Some(watch) = &state.rate_watch {
                watch.observe(&caller.id, rows as u64);
            }
            p
        }
        Err(e) => {
            charge.refund(state, caller, &model.name).await;
            return Err(match e {
                EngineError::Overloaded => ApiError::new(ErrorCode::Overloaded).with_retry_after(1),
                EngineError::Failed(message) => {
                    // The request was validated, so this is the model's (or
                    // Warden's) fault, never the client's: counted and alerted.
                    Alert::InferenceFailed.count();
                    tracing::error!(alert = Alert::InferenceFailed.as_str(), model = %model.name, version = version.version, error = %message, "inference failed");
                    ApiError::internal()
                }
                // Logged with the upstream's detail by the gateway backend;
                // the client learns only that the model server failed.
                EngineError::Unavailable => ApiError::new(ErrorCode::UpstreamUnavailable),
                EngineError::TimedOut => ApiError::new(ErrorCode::UpstreamTimeout),
            });
        }
    };
    let kept = if defend::keeps_values(&model) {
        watched
    } else {
        None
    };
    let checked = defend::after(
        &model,
        caller,
        kept,
        &answer,
        rows,
        squeezed.as_deref(),
        &mut screen,
    )
    .await;
    note_flags(note, &screen);
    if screen.throttle {
        charge.throttle(state, caller, rows).await;
    }
    checked?;
    // Output policy: what of the answer this caller may see, by task.
    let shown = policy
        .apply(&model.card, &answer, rows, &outputs)
        .map_err(|message| {
            Alert::InferenceFailed.count();
            tracing::error!(alert = Alert::InferenceFailed.as_str(), model = %model.name, version = version.version, error = %message, "the model's answer does not fit its card");
            ApiError::internal()
        })?;
    // Audit record, metrics and access log follow in the transport's edge,
    // from this request's ModelNote.
    let body = render(Answer {
        model: &model,
        version: version.version,
        id: request.id.as_deref(),
        shown: &shown,
    });
    Ok(Served { body, charge })
}

/// Puts the defense flags found so far on the request's note (audit record).
fn note_flags(note: &mut Option<ModelNote>, screen: &defend::Screen) {
    if let Some(n) = note.as_mut() {
        n.defense_flags.clone_from(&screen.flags);
    }
}

static QUOTA_REMAINING: HeaderName = HeaderName::from_static("x-quota-remaining");

/// Step: the limits' charge for one request, in rows (so a batch cannot
/// bypass a limit): the principal's `predict` rate limit, then its quota on
/// the model. Refunded to the quota when the rows are not predicted;
/// charged extra when a defense throttles.
#[derive(Debug)]
pub struct Charge {
    rows: u64,
    rate: RateOutcome,
    /// Whether the rows were charged at the throttled price (or the extra
    /// has been charged since).
    throttled: std::sync::atomic::AtomicBool,
    /// Rows left in the tightest quota window, if a quota applies.
    quota: Option<u64>,
}

impl Charge {
    /// Takes `rows` from the rate limit and the quota (and the request from
    /// the `default` policy, if admission left it), or refuses: one round
    /// trip to shared state.
    async fn take(
        state: &AppState,
        caller: &Principal,
        model: &str,
        rows: usize,
        default: Option<&steps::DeferredDefault>,
    ) -> Result<Self, ApiError> {
        let rows = rows as u64;
        let limit = state.limiter.rate_for("predict", Some(caller));
        // A throttled principal's rows cost THROTTLE_FACTOR each (never more
        // than the burst, which would be refused forever): honouring
        // Retry-After, it gets that fraction of its rate.
        let throttled = state.throttled.is_marked(&caller.id);
        let cost = if throttled {
            rows.saturating_mul(defenses::THROTTLE_FACTOR)
                .min(limit.burst.max(rows))
        } else {
            rows
        };
        let mut checks = Vec::with_capacity(2);
        if let Some(d) = default.filter(|d| d.claim()) {
            checks.push(RateCheck {
                policy: "default",
                subject: &caller.id,
                rate: d.rate,
                cost: 1,
            });
        }
        checks.push(RateCheck {
            policy: "predict",
            subject: &caller.id,
            rate: limit,
            cost,
        });
        let quota = QuotaCharge {
            principal: caller,
            model,
            rows,
        };
        let charged = state
            .limiter
            .charge(&checks, Some(quota))
            .await
            // Redis down and quotas fail closed.
            .map_err(|_| ApiError::new(ErrorCode::Overloaded).with_retry_after(1))?;
        if let Some(refused) = charged.rates.iter().find(|o| !o.decision.allowed) {
            crate::metrics::rate_limited(refused.policy);
            let e = steps::rate_limited(refused);
            return Err(if refused.policy == "predict" && rows > limit.burst {
                e.with_message(
                    "This batch has more rows than the rate limit allows at once; send fewer rows per request.",
                )
            } else {
                e
            });
        }
        let (Some(rate), Some(quota)) = (charged.rates.last().copied(), charged.quota) else {
            tracing::error!("the limiter answered without the predict check or the quota");
            return Err(ApiError::internal());
        };
        if !quota.allowed {
            crate::metrics::quota_exceeded(model);
            return Err(ApiError::new(ErrorCode::QuotaExceeded)
                .with_retry_after(quota.retry_after)
                .with_header(QUOTA_REMAINING.clone(), 0u64.into()));
        }
        Ok(Self {
            rows,
            rate,
            throttled: throttled.into(),
            quota: quota.remaining,
        })
    }

    /// Gives the rows back to the quota (they were not predicted).
    async fn refund(&self, state: &AppState, caller: &Principal, model: &str) {
        if self.quota.is_some() {
            state.limiter.refund_quota(caller, model, self.rows).await;
        }
    }

    /// Throttled: marks the principal (its next requests are charged the
    /// throttled price up front), and charges this request's extra rows
    /// (up to what is left of the limit: a GCRA charge larger than the
    /// remainder would take nothing) unless it already paid them.
    async fn throttle(&self, state: &AppState, caller: &Principal, rows: usize) {
        state.throttled.mark(&caller.id);
        if self
            .throttled
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let extra = defend::throttle_rows(rows).min(self.rate.decision.remaining);
        if extra > 0 {
            let limit = state.limiter.rate_for("predict", Some(caller));
            state
                .limiter
                .rate("predict", &caller.id, limit, extra)
                .await;
        }
    }

    /// The RateLimit headers of the rows' rate check, and the quota left.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        steps::add_rate_headers(headers, &self.rate);
        if let Some(left) = self.quota {
            headers.insert(QUOTA_REMAINING.clone(), left.into());
        }
    }

    /// The rate check, for a transport that reports it its own way.
    pub const fn rate(&self) -> &RateOutcome {
        &self.rate
    }

    /// Rows left in the tightest quota window, if a quota applies.
    pub const fn quota_left(&self) -> Option<u64> {
        self.quota
    }
}
