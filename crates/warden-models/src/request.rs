//! Parse, don't validate: the one place a request body becomes a
//! [`ValidInferRequest`], for both wire protocols.
//!
//! - v1 (KServe v1 / TF-Serving): `{"instances": [[...], ...]}` or
//!   `{"instances": [{"feature": value, ...}, ...]}`.
//! - v2 (Open Inference Protocol): `{"id"?, "parameters"?, "inputs": [{"name",
//!   "shape", "datatype", "parameters"?, "data"}], "outputs"?: [{"name"}]}`.
//!
//! Bodies are read in one pass straight into a row-major `Vec<f32>` with
//! serde's `DeserializeSeed`, checking each value against the model card as
//! it goes, so no intermediate tree is built. Structure errors (not the
//! expected shape) are `invalid_request`; problems with the caller's values
//! (type, count, range, NaN/Inf, batch size) are `validation_failed` with
//! the offending fields named. Error sentences are Warden's own; serde's
//! messages go to no one.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use warden_core::{ApiError, ErrorCode, FieldProblem};

use crate::card::ModelCard;
use crate::json::{ScanError, is_number_out_of_range, prescan};

/// Which wire protocol a body uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// KServe v1 / TF-Serving `instances`.
    V1,
    /// Open Inference Protocol (KServe v2).
    V2,
}

/// An output a v2 caller may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Class names.
    Label,
    /// Class probabilities.
    Probabilities,
}

impl OutputKind {
    /// The output's name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Label => "label",
            Self::Probabilities => "probabilities",
        }
    }
}

/// A request that passed validation: the only input inference accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidInferRequest {
    /// Rows in the batch (at least 1, at most the card's `max_batch`).
    pub rows: usize,
    /// `rows × features` values, row-major, each finite and within range.
    pub values: Vec<f32>,
    /// The v2 request id, echoed in the response.
    pub id: Option<String>,
    /// Outputs the v2 caller asked for; `None` = all the policy allows.
    pub outputs: Option<Vec<OutputKind>>,
}

/// Most field problems reported in one response.
const MAX_PROBLEMS: usize = 16;

/// Parses and validates a body for `card`.
pub fn parse(
    protocol: Protocol,
    card: &ModelCard,
    body: &[u8],
    max_depth: usize,
) -> Result<ValidInferRequest, ApiError> {
    let top = match protocol {
        Protocol::V1 => "instances",
        Protocol::V2 => "inputs[0].data",
    };
    match prescan(body, max_depth) {
        Ok(()) => {}
        Err(ScanError::TooDeep) => {
            return Err(ApiError::invalid_request(
                "The JSON body is nested too deeply.",
            ));
        }
        Err(ScanError::NonFinite) => return Err(non_finite(top)),
    }
    let mut ctx = Ctx {
        card,
        problems: Vec::new(),
        too_many_rows: false,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = match protocol {
        Protocol::V1 => V1Seed { ctx: &mut ctx }.deserialize(&mut de),
        Protocol::V2 => V2Seed { ctx: &mut ctx }.deserialize(&mut de),
    }
    .and_then(|r| de.end().map(|()| r));
    if ctx.too_many_rows {
        return Err(ApiError::validation(vec![FieldProblem::new(
            top,
            format!(
                "more than {} rows; this model accepts at most {} per request",
                card.max_batch, card.max_batch
            ),
        )]));
    }
    let request = match parsed {
        Ok(r) => r,
        Err(e) if is_number_out_of_range(&e) => return Err(non_finite(top)),
        Err(e) if e.is_data() => {
            return Err(ApiError::new(ErrorCode::InvalidRequest).with_message(match protocol {
                Protocol::V1 => {
                    "The body must be a JSON object {\"instances\": [...]} whose instances are arrays of values or objects of named features."
                }
                Protocol::V2 => {
                    "The body must be an Open Inference Protocol request: {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}."
                }
            }));
        }
        Err(_) => {
            return Err(ApiError::invalid_request(
                "The request body is not valid JSON.",
            ));
        }
    };
    if !ctx.problems.is_empty() {
        return Err(ApiError::validation(ctx.problems));
    }
    Ok(request)
}

fn non_finite(field: &str) -> ApiError {
    ApiError::validation(vec![FieldProblem::new(
        field,
        "contains NaN, Infinity or a number too large to represent; send finite numbers",
    )])
}

struct Ctx<'c> {
    card: &'c ModelCard,
    problems: Vec<FieldProblem>,
    too_many_rows: bool,
}

