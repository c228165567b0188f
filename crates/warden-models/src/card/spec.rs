//! The tensors of a card: what each input accepts and what each output
//! holds (docs/models.md, "Tensors").

use std::collections::HashMap;

use serde::Deserialize;
use warden_tensor::DataType;

use super::CardError;

/// An input as written: `[[inputs]]` (or, in the first card format,
/// `[input]` with its features).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInputSpec {
    /// Tensor name in the API and in the ONNX graph.
    pub(super) name: String,
    /// Element type: an Open Inference Protocol datatype name.
    pub(super) datatype: String,
    /// Dimensions, -1 for a dynamic one; the first is the batch dimension
    /// unless the card sets `batch_dimension = false`. Default `[-1, features]`
    /// for a tabular input.
    pub(super) shape: Option<Vec<i64>>,
    /// Columns of a tabular input ([N, features]), with training statistics.
    #[serde(default)]
    pub(super) features: Vec<RawFeature>,
    /// Accepted values `[lo, hi]` of a numeric input.
    pub(super) range: Option<[f64; 2]>,
    /// Smallest value seen in training (widened by the range tolerance).
    pub(super) min: Option<f64>,
    /// Largest value seen in training.
    pub(super) max: Option<f64>,
    /// Training mean of the elements (for the defenses).
    pub(super) mean: Option<f64>,
    /// Training standard deviation of the elements.
    pub(super) std: Option<f64>,
    /// Ids: an integer input whose values index a table of this many rows
    /// (valid ids are 0 to ids - 1).
    pub(super) ids: Option<u64>,
    /// Allowed strings of a BYTES input.
    pub(super) categories: Option<Vec<String>>,
    /// Longest string of a BYTES input, in bytes. Default 256.
    pub(super) max_length: Option<usize>,
    /// Largest size of each dimension (the batch dimension's is `max_batch`;
    /// a fixed dimension's is itself). Required for each dynamic dimension
    /// after the batch one.
    pub(super) max_shape: Option<Vec<usize>>,
    /// Most elements one request may carry for this input. Default: the
    /// product of `max_shape`.
    pub(super) max_elements: Option<usize>,
    /// The input is an image (its last two dimensions height and width):
    /// feature squeezing may smooth it.
    #[serde(default)]
    pub(super) image: bool,
}

/// One column of a tabular input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeature {
    /// Name used in v1 named instances and in error details.
    pub(super) name: String,
    /// Smallest value seen in training (numeric features).
    pub(super) min: Option<f64>,
    /// Largest value seen in training (numeric features).
    pub(super) max: Option<f64>,
    /// Training mean (for the defenses).
    pub(super) mean: Option<f64>,
    /// Training standard deviation (for the defenses).
    pub(super) std: Option<f64>,
    /// Accepted values `[lo, hi]` when the domain is known (e.g. pixels
    /// 0..16); otherwise the training range widened by the tolerance.
    pub(super) range: Option<[f64; 2]>,
    /// Allowed values of a categorical feature; the model sees the index.
    pub(super) categories: Option<Vec<String>>,
}

/// An output as written: `[[outputs]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutputSpec {
    /// Tensor name in the ONNX graph (and in v2 answers).
    pub(super) name: String,
    /// Element type.
    pub(super) datatype: String,
    /// Dimensions, -1 for a dynamic one.
    pub(super) shape: Vec<i64>,
}

/// What a number accepts.
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

/// One column of a tabular input (or, with an empty name, every element of
/// a tensor input).
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
    pub fn check_number(&self, v: f64) -> Result<f64, &'static str> {
        if !v.is_finite() {
            return Err("must be a finite number (NaN and Infinity are not allowed)");
        }
        match &self.kind {
            FeatureKind::Numeric { lo, hi } => {
                if v < *lo || v > *hi {
                    Err("is outside the range this model accepts")
                } else {
                    Ok(v)
                }
            }
            FeatureKind::Category(values) => {
                if v.fract() == 0.0 && v >= 0.0 && (v as usize) < values.len() {
                    Ok(v)
                } else {
                    Err("is not one of the allowed categories")
                }
            }
        }
    }

    /// Checks a string for this feature (categories only).
    pub fn check_str(&self, s: &str) -> Result<f64, &'static str> {
        match &self.kind {
            FeatureKind::Category(values) => values
                .iter()
                .position(|c| c == s)
                .map(|i| i as f64)
                .ok_or("is not one of the allowed categories"),
            FeatureKind::Numeric { .. } => Err("must be a number"),
        }
    }
}

