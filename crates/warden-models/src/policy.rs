//! The output policy: what of a prediction the caller may see.
//!
//! Label-only, or labels with probabilities rounded to the card's decimals
//! (SPEC §7: label-only unless the card or the caller's role allows more),
//! and the output hardening of SPEC §2: top-k (only the k most probable
//! classes' probabilities, the others shown as 0), a confidence threshold
//! (below it the label is `uncertain` and the row's probabilities are all
//! shown as 0), and Laplace noise on probabilities
//! (renormalized, before rounding). A card may set a policy per role
//! (`[policy.roles.<role>]`); a caller with several such roles gets the
//! most revealing of them. docs/defenses.md says what each does and does
//! not protect: rounding and label-only slow model extraction and blunt
//! confidence-based membership inference, but label-only membership
//! inference works nearly as well (Choquette-Choo et al. 2021), so none of
//! this is a privacy guarantee.

use warden_core::{ApiError, FieldProblem, Principal};

use crate::card::ModelCard;
use crate::engine::Prediction;
use crate::request::OutputKind;

/// The policy in force for one caller on one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputPolicy {
    /// Probabilities may be returned.
    pub probabilities: bool,
    /// Decimals probabilities are rounded to.
    pub decimals: u32,
    /// Only the k most probable classes' probabilities are shown.
    pub top_k: Option<u32>,
    /// Below this top probability the label is `uncertain`.
    pub confidence_threshold: Option<f64>,
    /// Laplace noise scale on probabilities.
    pub noise: f64,
}

/// The label shown when the top probability is under the threshold.
pub const UNCERTAIN: &str = "uncertain";

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
            top_k: p.top_k,
            confidence_threshold: p.confidence_threshold,
            noise: p.noise,
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
        let classes = card.classes.len();
        let row_probs = |r: usize| {
            prediction
                .probabilities
                .as_ref()
                .map(|p| &p[r * classes..(r + 1) * classes])
        };
        let labels = outputs.contains(&OutputKind::Label).then(|| {
            prediction
                .labels
                .iter()
                .enumerate()
                .map(|(r, &l)| {
                    let top = row_probs(r)
                        .map_or(1.0, |p| p.iter().copied().fold(0.0f32, f32::max).into());
                    match self.confidence_threshold {
                        Some(t) if top < t => UNCERTAIN,
                        _ => card.classes[l].as_str(),
                    }
                })
                .collect()
        });
        let scale = 10f64.powi(self.decimals as i32);
        let probabilities = (self.probabilities && outputs.contains(&OutputKind::Probabilities))
            .then_some(prediction.probabilities.as_ref())
            .flatten()
            .map(|p| {
                let mut out = Vec::with_capacity(p.len());
                let mut row = Vec::with_capacity(classes);
                for chunk in p.chunks(classes.max(1)) {
                    row.clear();
                    // An uncertain answer shows no probabilities either: they
                    // would name the class the label withholds.
                    let top = chunk.iter().copied().fold(0.0f32, f32::max);
                    if self
                        .confidence_threshold
                        .is_some_and(|t| f64::from(top) < t)
                    {
                        out.extend(std::iter::repeat_n(0.0, chunk.len()));
                        continue;
                    }
                    row.extend(chunk.iter().map(|&v| f64::from(v)));
                    if self.noise > 0.0 {
                        add_laplace(&mut row, self.noise);
                    }
                    if let Some(k) = self.top_k {
                        keep_top_k(&mut row, k as usize);
                    }
                    out.extend(row.iter().map(|v| (v * scale).round() / scale));
                }
                out
            });
        Shown {
            labels,
            probabilities,
        }
    }
}