impl Ctx<'_> {
    fn problem(&mut self, field: impl FnOnce() -> String, problem: impl Into<Cow<'static, str>>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(FieldProblem::new(field(), problem));
        }
    }

    fn check(&mut self, row: usize, col: usize, field_base: &str, value: Scalar<'_>) -> f32 {
        let feature = &self.card.features[col];
        let checked = match value {
            Scalar::Number(v) => feature.check_number(v),
            Scalar::Str(s) => feature.check_str(&s),
            Scalar::Other => Err("must be a number"),
        };
        match checked {
            Ok(v) => v,
            Err(problem) => {
                let name = &feature.name;
                self.problem(|| format!("{field_base}[{row}].{name}"), problem);
                f32::NAN // never inferred: the request fails with the problem
            }
        }
    }
}

/// One JSON scalar, before it is checked against a feature.
enum Scalar<'de> {
    Number(f64),
    Str(Cow<'de, str>),
    Other,
}

struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// A map key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de: 'a, 'a> de::Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

// ---------------------------------------------------------------- v1

struct V1Seed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
}

impl<'de> DeserializeSeed<'de> for V1Seed<'_, '_> {
    type Value = ValidInferRequest;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for V1Seed<'_, '_> {
    type Value = ValidInferRequest;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with \"instances\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parsed: Option<(usize, Vec<f32>)> = None;
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "instances" if parsed.is_some() => {
                    return Err(de::Error::duplicate_field("instances"));
                }
                "instances" => {
                    parsed = Some(map.next_value_seed(RowsSeed {
                        ctx: &mut *self.ctx,
                        field: "instances",
                    })?);
                }
                other => return Err(de::Error::unknown_field(other, &["instances"])),
            }
        }
        let (rows, values) = parsed.ok_or_else(|| de::Error::missing_field("instances"))?;
        if rows == 0 {
            self.ctx
                .problem(|| "instances".into(), "must hold at least one instance");
        }
        Ok(ValidInferRequest {
            rows,
            values,
            id: None,
            outputs: None,
        })
    }
}

