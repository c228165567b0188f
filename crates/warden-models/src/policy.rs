//! The output policy: what of a model's answer the caller may see, by task
//! (docs/models.md, "Output policy").
//!
//! - Classification: label-only, or labels with probabilities rounded to
//!   the card's decimals (label-only unless the card or the caller's role
//!   allows more), with the output hardening of the pipeline (docs/pipeline.md):
//!   top-k (only the k most probable classes' probabilities, the others
//!   shown as 0), a confidence threshold (below it the label is `uncertain`
//!   and the row's probabilities are all shown as 0), and Laplace noise on
//!   probabilities (renormalized, before rounding). A card may set a policy
//!   per role (`[policy.roles.<role>]`); a caller with several such roles
//!   gets the most revealing of them.
//! - Regression: the value, rounded (default 2 decimals), optionally
//!   clamped to a declared range and noised.
//! - Any task: further outputs (logits, embeddings, a tensor model's
//!   outputs) only where the policy lists them, floats rounded. A tensor
//!   model shows nothing by default: raw logits and embeddings give an
//!   extraction or inversion attack far more than a label does.
//!
//! docs/defenses.md says what each does and does
//! not protect: rounding and label-only slow model extraction and blunt
//! confidence-based membership inference, but label-only membership
//! inference works nearly as well (Choquette-Choo et al. 2021), so none of
//! this is a privacy guarantee.

use warden_core::{ApiError, FieldProblem, Principal};
use warden_tensor::{DataType, Tensor, TensorData};

pub use crate::card::PolicyDefaults as OutputPolicy;
use crate::card::{ModelCard, Task};
use crate::task;

/// The label shown when the top probability is under the threshold.
pub const UNCERTAIN: &str = "uncertain";

/// What of a model's answer the caller may see.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown<'c> {
    /// Entries of the batch dimension.
    pub rows: usize,
    /// The outputs shown, in the order asked for (or card order).
    pub tensors: Vec<ShownTensor<'c>>,
}

/// One output as shown.
#[derive(Debug, Clone, PartialEq)]
pub struct ShownTensor<'c> {
    /// The output's name.
    pub name: &'c str,
    /// The datatype it is shown as (class labels are BYTES).
    pub datatype: DataType,
    /// Its dimensions.
    pub shape: Vec<usize>,
    /// Its values.
    pub data: ShownData<'c>,
}

/// An output's values as shown.
#[derive(Debug, Clone, PartialEq)]
pub enum ShownData<'c> {
    /// Class names (or `uncertain`), one per row.
    Labels(Vec<&'c str>),
    /// Floats, rounded (and noised or clamped where the policy says).
    Floats(Vec<f64>),
    /// Integers, booleans or strings, as the model gave them.
    Raw(TensorData),
}

impl OutputPolicy {
    /// The policy for `principal` on `card`.
    pub fn for_caller(card: &ModelCard, principal: &Principal) -> Self {
        card.policy_for(principal.roles.iter().map(|r| &**r))
    }

    /// Whether output `i` of `card` may be shown to this caller.
    pub fn may_see(&self, card: &ModelCard, i: usize) -> bool {
        match &card.task {
            Task::Classification {
                label,
                probabilities,
                ..
            } => i == *label || (Some(i) == *probabilities && self.probabilities) || self.shows(i),
            Task::Regression { output } => i == *output || self.shows(i),
            Task::Tensor => self.shows(i),
        }
    }

    /// The outputs shown when the caller names none: every one it may see,
    /// in card order.
    pub fn default_outputs(&self, card: &ModelCard) -> Vec<usize> {
        (0..card.outputs.len())
            .filter(|&i| self.may_see(card, i))
            .collect()
    }

