//! The model card (`models/<name>/model.toml`): what a model accepts, what
//! it answers, and what callers may see of the answer.
//!
//! Raw serde structs (`deny_unknown_fields`) become a checked [`ModelCard`];
//! the server only sees the checked form.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

/// The card as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    /// One line for humans; shown in model metadata.
    #[serde(default)]
    description: String,
    /// Most rows one request may carry. Default: `models.default_max_batch` (64).
    max_batch: Option<usize>,
    /// Group concurrent requests into one inference call (default true).
    dynamic_batching: Option<bool>,
    /// Serve this version instead of the highest one present.
    version: Option<u64>,
    /// Overrides `validation.range_tolerance` for this model.
    range_tolerance: Option<f64>,
    /// The input tensor and its features, in order.
    input: RawInput,
    /// The ONNX outputs and class names.
    output: RawOutput,
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
    upstream: Option<RawUpstream>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    /// Base URL of the server (`https://triton.internal:8000`).
    url: String,
    /// The model's name on the server. Default: this model's name.
    model: Option<String>,
    /// The version to ask the server for. Default: the server's choice.
    version: Option<String>,
    /// PEM file of the CA that signed the server's certificate (https);
    /// relative paths are from the model folder. Default: the system roots.
    ca: Option<std::path::PathBuf>,
    /// PEM client certificate chain, for servers that require mTLS.
    client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `client_cert`.
    client_key: Option<std::path::PathBuf>,
    /// Sent as `Authorization: Bearer <token>` on every call and readiness
    /// check: `{ env = "…" }` or `{ file = "…" }` (relative to the model
    /// folder), never inline.
    bearer_token: Option<warden_core::SecretSource>,
    /// Default 1s.
    #[serde(default, deserialize_with = "warden_core::config::duration")]
    connect_timeout: Option<std::time::Duration>,
    /// Whole-call limit (connect, send, answer). Default 10s.
    #[serde(default, deserialize_with = "warden_core::config::duration")]
    timeout: Option<std::time::Duration>,
    /// Retries after a failure to connect (never after a request was sent). Default 2.
    retries: Option<u32>,
    /// Calls in flight to the server at once; beyond it requests wait up
    /// to `runtime.queue_timeout`, then get `overloaded`. Default 64.
    max_in_flight: Option<usize>,
    /// How often `/v2/models/{model}/ready` is polled. Default 5s.
    #[serde(default, deserialize_with = "warden_core::config::duration")]
    health_interval: Option<std::time::Duration>,
    /// Consecutive failures that open the circuit breaker. Default 5.
    breaker_failures: Option<u32>,
    /// How long an open breaker refuses calls before one trial. Default 10s.
    #[serde(default, deserialize_with = "warden_core::config::duration")]
    breaker_open_for: Option<std::time::Duration>,
    /// Acknowledges `http://` to a host that is not loopback: the validated
    /// inputs and the answers then cross the network in clear.
    #[serde(default)]
    allow_plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefenses {
    out_of_distribution: Option<RawOod>,
    adversarial: Option<RawSqueeze>,
    extraction: Option<RawExtraction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOod {
    #[serde(default)]
    action: Option<String>,
    /// Largest |z| over features (training mean and std) before a row is flagged.
    z_threshold: f64,
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
    /// Element type of the ONNX input; only "FP32" today.
    #[serde(default = "fp32")]
    datatype: String,
    /// The features, in column order.
    features: Vec<RawFeature>,
}

fn fp32() -> String {
    "FP32".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    /// Name used in v1 named instances and in error details.
    name: String,
    /// Smallest value seen in training (numeric features).
    min: Option<f64>,
    /// Largest value seen in training (numeric features).
    max: Option<f64>,
    /// Training mean (for the defenses).
    mean: Option<f64>,
    /// Training standard deviation (for the defenses).
    std: Option<f64>,
    /// Accepted values `[lo, hi]` when the domain is known (e.g. pixels
    /// 0..16); otherwise the training range widened by the tolerance.
    range: Option<[f64; 2]>,
    /// Allowed values of a categorical feature; the model sees the index.
    categories: Option<Vec<String>>,
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
    /// "label" (default) or "probabilities".
    output: Option<String>,
    /// Decimals probabilities are rounded to. Default 2.
    decimals: Option<u32>,
    /// Show only the k most probable classes' probabilities (the others as 0).
    top_k: Option<u32>,
    /// Below this top probability the label is "uncertain".
    confidence_threshold: Option<f64>,
    /// Scale of Laplace noise added to probabilities (then renormalized). Default 0.
    noise: Option<f64>,
}

/// What a feature accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    /// A number in `[lo, hi]`: the training range widened by the tolerance.
    Numeric {
        /// Lowest accepted value.
        lo: f64,
        /// Highest accepted value.
        hi: f64,
    },
    /// One of these strings (or its index); the model sees the index.
    Category(Vec<String>),
}

