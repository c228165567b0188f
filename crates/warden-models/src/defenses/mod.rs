//! Defenses against ML attacks (docs/pipeline.md, between validation and inference):
//! out-of-distribution inputs ([`ood`]), adversarial inputs by feature
//! squeezing ([`squeeze`]), model extraction by PRADA ([`extraction`]) and
//! query-based attacks by query similarity ([`similarity`], Blacklight).
//! Each is configured per model card (`[defenses.*]`) with an action —
//! `flag` (answer, record), `throttle` (answer, record, and charge the
//! principal's rate limit extra rows) or `reject` (422 `input_rejected`) —
//! and shows in `warden_defense_flags_total` and in the audit record's
//! `defense_flags`. docs/defenses.md has the measurements.

pub mod extraction;
pub mod ood;
pub mod shapiro;
pub mod similarity;
pub mod squeeze;

/// What a defense does with an input it flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer, and record the flag.
    Flag,
    /// Answer, record, and from then on charge the principal's rows
    /// [`THROTTLE_FACTOR`] times against its rate limit.
    Throttle,
    /// Refuse with 422 `input_rejected`.
    Reject,
}

/// What a throttled principal's rows cost against its `predict` rate limit,
/// each: it gets a tenth of its rate (docs/defenses.md, "Actions").
pub const THROTTLE_FACTOR: u64 = 10;

/// The kinds, as metric labels and audit flags.
pub const OUT_OF_DISTRIBUTION: &str = "out_of_distribution";
/// Feature squeezing.
pub const ADVERSARIAL: &str = "adversarial";
/// PRADA.
pub const EXTRACTION: &str = "extraction";
/// Query similarity (Blacklight).
pub const SIMILARITY: &str = "similarity";

/// A card's defenses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DefenseSettings {
    /// Out-of-distribution inputs.
    pub out_of_distribution: Option<OodSettings>,
    /// Adversarial inputs (feature squeezing).
    pub adversarial: Option<SqueezeSettings>,
    /// Model extraction (PRADA).
    pub extraction: Option<ExtractionSettings>,
    /// Query-based attacks (similarity of queries).
    pub similarity: Option<similarity::SimilaritySettings>,
}

/// `[defenses.out_of_distribution]`
#[derive(Debug, Clone, PartialEq)]
pub struct OodSettings {
    /// What a flag does.
    pub action: Action,
    /// Largest |z| over features (when the input has statistics).
    pub z_threshold: Option<f64>,
    /// Largest squared Mahalanobis distance, with `stats`.
    pub mahalanobis_threshold: Option<f64>,
    /// The stats file (mean and precision matrix), relative to the model folder.
    pub stats: Option<String>,
}

/// `[defenses.adversarial]`
#[derive(Debug, Clone, PartialEq)]
pub struct SqueezeSettings {
    /// What a flag does.
    pub action: Action,
    /// Bits kept by the bit-depth squeezer.
    pub bit_depth: u32,
    /// Image shape, for 2x2 median smoothing.
    pub image: Option<(usize, usize)>,
    /// L1 distance threshold.
    pub threshold: f64,
}

/// `[defenses.extraction]`
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractionSettings {
    /// What a flag does.
    pub action: Action,
    /// Flag when the Shapiro–Wilk W of the distances falls below this.
    pub delta: f64,
    /// Distances collected before the first test.
    pub min_queries: usize,
    /// Test every this many queries.
    pub every: usize,
    /// Most stored queries per principal and model.
    pub max_points: usize,
    /// Compare standardized features (else raw values).
    pub standardize: bool,
}

/// Standardizes element `column` of a row of the watched input with its
/// training mean and std (std 0 or unknown counts as 1).
pub fn standardize(input: &crate::card::InputSpec, column: usize, value: f32) -> f64 {
    let (mean, std) = input.element_stats(column);
    let mean = mean.unwrap_or(0.0);
    let std = std.filter(|s| *s > 1e-12).unwrap_or(1.0);
    (f64::from(value) - mean) / std
}