/// `[row, row, ...]` where each row is an array or an object of features.
struct RowsSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
    field: &'static str,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_, '_> {
    type Value = (usize, Vec<f32>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_, '_> {
    type Value = (usize, Vec<f32>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of instances")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let width = self.ctx.card.features.len();
        let max = self.ctx.card.max_batch;
        let mut values = Vec::with_capacity(width * seq.size_hint().unwrap_or(1).min(max));
        let mut rows = 0;
        loop {
            if rows == max {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.ctx.too_many_rows = true;
                    return Err(de::Error::custom("batch limit"));
                }
                break;
            }
            let seed = RowSeed {
                ctx: &mut *self.ctx,
                field: self.field,
                row: rows,
                values: &mut values,
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            rows += 1;
        }
        Ok((rows, values))
    }
}

/// One instance: appends exactly `features` values to `values`.
struct RowSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
    field: &'static str,
    row: usize,
    values: &'a mut Vec<f32>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of values or an object of named features")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Self {
            ctx,
            field,
            row,
            values,
        } = self;
        let width = ctx.card.features.len();
        let mut col = 0;
        while col < width {
            let Some(scalar) = seq.next_element_seed(ScalarSeed)? else {
                break;
            };
            let v = ctx.check(row, col, field, scalar);
            values.push(v);
            col += 1;
        }
        let mut extra = 0usize;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            extra += 1;
        }
        if col < width || extra > 0 {
            let got = col + extra;
            ctx.problem(
                || format!("{field}[{row}]"),
                format!("has {got} values; this model takes {width}"),
            );
            values.resize(values.len() + (width - col), f32::NAN);
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Self {
            ctx,
            field,
            row,
            values,
        } = self;
        let width = ctx.card.features.len();
        let base = values.len();
        values.resize(base + width, f32::NAN);
        let mut seen = vec![false; width];
        while let Some(Key(name)) = map.next_key()? {
            match ctx.card.feature_index.get(&*name).copied() {
                Some(col) if seen[col] => {
                    map.next_value::<IgnoredAny>()?;
                    ctx.problem(|| format!("{field}[{row}].{name}"), "is given twice");
                }
                Some(col) => {
                    seen[col] = true;
                    let scalar = map.next_value_seed(ScalarSeed)?;
                    values[base + col] = ctx.check(row, col, field, scalar);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    ctx.problem(
                        || format!("{field}[{row}].{name}"),
                        "is not a feature of this model",
                    );
                }
            }
        }
        for (col, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
            let name = &ctx.card.features[col].name;
            ctx.problem(|| format!("{field}[{row}].{name}"), "is missing");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- v2

/// The v2 datatypes a numeric model accepts.
const NUMERIC_DATATYPES: &[&str] = &[
    "FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64",
];

struct V2Seed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
}

impl<'de> DeserializeSeed<'de> for V2Seed<'_, '_> {
    type Value = ValidInferRequest;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

/// One v2 input tensor, data still unchecked against shape and datatype.
struct RawTensor<'de> {
    name: Cow<'de, str>,
    shape: Vec<i64>,
    datatype: Cow<'de, str>,
    data: Vec<f64>,
    all_integers: bool,
    non_numeric: bool,
}

impl<'de> Visitor<'de> for V2Seed<'_, '_> {
    type Value = ValidInferRequest;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an inference request object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const FIELDS: &[&str] = &["id", "parameters", "inputs", "outputs"];
        let mut id: Option<String> = None;
        let mut parameters = false;
        let mut inputs: Option<Vec<RawTensor<'de>>> = None;
        let mut outputs: Option<Vec<Cow<'de, str>>> = None;
        let limit = self
            .ctx
            .card
            .max_batch
            .saturating_mul(self.ctx.card.features.len());
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "id" if id.is_some() => return Err(de::Error::duplicate_field("id")),
                "id" => id = Some(map.next_value()?),
                "parameters" if parameters => return Err(de::Error::duplicate_field("parameters")),
                "parameters" => {
                    // Unknown OIP parameters are accepted and ignored (SPEC §3).
                    map.next_value::<IgnoredAny>()?;
                    parameters = true;
                }
                "inputs" if inputs.is_some() => return Err(de::Error::duplicate_field("inputs")),
                "inputs" => {
                    inputs = Some(map.next_value_seed(TensorsSeed {
                        ctx: &mut *self.ctx,
                        limit,
                    })?)
                }
                "outputs" if outputs.is_some() => {
                    return Err(de::Error::duplicate_field("outputs"));
                }
                "outputs" => {
                    let requested: Vec<RequestedOutput<'de>> = map.next_value()?;
                    outputs = Some(requested.into_iter().map(|o| o.name.0).collect());
                }
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let inputs = inputs.ok_or_else(|| de::Error::missing_field("inputs"))?;
        let (rows, values) = check_tensors(self.ctx, inputs);
        let outputs = outputs.map(|names| check_outputs(self.ctx, &names));
        Ok(ValidInferRequest {
            rows,
            values,
            id,
            outputs,
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput<'a> {
    #[serde(borrow)]
    name: Key<'a>,
    #[serde(default, rename = "parameters")]
    _parameters: IgnoredAny,
}

fn check_outputs(ctx: &mut Ctx<'_>, names: &[Cow<'_, str>]) -> Vec<OutputKind> {
    let mut kinds = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match &**name {
            "label" => kinds.push(OutputKind::Label),
            "probabilities" => kinds.push(OutputKind::Probabilities),
            _ => ctx.problem(
                || format!("outputs[{i}].name"),
                "is not an output of this model (label, probabilities)",
            ),
        }
    }
    kinds
}

/// Checks the tensors against the card and flattens them to rows.
fn check_tensors(ctx: &mut Ctx<'_>, inputs: Vec<RawTensor<'_>>) -> (usize, Vec<f32>) {
    let card = ctx.card;
    let width = card.features.len();
    let [tensor] = <[RawTensor<'_>; 1]>::try_from(inputs).unwrap_or_else(|inputs| {
        ctx.problem(
            || "inputs".into(),
            format!("has {} tensors; this model takes exactly one", inputs.len()),
        );
        [RawTensor {
            name: Cow::Borrowed(""),
            shape: vec![0, 0],
            datatype: Cow::Borrowed("FP32"),
            data: Vec::new(),
            all_integers: true,
            non_numeric: false,
        }]
    });
    if !ctx.problems.is_empty() {
        return (0, Vec::new());
    }
    if tensor.name != card.input_name {
        let expected = &card.input_name;
        ctx.problem(|| "inputs[0].name".into(), format!("must be {expected:?}"));
    }
    if !NUMERIC_DATATYPES.contains(&&*tensor.datatype) {
        ctx.problem(
            || "inputs[0].datatype".into(),
            "must be a numeric datatype such as FP32",
        );
    } else if (tensor.datatype.starts_with("INT") || tensor.datatype.starts_with("UINT"))
        && !tensor.all_integers
    {
        ctx.problem(
            || "inputs[0].data".into(),
            "holds non-integer values for an integer datatype",
        );
    }
    if tensor.non_numeric {
        ctx.problem(|| "inputs[0].data".into(), "must hold only numbers");
    }
    let rows = match tensor.shape.as_slice() {
        [n, f] if *n >= 0 && *f == width as i64 => *n as usize,
        _ => {
            ctx.problem(
                || "inputs[0].shape".into(),
                format!("must be [rows, {width}]"),
            );
            0
        }
    };
    if rows > card.max_batch {
        let max = card.max_batch;
        ctx.problem(
            || "inputs[0].shape".into(),
            format!("has {rows} rows; this model accepts at most {max}"),
        );
    } else if rows == 0 && ctx.problems.is_empty() {
        ctx.problem(|| "inputs[0].shape".into(), "must have at least one row");
    }
    if ctx.problems.is_empty() && tensor.data.len() != rows * width {
        let got = tensor.data.len();
        ctx.problem(
            || "inputs[0].data".into(),
            format!("has {got} values; shape needs {}", rows * width),
        );
    }
    if !ctx.problems.is_empty() {
        return (0, Vec::new());
    }
    let mut values = Vec::with_capacity(rows * width);
    for (i, v) in tensor.data.into_iter().enumerate() {
        values.push(ctx.check(i / width, i % width, "inputs[0].data", Scalar::Number(v)));
    }
    (rows, values)
}

