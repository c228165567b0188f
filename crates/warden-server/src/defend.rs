//! Step: defenses (SPEC §2), around inference. What each defense does is in
//! `warden_models::defenses`; this module applies the card's actions and
//! records the flags (metrics, the request's audit record).
//!
//! - Out-of-distribution and the extraction monitor's current verdict are
//!   checked before inference.
//! - Feature squeezing runs the squeezed copies in the same inference batch
//!   as the input, and is judged right after.
//! - The extraction monitor learns each query with its predicted class
//!   after inference (PRADA needs the class); a principal it flags is
//!   treated per the action from its next query on.
//!
//! A rejected input has cost its rows (rate limit and quota): probing is
//! not free.

use std::sync::Arc;

use warden_core::metrics::{self as names, Alert};
use warden_core::{ApiError, ErrorCode, Principal};
use warden_models::defenses::{self, Action, squeeze};
use warden_models::engine::{EngineError, Prediction};
use warden_models::{Model, ModelVersion};

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

/// Whether the defenses need the input values after inference.
pub fn keeps_values(model: &Model) -> bool {
    model.guards.extraction.is_some()
}

/// Before inference: out-of-distribution rows, and a principal the
/// extraction monitor has flagged.
pub fn before(
    model: &Model,
    caller: &Principal,
    values: &[f32],
    screen: &mut Screen,
) -> Result<(), ApiError> {
    let card = &model.card;
    if let (Some(detector), Some(settings)) =
        (&model.guards.ood, &card.defenses.out_of_distribution)
        && values
            .chunks(card.features.len())
            .any(|row| detector.flags(card, row))
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

/// Inference, with the squeezed copies in the same batch when the card
/// asks for feature squeezing. Returns the input's prediction and, per
/// row, the squeezing score.
pub async fn infer(
    model: &Model,
    version: &ModelVersion,
    rows: usize,
    values: Vec<f32>,
) -> Result<(Prediction, Option<Vec<f64>>), EngineError> {
    let Some(settings) = &model.card.defenses.adversarial else {
        return version.backend.infer(rows, values).await.map(|p| (p, None));
    };
    let classes = model.card.classes.len();
    let copies = squeeze::squeezers(settings);
    let mut all = values;
    let squeezed = squeeze::squeezed(settings, &model.card, &all);
    all.extend_from_slice(&squeezed);
    let mut p = version.backend.infer(rows * (1 + copies), all).await?;
    let Some(probs) = p.probabilities.take() else {
        return Ok((p, None));
    };
    let (own, copied) = probs.split_at(rows * classes);
    let scores = squeeze::scores(classes, own, copied, rows);
    p.labels.truncate(rows);
    p.probabilities = Some(own.to_vec());
    Ok((p, Some(scores)))
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
    prediction: &Prediction,
    squeeze_scores: Option<&[f64]>,
    screen: &mut Screen,
) -> Result<(), ApiError> {
    let card = &model.card;
    if let (Some(settings), Some(values)) = (&card.defenses.extraction, values) {
        let work = values.len() * settings.max_points;
        let verdict = if work <= INLINE_WORK {
            model
                .guards
                .extraction
                .as_ref()
                .map(|m| m.observe(card, &caller.id, &values, &prediction.labels))
        } else {
            let (model, id, labels) = (
                Arc::clone(model),
                caller.id.clone(),
                prediction.labels.clone(),
            );
            tokio::task::spawn_blocking(move || {
                model
                    .guards
                    .extraction
                    .as_ref()
                    .map(|m| m.observe(&model.card, &id, &values, &labels))
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