/// Adds Laplace(0, b) noise to each probability, clips at 0 and
/// renormalizes (uniform if everything was clipped).
fn add_laplace(row: &mut [f64], b: f64) {
    for v in row.iter_mut() {
        // Inverse CDF of Laplace(0, b) at a uniform u in (-1/2, 1/2).
        let u: f64 = rand::random::<f64>() - 0.5;
        let noise = -b * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln();
        *v = (*v + noise).max(0.0);
    }
    let sum: f64 = row.iter().sum();
    if sum > 0.0 {
        row.iter_mut().for_each(|v| *v /= sum);
    } else {
        let n = row.len() as f64;
        row.iter_mut().for_each(|v| *v = 1.0 / n);
    }
}

/// Zeroes all but the k largest values (ties: the lower class index wins).
fn keep_top_k(row: &mut [f64], k: usize) {
    if k >= row.len() {
        return;
    }
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    for &i in &order[k..] {
        row[i] = 0.0;
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
        parse(&card_text(output)).unwrap()
    }

    fn parse(text: &str) -> Result<ModelCard, crate::card::CardError> {
        ModelCard::parse(
            text,
            CardDefaults {
                max_batch: 8,
                range_tolerance: 0.0,
            },
        )
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
        let c = parse(&text).unwrap();
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
                decimals: 3,
                top_k: None,
                confidence_threshold: None,
                noise: 0.0,
            }
        );
        assert_eq!(
            as_role(&["app"]),
            OutputPolicy {
                probabilities: false,
                decimals: 1,
                top_k: None,
                confidence_threshold: None,
                noise: 0.0,
            }
        );
        assert_eq!(
            as_role(&["predict"]),
            OutputPolicy {
                probabilities: false,
                decimals: 2,
                top_k: None,
                confidence_threshold: None,
                noise: 0.0,
            }
        );
        assert_eq!(
            as_role(&["app", "analyst"]),
            OutputPolicy {
                probabilities: true,
                decimals: 3,
                top_k: None,
                confidence_threshold: None,
                noise: 0.0,
            },
            "the most revealing of the caller's roles"
        );
    }

    #[test]
    fn top_k_threshold_and_noise_harden_what_is_shown() {
        let text = format!(
            "{}\n[policy.roles.app]\ntop_k = 1\nconfidence_threshold = 0.7\n[policy.roles.noisy]\nnoise = 0.05\ndecimals = 6\n",
            card_text("probabilities")
        );
        let c = parse(&text).unwrap();
        let mut roles = Roles::builtin();
        for r in ["app", "noisy"] {
            roles
                .define(r, String::new(), &["predict:*".into()])
                .unwrap();
        }
        let as_role = |name: &str| {
            let mut p = principal();
            p.roles = vec![std::sync::Arc::from(name)].into();
            OutputPolicy::for_caller(&c, &p)
        };
        let pred = Prediction {
            labels: vec![1, 0],
            probabilities: Some(vec![0.35, 0.65, 0.9, 0.1]),
        };
        let app = as_role("app");
        let shown = app.apply(&c, &pred, app.default_outputs());
        // Row 0: 0.65 < 0.7 -> uncertain, and no probabilities; row 1: top-1
        // keeps only the larger class.
        assert_eq!(shown.labels, Some(vec![UNCERTAIN, "x"]));
        assert_eq!(shown.probabilities, Some(vec![0.0, 0.0, 0.9, 0.0]));

        let noisy = as_role("noisy");
        let a = noisy.apply(&c, &pred, noisy.default_outputs());
        let b = noisy.apply(&c, &pred, noisy.default_outputs());
        let p = a.probabilities.unwrap();
        assert_ne!(Some(p.clone()), b.probabilities, "fresh noise per answer");
        for row in p.chunks(2) {
            assert!(row.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
        }
        assert_eq!(a.labels, Some(vec!["y", "x"]), "labels come from the model");

        // A bad card is refused naming the key.
        for bad in ["top_k = 3", "confidence_threshold = 1.5", "noise = -1"] {
            let text = format!("{}{bad}\n", card_text("probabilities"));
            let e = parse(&text).unwrap_err();
            assert!(e.0.starts_with("policy."), "{e}");
        }
    }
}
