//! Step: defenses (docs/pipeline.md), around inference. What each defense does is in
//! `warden_models::defenses`; this module applies the card's actions and
//! records the flags (metrics, the request's audit record).
//!
//! - Out-of-distribution, query similarity and the extraction monitor's
//!   current verdict are checked before inference.
//! - Feature squeezing runs the squeezed copies in the same inference batch
//!   as the input, and is judged right after.
//! - The extraction monitor learns each query with its predicted class
//!   after inference (PRADA needs the class); a principal it flags is
//!   treated per the action from its next query on.
//!
//! A rejected input has cost its rows (rate limit and quota): probing is
//! not free. A throttled principal pays [`defenses::THROTTLE_FACTOR`] times
//! its rows against its rate limit for [`THROTTLE_HOLD`] after its last
//! throttled flag ([`Throttled`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_core::metrics::{self as names, Alert};
use warden_core::{ApiError, ErrorCode, Principal};
use warden_models::defenses::{self, Action, similarity, squeeze};
use warden_models::engine::{Batch, EngineError, Outputs};
use warden_models::{Model, ModelVersion, task};
use warden_tensor::Tensor;

/// What the defenses concluded for one request.
#[derive(Debug, Default)]
pub struct Screen {
    /// Kinds flagged, in the order found.
    pub flags: Vec<&'static str>,
    /// Whether a flag's action is `throttle`.
    pub throttle: bool,
}

impl Screen {
    fn flag(&mut self, model: &Model, kind: &'static str, action: Action) -> Result<(), ApiError> {
        metrics::counter!(names::DEFENSE_FLAGS, "model" => model.name.clone(), "kind" => kind)
            .increment(1);
        self.flags.push(kind);
        match action {
            Action::Flag => Ok(()),
            Action::Throttle => {
                self.throttle = true;
                Ok(())
            }
            Action::Reject => Err(ApiError::new(ErrorCode::InputRejected)),
        }
    }
}

/// The watched input's values as numbers (row-major), when a defense
/// watches one (card `[defenses]`, docs/defenses.md).
pub fn watched(model: &Model, batch: &Batch) -> Option<Vec<f32>> {
    batch.inputs.get(model.card.defended_input?)?.data.to_f32()
}

/// Whether the defenses need the input values after inference.
pub fn keeps_values(model: &Model) -> bool {
    model.guards.extraction.is_some()
}

/// How long a principal stays throttled after its last throttled flag.
pub const THROTTLE_HOLD: Duration = Duration::from_secs(300);

/// Most principals remembered as throttled (per replica); beyond it the
/// expired marks are dropped, then the oldest.
const THROTTLE_MARKS: usize = 10_000;

/// Principals a `throttle` action has marked, until when (per replica).
#[derive(Debug, Default)]
pub struct Throttled(Mutex<HashMap<String, Instant>>);

impl Throttled {
    /// Whether `id` is throttled now.
    pub fn is_marked(&self, id: &str) -> bool {
        let marks = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !marks.is_empty() && marks.get(id).is_some_and(|until| *until > Instant::now())
    }

    /// Throttles `id` for [`THROTTLE_HOLD`] from now.
    pub fn mark(&self, id: &str) {
        let now = Instant::now();
        let mut marks = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if marks.len() >= THROTTLE_MARKS && !marks.contains_key(id) {
            marks.retain(|_, until| *until > now);
            if marks.len() >= THROTTLE_MARKS
                && let Some(oldest) = marks
                    .iter()
                    .min_by_key(|(_, u)| **u)
                    .map(|(k, _)| k.clone())
            {
                marks.remove(&oldest);
            }
        }
        marks.insert(id.to_owned(), now + THROTTLE_HOLD);
    }
}

