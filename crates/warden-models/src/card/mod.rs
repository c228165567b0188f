//! The model card (`models/<name>/model.toml`): what a model accepts, what
//! it answers, and what callers may see of the answer (docs/models.md).
//!
//! Raw serde structs (`deny_unknown_fields`) become a checked [`ModelCard`];
//! the server only sees the checked form. Two spellings are read: the
//! tensor card (`task`, `[[inputs]]`, `[[outputs]]`, `[classification]` or
//! `[regression]`), and the first card format of the tabular demo models
//! (`[input]` with features, `[output]` with classes), which becomes the
//! same checked card.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use warden_tensor::DataType;

mod spec;
mod upstream;

pub use spec::{
    DEFAULT_MAX_LENGTH, Feature, FeatureKind, InputSpec, OutputSpec, Valid, is_tensor_name,
};
pub use upstream::Upstream;

use spec::{RawInputSpec, RawOutputSpec, SpecContext};

/// The card as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    /// One line for humans; shown in model metadata.
    #[serde(default)]
    description: String,
    /// "classification", "regression" or "tensor". Default: classification
    /// with a `[classification]` table (or the first format's `[output]`),
    /// regression with a `[regression]` table, else tensor.
    task: Option<String>,
    /// Most rows one request may carry. Default: `models.default_max_batch` (64).
    max_batch: Option<usize>,
    /// The first dimension of every input and output is the batch (default true).
    batch_dimension: Option<bool>,
    /// Group concurrent requests into one inference call (default true).
    dynamic_batching: Option<bool>,
    /// Serve this version instead of the highest one present.
    version: Option<u64>,
    /// Overrides `validation.range_tolerance` for this model.
    range_tolerance: Option<f64>,
    /// The input tensors.
    #[serde(default)]
    inputs: Vec<RawInputSpec>,
    /// The output tensors the API may return.
    #[serde(default)]
    outputs: Vec<RawOutputSpec>,
    /// First card format: the one input tensor and its features.
    input: Option<RawInput>,
    /// First card format: the classifier's outputs and class names.
    output: Option<RawOutput>,
    /// Classification task: which outputs hold the label and probabilities.
    classification: Option<RawClassification>,
    /// Regression task: which output holds the value.
    regression: Option<RawRegression>,
    /// ONNX Runtime sessions and threads for this model.
    runtime: Option<RawRuntime>,
    /// What callers see by default.
    #[serde(default)]
    policy: RawPolicy,
    /// What the audit trail keeps about this model's requests.
    #[serde(default)]
    audit: RawCardAudit,
    /// Pinned hashes and signature requirement of the model files.
    #[serde(default)]
    integrity: RawIntegrity,
    /// Defenses against ML attacks (docs/defenses.md).
    #[serde(default)]
    defenses: RawDefenses,
    /// Gateway mode: an Open Inference Protocol server answers instead of a
    /// local ONNX file (docs/gateway.md).
    upstream: Option<upstream::RawUpstream>,
    /// Rows per principal on this model, for every role but admin.
    budget: Option<RawBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    per_day: Option<u64>,
    per_month: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefenses {
    /// The input the defenses watch. Default: the model's only numeric
    /// input (required when it has several).
    input: Option<String>,
    out_of_distribution: Option<RawOod>,
    adversarial: Option<RawSqueeze>,
    extraction: Option<RawExtraction>,
    similarity: Option<RawSimilarity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimilarity {
    #[serde(default)]
    action: Option<String>,
    /// Quantization steps across each element's bounds. Default 4.
    levels: Option<u32>,
    /// Consecutive values per hashed window. Default: the image's width,
    /// else 8 (at most the row's length).
    window: Option<usize>,
    /// Hashes kept per fingerprint. Default 30 (at most the row's windows).
    top_k: Option<usize>,
    /// Shared hashes that make a match. Default 5/6 of `top_k`.
    threshold: Option<usize>,
    /// Stored queries per model. Default 50000.
    capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOod {
    #[serde(default)]
    action: Option<String>,
    /// Largest |z| over features (training mean and std) before a row is
    /// flagged; needs statistics (per feature, or the input's mean and std).
    z_threshold: Option<f64>,
    /// Squared Mahalanobis distance before a row is flagged (with `stats`).
    mahalanobis_threshold: Option<f64>,
    /// JSON file next to model.toml: {"mean": [...], "precision": [[...]]}.
    stats: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSqueeze {
    #[serde(default)]
    action: Option<String>,
    /// Bits kept by the bit-depth squeezer. Default 4.
    bit_depth: Option<u32>,
    /// `[height, width]`: the input is an image; adds 2x2 median smoothing.
    image: Option<[usize; 2]>,
    /// Largest L1 distance between probability vectors before a row is flagged.
    threshold: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtraction {
    #[serde(default)]
    action: Option<String>,
    /// Flag when W < delta. Default 0.9.
    delta: Option<f64>,
    /// Distances needed before testing. Default 100.
    min_queries: Option<usize>,
    /// Test every this many queries. Default 10.
    every: Option<usize>,
    /// Most stored queries per principal (all classes). Default 500.
    max_points: Option<usize>,
    /// Distances between standardized features (training mean and std;
    /// default true), or raw values (features that share a unit, such as
    /// pixels, where near-constant features would dominate standardized
    /// distances).
    standardize: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegrity {
    /// SHA-256 (hex) of each version's plaintext `model.onnx`, by version:
    /// `sha256 = { "1" = "9f2c…" }`. A version with a pin loads only if
    /// its file matches.
    #[serde(default)]
    sha256: std::collections::BTreeMap<String, String>,
    /// Every version of this model must carry a valid signature.
    #[serde(default)]
    require_signature: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCardAudit {
    /// Keep the validated input values in each audit record (default false:
    /// only their SHA-256). For models whose inputs are not personal data
    /// and whose incidents need the inputs replayed.
    #[serde(default)]
    record_inputs: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    /// Tensor name in the API and in the ONNX graph.
    name: String,
    /// Element type of the ONNX input ("FP32").
    #[serde(default = "fp32")]
    datatype: String,
    /// The features, in column order.
    features: Vec<spec::RawFeature>,
}

fn fp32() -> String {
    "FP32".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    /// ONNX output with the predicted class index (int64 [N]).
    label: String,
    /// ONNX output with class probabilities (float [N, classes]).
    probabilities: Option<String>,
    /// Class names, by index.
    classes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClassification {
    /// Output with the predicted class: INT64 indices into `classes`, or
    /// BYTES class names.
    label: String,
    /// Output with class probabilities, [N, classes].
    probabilities: Option<String>,
    /// Class names, by index.
    classes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegression {
    /// Output with the predicted value(s).
    output: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    /// Sessions (parallel inference calls) of this model. Default:
    /// `runtime.sessions_per_model`.
    sessions: Option<usize>,
    /// Threads one call may use inside an operator. Default 1.
    intra_op_threads: Option<usize>,
    /// Threads one call may use across independent operators. Default 1.
    inter_op_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    /// The model-wide policy.
    #[serde(flatten)]
    fields: RawPolicyFields,
    /// Per-role overrides: `[policy.roles.analyst] output = "probabilities"`.
    #[serde(default)]
    roles: std::collections::BTreeMap<String, RawPolicyFields>,
}

/// One output policy; unset fields take the model's (for a role) or the
/// defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyFields {
    /// Classification: "label" (default) or "probabilities".
    output: Option<String>,
    /// Further outputs (by name) this policy shows, rounded: logits,
    /// embeddings, a tensor model's outputs. Default none.
    outputs: Option<Vec<String>>,
    /// Decimals floats are rounded to. Default 2.
    decimals: Option<u32>,
    /// Show only the k most probable classes' probabilities (the others as 0).
    top_k: Option<u32>,
    /// Below this top probability the label is "uncertain".
    confidence_threshold: Option<f64>,
    /// Scale of Laplace noise added to probabilities (then renormalized)
    /// or, for regression, to the value. Default 0.
    noise: Option<f64>,
    /// Regression: values are clamped to `[lo, hi]`.
    clamp: Option<[f64; 2]>,
}

/// What a model is for; decides the output policy's choices.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Predicts a class: a label output, optionally probabilities.
    Classification {
        /// Index of the label output in `ModelCard::outputs`.
        label: usize,
        /// Index of the probabilities output.
        probabilities: Option<usize>,
        /// Class names.
        classes: Vec<String>,
    },
    /// Predicts values.
    Regression {
        /// Index of the value output.
        output: usize,
    },
    /// Anything else (embeddings, logits): outputs are shown only where a
    /// policy lists them.
    Tensor,
}

impl Task {
    /// The name used in cards and metadata.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Classification { .. } => "classification",
            Self::Regression { .. } => "regression",
            Self::Tensor => "tensor",
        }
    }
}

/// Default output policy of a model (or of a role).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyDefaults {
    /// Classification: whether probabilities are returned (else labels only).
    pub probabilities: bool,
    /// Further outputs shown, as a bit set over `ModelCard::outputs`.
    pub outputs: u64,
    /// Decimals floats are rounded to.
    pub decimals: u32,
    /// Only the k most probable classes' probabilities are shown.
    pub top_k: Option<u32>,
    /// Below this top probability the label is `uncertain`.
    pub confidence_threshold: Option<f64>,
    /// Laplace noise scale on probabilities or regression values (0: none).
    pub noise: f64,
    /// Regression values clamped to this range.
    pub clamp: Option<(f64, f64)>,
}

impl PolicyDefaults {
    /// The built-in default: label only (classification), the value
    /// (regression), nothing of a tensor model; 2 decimals.
    pub const DEFAULT: Self = Self {
        probabilities: false,
        outputs: 0,
        decimals: 2,
        top_k: None,
        confidence_threshold: None,
        noise: 0.0,
        clamp: None,
    };

    /// The more revealing of two policies, field by field (a caller with
    /// several roles gets what any of them may see).
    pub fn most_revealing(self, other: Self) -> Self {
        Self {
            probabilities: self.probabilities || other.probabilities,
            outputs: self.outputs | other.outputs,
            decimals: self.decimals.max(other.decimals),
            top_k: match (self.top_k, other.top_k) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
            confidence_threshold: match (self.confidence_threshold, other.confidence_threshold) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            },
            noise: self.noise.min(other.noise),
            clamp: match (self.clamp, other.clamp) {
                (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
                _ => None,
            },
        }
    }

    /// Whether output `i` of the card is among the further outputs shown.
    pub const fn shows(&self, i: usize) -> bool {
        i < 64 && self.outputs & (1 << i) != 0
    }
}

/// ONNX Runtime settings of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Sessions, if the card sets them.
    pub sessions: Option<usize>,
    /// Intra-op threads per call.
    pub intra_op_threads: usize,
    /// Inter-op threads per call.
    pub inter_op_threads: usize,
}

/// A checked model card.
#[derive(Debug, Clone)]
pub struct ModelCard {
    /// Model description.
    pub description: String,
    /// What the model is for.
    pub task: Task,
    /// Most rows (entries of the batch dimension) per request, and per
    /// batched inference call.
    pub max_batch: usize,
    /// Whether the first dimension of every tensor is the batch.
    pub batched: bool,
    /// Whether concurrent requests are grouped into one inference call
    /// (`dynamic_batching`, default true, and only for batched models).
    pub dynamic_batching: bool,
    /// Pinned version, if any.
    pub pinned_version: Option<u64>,
    /// The inputs, in card order.
    pub inputs: Vec<InputSpec>,
    /// The outputs the API may return, in card order.
    pub outputs: Vec<OutputSpec>,
    /// ONNX Runtime sessions and threads.
    pub runtime: RuntimeSettings,
    /// Default output policy.
    pub policy: PolicyDefaults,
    /// Output policy per role name, overriding the default for callers with
    /// that role.
    pub role_policies: Vec<(String, PolicyDefaults)>,
    /// Whether audit records keep the validated input values (`[audit] record_inputs`).
    pub record_inputs: bool,
    /// Pinned SHA-256 of each version's plaintext ONNX file (`[integrity] sha256`).
    pub pinned_sha256: BTreeMap<u64, String>,
    /// Every version must be signed (`[integrity] require_signature`).
    pub require_signature: bool,
    /// The input the defenses watch (index into `inputs`), if any defense is on.
    pub defended_input: Option<usize>,
    /// Defenses against ML attacks.
    pub defenses: crate::defenses::DefenseSettings,
    /// Gateway mode: the upstream server that answers for this model.
    pub upstream: Option<Upstream>,
    /// `[budget]`: rows per principal on this model per day and month, for
    /// every principal without the admin role (docs/defenses.md, "Budgets").
    pub budget: Option<warden_core::config::Budget>,
    /// Dimensions that must be equal in every request, as `(input, dimension)`
    /// groups: the graph names them with one symbol (a text model's
    /// `sequence` in both `input_ids` and `attention_mask`). Read from the
    /// graph at load ([`crate::engine::tied_dimensions`]); a request whose
    /// tied dimensions differ would fail inside ONNX Runtime, or broadcast
    /// silently to a wrong answer.
    pub tied_dims: Vec<Vec<(usize, usize)>>,
}

/// Card-wide settings that come from the server configuration.
#[derive(Debug, Clone, Copy)]
pub struct CardDefaults {
    /// `models.default_max_batch`
    pub max_batch: usize,
    /// `validation.range_tolerance`
    pub range_tolerance: f64,
}

/// Why a card was refused. Names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CardError(pub String);

impl ModelCard {
    /// Reads and checks `model.toml`.
    pub fn load(path: &Path, defaults: CardDefaults) -> Result<Self, CardError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| CardError(format!("cannot read: {e}")))?;
        Self::parse(&text, defaults)
    }

    /// Class names (empty unless the task is classification).
    pub fn classes(&self) -> &[String] {
        match &self.task {
            Task::Classification { classes, .. } => classes,
            _ => &[],
        }
    }

    /// The tabular input (the one with named features), if any.
    pub fn tabular(&self) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| !i.features.is_empty())
    }

    /// The input the defenses watch.
    pub fn defended(&self) -> Option<&InputSpec> {
        self.defended_input.and_then(|i| self.inputs.get(i))
    }

    /// Bounds each integer input by the lookup table the graph indexes with
    /// it (`tables`: input name → rows, from
    /// [`crate::graph::lookup_tables`]): ids the card leaves open are then
    /// `[0, rows)`, the smallest table over the model's versions. A bound
    /// the card declares must lie within the table (ONNX Gather reads a
    /// negative index from the end, and one past the end fails): a card
    /// that declares more is refused, naming the input.
    pub fn bound_ids(
        &mut self,
        tables: &std::collections::HashMap<String, u64>,
    ) -> Result<(), CardError> {
        for input in &mut self.inputs {
            let Some(&rows) = tables.get(&input.name) else {
                continue;
            };
            if !input.datatype.is_integer() || !input.features.is_empty() {
                continue;
            }
            if !input.declared {
                input.valid = match input.valid {
                    Valid::Ids(n) => Valid::Ids(n.min(rows)),
                    _ => Valid::Ids(rows),
                };
                continue;
            }
            let fits = match input.valid {
                Valid::Ids(n) => n <= rows,
                Valid::Range { lo, hi } => lo >= 0.0 && hi < rows as f64,
                _ => false,
            };
            if !fits {
                return Err(CardError(format!(
                    "inputs.{}: the graph looks its values up in a table of {rows} entries, so they must lie in [0, {rows}); declare ids = {rows} or less, or a range within it",
                    input.name
                )));
            }
        }
        Ok(())
    }

    /// Position of an output by name.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }

    /// Parses and checks card text.
    pub fn parse(text: &str, defaults: CardDefaults) -> Result<Self, CardError> {
        let raw: RawCard = toml::from_str(text).map_err(|e| CardError(e.to_string()))?;
        let bad = |key: &str, msg: &str| CardError(format!("{key}: {msg}"));

        let tolerance = raw.range_tolerance.unwrap_or(defaults.range_tolerance);
        if !(tolerance.is_finite() && tolerance >= 0.0) {
            return Err(bad("range_tolerance", "must be a finite number >= 0"));
        }
        let max_batch = raw.max_batch.unwrap_or(defaults.max_batch);
        if max_batch == 0 || max_batch > 100_000 {
            return Err(bad("max_batch", "must be between 1 and 100000"));
        }
        let batched = raw.batch_dimension.unwrap_or(true);
        let cx = SpecContext {
            tolerance,
            max_batch,
            batched,
        };

        // The first card format becomes the tensor form.
        let (raw_inputs, raw_outputs, classification, input_key) = match (raw.input, raw.output) {
            (Some(input), Some(output)) => {
                if !raw.inputs.is_empty() || !raw.outputs.is_empty() || raw.classification.is_some()
                {
                    return Err(bad(
                        "input",
                        "[input]/[output] (first card format) and [[inputs]]/[[outputs]] do not mix",
                    ));
                }
                if input.datatype != "FP32" {
                    return Err(bad("input.datatype", "only \"FP32\" in this card format"));
                }
                if input.features.is_empty() {
                    return Err(bad("input.features", "at least one feature is required"));
                }
                if output.classes.is_empty() {
                    return Err(bad("output.classes", "at least one class is required"));
                }
                let mut outputs = vec![RawOutputSpec {
                    name: output.label.clone(),
                    datatype: "INT64".into(),
                    shape: if batched { vec![-1] } else { vec![1] },
                }];
                if let Some(p) = &output.probabilities {
                    let c = output.classes.len().max(1) as i64;
                    outputs.push(RawOutputSpec {
                        name: p.clone(),
                        datatype: "FP32".into(),
                        shape: if batched { vec![-1, c] } else { vec![1, c] },
                    });
                }
                let inputs = vec![RawInputSpec {
                    name: input.name,
                    datatype: input.datatype,
                    shape: None,
                    features: input.features,
                    range: None,
                    min: None,
                    max: None,
                    mean: None,
                    std: None,
                    ids: None,
                    categories: None,
                    max_length: None,
                    max_shape: None,
                    max_elements: None,
                    image: false,
                }];
                let classification = RawClassification {
                    label: output.label,
                    probabilities: output.probabilities,
                    classes: output.classes,
                };
                (inputs, outputs, Some(classification), "input")
            }
            (None, None) => (raw.inputs, raw.outputs, raw.classification, "inputs"),
            _ => return Err(bad("input", "[input] and [output] go together")),
        };
        if raw_inputs.is_empty() {
            return Err(bad("inputs", "at least one [[inputs]] table is required"));
        }
        if raw_outputs.is_empty() {
            return Err(bad("outputs", "at least one [[outputs]] table is required"));
        }
        if raw_outputs.len() > 64 {
            return Err(bad("outputs", "at most 64"));
        }
        let mut inputs: Vec<InputSpec> = Vec::with_capacity(raw_inputs.len());
        for (i, r) in raw_inputs.into_iter().enumerate() {
            let key = if input_key == "input" {
                "input".to_owned()
            } else {
                format!("inputs[{i}]")
            };
            let spec = spec::input(&key, r, &cx)?;
            if inputs.iter().any(|o| o.name == spec.name) {
                return Err(CardError(format!(
                    "{key}.name: {:?} is repeated",
                    spec.name
                )));
            }
            inputs.push(spec);
        }
        let mut outputs: Vec<OutputSpec> = Vec::with_capacity(raw_outputs.len());
        for (i, r) in raw_outputs.into_iter().enumerate() {
            let key = format!("outputs[{i}]");
            let spec = spec::output(&key, r)?;
            if outputs.iter().any(|o| o.name == spec.name) {
                return Err(CardError(format!(
                    "{key}.name: {:?} is repeated",
                    spec.name
                )));
            }
            if batched && spec.shape.first() != Some(&-1) {
                return Err(CardError(format!(
                    "{key}.shape: the first dimension is the batch and must be -1 (or set batch_dimension = false)"
                )));
            }
            outputs.push(spec);
        }

        let task = task(
            raw.task.as_deref(),
            classification,
            raw.regression,
            &mut outputs,
        )?;
        let policy_key = |k: &str| k.to_owned();
        let default_policy = policy(
            &policy_key("policy"),
            &raw.policy.fields,
            PolicyDefaults::DEFAULT,
            &task,
            &outputs,
        )?;
        let mut role_policies = Vec::with_capacity(raw.policy.roles.len());
        for (role, p) in raw.policy.roles {
            if !warden_core::is_model_name(&role) {
                return Err(CardError(format!(
                    "policy.roles: {role:?} is not a role name"
                )));
            }
            let resolved = policy(
                &format!("policy.roles.{role}"),
                &p,
                default_policy,
                &task,
                &outputs,
            )?;
            role_policies.push((role, resolved));
        }

        let (defended_input, defenses) = defense_settings(raw.defenses, &inputs, &task)?;
        let mut pinned_sha256 = BTreeMap::new();
        for (version, hash) in &raw.integrity.sha256 {
            let v = version.parse::<u64>().map_err(|_| {
                CardError(format!(
                    "integrity.sha256: {version:?} is not a version number"
                ))
            })?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CardError(format!(
                    "integrity.sha256.{version}: expected 64 hex digits"
                )));
            }
            pinned_sha256.insert(v, hash.to_ascii_lowercase());
        }
        let upstream = raw.upstream.map(upstream::upstream).transpose()?;
        if upstream.is_some() && (!pinned_sha256.is_empty() || raw.integrity.require_signature) {
            return Err(bad(
                "integrity",
                "a model served by an [upstream] has no local file to pin or sign",
            ));
        }
        let runtime = match raw.runtime {
            None => RuntimeSettings {
                sessions: None,
                intra_op_threads: 1,
                inter_op_threads: 1,
            },
            Some(r) => {
                for (k, v) in [
                    ("sessions", r.sessions),
                    ("intra_op_threads", r.intra_op_threads),
                    ("inter_op_threads", r.inter_op_threads),
                ] {
                    if v.is_some_and(|v| !(1..=256).contains(&v)) {
                        return Err(CardError(format!("runtime.{k}: between 1 and 256")));
                    }
                }
                RuntimeSettings {
                    sessions: r.sessions,
                    intra_op_threads: r.intra_op_threads.unwrap_or(1),
                    inter_op_threads: r.inter_op_threads.unwrap_or(1),
                }
            }
        };

        let budget = match raw.budget {
            None => None,
            Some(b) => {
                if b.per_day.is_none() && b.per_month.is_none() {
                    return Err(CardError("budget: set per_day, per_month or both".into()));
                }
                if b.per_day == Some(0) || b.per_month == Some(0) {
                    return Err(CardError(
                        "budget: a budget of 0 rows serves nobody; remove the role's permission instead"
                            .into(),
                    ));
                }
                Some(warden_core::config::Budget {
                    per_day: b.per_day,
                    per_month: b.per_month,
                })
            }
        };
        Ok(Self {
            description: raw.description,
            task,
            max_batch,
            batched,
            dynamic_batching: raw.dynamic_batching.unwrap_or(true) && batched,
            pinned_version: raw.version,
            inputs,
            outputs,
            runtime,
            policy: default_policy,
            role_policies,
            record_inputs: raw.audit.record_inputs,
            pinned_sha256,
            require_signature: raw.integrity.require_signature,
            defended_input,
            defenses,
            upstream,
            budget,
            tied_dims: Vec::new(),
        })
    }

    /// The policy for a caller with `roles`: the default, unless a role has
    /// its own; with several, the most revealing of them.
    pub fn policy_for<'r>(&self, roles: impl IntoIterator<Item = &'r str>) -> PolicyDefaults {
        let mut chosen: Option<PolicyDefaults> = None;
        for role in roles {
            if let Some((_, p)) = self.role_policies.iter().find(|(r, _)| r == role) {
                chosen = Some(match chosen {
                    None => *p,
                    Some(c) => c.most_revealing(*p),
                });
            }
        }
        chosen.unwrap_or(self.policy)
    }
}

