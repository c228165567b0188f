//! Shared by the fuzz targets: the demo models' cards, and the invariants
//! every parse must keep.

use warden_core::{ApiError, ErrorCode};
use warden_models::card::{CardDefaults, ModelCard};
use warden_models::request::ValidInferRequest;

/// The three demo models' cards, as served.
pub fn cards() -> &'static [ModelCard] {
    static CARDS: std::sync::OnceLock<Vec<ModelCard>> = std::sync::OnceLock::new();
    CARDS.get_or_init(|| {
        let defaults = CardDefaults {
            max_batch: 64,
            range_tolerance: 0.25,
        };
        [
            include_str!("../../models/iris/model.toml"),
            include_str!("../../models/breast-cancer/model.toml"),
            include_str!("../../models/digits/model.toml"),
        ]
        .iter()
        .map(|text| ModelCard::parse(text, defaults).expect("demo card"))
        .collect()
    })
}

/// What every parse must give: an accepted request within the batch limit
/// holding rows × features finite values each inside the feature's accepted
/// range, or a refusal with one of the two client-error codes and at most
/// 16 field problems.
pub fn check(card: &ModelCard, parsed: Result<ValidInferRequest, ApiError>) {
    match parsed {
        Ok(r) => {
            assert!(r.rows >= 1 && r.rows <= card.max_batch, "rows {}", r.rows);
            assert_eq!(r.values.len(), r.rows * card.features.len());
            for (i, v) in r.values.iter().enumerate() {
                let feature = &card.features[i % card.features.len()];
                assert!(v.is_finite());
                // The range is checked on the client's (f64) value; the model
                // gets it as f32, which may round across a bound by one ulp
                // (found by this target: 1.4 at a bound of 1.4).
                let within = [*v, v.next_up(), v.next_down()]
                    .iter()
                    .any(|x| feature.check_number(f64::from(*x)).is_ok());
                assert!(within, "{} = {v} accepted outside its range", feature.name);
            }
        }
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::InvalidRequest | ErrorCode::ValidationFailed
                ),
                "{e:?}"
            );
            assert!(e.details.len() <= 16);
        }
    }
}