struct TensorsSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
    limit: usize,
}

impl<'de> DeserializeSeed<'de> for TensorsSeed<'_, '_> {
    type Value = Vec<RawTensor<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TensorsSeed<'_, '_> {
    type Value = Vec<RawTensor<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of input tensors")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut tensors = Vec::with_capacity(1);
        // A model has one input tensor; a few more are parsed only to be reported.
        while tensors.len() < 8 {
            match seq.next_element_seed(TensorSeed {
                ctx: &mut *self.ctx,
                limit: self.limit,
            })? {
                Some(t) => tensors.push(t),
                None => return Ok(tensors),
            }
        }
        Err(de::Error::custom("too many input tensors"))
    }
}

struct TensorSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
    limit: usize,
}

impl<'de> DeserializeSeed<'de> for TensorSeed<'_, '_> {
    type Value = RawTensor<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TensorSeed<'_, '_> {
    type Value = RawTensor<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an input tensor")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const FIELDS: &[&str] = &["name", "shape", "datatype", "parameters", "data"];
        let (mut name, mut shape, mut datatype, mut data, mut parameters) =
            (None, None, None, None, false);
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "name" if name.is_none() => name = Some(map.next_value::<Key<'de>>()?.0),
                "shape" if shape.is_none() => shape = Some(map.next_value::<Vec<i64>>()?),
                "datatype" if datatype.is_none() => {
                    datatype = Some(map.next_value::<Key<'de>>()?.0)
                }
                "parameters" if !parameters => {
                    map.next_value::<IgnoredAny>()?;
                    parameters = true;
                }
                "data" if data.is_none() => {
                    let mut flat = Flat {
                        values: Vec::new(),
                        all_integers: true,
                        non_numeric: false,
                        limit: self.limit,
                    };
                    map.next_value_seed(FlatSeed(&mut flat, &mut self.ctx.too_many_rows))?;
                    data = Some(flat);
                }
                k if FIELDS.contains(&k) => return Err(de::Error::custom("duplicate field")),
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let data = data.ok_or_else(|| de::Error::missing_field("data"))?;
        Ok(RawTensor {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            data: data.values,
            all_integers: data.all_integers,
            non_numeric: data.non_numeric,
        })
    }
}

/// Tensor data, flat or nested, flattened in row-major order.
struct Flat {
    values: Vec<f64>,
    all_integers: bool,
    non_numeric: bool,
    limit: usize,
}

struct FlatSeed<'a>(&'a mut Flat, &'a mut bool);

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl FlatSeed<'_> {
    fn push<E: de::Error>(self, v: f64, integer: bool) -> Result<(), E> {
        if self.0.values.len() == self.0.limit {
            *self.1 = true;
            return Err(E::custom("batch limit"));
        }
        self.0.values.push(v);
        self.0.all_integers &= integer;
        Ok(())
    }
}

impl<'de> Visitor<'de> for FlatSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor data")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(v, false)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(v as f64, true)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(v as f64, true)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.0.non_numeric = true;
        self.push(f64::NAN, false)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.non_numeric = true;
        self.push(f64::NAN, false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.non_numeric = true;
        self.push(f64::NAN, false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(FlatSeed(&mut *self.0, &mut *self.1))?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0.non_numeric = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::CardDefaults;

    const CARD: &str = r#"
max_batch = 3
[input]
name = "input"
[[input.features]]
name = "a"
min = 0.0
max = 10.0
[[input.features]]
name = "b"
min = 0.0
max = 1.0
[output]
label = "label"
probabilities = "probabilities"
classes = ["x", "y"]
"#;

    fn card() -> ModelCard {
        ModelCard::parse(
            CARD,
            CardDefaults {
                max_batch: 64,
                range_tolerance: 0.0,
            },
        )
        .unwrap()
    }

    fn v1(body: &str) -> Result<ValidInferRequest, ApiError> {
        parse(Protocol::V1, &card(), body.as_bytes(), 32)
    }

    fn v2(body: &str) -> Result<ValidInferRequest, ApiError> {
        parse(Protocol::V2, &card(), body.as_bytes(), 32)
    }

    fn fields(e: &ApiError) -> Vec<String> {
        e.details.iter().map(|d| d.field.clone()).collect()
    }

    #[test]
    fn v1_positional_and_named_agree() {
        let a = v1(r#"{"instances": [[1, 0.5], [2.5, 1]]}"#).unwrap();
        let b = v1(r#"{"instances": [{"b": 0.5, "a": 1}, {"a": 2.5, "b": 1.0}]}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rows, 2);
        assert_eq!(a.values, [1.0, 0.5, 2.5, 1.0]);
    }

    #[test]
    fn v1_structure_errors_are_invalid_request() {
        for body in [
            "",
            "{",
            "[]",
            r#"{"instances": 3}"#,
            r#"{"instances": [[1, 0.5]], "extra": 1}"#,
            r#"{"instances": [[1, 0.5]], "instances": [[1, 0.5]]}"#,
            r#"{}"#,
            r#"{"instances": [5]}"#,
            r#"{"instances": [[1, 0.5]]} trailing"#,
        ] {
            let e = v1(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{body}");
            assert!(e.details.is_empty());
        }
    }

    #[test]
    fn v1_value_problems_name_the_fields() {
        let e = v1(r#"{"instances": [[1], [1, 0.5, 3], [11, "x"], [null, true]]}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert_eq!(
            fields(&e),
            ["instances"],
            "a batch of 4 > 3 is reported alone"
        );
        let e = v1(r#"{"instances": [[1], [1, 0.5, 3], [11, "x"]]}"#).unwrap_err();
        assert_eq!(
            fields(&e),
            [
                "instances[0]",
                "instances[1]",
                "instances[2].a",
                "instances[2].b"
            ]
        );
        let e = v1(r#"{"instances": [{"a": 1, "a": 2, "zz": 1}]}"#).unwrap_err();
        assert_eq!(
            fields(&e),
            ["instances[0].a", "instances[0].zz", "instances[0].b"]
        );
        let e = v1(r#"{"instances": [[1e9, 0.5]]}"#).unwrap_err();
        assert_eq!(fields(&e), ["instances[0].a"]);
        assert!(e.details[0].problem.contains("range"));
        let e = v1(r#"{"instances": []}"#).unwrap_err();
        assert_eq!(fields(&e), ["instances"]);
    }

    #[test]
    fn non_finite_and_huge_numbers_are_validation_failures() {
        for body in [
            r#"{"instances": [[NaN, 0.5]]}"#,
            r#"{"instances": [[Infinity, 0.5]]}"#,
            r#"{"instances": [[1e400, 0.5]]}"#,
            r#"{"instances": [[-1e400, 0.5]]}"#,
        ] {
            let e = v1(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationFailed, "{body}");
            assert_eq!(fields(&e), ["instances"]);
        }
    }

    #[test]
    fn batch_limit_stops_early() {
        let rows = vec!["[1, 0.5]"; 10_000].join(",");
        let e = v1(&format!(r#"{{"instances": [{rows}]}}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert!(e.details[0].problem.contains("at most 3"));
        let data = vec!["1"; 10_000].join(",");
        let e = v2(&format!(r#"{{"inputs": [{{"name": "input", "shape": [5000, 2], "datatype": "FP32", "data": [{data}]}}]}}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
    }

    #[test]
    fn deep_json_is_refused_before_parsing() {
        let body = format!(r#"{{"instances": {}{}}}"#, "[".repeat(200), "]".repeat(200));
        let e = v1(&body).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("nested"));
    }

    #[test]
    fn v2_flat_and_nested_data() {
        let flat = v2(r#"{"id": "r1", "parameters": {"x": {"y": 1}}, "inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 0.5, 2, 1]}]}"#).unwrap();
        let nested = v2(r#"{"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP64", "parameters": {}, "data": [[1, 0.5], [2, 1]]}], "outputs": [{"name": "label"}]}"#).unwrap();
        assert_eq!(flat.values, nested.values);
        assert_eq!(flat.id.as_deref(), Some("r1"));
        assert_eq!(nested.outputs, Some(vec![OutputKind::Label]));
        let ints = v2(r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "INT64", "data": [3, 1]}]}"#).unwrap();
        assert_eq!(ints.values, [3.0, 1.0]);
    }

    #[test]
    fn v2_problems() {
        let t = |name: &str, shape: &str, dt: &str, data: &str| {
            v2(&format!(r#"{{"inputs": [{{"name": "{name}", "shape": {shape}, "datatype": "{dt}", "data": {data}}}]}}"#))
                .unwrap_err()
        };
        assert_eq!(
            fields(&t("x", "[1, 2]", "FP32", "[1, 0.5]")),
            ["inputs[0].name"]
        );
        assert_eq!(
            fields(&t("input", "[1, 3]", "FP32", "[1, 0.5, 1]")),
            ["inputs[0].shape"]
        );
        assert_eq!(
            fields(&t("input", "[2, 2]", "FP32", "[1, 0.5]")),
            ["inputs[0].data"]
        );
        assert_eq!(
            fields(&t("input", "[1, 2]", "BYTES", "[\"a\", \"b\"]")),
            ["inputs[0].datatype", "inputs[0].data"]
        );
        assert_eq!(
            fields(&t("input", "[1, 2]", "INT32", "[1.5, 0]")),
            ["inputs[0].data"]
        );
        assert_eq!(
            fields(&t("input", "[1, 2]", "FP32", "[1, 5]")),
            ["inputs[0].data[0].b"]
        );
        assert_eq!(
            fields(&t("input", "[0, 2]", "FP32", "[]")),
            ["inputs[0].shape"]
        );
        let e = v2(r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 0.5]}], "outputs": [{"name": "logits"}]}"#).unwrap_err();
        assert_eq!(fields(&e), ["outputs[0].name"]);
        for body in [
            r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 0.5], "extra": 1}]}"#,
            r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32"}]}"#,
            r#"{"inputs": {}}"#,
            r#"{"model": "x", "inputs": []}"#,
        ] {
            assert_eq!(
                v2(body).unwrap_err().code,
                ErrorCode::InvalidRequest,
                "{body}"
            );
        }
    }
}