fn task(
    named: Option<&str>,
    classification: Option<RawClassification>,
    regression: Option<RawRegression>,
    outputs: &mut [OutputSpec],
) -> Result<Task, CardError> {
    let named = match (named, &classification, &regression) {
        (Some(t), ..) => t,
        (None, Some(_), _) => "classification",
        (None, None, Some(_)) => "regression",
        (None, None, None) => "tensor",
    };
    let find = |key: &str, name: &str| {
        outputs.iter().position(|o| o.name == name).ok_or_else(|| {
            CardError(format!(
                "{key}: {name:?} is not one of the card's [[outputs]]"
            ))
        })
    };
    match (named, classification, regression) {
        ("classification", Some(c), None) => {
            if c.classes.is_empty() {
                return Err(CardError(
                    "classification.classes: at least one class is required".into(),
                ));
            }
            let label = find("classification.label", &c.label)?;
            let l = &outputs[label];
            if !matches!(l.datatype, DataType::I64 | DataType::Bytes)
                || !(l.shape.len() == 1 || (l.shape.len() == 2 && l.shape[1] == 1))
            {
                return Err(CardError(format!(
                    "classification.label: output {:?} must be INT64 class indices or BYTES class names, [N] or [N, 1]",
                    l.name
                )));
            }
            let probabilities = c
                .probabilities
                .as_deref()
                .map(|p| find("classification.probabilities", p))
                .transpose()?;
            if let Some(p) = probabilities {
                let o = &outputs[p];
                let n = c.classes.len() as i64;
                if !matches!(o.datatype, DataType::F32 | DataType::F64)
                    || o.shape.len() != 2
                    || !(o.shape[1] == -1 || o.shape[1] == n)
                {
                    return Err(CardError(format!(
                        "classification.probabilities: output {:?} must be FP32 or FP64 [N, {n}] ({n} classes)",
                        o.name
                    )));
                }
                // One column per class, checked in every answer (a model or
                // upstream answering fewer would misalign every row).
                outputs[p].shape[1] = n;
            }
            Ok(Task::Classification {
                label,
                probabilities,
                classes: c.classes,
            })
        }
        ("classification", None, _) => Err(CardError(
            "task: \"classification\" needs a [classification] table (label, classes)".into(),
        )),
        ("regression", None, Some(r)) => {
            let output = find("regression.output", &r.output)?;
            if !outputs[output].datatype.is_float() {
                return Err(CardError(format!(
                    "regression.output: output {:?} must be FP16, FP32 or FP64",
                    r.output
                )));
            }
            Ok(Task::Regression { output })
        }
        ("regression", _, None) => Err(CardError(
            "task: \"regression\" needs a [regression] table (output)".into(),
        )),
        ("tensor", None, None) => Ok(Task::Tensor),
        ("classification" | "regression" | "tensor", ..) => Err(CardError(
            "task: [classification] and [regression] belong to their own task only".into(),
        )),
        (other, ..) => Err(CardError(format!(
            "task: {other:?}: expected \"classification\", \"regression\" or \"tensor\""
        ))),
    }
}