/// What every element of an input accepts (beyond its datatype).
#[derive(Debug, Clone, PartialEq)]
pub enum Valid {
    /// Numbers in `[lo, hi]` (floats finite; integers whole).
    Range {
        /// Lowest accepted value.
        lo: f64,
        /// Highest accepted value.
        hi: f64,
    },
    /// Ids of a table of this many rows: integers in `[0, n)`. ONNX Gather
    /// reads a negative index from the end of its table, so a negative id
    /// is refused rather than passed on.
    Ids(u64),
    /// One of these strings (BYTES).
    Categories(Vec<String>),
    /// Any string up to the length cap (BYTES), or true/false (BOOL).
    Any,
}

/// A checked input.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions as declared, -1 dynamic.
    pub shape: Vec<i64>,
    /// Largest accepted size of each dimension.
    pub max_shape: Vec<usize>,
    /// Most elements per request.
    pub max_elements: usize,
    /// What each element accepts (for a tabular input, per column: see
    /// `features`).
    pub valid: Valid,
    /// Longest BYTES element.
    pub max_length: usize,
    /// Training mean and standard deviation of the elements, if known.
    pub stats: Option<(f64, f64)>,
    /// Columns of a tabular input (empty otherwise).
    pub features: Vec<Feature>,
    /// Feature name → column.
    pub feature_index: HashMap<String, usize>,
    /// An image: its last two dimensions are height and width.
    pub image: bool,
    /// Whether the card itself bounds the values (`ids`, `range`, `min`
    /// and `max`); an integer input it leaves open is bounded by the
    /// lookup table the graph indexes with it, if any.
    pub declared: bool,
    /// Whether the first dimension is the batch (the card's
    /// `batch_dimension`); otherwise the whole tensor is one row.
    pub batched: bool,
}

impl InputSpec {
    /// Elements per entry of the batch dimension, when every other
    /// dimension is fixed (without a batch dimension: the whole tensor's).
    pub fn fixed_row_len(&self) -> Option<usize> {
        self.shape
            .iter()
            .skip(usize::from(self.batched))
            .map(|&d| usize::try_from(d).ok())
            .product()
    }

    /// The finite bounds of every element, when known: the input's range,
    /// or each feature's.
    pub fn bounds(&self, column: usize) -> Option<(f64, f64)> {
        match (self.features.get(column), &self.valid) {
            (Some(f), _) => match f.kind {
                FeatureKind::Numeric { lo, hi } => Some((lo, hi)),
                FeatureKind::Category(ref c) => Some((0.0, c.len().saturating_sub(1) as f64)),
            },
            (None, Valid::Range { lo, hi }) => Some((*lo, *hi)),
            (None, Valid::Ids(n)) => Some((0.0, n.saturating_sub(1) as f64)),
            _ => None,
        }
    }

    /// Mean and standard deviation of element `i` of a row (a feature's,
    /// or the input's own).
    pub fn element_stats(&self, i: usize) -> (Option<f64>, Option<f64>) {
        if self.features.is_empty() {
            (self.stats.map(|s| s.0), self.stats.map(|s| s.1))
        } else {
            let f = &self.features[i % self.features.len()];
            (f.mean, f.std)
        }
    }
}

/// A checked output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions, -1 dynamic.
    pub shape: Vec<i64>,
}

/// The default longest BYTES element.
pub const DEFAULT_MAX_LENGTH: usize = 256;

/// Widens a training range by the tolerance (a constant column still gets
/// some room: the value's own magnitude, or at least 1).
fn widened(min: f64, max: f64, tolerance: f64) -> (f64, f64) {
    let span = if max > min {
        max - min
    } else {
        min.abs().max(1.0)
    };
    (min - tolerance * span, max + tolerance * span)
}