/// One input feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// Its name.
    pub name: String,
    /// What it accepts.
    pub kind: FeatureKind,
    /// Training mean, if known.
    pub mean: Option<f64>,
    /// Training standard deviation, if known.
    pub std: Option<f64>,
    /// Training minimum and maximum, if known (before any tolerance).
    pub train_range: Option<(f64, f64)>,
}

impl Feature {
    /// Checks a number for this feature; returns what the model sees.
    pub fn check_number(&self, v: f64) -> Result<f32, &'static str> {
        if !v.is_finite() {
            return Err("must be a finite number (NaN and Infinity are not allowed)");
        }
        match &self.kind {
            FeatureKind::Numeric { lo, hi } => {
                if v < *lo || v > *hi {
                    Err("is outside the range this model accepts")
                } else {
                    Ok(v as f32)
                }
            }
            FeatureKind::Category(values) => {
                if v.fract() == 0.0 && v >= 0.0 && (v as usize) < values.len() {
                    Ok(v as f32)
                } else {
                    Err("is not one of the allowed categories")
                }
            }
        }
    }

    /// Checks a string for this feature (categories only).
    pub fn check_str(&self, s: &str) -> Result<f32, &'static str> {
        match &self.kind {
            FeatureKind::Category(values) => values
                .iter()
                .position(|c| c == s)
                .map(|i| i as f32)
                .ok_or("is not one of the allowed categories"),
            FeatureKind::Numeric { .. } => Err("must be a number"),
        }
    }
}

/// Default output policy of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyDefaults {
    /// Whether probabilities are returned (else labels only).
    pub probabilities: bool,
    /// Decimals probabilities are rounded to.
    pub decimals: u32,
    /// Only the k most probable classes' probabilities are shown.
    pub top_k: Option<u32>,
    /// Below this top probability the label is `uncertain`.
    pub confidence_threshold: Option<f64>,
    /// Laplace noise scale on probabilities (0: none).
    pub noise: f64,
}

impl PolicyDefaults {
    /// The built-in default: label only, 2 decimals, no hardening beyond that.
    pub const DEFAULT: Self = Self {
        probabilities: false,
        decimals: 2,
        top_k: None,
        confidence_threshold: None,
        noise: 0.0,
    };

    /// The more revealing of two policies, field by field (a caller with
    /// several roles gets what any of them may see).
    pub fn most_revealing(self, other: Self) -> Self {
        Self {
            probabilities: self.probabilities || other.probabilities,
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
        }
    }
}

/// A checked model card.
#[derive(Debug, Clone)]
pub struct ModelCard {
    /// Model description.
    pub description: String,
    /// Most rows per request (and per batched inference call).
    pub max_batch: usize,
    /// Whether concurrent requests are grouped into one inference call
    /// (`dynamic_batching`, default true); off, each request runs alone.
    pub dynamic_batching: bool,
    /// Pinned version, if any.
    pub pinned_version: Option<u64>,
    /// Input tensor name.
    pub input_name: String,
    /// Features in column order.
    pub features: Vec<Feature>,
    /// Feature name → column.
    pub feature_index: HashMap<String, usize>,
    /// ONNX label output.
    pub label_output: String,
    /// ONNX probabilities output.
    pub probabilities_output: Option<String>,
    /// Class names.
    pub classes: Vec<String>,
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
    /// Defenses against ML attacks.
    pub defenses: crate::defenses::DefenseSettings,
    /// Gateway mode: the upstream server that answers for this model.
    pub upstream: Option<Upstream>,
}