fn policy(
    key: &str,
    raw: &RawPolicyFields,
    base: PolicyDefaults,
    task: &Task,
    outputs: &[OutputSpec],
) -> Result<PolicyDefaults, CardError> {
    let err = |k: &str, msg: &str| CardError(format!("{key}{k}: {msg}"));
    let (classification, has_probabilities, classes, main) = match task {
        Task::Classification {
            probabilities,
            classes,
            label,
        } => (
            true,
            probabilities.is_some(),
            classes.len(),
            vec![Some(*label), *probabilities],
        ),
        Task::Regression { output } => (false, false, 0, vec![Some(*output)]),
        Task::Tensor => (false, false, 0, Vec::new()),
    };
    if !classification
        && (raw.output.is_some() || raw.top_k.is_some() || raw.confidence_threshold.is_some())
    {
        return Err(err(
            "",
            "output, top_k and confidence_threshold are for classification models",
        ));
    }
    if !matches!(task, Task::Regression { .. }) && raw.clamp.is_some() {
        return Err(err(".clamp", "is for regression models"));
    }
    if matches!(task, Task::Tensor) && raw.noise.is_some() {
        return Err(err(".noise", "is for classification and regression models"));
    }
    let probabilities = match raw.output.as_deref() {
        None => base.probabilities,
        Some("label") => false,
        Some("probabilities") => true,
        Some(_) => {
            return Err(err(".output", "expected \"label\" or \"probabilities\""));
        }
    };
    if probabilities && !has_probabilities {
        return Err(err(
            ".output",
            "\"probabilities\" needs a probabilities output",
        ));
    }
    let shown = match &raw.outputs {
        None => base.outputs,
        Some(names) => {
            let mut bits = 0u64;
            for name in names {
                let Some(i) = outputs.iter().position(|o| &o.name == name) else {
                    return Err(err(
                        ".outputs",
                        &format!("{name:?} is not one of the card's [[outputs]]"),
                    ));
                };
                if main.contains(&Some(i)) {
                    return Err(err(
                        ".outputs",
                        &format!("{name:?} is the task's own output: use output = \"...\" for it"),
                    ));
                }
                bits |= 1 << i;
            }
            bits
        }
    };
    let decimals = raw.decimals.unwrap_or(base.decimals);
    if decimals > 6 {
        return Err(err(".decimals", "at most 6"));
    }
    let top_k = match raw.top_k {
        Some(k) if k == 0 || k as usize > classes => {
            return Err(err(
                ".top_k",
                &format!("between 1 and the number of classes ({classes})"),
            ));
        }
        Some(k) => Some(k),
        None => base.top_k,
    };
    let confidence_threshold = match raw.confidence_threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => {
            return Err(err(".confidence_threshold", "between 0 and 1"));
        }
        Some(t) => Some(t),
        None => base.confidence_threshold,
    };
    if classification
        && (confidence_threshold.is_some() || raw.noise.is_some_and(|n| n > 0.0))
        && !has_probabilities
    {
        return Err(err(
            "",
            "confidence_threshold and noise need a probabilities output",
        ));
    }
    let noise = match raw.noise {
        Some(n) if classification && !(n.is_finite() && (0.0..=1.0).contains(&n)) => {
            return Err(err(".noise", "between 0 and 1"));
        }
        Some(n) if !(n.is_finite() && n >= 0.0) => {
            return Err(err(".noise", "a finite number >= 0"));
        }
        Some(n) => n,
        None => base.noise,
    };
    let clamp = match raw.clamp {
        Some([lo, hi]) if lo.is_finite() && hi.is_finite() && lo <= hi => Some((lo, hi)),
        Some(_) => return Err(err(".clamp", "must be [lo, hi], finite, with lo <= hi")),
        None => base.clamp,
    };
    Ok(PolicyDefaults {
        probabilities,
        outputs: shown,
        decimals,
        top_k,
        confidence_threshold,
        noise,
        clamp,
    })
}