    /// Checks the outputs a v2 caller asked for against the policy.
    pub fn check_requested(&self, card: &ModelCard, requested: &[usize]) -> Result<(), ApiError> {
        let problems: Vec<_> = requested
            .iter()
            .enumerate()
            .filter(|(_, o)| !self.may_see(card, **o))
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

    /// Applies the policy to a model's outputs (card order), showing
    /// `outputs` (indices the caller may see). An answer that does not fit
    /// the card (a class index past the classes) is an error for the log.
    pub fn apply<'c>(
        &self,
        card: &'c ModelCard,
        answer: &[Tensor],
        rows: usize,
        outputs: &[usize],
    ) -> Result<Shown<'c>, String> {
        let scale = 10f64.powi(self.decimals as i32);
        let round = |v: f64| (v * scale).round() / scale;
        let classes = card.classes();
        let mut tensors = Vec::with_capacity(outputs.len());
        // Classification: the rows whose top probability is under the
        // threshold show `uncertain` and no probabilities.
        let probabilities = task::probabilities(card, answer);
        let uncertain: Vec<bool> = match (&probabilities, self.confidence_threshold) {
            (Some(p), Some(t)) => p
                .chunks(classes.len().max(1))
                .map(|row| f64::from(row.iter().copied().fold(0.0f32, f32::max)) < t)
                .collect(),
            _ => vec![false; rows],
        };
        for &i in outputs {
            let spec = &card.outputs[i];
            let tensor = answer
                .get(i)
                .ok_or_else(|| format!("output {:?} missing", spec.name))?;
            let shown = match &card.task {
                Task::Classification { label, .. } if i == *label => {
                    let indices = task::class_indices(card, answer)?;
                    let labels = indices
                        .iter()
                        .zip(uncertain.iter().chain(std::iter::repeat(&false)))
                        .map(|(&l, &u)| if u { UNCERTAIN } else { classes[l].as_str() })
                        .collect::<Vec<_>>();
                    ShownTensor {
                        name: &spec.name,
                        datatype: DataType::Bytes,
                        shape: vec![labels.len()],
                        data: ShownData::Labels(labels),
                    }
                }
                Task::Classification {
                    probabilities: Some(p),
                    ..
                } if i == *p => {
                    let probs = probabilities
                        .as_deref()
                        .ok_or("probabilities output missing")?;
                    let n = classes.len().max(1);
                    let mut out = Vec::with_capacity(probs.len());
                    let mut row = Vec::with_capacity(n);
                    for (r, chunk) in probs.chunks(n).enumerate() {
                        if uncertain.get(r).copied().unwrap_or(false) {
                            // An uncertain answer shows no probabilities either:
                            // they would name the class the label withholds.
                            out.extend(std::iter::repeat_n(0.0, chunk.len()));
                            continue;
                        }
                        row.clear();
                        row.extend(chunk.iter().map(|&v| f64::from(v)));
                        if self.noise > 0.0 {
                            add_laplace(&mut row, self.noise);
                        }
                        if let Some(k) = self.top_k {
                            keep_top_k(&mut row, k as usize);
                        }
                        out.extend(row.iter().map(|&v| round(v)));
                    }
                    ShownTensor {
                        name: &spec.name,
                        datatype: spec.datatype,
                        shape: tensor.shape.clone(),
                        data: ShownData::Floats(out),
                    }
                }
                Task::Regression { output } if i == *output => {
                    let values = (0..tensor.data.len())
                        .map(|k| {
                            let mut v = tensor.data.number(k).unwrap_or(f64::NAN);
                            if self.noise > 0.0 {
                                v += laplace(self.noise);
                            }
                            if let Some((lo, hi)) = self.clamp {
                                v = v.clamp(lo, hi);
                            }
                            round(v)
                        })
                        .collect();
                    ShownTensor {
                        name: &spec.name,
                        datatype: spec.datatype,
                        shape: tensor.shape.clone(),
                        data: ShownData::Floats(values),
                    }
                }
                _ if spec.datatype.is_float() => ShownTensor {
                    name: &spec.name,
                    datatype: spec.datatype,
                    shape: tensor.shape.clone(),
                    data: ShownData::Floats(
                        (0..tensor.data.len())
                            .map(|k| round(tensor.data.number(k).unwrap_or(f64::NAN)))
                            .collect(),
                    ),
                },
                _ => ShownTensor {
                    name: &spec.name,
                    datatype: spec.datatype,
                    shape: tensor.shape.clone(),
                    data: ShownData::Raw(tensor.data.clone()),
                },
            };
            tensors.push(shown);
        }
        Ok(Shown { rows, tensors })
    }
}

/// One draw of Laplace(0, b) noise.
fn laplace(b: f64) -> f64 {
    // Inverse CDF of Laplace(0, b) at a uniform u in (-1/2, 1/2).
    let u: f64 = rand::random::<f64>() - 0.5;
    -b * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln()
}