pub(super) fn feature(key: &str, f: RawFeature, tolerance: f64) -> Result<Feature, CardError> {
    let kind = match (f.categories, f.min, f.max) {
        (Some(c), None, None) if !c.is_empty() && f.range.is_none() => FeatureKind::Category(c),
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
        (None, Some(min), Some(max)) if min.is_finite() && max.is_finite() && min <= max => {
            let (lo, hi) = widened(min, max, tolerance);
            FeatureKind::Numeric { lo, hi }
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
    Ok(Feature {
        name: f.name,
        kind,
        mean: f.mean,
        std: f.std,
        train_range: f.min.zip(f.max),
    })
}

/// Card-wide facts an input's check needs.
pub(super) struct SpecContext {
    pub(super) tolerance: f64,
    pub(super) max_batch: usize,
    pub(super) batched: bool,
}

pub(super) fn input(
    key: &str,
    raw: RawInputSpec,
    cx: &SpecContext,
) -> Result<InputSpec, CardError> {
    let bad = |k: &str, msg: String| CardError(format!("{key}{k}: {msg}"));
    if !warden_core::is_model_name(&raw.name) && !is_tensor_name(&raw.name) {
        return Err(bad(
            ".name",
            "1-128 letters, digits, '_', '-', '.', ':' or '/'".into(),
        ));
    }
    let datatype = DataType::parse(&raw.datatype).ok_or_else(|| {
        bad(
            ".datatype",
            format!(
                "{:?} is not an Open Inference Protocol datatype (BOOL, UINT8-64, INT8-64, FP16, FP32, FP64, BYTES)",
                raw.datatype
            ),
        )
    })?;
    let mut features = Vec::with_capacity(raw.features.len());
    let mut feature_index = HashMap::new();
    for (i, f) in raw.features.into_iter().enumerate() {
        let fkey = format!("{key}.features[{i}]");
        if f.name.is_empty() || feature_index.insert(f.name.clone(), i).is_some() {
            return Err(CardError(format!(
                "{fkey}.name: empty or repeated feature name {:?}",
                f.name
            )));
        }
        features.push(feature(&fkey, f, cx.tolerance)?);
    }
    let shape = match (raw.shape, features.len()) {
        (Some(s), _) => s,
        (None, 0) => {
            return Err(bad(
                ".shape",
                "is required (use -1 for a dynamic dimension)".into(),
            ));
        }
        (None, n) if cx.batched => vec![-1, n as i64],
        (None, n) => vec![n as i64],
    };
    if shape.iter().any(|&d| d < -1 || d == 0) || shape.len() > 8 {
        return Err(bad(
            ".shape",
            "dimensions are positive sizes or -1 (dynamic), at most 8 of them".into(),
        ));
    }
    if cx.batched && shape.first() != Some(&-1) {
        return Err(bad(
            ".shape",
            "the first dimension is the batch and must be -1 (or set batch_dimension = false)"
                .into(),
        ));
    }
    if !features.is_empty() {
        if !datatype.is_numeric() {
            return Err(bad(".features", "columns need a numeric datatype".into()));
        }
        let rank = if cx.batched { 2 } else { 1 };
        if shape.len() != rank || shape[rank - 1] != features.len() as i64 {
            return Err(bad(
                ".shape",
                format!(
                    "a tabular input is [{}{}] ({} features)",
                    if cx.batched { "-1, " } else { "" },
                    features.len(),
                    features.len()
                ),
            ));
        }
        if raw.range.is_some() || raw.ids.is_some() || raw.min.is_some() || raw.max.is_some() {
            return Err(bad(
                "",
                "a tabular input takes ranges per feature, not range, ids, min or max".into(),
            ));
        }
    }
    // Largest size of each dimension.
    let max_shape = match raw.max_shape {
        Some(m) if m.len() != shape.len() => {
            return Err(bad(
                ".max_shape",
                format!("has {} dimensions; shape has {}", m.len(), shape.len()),
            ));
        }
        Some(m) => {
            for (i, (&cap, &dim)) in m.iter().zip(&shape).enumerate() {
                if cap == 0 || (dim > 0 && cap != dim as usize) {
                    return Err(bad(
                        ".max_shape",
                        format!(
                            "dimension {i}: a fixed dimension's cap is its size; caps are at least 1"
                        ),
                    ));
                }
            }
            let mut m = m;
            if cx.batched {
                m[0] = m[0].min(cx.max_batch);
            }
            m
        }
        None => {
            let mut m = Vec::with_capacity(shape.len());
            for (i, &d) in shape.iter().enumerate() {
                m.push(match d {
                    -1 if i == 0 && cx.batched => cx.max_batch,
                    -1 => {
                        return Err(bad(
                            ".max_shape",
                            format!(
                                "dimension {i} is dynamic: say how large it may be (max_shape = [..])"
                            ),
                        ));
                    }
                    d => d as usize,
                });
            }
            m
        }
    };
    let product = max_shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(".max_shape", "the product overflows".into()))?;
    let max_elements = raw.max_elements.unwrap_or(product).min(product);
    if max_elements == 0 || max_elements > 64 * 1024 * 1024 {
        return Err(bad(
            ".max_elements",
            "must be between 1 and 67108864".into(),
        ));
    }
    // What each element accepts.
    if raw.categories.is_some() && datatype != DataType::Bytes {
        return Err(bad(
            ".categories",
            "only for a BYTES input (a tabular column takes categories per feature)".into(),
        ));
    }
    let valid = match (
        datatype,
        raw.range,
        raw.ids,
        raw.categories,
        raw.min.zip(raw.max),
    ) {
        (DataType::Bytes, None, None, Some(c), None) if !c.is_empty() => Valid::Categories(c),
        (DataType::Bytes, None, None, None, None) => Valid::Any,
        (DataType::Bytes, ..) => {
            return Err(bad(
                "",
                "a BYTES input takes categories or max_length, not range, ids, min or max".into(),
            ));
        }
        (DataType::Bool, None, None, None, None) => Valid::Any,
        (DataType::Bool, ..) => {
            return Err(bad(
                "",
                "a BOOL input takes no range, ids, min or max".into(),
            ));
        }
        (d, None, Some(n), None, None) if d.is_integer() && n > 0 => Valid::Ids(n),
        (_, None, Some(_), ..) => {
            return Err(bad(
                ".ids",
                "needs an integer datatype, a count of at least 1, and no range, min or max".into(),
            ));
        }
        (_, Some([lo, hi]), None, None, _) if lo.is_finite() && hi.is_finite() && lo <= hi => {
            Valid::Range { lo, hi }
        }
        (_, Some(_), ..) | (_, None, None, Some(_), _) => {
            return Err(bad(
                ".range",
                "must be [lo, hi], finite, with lo <= hi, without ids".into(),
            ));
        }
        (_, None, None, None, Some((min, max)))
            if min.is_finite() && max.is_finite() && min <= max =>
        {
            let (lo, hi) = widened(min, max, cx.tolerance);
            Valid::Range { lo, hi }
        }
        (_, None, None, None, Some(_)) => {
            return Err(bad(
                "",
                "min and max must both be finite with min <= max".into(),
            ));
        }
        (d, None, None, None, None) => match d.integer_bounds() {
            Some((lo, hi)) => Valid::Range {
                lo: lo as f64,
                hi: hi as f64,
            },
            None if d == DataType::F16 => Valid::Range {
                lo: -65504.0,
                hi: 65504.0,
            },
            None if d == DataType::F32 => Valid::Range {
                lo: f64::from(f32::MIN),
                hi: f64::from(f32::MAX),
            },
            None => Valid::Range {
                lo: f64::MIN,
                hi: f64::MAX,
            },
        },
    };
    if raw.min.is_some() != raw.max.is_some() {
        return Err(bad("", "min and max go together".into()));
    }
    if raw.max_length.is_some() && datatype != DataType::Bytes {
        return Err(bad(".max_length", "only for a BYTES input".into()));
    }
    let max_length = raw.max_length.unwrap_or(DEFAULT_MAX_LENGTH);
    if max_length == 0 || max_length > 1024 * 1024 {
        return Err(bad(".max_length", "must be between 1 and 1048576".into()));
    }
    if raw.image && (shape.len() < 2 || shape[shape.len() - 2..].iter().any(|&d| d < 1)) {
        return Err(bad(
            ".image",
            "an image's last two dimensions (height, width) must be fixed".into(),
        ));
    }
    let declared = raw.range.is_some() || raw.ids.is_some() || raw.min.is_some();
    let stats = match (raw.mean, raw.std) {
        (Some(m), Some(s)) if m.is_finite() && s.is_finite() && s >= 0.0 => Some((m, s)),
        (None, None) => None,
        _ => return Err(bad("", "mean and std go together, finite, std >= 0".into())),
    };
    Ok(InputSpec {
        name: raw.name,
        datatype,
        shape,
        max_shape,
        max_elements,
        valid,
        max_length,
        stats,
        features,
        feature_index,
        image: raw.image,
        declared,
        batched: cx.batched,
    })
}

pub(super) fn output(key: &str, raw: RawOutputSpec) -> Result<OutputSpec, CardError> {
    let datatype = DataType::parse(&raw.datatype).ok_or_else(|| {
        CardError(format!(
            "{key}.datatype: {:?} is not an Open Inference Protocol datatype",
            raw.datatype
        ))
    })?;
    if raw.shape.iter().any(|&d| d < -1 || d == 0) || raw.shape.len() > 8 {
        return Err(CardError(format!(
            "{key}.shape: dimensions are positive sizes or -1 (dynamic), at most 8 of them"
        )));
    }
    if raw.name.is_empty() || !is_tensor_name(&raw.name) {
        return Err(CardError(format!("{key}.name: not a tensor name")));
    }
    Ok(OutputSpec {
        name: raw.name,
        datatype,
        shape: raw.shape,
    })
}

/// ONNX tensor names are free text; Warden serves those that are safe to
/// echo in errors and metadata: 1-128 of letters, digits and `_-.:/`.
pub fn is_tensor_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
}