/// A checked `[upstream]` table (gateway mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Base URL, without a trailing `/`.
    pub url: String,
    /// The model's name on the server (`None`: the same as Warden's).
    pub model: Option<String>,
    /// The version asked for, if any.
    pub version: Option<String>,
    /// CA file (as written; relative to the model folder).
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key files, for mTLS to the server.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Where the bearer token sent to the server comes from.
    pub bearer_token: Option<warden_core::SecretSource>,
    /// Connect timeout.
    pub connect_timeout: std::time::Duration,
    /// Whole-call timeout.
    pub timeout: std::time::Duration,
    /// Retries on connection failure.
    pub retries: u32,
    /// Calls in flight at once.
    pub max_in_flight: usize,
    /// Health-check period.
    pub health_interval: std::time::Duration,
    /// Failures in a row that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open.
    pub breaker_open_for: std::time::Duration,
}

fn upstream(raw: RawUpstream) -> Result<Upstream, CardError> {
    let bad = |key: &str, msg: &str| CardError(format!("upstream.{key}: {msg}"));
    let url = raw.url.trim_end_matches('/').to_owned();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("url", "must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['?', '#', '@', ' ']) {
        return Err(bad(
            "url",
            "must be a base URL: scheme, host, optional port and path; no credentials, query or fragment",
        ));
    }
    let parsed = reqwest::Url::parse(&url).map_err(|e| bad("url", &format!("not a URL: {e}")))?;
    let host = parsed.host_str().ok_or_else(|| bad("url", "no host"))?;
    let https = parsed.scheme() == "https";
    if !https && (raw.ca.is_some() || raw.client_cert.is_some()) {
        return Err(bad("ca", "ca and client_cert need an https:// url"));
    }
    if !https && raw.bearer_token.is_some() && !raw.allow_plaintext {
        return Err(bad(
            "bearer_token",
            "a token is sent over https:// only (or set upstream.allow_plaintext = true)",
        ));
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !https && !loopback && !raw.allow_plaintext {
        return Err(bad(
            "url",
            "plaintext http:// to a host that is not loopback sends inputs and answers in clear: use https:// or set upstream.allow_plaintext = true",
        ));
    }
    for (key, v) in [("model", &raw.model), ("version", &raw.version)] {
        if let Some(v) = v
            && !warden_core::is_model_name(v)
        {
            return Err(bad(key, "1-64 letters, digits, '-', '_' or '.'"));
        }
    }
    let client_identity = match (raw.client_cert, raw.client_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(bad("client_cert", "client_cert and client_key go together")),
    };
    let positive = |key: &str, d: Option<std::time::Duration>, default: u64| {
        let d = d.unwrap_or(std::time::Duration::from_millis(default));
        if d.is_zero() || d > std::time::Duration::from_secs(3600) {
            Err(bad(key, "must be between 1ms and 1h"))
        } else {
            Ok(d)
        }
    };
    let retries = raw.retries.unwrap_or(2);
    if retries > 10 {
        return Err(bad("retries", "at most 10"));
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(64);
    if !(1..=100_000).contains(&max_in_flight) {
        return Err(bad("max_in_flight", "must be between 1 and 100000"));
    }
    let breaker_failures = raw.breaker_failures.unwrap_or(5);
    if breaker_failures == 0 {
        return Err(bad("breaker_failures", "must be at least 1"));
    }
    Ok(Upstream {
        url,
        model: raw.model,
        version: raw.version,
        ca: raw.ca,
        client_identity,
        bearer_token: raw.bearer_token,
        connect_timeout: positive("connect_timeout", raw.connect_timeout, 1000)?,
        timeout: positive("timeout", raw.timeout, 10_000)?,
        retries,
        max_in_flight,
        health_interval: positive("health_interval", raw.health_interval, 5000)?,
        breaker_failures,
        breaker_open_for: positive("breaker_open_for", raw.breaker_open_for, 10_000)?,
    })
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
        if raw.input.datatype != "FP32" {
            return Err(bad("input.datatype", "only \"FP32\" inputs are supported"));
        }
        if raw.input.features.is_empty() {
            return Err(bad("input.features", "at least one feature is required"));
        }

        let mut features = Vec::with_capacity(raw.input.features.len());
        let mut feature_index = HashMap::new();
        for (i, f) in raw.input.features.into_iter().enumerate() {
            let key = format!("input.features[{i}]");
            if f.name.is_empty() || feature_index.insert(f.name.clone(), i).is_some() {
                return Err(CardError(format!(
                    "{key}.name: empty or repeated feature name {:?}",
                    f.name
                )));
            }
            let kind = match (f.categories, f.min, f.max) {
                (Some(c), None, None) if !c.is_empty() && f.range.is_none() => {
                    FeatureKind::Category(c)
                }
                (Some(_), _, _) => {
                    return Err(CardError(format!(
                        "{key}: categories must be non-empty and exclude min, max and range"
                    )));
                }
                (None, _, _) if f.range.is_some() => match f.range {
                    Some([lo, hi]) if lo.is_finite() && hi.is_finite() && lo <= hi => {
                        FeatureKind::Numeric { lo, hi }
                    }
                    _ => {
                        return Err(CardError(format!(
                            "{key}.range: must be [lo, hi], finite, with lo <= hi"
                        )));
                    }
                },
                (None, Some(min), Some(max))
                    if min.is_finite() && max.is_finite() && min <= max =>
                {
                    // A constant feature (min == max) still gets some room: a
                    // tolerance of the value's own magnitude, or at least 1.
                    let span = if max > min {
                        max - min
                    } else {
                        min.abs().max(1.0)
                    };
                    FeatureKind::Numeric {
                        lo: min - tolerance * span,
                        hi: max + tolerance * span,
                    }
                }
                (None, None, None) => FeatureKind::Numeric {
                    lo: f64::from(f32::MIN),
                    hi: f64::from(f32::MAX),
                },
                _ => {
                    return Err(CardError(format!(
                        "{key}: min and max must both be finite with min <= max"
                    )));
                }
            };
            features.push(Feature {
                name: f.name,
                kind,
                mean: f.mean,
                std: f.std,
                train_range: f.min.zip(f.max),
            });
        }

        if raw.output.classes.is_empty() {
            return Err(bad("output.classes", "at least one class is required"));
        }
        let has_probabilities = raw.output.probabilities.is_some();
        let classes = raw.output.classes.len();
        let default_policy = policy(
            "policy",
            &raw.policy.fields,
            PolicyDefaults::DEFAULT,
            has_probabilities,
            classes,
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
                has_probabilities,
                classes,
            )?;
            role_policies.push((role, resolved));
        }

        let bounds: Vec<Option<(f64, f64)>> = features
            .iter()
            .map(|f| match f.kind {
                FeatureKind::Numeric { lo, hi } => Some((lo, hi)),
                FeatureKind::Category(_) => None,
            })
            .collect();
        let defenses = defense_settings(raw.defenses, &bounds, has_probabilities)?;
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
        let upstream = raw.upstream.map(upstream).transpose()?;
        if upstream.is_some() && (!pinned_sha256.is_empty() || raw.integrity.require_signature) {
            return Err(bad(
                "integrity",
                "a model served by an [upstream] has no local file to pin or sign",
            ));
        }

        Ok(Self {
            description: raw.description,
            max_batch,
            dynamic_batching: raw.dynamic_batching.unwrap_or(true),
            pinned_version: raw.version,
            input_name: raw.input.name,
            features,
            feature_index,
            label_output: raw.output.label,
            probabilities_output: raw.output.probabilities,
            classes: raw.output.classes,
            policy: default_policy,
            role_policies,
            record_inputs: raw.audit.record_inputs,
            pinned_sha256,
            require_signature: raw.integrity.require_signature,
            defenses,
            upstream,
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

fn policy(
    key: &str,
    raw: &RawPolicyFields,
    base: PolicyDefaults,
    has_probabilities: bool,
    classes: usize,
) -> Result<PolicyDefaults, CardError> {
    let probabilities = match raw.output.as_deref() {
        None => base.probabilities,
        Some("label") => false,
        Some("probabilities") => true,
        Some(_) => {
            return Err(CardError(format!(
                "{key}.output: expected \"label\" or \"probabilities\""
            )));
        }
    };
    if probabilities && !has_probabilities {
        return Err(CardError(format!(
            "{key}.output: \"probabilities\" needs output.probabilities"
        )));
    }
    let decimals = raw.decimals.unwrap_or(base.decimals);
    if decimals > 6 {
        return Err(CardError(format!("{key}.decimals: at most 6")));
    }
    let top_k = match raw.top_k {
        Some(k) if k == 0 || k as usize > classes => {
            return Err(CardError(format!(
                "{key}.top_k: between 1 and the number of classes ({classes})"
            )));
        }
        Some(k) => Some(k),
        None => base.top_k,
    };
    let confidence_threshold = match raw.confidence_threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => {
            return Err(CardError(format!(
                "{key}.confidence_threshold: between 0 and 1"
            )));
        }
        Some(t) => Some(t),
        None => base.confidence_threshold,
    };
    if (confidence_threshold.is_some() || raw.noise.is_some_and(|n| n > 0.0)) && !has_probabilities
    {
        return Err(CardError(format!(
            "{key}: confidence_threshold and noise need output.probabilities"
        )));
    }
    let noise = match raw.noise {
        Some(n) if !(n.is_finite() && (0.0..=1.0).contains(&n)) => {
            return Err(CardError(format!("{key}.noise: between 0 and 1")));
        }
        Some(n) => n,
        None => base.noise,
    };
    Ok(PolicyDefaults {
        probabilities,
        decimals,
        top_k,
        confidence_threshold,
        noise,
    })
}

fn defense_settings(
    raw: RawDefenses,
    feature_bounds: &[Option<(f64, f64)>],
    has_probabilities: bool,
) -> Result<crate::defenses::DefenseSettings, CardError> {
    let features = feature_bounds.len();
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
            Some(OodSettings {
                action: action(k, o.action.as_deref())?,
                z_threshold: positive(&format!("{k}.z_threshold"), o.z_threshold)?,
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
            Some(SqueezeSettings {
                action: action(k, a.action.as_deref())?,
                bit_depth,
                image: a.image.map(|[h, w]| (h, w)),
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
    Ok(DefenseSettings {
        out_of_distribution: ood,
        adversarial,
        extraction,
    })
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
        assert_eq!(
            c.features[0].kind,
            FeatureKind::Numeric { lo: -2.5, hi: 12.5 }
        );
        assert_eq!(c.feature_index["colour"], 1);
        assert_eq!(c.policy, PolicyDefaults::DEFAULT);
        assert_eq!(c.max_batch, 64);
        assert!(c.dynamic_batching);
        let off = ModelCard::parse(&format!("dynamic_batching = false\n{CARD}"), DEFAULTS).unwrap();
        assert!(!off.dynamic_batching);
        let f = &c.features[0];
        assert_eq!(f.check_number(12.0), Ok(12.0));
        assert!(f.check_number(13.0).is_err());
        assert!(f.check_number(f64::NAN).is_err());
        assert!(f.check_str("x").is_err());
        assert_eq!(
            c.features[2].kind,
            FeatureKind::Numeric { lo: 0.0, hi: 16.0 }
        );
        let colour = &c.features[1];
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
            assert!(!card.features.is_empty() && !card.classes.is_empty());
        }
    }
}