/// Adds Laplace(0, b) noise to each probability, clips at 0 and
/// renormalizes (uniform if everything was clipped).
fn add_laplace(row: &mut [f64], b: f64) {
    for v in row.iter_mut() {
        *v = (*v + laplace(b)).max(0.0);
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

    /// A classifier's answer: labels and probabilities.
    fn answer(labels: &[i64], probabilities: &[f32]) -> Vec<Tensor> {
        let rows = labels.len();
        vec![
            Tensor {
                name: "l".into(),
                shape: vec![rows],
                data: TensorData::I64(labels.to_vec()),
            },
            Tensor {
                name: "p".into(),
                shape: vec![rows, probabilities.len() / rows.max(1)],
                data: TensorData::F32(probabilities.to_vec()),
            },
        ]
    }

    fn labels<'c>(shown: &Shown<'c>) -> Option<Vec<&'c str>> {
        shown.tensors.iter().find_map(|t| match &t.data {
            ShownData::Labels(l) => Some(l.clone()),
            _ => None,
        })
    }

    fn probs(shown: &Shown<'_>) -> Option<Vec<f64>> {
        shown.tensors.iter().find_map(|t| match &t.data {
            ShownData::Floats(v) => Some(v.clone()),
            _ => None,
        })
    }

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
        let pred = answer(&[1, 0], &[0.123, 0.877, 0.9, 0.1]);
        let shown = p.apply(&c, &pred, 2, &p.default_outputs(&c)).unwrap();
        assert_eq!(labels(&shown), Some(vec!["y", "x"]));
        assert_eq!(probs(&shown), None);
        assert!(p.check_requested(&c, &[1]).is_err());
        assert_eq!(p.default_outputs(&c), [0]);
    }

    #[test]
    fn probabilities_are_rounded() {
        let c = card("probabilities");
        let p = OutputPolicy::for_caller(&c, &principal());
        let pred = answer(&[1], &[0.123_456, 0.876_544]);
        let shown = p.apply(&c, &pred, 1, &p.default_outputs(&c)).unwrap();
        assert_eq!(probs(&shown), Some(vec![0.12, 0.88]));
        let only_probs = p.apply(&c, &pred, 1, &[1]).unwrap();
        assert_eq!(labels(&only_probs), None);
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
                ..OutputPolicy::DEFAULT
            }
        );
        assert_eq!(
            as_role(&["app"]),
            OutputPolicy {
                decimals: 1,
                ..OutputPolicy::DEFAULT
            }
        );
        assert_eq!(as_role(&["predict"]), OutputPolicy::DEFAULT);
        assert_eq!(
            as_role(&["app", "analyst"]),
            OutputPolicy {
                probabilities: true,
                decimals: 3,
                ..OutputPolicy::DEFAULT
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
        let pred = answer(&[1, 0], &[0.35, 0.65, 0.9, 0.1]);
        let app = as_role("app");
        let shown = app.apply(&c, &pred, 2, &app.default_outputs(&c)).unwrap();
        // Row 0: 0.65 < 0.7 -> uncertain, and no probabilities; row 1: top-1
        // keeps only the larger class.
        assert_eq!(labels(&shown), Some(vec![UNCERTAIN, "x"]));
        assert_eq!(probs(&shown), Some(vec![0.0, 0.0, 0.9, 0.0]));

        let noisy = as_role("noisy");
        let a = noisy
            .apply(&c, &pred, 2, &noisy.default_outputs(&c))
            .unwrap();
        let b = noisy
            .apply(&c, &pred, 2, &noisy.default_outputs(&c))
            .unwrap();
        let p = probs(&a).unwrap();
        assert_ne!(Some(p.clone()), probs(&b), "fresh noise per answer");
        for row in p.chunks(2) {
            assert!(row.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
        }
        assert_eq!(
            labels(&a),
            Some(vec!["y", "x"]),
            "labels come from the model"
        );

        // A bad card is refused naming the key.
        for bad in ["top_k = 3", "confidence_threshold = 1.5", "noise = -1"] {
            let text = format!("{}{bad}\n", card_text("probabilities"));
            let e = parse(&text).unwrap_err();
            assert!(e.0.starts_with("policy."), "{e}");
        }
    }

    /// A regressor shows its value rounded and clamped; further outputs
    /// only where listed; a tensor model nothing unless listed.
    #[test]
    fn regression_and_tensor_outputs_follow_the_card() {
        let text = "task = \"regression\"\n[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\nshape = [-1, 2]\n[[outputs]]\nname = \"v\"\ndatatype = \"FP32\"\nshape = [-1]\n[[outputs]]\nname = \"e\"\ndatatype = \"FP32\"\nshape = [-1, 2]\n[regression]\noutput = \"v\"\n[policy]\nclamp = [0.0, 10.0]\n[policy.roles.admin]\noutputs = [\"e\"]\ndecimals = 3\n";
        let c = parse(text).unwrap();
        let out = vec![
            Tensor {
                name: "v".into(),
                shape: vec![2],
                data: TensorData::F32(vec![1.23456, 42.0]),
            },
            Tensor {
                name: "e".into(),
                shape: vec![2, 2],
                data: TensorData::F32(vec![0.12345, 1.0, 2.0, 3.0]),
            },
        ];
        let p = c.policy;
        let shown = p.apply(&c, &out, 2, &p.default_outputs(&c)).unwrap();
        assert_eq!(shown.tensors.len(), 1);
        assert_eq!(shown.tensors[0].data, ShownData::Floats(vec![1.23, 10.0]));
        assert!(p.check_requested(&c, &[1]).is_err());
        let admin = c.policy_for(["admin"]);
        let shown = admin
            .apply(&c, &out, 2, &admin.default_outputs(&c))
            .unwrap();
        assert_eq!(
            shown.tensors[1].data,
            ShownData::Floats(vec![0.123, 1.0, 2.0, 3.0])
        );

        let tensor = text
            .replace("task = \"regression\"", "task = \"tensor\"")
            .replace("[regression]\noutput = \"v\"\n", "")
            .replace("clamp = [0.0, 10.0]", "");
        let c = parse(&tensor).unwrap();
        assert!(
            c.policy.default_outputs(&c).is_empty(),
            "nothing by default"
        );
        assert_eq!(c.policy_for(["admin"]).default_outputs(&c), [1]);
    }
}
