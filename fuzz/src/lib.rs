//! Shared by the fuzz targets: the demo models' cards, and the invariants
//! every parse must keep.

use warden_core::{ApiError, ErrorCode};
use warden_models::card::{CardDefaults, ModelCard};
use warden_models::request::ValidInferRequest;

/// The demo models' cards, as served, and the test card with BYTES, FP16
/// and BOOL inputs: every input kind the parser knows.
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
            include_str!("../../models/diabetes/model.toml"),
            include_str!("../../models/recommender/model.toml"),
            include_str!("../../models/digits-cnn/model.toml"),
            include_str!("../../models/sentiment/model.toml"),
            include_str!("../../crates/warden/tests/models/mixed/model.toml"),
        ]
        .iter()
        .map(|text| ModelCard::parse(text, defaults).expect("demo card"))
        .collect()
    })
}

/// What every parse must give: an accepted request within the batch limit
/// holding, for each of the card's inputs, a tensor of its datatype whose
/// shape has its rank, fixed dimensions and caps and whose values fill the
/// shape and are each valid (finite and in range, an id in its table, a
/// string within its length); or a refusal with one of the two
/// client-error codes and at most 16 field problems.
pub fn check(card: &ModelCard, parsed: Result<ValidInferRequest, ApiError>) {
    match parsed {
        Ok(r) => {
            let rows = r.rows();
            assert!(rows >= 1 && rows <= card.max_batch, "rows {rows}");
            assert_eq!(r.batch.inputs.len(), card.inputs.len());
            for (spec, t) in card.inputs.iter().zip(&r.batch.inputs) {
                assert_eq!(t.name, spec.name);
                assert_eq!(t.datatype(), spec.datatype);
                assert_eq!(t.shape.len(), spec.shape.len());
                assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
                assert!(t.data.len() <= spec.max_elements);
                for (i, (&got, &want)) in t.shape.iter().zip(&spec.shape).enumerate() {
                    assert!(got >= 1 && got <= spec.max_shape[i]);
                    assert!(want < 0 || got == want as usize);
                }
                if card.batched {
                    assert_eq!(t.shape[0], rows);
                }
                let width = spec.fixed_row_len().unwrap_or(1).max(1);
                for i in 0..t.data.len() {
                    let Some(v) = t.data.number(i) else {
                        continue;
                    };
                    assert!(v.is_finite(), "{} [{i}] = {v}", spec.name);
                    // The range is checked on the client's (f64) value; the
                    // model gets it in its own type, which may round across a
                    // bound by one ulp (found by this target: 1.4 at a bound
                    // of 1.4 in f32).
                    let slack = (v.abs() * 1e-6).max(1e-6);
                    if let Some((lo, hi)) = spec.bounds(i % width) {
                        assert!(
                            v >= lo - slack && v <= hi + slack,
                            "{} [{i}] = {v} accepted outside [{lo}, {hi}]",
                            spec.name
                        );
                    }
                }
                if let warden_tensor::TensorData::Bytes(items) = &t.data {
                    for item in items {
                        assert!(item.len() <= spec.max_length);
                        assert!(std::str::from_utf8(item).is_ok_and(|s| !s.contains('\0')));
                    }
                }
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
