//! The output policy: what of a prediction the caller may see.
//!
//! Label-only, or labels with probabilities rounded to the card's decimals
//! (SPEC §7: label-only unless the card or the caller's role allows more).
//! A card may set a policy per role (`[policy.roles.<role>]`); a caller
//! with several such roles gets the most revealing of them. Top-k,
//! confidence thresholds and noise extend this type (issue 7).
//! Rounding limits how much of the model's confidence surface one answer
//! reveals; it is not a privacy guarantee (label-only membership inference
//! works nearly as well as confidence-based attacks).

use warden_core::{ApiError, FieldProblem, Principal};

use crate::card::ModelCard;
use crate::engine::Prediction;
use crate::request::OutputKind;

/// The policy in force for one caller on one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputPolicy {
    /// Probabilities may be returned.
    pub probabilities: bool,
    /// Decimals probabilities are rounded to.
    pub decimals: u32,
}

/// A prediction cut down to what the caller may see.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown<'c> {
    /// Class names, one per row, if the label is shown.
    pub labels: Option<Vec<&'c str>>,
    /// Rounded `rows × classes` probabilities, if shown.
    pub probabilities: Option<Vec<f64>>,
}

impl OutputPolicy {
    /// The policy for `principal` on `card`.
    pub fn for_caller(card: &ModelCard, principal: &Principal) -> Self {
        let p = card.policy_for(principal.roles.iter().map(|r| &**r));
        Self {
            probabilities: p.probabilities,
            decimals: p.decimals,
        }
    }

    /// The outputs shown when the caller names none.
    pub fn default_outputs(&self) -> &'static [OutputKind] {
        if self.probabilities {
            &[OutputKind::Label, OutputKind::Probabilities]
        } else {
            &[OutputKind::Label]
        }
    }

    /// Checks the outputs a v2 caller asked for against the policy.
    pub fn check_requested(&self, requested: &[OutputKind]) -> Result<(), ApiError> {
        let problems: Vec<_> = requested
            .iter()
            .enumerate()
            .filter(|(_, k)| **k == OutputKind::Probabilities && !self.probabilities)
            .map(|(i, _)| {
                FieldProblem::new(
                    format!("outputs[{i}].name"),
                    "is not available to this credential",
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(problems))
        }
    }

    /// Applies the policy to a prediction.
    pub fn apply<'c>(
        &self,
        card: &'c ModelCard,
        prediction: &Prediction,
        outputs: &[OutputKind],
    ) -> Shown<'c> {
        let labels = outputs.contains(&OutputKind::Label).then(|| {
            prediction
                .labels
                .iter()
                .map(|&l| card.classes[l].as_str())
                .collect()
        });
        let scale = 10f64.powi(self.decimals as i32);
        let probabilities = (self.probabilities && outputs.contains(&OutputKind::Probabilities))
            .then_some(prediction.probabilities.as_ref())
            .flatten()
            .map(|p| {
                p.iter()
                    .map(|&v| (f64::from(v) * scale).round() / scale)
                    .collect()
            });
        Shown {
            labels,
            probabilities,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::CardDefaults;
    use warden_core::{ModelScope, Roles};

    fn card_text(output: &str) -> String {
        format!(
            "[input]\nname = \"input\"\n[[input.features]]\nname = \"a\"\n[output]\nlabel = \"l\"\nprobabilities = \"p\"\nclasses = [\"x\", \"y\"]\n[policy]\noutput = \"{output}\"\ndecimals = 2\n"
        )
    }

    fn card(output: &str) -> ModelCard {
        let text = card_text(output);
        ModelCard::parse(
            &text,
            CardDefaults {
                max_batch: 8,
                range_tolerance: 0.0,
            },
        )
        .unwrap()
    }

    fn principal() -> Principal {
        Principal::with_role(
            "key:t",
            Roles::builtin().get("predict").unwrap(),
            ModelScope::All,
        )
    }

    #[test]
    fn label_only_hides_probabilities() {
        let c = card("label");
        let p = OutputPolicy::for_caller(&c, &principal());
        let pred = Prediction {
            labels: vec![1, 0],
            probabilities: Some(vec![0.123, 0.877, 0.9, 0.1]),
        };
        let shown = p.apply(&c, &pred, &[OutputKind::Label, OutputKind::Probabilities]);
        assert_eq!(shown.labels, Some(vec!["y", "x"]));
        assert_eq!(shown.probabilities, None);
        assert!(p.check_requested(&[OutputKind::Probabilities]).is_err());
        assert_eq!(p.default_outputs(), &[OutputKind::Label]);
    }

    #[test]
    fn probabilities_are_rounded() {
        let c = card("probabilities");
        let p = OutputPolicy::for_caller(&c, &principal());
        let pred = Prediction {
            labels: vec![1],
            probabilities: Some(vec![0.123_456, 0.876_544]),
        };
        let shown = p.apply(&c, &pred, p.default_outputs());
        assert_eq!(shown.probabilities, Some(vec![0.12, 0.88]));
        let only_probs = p.apply(&c, &pred, &[OutputKind::Probabilities]);
        assert_eq!(only_probs.labels, None);
    }

    #[test]
    fn roles_get_their_own_policy() {
        let text = format!(
            "{}\n[policy.roles.analyst]\noutput = \"probabilities\"\ndecimals = 3\n[policy.roles.app]\ndecimals = 1\n",
            card_text("label")
        );
        let c = ModelCard::parse(
            &text,
            CardDefaults {
                max_batch: 8,
                range_tolerance: 0.0,
            },
        )
        .unwrap();
        let mut roles = Roles::builtin();
        roles
            .define("analyst", String::new(), &["predict:*".into()])
            .unwrap();
        roles
            .define("app", String::new(), &["predict:*".into()])
            .unwrap();
        let as_role = |names: &[&str]| {
            let mut p = principal();
            p.roles = names.iter().map(|n| std::sync::Arc::from(*n)).collect();
            OutputPolicy::for_caller(&c, &p)
        };
        assert_eq!(
            as_role(&["analyst"]),
            OutputPolicy {
                probabilities: true,
                decimals: 3
            }
        );
        assert_eq!(
            as_role(&["app"]),
            OutputPolicy {
                probabilities: false,
                decimals: 1
            }
        );
        assert_eq!(
            as_role(&["predict"]),
            OutputPolicy {
                probabilities: false,
                decimals: 2
            }
        );
        assert_eq!(
            as_role(&["app", "analyst"]),
            OutputPolicy {
                probabilities: true,
                decimals: 3
            },
            "the most revealing of the caller's roles"
        );
    }
}