/// Before inference: out-of-distribution rows, rows like earlier queries
/// (query similarity, which also stores them), and a principal the
/// extraction monitor has flagged.
pub async fn before(
    limiter: &warden_limits::Limiter,
    model: &Model,
    caller: &Principal,
    values: Option<&[f32]>,
    screen: &mut Screen,
) -> Result<(), ApiError> {
    let card = &model.card;
    if let (Some(guard), Some(settings), Some(values)) =
        (&model.guards.similarity, &card.defenses.similarity, values)
        && let Some(found) = similar(limiter, model, guard, settings, caller, values).await
    {
        if found.first_for_principal {
            Alert::QueryAttackSuspected.count();
            tracing::warn!(
                alert = Alert::QueryAttackSuspected.as_str(),
                principal = %caller.id,
                model = %model.name,
                like = if found.matched.is_some_and(|m| m.same_principal) { "its own earlier query" } else { "another principal's earlier query" },
                "a query closely resembles an earlier one (query-based attack suspected)"
            );
        }
        screen.flag(model, defenses::SIMILARITY, settings.action)?;
    }
    if let (Some(detector), Some(settings), Some(input), Some(values)) = (
        &model.guards.ood,
        &card.defenses.out_of_distribution,
        card.defended(),
        values,
    ) && values
        .chunks(input.fixed_row_len().unwrap_or(values.len()).max(1))
        .any(|row| detector.flags(input, row))
    {
        screen.flag(model, defenses::OUT_OF_DISTRIBUTION, settings.action)?;
    }
    if let (Some(monitor), Some(settings)) = (&model.guards.extraction, &card.defenses.extraction)
        && monitor.is_flagged(&caller.id)
    {
        screen.flag(model, defenses::EXTRACTION, settings.action)?;
    }
    Ok(())
}

/// Looks each row of the watched input up in the model's similarity store
/// (shared through Redis when limits are, in one round trip; else this
/// replica's) and stores it. `Some` when a row matched.
async fn similar(
    limiter: &warden_limits::Limiter,
    model: &Model,
    guard: &warden_models::repository::Similarity,
    settings: &similarity::SimilaritySettings,
    caller: &Principal,
    values: &[f32],
) -> Option<similarity::Seen> {
    let row_len = guard.bounds.len().max(1);
    let principal = similarity::hash_str(&caller.id);
    let prints: Vec<similarity::Fingerprint> = values
        .chunks(row_len)
        .map(|row| similarity::fingerprint(settings, &guard.bounds, row))
        .collect();
    let query = warden_limits::SimilarQuery {
        model: &model.name,
        principal,
        rows: prints
            .iter()
            .map(|fp| warden_limits::SimilarRow {
                exact: fp.exact,
                hashes: &fp.hashes,
                candidates: similarity::candidate_hashes(settings, fp).len(),
            })
            .collect(),
        threshold: settings.threshold,
        chain: similarity::CHAIN,
        capacity: settings.capacity,
        ttl_ms: similarity::SHARED_TTL_MS,
    };
    match limiter.similar(&query).await {
        Some(codes) => {
            let code = codes.into_iter().find(|c| *c > 0)?;
            Some(similarity::Seen {
                matched: Some(similarity::Match {
                    same_principal: code == 1,
                }),
                // Alerts are per replica: once per principal.
                first_for_principal: guard.store.note_match(principal),
            })
        }
        None => {
            let mut found: Option<similarity::Seen> = None;
            for fp in &prints {
                let seen = guard.store.observe(fp, principal);
                if seen.matched.is_some() && found.is_none() {
                    found = Some(seen);
                }
            }
            found
        }
    }
}