fn defense_settings(
    raw: RawDefenses,
    inputs: &[InputSpec],
    task: &Task,
) -> Result<(Option<usize>, crate::defenses::DefenseSettings), CardError> {
    let any = raw.out_of_distribution.is_some()
        || raw.adversarial.is_some()
        || raw.extraction.is_some()
        || raw.similarity.is_some();
    if !any {
        if raw.input.is_some() {
            return Err(CardError("defenses.input: no defense is configured".into()));
        }
        return Ok((None, crate::defenses::DefenseSettings::default()));
    }
    // The watched input: named, or the only numeric one. The defenses work
    // on numbers (one row = one entry of the batch dimension, flattened).
    let numeric: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs[i].datatype.is_numeric())
        .collect();
    let watched = match &raw.input {
        Some(name) => inputs.iter().position(|i| &i.name == name).ok_or_else(|| {
            CardError(format!(
                "defenses.input: {name:?} is not one of the card's inputs"
            ))
        })?,
        None => match numeric.as_slice() {
            [only] => *only,
            [] => {
                return Err(CardError(
                    "defenses: the model has no numeric input to watch".into(),
                ));
            }
            _ => {
                return Err(CardError(
                    "defenses.input: the model has several numeric inputs; name the one the defenses watch".into(),
                ));
            }
        },
    };
    let spec = &inputs[watched];
    if !spec.datatype.is_numeric() {
        return Err(CardError(format!(
            "defenses.input: {:?} is {}; the defenses need a numeric input",
            spec.name, spec.datatype
        )));
    }
    let Some(width) = spec.fixed_row_len() else {
        return Err(CardError(format!(
            "defenses: input {:?} has dynamic dimensions after the batch; the defenses compare rows of one fixed size",
            spec.name
        )));
    };
    let has_probabilities = matches!(
        task,
        Task::Classification {
            probabilities: Some(_),
            ..
        }
    );
    let feature_bounds: Vec<Option<(f64, f64)>> = (0..width).map(|c| spec.bounds(c)).collect();
    let has_stats = (0..width).all(|c| {
        let (m, s) = spec.element_stats(c);
        m.is_some() && s.is_some()
    });
    let features = width;
    use crate::defenses::{
        Action, DefenseSettings, ExtractionSettings, OodSettings, SqueezeSettings,
    };
    let action = |key: &str, a: Option<&str>| match a.unwrap_or("flag") {
        "flag" => Ok(Action::Flag),
        "throttle" => Ok(Action::Throttle),
        "reject" => Ok(Action::Reject),
        other => Err(CardError(format!(
            "{key}.action: {other:?}: expected \"flag\", \"throttle\" or \"reject\""
        ))),
    };
    let positive = |key: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(CardError(format!("{key}: must be a positive number")))
        }
    };
    let ood = match raw.out_of_distribution {
        None => None,
        Some(o) => {
            let k = "defenses.out_of_distribution";
            if o.mahalanobis_threshold.is_some() != o.stats.is_some() {
                return Err(CardError(format!(
                    "{k}: mahalanobis_threshold and stats go together"
                )));
            }
            if o.z_threshold.is_some() && !has_stats {
                return Err(CardError(format!(
                    "{k}.z_threshold: needs training mean and std for input {:?} (per feature, or the input's mean and std)",
                    spec.name
                )));
            }
            Some(OodSettings {
                action: action(k, o.action.as_deref())?,
                z_threshold: o
                    .z_threshold
                    .map(|z| positive(&format!("{k}.z_threshold"), z))
                    .transpose()?,
                mahalanobis_threshold: o
                    .mahalanobis_threshold
                    .map(|t| positive(&format!("{k}.mahalanobis_threshold"), t))
                    .transpose()?,
                stats: o.stats,
            })
        }
    };
    let adversarial = match raw.adversarial {
        Some(_)
            if !feature_bounds.iter().all(|b| {
                b.is_none_or(|(lo, hi)| lo.is_finite() && hi.is_finite() && hi - lo < 1e12)
            }) =>
        {
            return Err(CardError(
                "defenses.adversarial: every numeric feature needs finite bounds (min/max or range) to squeeze"
                    .into(),
            ));
        }
        None => None,
        Some(a) => {
            let k = "defenses.adversarial";
            if !has_probabilities {
                return Err(CardError(format!("{k}: needs output.probabilities")));
            }
            let bit_depth = a.bit_depth.unwrap_or(4);
            if !(1..=16).contains(&bit_depth) {
                return Err(CardError(format!("{k}.bit_depth: between 1 and 16")));
            }
            if let Some([h, w]) = a.image
                && h.checked_mul(w) != Some(features)
            {
                return Err(CardError(format!(
                    "{k}.image: {h} x {w} is not the {features} features"
                )));
            }
            // Squeezed copies join the input's batch, so there must be one.
            if !spec.batched {
                return Err(CardError(format!(
                    "{k}: feature squeezing runs squeezed copies in the input's batch, so the model needs a batch dimension"
                )));
            }
            // An input marked `image = true` smooths over its last two
            // dimensions, each channel (the dimensions between) apart.
            let image = a.image.map(|[h, w]| (h, w)).or_else(|| {
                spec.image.then(|| {
                    let n = spec.shape.len();
                    (spec.shape[n - 2] as usize, spec.shape[n - 1] as usize)
                })
            });
            if let Some((h, w)) = image
                && (h == 0 || w == 0 || features % (h * w) != 0)
            {
                return Err(CardError(format!(
                    "{k}.image: {h} x {w} does not divide the {features} values of a row"
                )));
            }
            Some(SqueezeSettings {
                action: action(k, a.action.as_deref())?,
                bit_depth,
                image,
                threshold: positive(&format!("{k}.threshold"), a.threshold)?,
            })
        }
    };
    let extraction = match raw.extraction {
        None => None,
        Some(e) => {
            let k = "defenses.extraction";
            let delta = e.delta.unwrap_or(0.9);
            if !(0.0..=1.0).contains(&delta) {
                return Err(CardError(format!("{k}.delta: between 0 and 1")));
            }
            let min_queries = e.min_queries.unwrap_or(100).max(3);
            let max_points = e.max_points.unwrap_or(500);
            if !(10..=100_000).contains(&max_points) {
                return Err(CardError(format!("{k}.max_points: between 10 and 100000")));
            }
            Some(ExtractionSettings {
                action: action(k, e.action.as_deref())?,
                delta,
                min_queries,
                every: e.every.unwrap_or(10).max(1),
                max_points,
                standardize: e.standardize.unwrap_or(true),
            })
        }
    };
    let similarity = match raw.similarity {
        None => None,
        Some(r) => {
            let k = "defenses.similarity";
            if !feature_bounds
                .iter()
                // (A declared bound, not the datatype's own: quantizing
                // across the whole float range would make every row alike.)
                .all(|b| b.is_some_and(|(lo, hi)| hi > lo && hi - lo < 1e12))
            {
                return Err(CardError(format!(
                    "{k}: every element of input {:?} needs finite bounds (min/max or range) to quantize",
                    spec.name
                )));
            }
            let levels = r.levels.unwrap_or(4);
            if !(1..=65_536).contains(&levels) {
                return Err(CardError(format!("{k}.levels: between 1 and 65536")));
            }
            let image_width = spec
                .image
                .then(|| spec.shape.last().and_then(|&w| usize::try_from(w).ok()))
                .flatten();
            let window = r
                .window
                .unwrap_or_else(|| image_width.unwrap_or(8).min(width));
            if window == 0 || window > width {
                return Err(CardError(format!(
                    "{k}.window: between 1 and the {width} values of a row"
                )));
            }
            let windows = width - window + 1;
            let top_k = r.top_k.unwrap_or_else(|| 30.min(windows));
            if top_k == 0 || top_k > windows {
                return Err(CardError(format!(
                    "{k}.top_k: a row of {width} values has {windows} windows of {window}; top_k must be between 1 and {windows}"
                )));
            }
            let threshold = r.threshold.unwrap_or_else(|| (top_k * 5).div_ceil(6));
            if threshold == 0 || threshold > top_k {
                return Err(CardError(format!(
                    "{k}.threshold: between 1 and top_k ({top_k})"
                )));
            }
            let capacity = r.capacity.unwrap_or(50_000);
            if !(100..=10_000_000).contains(&capacity) {
                return Err(CardError(format!("{k}.capacity: between 100 and 10000000")));
            }
            Some(crate::defenses::similarity::SimilaritySettings {
                action: action(k, r.action.as_deref())?,
                levels,
                window,
                top_k,
                threshold,
                capacity,
            })
        }
    };
    Ok((
        Some(watched),
        DefenseSettings {
            out_of_distribution: ood,
            adversarial,
            extraction,
            similarity,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const DEFAULTS: CardDefaults = CardDefaults {
        max_batch: 64,
        range_tolerance: 0.25,
    };

    const CARD: &str = r#"
description = "t"
[input]
name = "input"
[[input.features]]
name = "a"
min = 0.0
max = 10.0
[[input.features]]
name = "colour"
categories = ["red", "green"]
[[input.features]]
name = "pixel"
min = 0.0
max = 0.0
range = [0.0, 16.0]
[output]
label = "label"
probabilities = "probabilities"
classes = ["x", "y"]
"#;

    #[test]
    fn parses_and_widens_ranges() {
        let c = ModelCard::parse(CARD, DEFAULTS).unwrap();
        let input = &c.inputs[0];
        assert_eq!(
            input.features[0].kind,
            FeatureKind::Numeric { lo: -2.5, hi: 12.5 }
        );
        assert_eq!(input.feature_index["colour"], 1);
        assert_eq!(input.shape, [-1, 3]);
        assert_eq!(input.datatype, DataType::F32);
        assert_eq!(c.outputs[0].datatype, DataType::I64);
        assert_eq!(c.outputs[1].shape, [-1, 2]);
        assert!(matches!(
            c.task,
            Task::Classification {
                label: 0,
                probabilities: Some(1),
                ..
            }
        ));
        assert_eq!(c.policy, PolicyDefaults::DEFAULT);
        assert_eq!(c.max_batch, 64);
        assert!(c.dynamic_batching);
        let off = ModelCard::parse(&format!("dynamic_batching = false\n{CARD}"), DEFAULTS).unwrap();
        assert!(!off.dynamic_batching);
        let f = &c.inputs[0].features[0];
        assert_eq!(f.check_number(12.0), Ok(12.0));
        assert!(f.check_number(13.0).is_err());
        assert!(f.check_number(f64::NAN).is_err());
        assert!(f.check_str("x").is_err());
        assert_eq!(
            c.inputs[0].features[2].kind,
            FeatureKind::Numeric { lo: 0.0, hi: 16.0 }
        );
        let colour = &c.inputs[0].features[1];
        assert_eq!(colour.check_str("green"), Ok(1.0));
        assert_eq!(colour.check_number(0.0), Ok(0.0));
        assert!(colour.check_number(2.0).is_err() && colour.check_number(0.5).is_err());
        assert!(colour.check_str("blue").is_err());
    }

    #[test]
    fn refuses_bad_cards_naming_the_key() {
        let cases = [
            (
                CARD.replace("name = \"a\"", "name = \"colour\""),
                "input.features[1].name",
            ),
            (
                CARD.replace("max = 10.0", "max = -1.0"),
                "input.features[0]",
            ),
            (
                CARD.replace("classes = [\"x\", \"y\"]", "classes = []"),
                "output.classes",
            ),
            (
                format!("{CARD}\n[policy]\noutput = \"all\"\n"),
                "policy.output",
            ),
            (
                format!("{CARD}\n[policy]\ndecimals = 9\n"),
                "policy.decimals",
            ),
            (format!("max_batch = 0\n{CARD}"), "max_batch"),
            (
                format!("{CARD}\n[policy.roles.analyst]\noutput = \"everything\"\n"),
                "policy.roles.analyst.output",
            ),
            (
                CARD.replace("range = [0.0, 16.0]", "range = [16.0, 0.0]"),
                "input.features[2].range",
            ),
            (format!("colour = 1\n{CARD}"), "colour"),
        ];
        for (text, key) in cases {
            let e = ModelCard::parse(&text, DEFAULTS).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn demo_cards_parse() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        for name in ["iris", "breast-cancer", "digits"] {
            let card = ModelCard::load(&models.join(name).join("model.toml"), DEFAULTS).unwrap();
            assert!(
                card.tabular().is_some() && !card.classes().is_empty(),
                "{name}"
            );
        }
        for (name, task) in [
            ("diabetes", "regression"),
            ("recommender", "regression"),
            ("digits-cnn", "classification"),
            ("sentiment", "classification"),
        ] {
            let card = ModelCard::load(&models.join(name).join("model.toml"), DEFAULTS).unwrap();
            assert_eq!(card.task.as_str(), task, "{name}");
        }
    }

    const TENSOR_CARD: &str = r#"
task = "classification"
[[inputs]]
name = "ids"
datatype = "INT64"
shape = [-1, -1]
ids = 100
max_shape = [8, 32]
[[inputs]]
name = "mask"
datatype = "BOOL"
shape = [-1, -1]
max_shape = [8, 32]
[[outputs]]
name = "label"
datatype = "INT64"
shape = [-1]
[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 2]
[[outputs]]
name = "logits"
datatype = "FP32"
shape = [-1, 2]
[classification]
label = "label"
probabilities = "probabilities"
classes = ["no", "yes"]
[policy.roles.admin]
output = "probabilities"
outputs = ["logits"]
"#;

    #[test]
    fn declared_ids_must_fit_the_graphs_table() {
        let tables = |rows: u64| std::collections::HashMap::from([("ids".to_owned(), rows)]);
        // ids = 100 over a table of 100 or more: kept.
        let mut c = ModelCard::parse(TENSOR_CARD, DEFAULTS).unwrap();
        c.bound_ids(&tables(500)).unwrap();
        assert_eq!(c.inputs[0].valid, Valid::Ids(100));
        // Over a table of 50: an id in [50, 100) would read past its end.
        let mut c = ModelCard::parse(TENSOR_CARD, DEFAULTS).unwrap();
        let e = c.bound_ids(&tables(50)).unwrap_err();
        assert!(e.to_string().contains("inputs.ids"), "{e}");
        // A declared range reaching below 0 (Gather reads -1 from the end).
        let ranged = TENSOR_CARD.replace("ids = 100", "range = [-5, 20]");
        let mut c = ModelCard::parse(&ranged, DEFAULTS).unwrap();
        assert!(c.bound_ids(&tables(50)).is_err());
        // Left open: bounded by the table.
        let open = TENSOR_CARD.replace("ids = 100\n", "");
        let mut c = ModelCard::parse(&open, DEFAULTS).unwrap();
        c.bound_ids(&tables(50)).unwrap();
        assert_eq!(c.inputs[0].valid, Valid::Ids(50));
    }

    #[test]
    fn tensor_cards_declare_every_input_and_output() {
        let c = ModelCard::parse(TENSOR_CARD, DEFAULTS).unwrap();
        assert_eq!(c.inputs.len(), 2);
        assert_eq!(c.inputs[0].valid, Valid::Ids(100));
        assert_eq!(c.inputs[0].max_shape, [8, 32]);
        assert_eq!(c.inputs[0].max_elements, 256);
        assert_eq!(c.inputs[1].datatype, DataType::Bool);
        let admin = c.policy_for(["admin"]);
        assert!(admin.probabilities && admin.shows(2));
        assert!(
            !c.policy.probabilities && !c.policy.shows(2),
            "secure default"
        );
    }

    #[test]
    fn tensor_cards_are_refused_naming_the_key() {
        let cases = [
            (
                TENSOR_CARD.replace("max_shape = [8, 32]\n[[inputs]]", "[[inputs]]"),
                "inputs[0].max_shape",
            ),
            (
                TENSOR_CARD.replace(
                    "\"INT64\"\nshape = [-1, -1]\nids",
                    "\"FP32\"\nshape = [-1, -1]\nids",
                ),
                "inputs[0].ids",
            ),
            (
                TENSOR_CARD.replace("\"BOOL\"", "\"STRING\""),
                "inputs[1].datatype",
            ),
            (
                TENSOR_CARD.replace(
                    "shape = [-1, 2]\n[[outputs]]",
                    "shape = [-1, 3]\n[[outputs]]",
                ),
                "classification.probabilities",
            ),
            (
                TENSOR_CARD.replace("outputs = [\"logits\"]", "outputs = [\"nope\"]"),
                "policy.roles.admin.outputs",
            ),
            (
                TENSOR_CARD.replace("label = \"label\"", "label = \"logits\""),
                "classification.label",
            ),
            (
                TENSOR_CARD.replace("task = \"classification\"", "task = \"ranking\""),
                "task",
            ),
            (
                TENSOR_CARD.replace("shape = [-1, -1]\nids", "shape = [4, -1]\nids"),
                "inputs[0].shape",
            ),
            (
                format!("{TENSOR_CARD}\n[defenses.extraction]\n"),
                "defenses",
            ),
        ];
        for (text, key) in cases {
            let e = ModelCard::parse(&text, DEFAULTS).unwrap_err().to_string();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }

    /// Defenses on tensor inputs: the watched input is the only numeric
    /// one or the named one; an input they cannot apply to is refused.
    #[test]
    fn defenses_watch_one_numeric_input() {
        let image = r#"
task = "classification"
[[inputs]]
name = "image"
datatype = "FP32"
shape = [-1, 1, 8, 8]
range = [0.0, 16.0]
mean = 4.9
std = 6.0
image = true
[[outputs]]
name = "label"
datatype = "INT64"
shape = [-1]
[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 2]
[classification]
label = "label"
probabilities = "probabilities"
classes = ["a", "b"]
[defenses.adversarial]
threshold = 0.5
[defenses.out_of_distribution]
z_threshold = 4.0
[defenses.extraction]
"#;
        let c = ModelCard::parse(image, DEFAULTS).unwrap();
        assert_eq!(c.defended_input, Some(0));
        assert_eq!(c.defenses.adversarial.as_ref().unwrap().image, Some((8, 8)));
        let no_stats = image.replace("mean = 4.9\nstd = 6.0\n", "");
        let e = ModelCard::parse(&no_stats, DEFAULTS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("z_threshold"), "{e}");
        let e = ModelCard::parse(
            &TENSOR_CARD.replace(
                "[policy.roles.admin]",
                "[defenses.extraction]\n[policy.roles.admin]",
            ),
            DEFAULTS,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("dynamic dimensions"), "{e}");
        let bytes = image.replace("datatype = \"FP32\"\nshape = [-1, 1, 8, 8]\nrange = [0.0, 16.0]\nmean = 4.9\nstd = 6.0\nimage = true", "datatype = \"BYTES\"\nshape = [-1]");
        let e = ModelCard::parse(&bytes, DEFAULTS).unwrap_err().to_string();
        assert!(e.starts_with("defenses"), "{e}");
    }

    /// `[defenses.similarity]`: defaults from the input (an image's width
    /// as the window, 30 hashes, 5/6 of them to match); settings a row
    /// cannot carry, and inputs without bounds, are refused naming the key.
    #[test]
    fn similarity_settings_default_from_the_input_and_are_checked() {
        let image = r#"
task = "classification"
[[inputs]]
name = "image"
datatype = "FP32"
shape = [-1, 1, 8, 8]
range = [0.0, 16.0]
image = true
[[outputs]]
name = "label"
datatype = "INT64"
shape = [-1]
[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 2]
[classification]
label = "label"
probabilities = "probabilities"
classes = ["a", "b"]
[defenses.similarity]
action = "reject"
"#;
        let c = ModelCard::parse(image, DEFAULTS).unwrap();
        let s = c.defenses.similarity.as_ref().unwrap();
        assert_eq!(
            (
                s.action,
                s.levels,
                s.window,
                s.top_k,
                s.threshold,
                s.capacity
            ),
            (crate::defenses::Action::Reject, 4, 8, 30, 25, 50_000)
        );
        for (extra, key) in [
            ("window = 65", "defenses.similarity.window"),
            (
                "window = 40
top_k = 30",
                "defenses.similarity.top_k",
            ),
            ("threshold = 31", "defenses.similarity.threshold"),
            ("capacity = 10", "defenses.similarity.capacity"),
            ("levels = 0", "defenses.similarity.levels"),
            ("action = \"block\"", "defenses.similarity.action"),
        ] {
            let text = image.replace("action = \"reject\"\n", &format!("{extra}\n"));
            let e = ModelCard::parse(&text, DEFAULTS).unwrap_err().to_string();
            assert!(e.starts_with(key), "{extra}: {e}");
        }
        let unbounded = image.replace("range = [0.0, 16.0]\n", "");
        let e = ModelCard::parse(&unbounded, DEFAULTS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("finite bounds"), "{e}");
    }

    /// `[budget]`: rows per day and month; an empty or zero budget is refused.
    #[test]
    fn a_budget_is_read_and_checked() {
        let with = |b: &str| format!("{TENSOR_CARD}\n[budget]\n{b}\n");
        let c = ModelCard::parse(&with("per_day = 300"), DEFAULTS).unwrap();
        assert_eq!(
            c.budget,
            Some(warden_core::config::Budget {
                per_day: Some(300),
                per_month: None
            })
        );
        for (bad, says) in [
            ("", "budget"),
            ("per_day = 0", "budget"),
            ("per_week = 3", "per_week"),
        ] {
            let e = ModelCard::parse(&with(bad), DEFAULTS)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// A first-format card and the same card written as tensors are the
    /// same checked card.
    #[test]
    fn the_first_card_format_is_the_same_card() {
        let tensor = r#"
description = "t"
[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 3]
[[inputs.features]]
name = "a"
min = 0.0
max = 10.0
[[inputs.features]]
name = "colour"
categories = ["red", "green"]
[[inputs.features]]
name = "pixel"
min = 0.0
max = 0.0
range = [0.0, 16.0]
[[outputs]]
name = "label"
datatype = "INT64"
shape = [-1]
[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 2]
[classification]
label = "label"
probabilities = "probabilities"
classes = ["x", "y"]
"#;
        let a = ModelCard::parse(CARD, DEFAULTS).unwrap();
        let b = ModelCard::parse(tensor, DEFAULTS).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.outputs, b.outputs);
        assert_eq!(a.task, b.task);
        assert_eq!(a.policy, b.policy);
    }
}