/// Inference, with the squeezed copies in the same batch when the card
/// asks for feature squeezing (the watched input squeezed, the others
/// repeated). Returns the input's own outputs and, per row, the squeezing
/// score.
pub async fn infer(
    model: &Model,
    version: &ModelVersion,
    batch: Batch,
    values: Option<&[f32]>,
) -> Result<(Outputs, Option<Vec<f64>>), EngineError> {
    let card = &model.card;
    let (Some(settings), Some(input), Some(watched), Some(values)) = (
        &card.defenses.adversarial,
        card.defended(),
        card.defended_input,
        values,
    ) else {
        return version.backend.infer(batch).await.map(|p| (p, None));
    };
    let rows = batch.rows;
    let copies = squeeze::squeezers(settings);
    let squeezed = squeeze::squeezed(settings, input, values);
    let mut inputs = Vec::with_capacity(batch.inputs.len());
    for (i, t) in batch.inputs.iter().enumerate() {
        let mut parts: Vec<Tensor> = vec![t.clone()];
        for c in 0..copies {
            let mut copy = t.clone();
            if i == watched {
                let n = values.len();
                let Some(data) = squeezed.get(c * n..(c + 1) * n).and_then(|own| {
                    warden_tensor::TensorData::from_f64(
                        t.datatype(),
                        &own.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                    )
                }) else {
                    return version.backend.infer(batch).await.map(|p| (p, None));
                };
                copy.data = data;
            }
            parts.push(copy);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        let Some(joined) = Tensor::concat(&refs) else {
            return version.backend.infer(batch).await.map(|p| (p, None));
        };
        inputs.push(joined);
    }
    let all = version
        .backend
        .infer(Batch {
            rows: rows * (1 + copies),
            inputs,
        })
        .await?;
    let Some(probs) = task::probabilities(card, &all) else {
        return Ok((all.iter().map(|o| o.rows(0..rows)).collect(), None));
    };
    let classes = card.classes().len();
    let (own, copied) = probs.split_at(rows * classes);
    let scores = squeeze::scores(classes, own, copied, rows);
    Ok((all.iter().map(|o| o.rows(0..rows)).collect(), Some(scores)))
}

/// Nearest-neighbour work (rows × stored points × features) above which the
/// extraction monitor runs on the blocking pool rather than the executor.
const INLINE_WORK: usize = 200_000;

/// After inference: the squeezing verdict, and the extraction monitor
/// learning this query.
pub async fn after(
    model: &Arc<Model>,
    caller: &Principal,
    values: Option<Vec<f32>>,
    answer: &Outputs,
    rows: usize,
    squeeze_scores: Option<&[f64]>,
    screen: &mut Screen,
) -> Result<(), ApiError> {
    let card = &model.card;
    if let (Some(settings), Some(values), Some(input)) =
        (&card.defenses.extraction, values, card.defended())
    {
        let work = values.len() * settings.max_points;
        let labels = task::monitor_classes(card, answer, rows);
        let classes = card.classes().len();
        let verdict = if work <= INLINE_WORK {
            model
                .guards
                .extraction
                .as_ref()
                .map(|m| m.observe(input, classes, &caller.id, &values, &labels))
        } else {
            let (model, id) = (Arc::clone(model), caller.id.clone());
            tokio::task::spawn_blocking(move || {
                let input = model.card.defended()?;
                model
                    .guards
                    .extraction
                    .as_ref()
                    .map(|m| m.observe(input, classes, &id, &values, &labels))
            })
            .await
            .ok()
            .flatten()
        };
        if let Some(verdict) = verdict.filter(|v| v.newly) {
            Alert::ExtractionSuspected.count();
            tracing::warn!(
                alert = Alert::ExtractionSuspected.as_str(),
                principal = %caller.id,
                model = %model.name,
                w = verdict.flagged.unwrap_or_default(),
                "the extraction monitor flags this principal's queries"
            );
        }
    }
    if let (Some(settings), Some(scores)) = (&card.defenses.adversarial, squeeze_scores)
        && scores.iter().any(|s| *s > settings.threshold)
    {
        screen.flag(model, defenses::ADVERSARIAL, settings.action)?;
    }
    Ok(())
}

/// Rows a throttled request is charged on top of its own.
pub fn throttle_rows(rows: usize) -> u64 {
    rows as u64 * (defenses::THROTTLE_FACTOR - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_marks_expire_and_stay_bounded() {
        let t = Throttled::default();
        assert!(!t.is_marked("a"));
        t.mark("a");
        assert!(t.is_marked("a"));
        assert!(!t.is_marked("b"));
        for i in 0..THROTTLE_MARKS + 10 {
            t.mark(&format!("k{i}"));
        }
        assert!(t.0.lock().unwrap().len() <= THROTTLE_MARKS);
    }
}
