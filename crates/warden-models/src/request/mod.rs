//! Parse, don't validate: the one place a request becomes a
//! [`ValidInferRequest`], whatever its wire format.
//!
//! - v1 (KServe v1 / TF-Serving): `{"instances": [...]}` in row format (an
//!   instance is the single input's value, an object of named features for
//!   a tabular model, or an object keyed by input name), or `{"inputs":
//!   ...}` in columnar format ([`v1`]).
//! - v2 (Open Inference Protocol): `{"id"?, "parameters"?, "inputs": [{"name",
//!   "shape", "datatype", "parameters"?, "data"}], "outputs"?: [{"name"}]}`,
//!   and the binary tensor data extension: a JSON header of
//!   `Inference-Header-Content-Length` bytes followed by raw little-endian
//!   tensor data claimed by inputs with `parameters.binary_data_size`
//!   ([`v2`]).
//!
//! Every format first becomes a list of [`WireTensor`]s — names, datatypes,
//! shapes and values as the client sent them — read in one pass with
//! serde's `DeserializeSeed` and never more values than the card allows
//! (the cap is checked while reading, before the body is decoded whole).
//! [`check`] then holds them against the card: names, datatypes, ranks,
//! fixed and capped dimensions, value counts, and every value (finite and
//! in range, a whole number in an integer's range, an id within its table,
//! a string within its length and categories). A transport without JSON
//! (gRPC) builds the wire tensors itself and calls [`check`].
//!
//! Structure errors are `invalid_request`; problems with the caller's
//! values are `validation_failed` with the offending fields named. Error
//! sentences are Warden's own; serde's messages go to no one.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use warden_core::{ApiError, ErrorCode, FieldProblem};

use crate::card::ModelCard;
use crate::engine::Batch;
use crate::json::{ScanError, is_number_out_of_range, prescan};

mod check;
pub mod grpc;
#[cfg(test)]
mod tests;
mod v1;
mod v2;

pub use check::check;

/// Which wire protocol a body uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// KServe v1 / TF-Serving `instances` or `inputs`.
    V1,
    /// Open Inference Protocol (KServe v2).
    V2,
}

/// A request that passed validation: the only input inference accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidInferRequest {
    /// The checked inputs, in card order.
    pub batch: Batch,
    /// The v2 request id, echoed in the response.
    pub id: Option<String>,
    /// Outputs the v2 caller asked for (indices into the card's outputs);
    /// `None` = all the policy shows.
    pub outputs: Option<Vec<usize>>,
}

impl ValidInferRequest {
    /// Entries of the batch dimension: what limits and quotas count.
    pub const fn rows(&self) -> usize {
        self.batch.rows
    }
}

/// One input tensor as the client sent it, before any check against the card.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor<'a> {
    /// The input's name.
    pub name: Cow<'a, str>,
    /// The datatype the client named (`None` in v1: the card's).
    pub datatype: Option<Cow<'a, str>>,
    /// The dimensions the client named (v1: as the nesting showed them).
    pub shape: Vec<i64>,
    /// The values.
    pub data: WireData<'a>,
    /// Where in the request it came from, for error details
    /// (`inputs[0]`, `instances`).
    pub field: String,
    /// Whether the data is named per row (`instances[2]`) rather than per
    /// element (`inputs[0].data[7]`) in error details.
    pub rows_first: bool,
}

/// A wire tensor's values.
#[derive(Debug, Clone, PartialEq)]
pub enum WireData<'a> {
    /// JSON values, flattened in row-major order.
    Values(Vec<Scalar<'a>>),
    /// Binary tensor data (`binary_data_size` bytes, or gRPC raw contents).
    Binary(&'a [u8]),
    /// `binary_data_size` was given but the body has no binary part that
    /// matches: the problem is already reported.
    Unusable,
    /// Values a transport decoded itself (gRPC typed contents), of the
    /// datatype the tensor names.
    Decoded(warden_tensor::TensorData),
    /// The transport found the values unusable (gRPC: raw and typed
    /// contents both given, or none): the problem, reported for this input.
    Invalid(Cow<'static, str>),
}

/// One value as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    /// A whole number that fits an i64.
    Int(i64),
    /// A whole number past i64::MAX.
    UInt(u64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// Raw bytes (BYTES from binary data).
    Bytes(Cow<'a, [u8]>),
    /// true or false.
    Bool(bool),
    /// null, an object, or anything else that is no value.
    Other,
}

/// A request body as a transport received it: what [`validate`] turns into
/// a [`ValidInferRequest`] once the model (and so its card) is known.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload<'a> {
    /// KServe v1 / TF-Serving JSON.
    V1(&'a [u8]),
    /// Open Inference Protocol JSON.
    V2(&'a [u8]),
    /// Open Inference Protocol with binary tensor data: `header` bytes of
    /// JSON, then the data (`Inference-Header-Content-Length`).
    V2Binary {
        /// The whole body.
        body: &'a [u8],
        /// Length of its JSON header.
        header: usize,
    },
    /// Tensors a transport decoded itself (gRPC).
    Tensors {
        /// The request id, echoed.
        id: Option<String>,
        /// The input tensors.
        inputs: Vec<WireTensor<'a>>,
        /// Outputs asked for by name; `None`: all the policy shows.
        outputs: Option<Vec<String>>,
    },
}

impl Payload<'_> {
    /// The wire protocol family, for error sentences.
    pub const fn protocol(&self) -> Protocol {
        match self {
            Self::V1(_) => Protocol::V1,
            _ => Protocol::V2,
        }
    }
}

/// Parses and validates a payload for `card`: the one way to get a
/// [`ValidInferRequest`], whatever the transport.
pub fn validate(
    card: &ModelCard,
    payload: Payload<'_>,
    max_depth: usize,
) -> Result<ValidInferRequest, ApiError> {
    match payload {
        Payload::V1(body) => parse(Protocol::V1, card, body, max_depth),
        Payload::V2(body) => parse(Protocol::V2, card, body, max_depth),
        Payload::V2Binary { body, header } => parse_v2_binary(card, body, header, max_depth),
        Payload::Tensors {
            id,
            inputs,
            outputs,
        } => {
            let mut ctx = Ctx {
                card,
                problems: Vec::new(),
                too_many: None,
                binary: None,
                limit: usize::MAX,
                taken: 0,
            };
            let names: Option<Vec<Cow<'_, str>>> =
                outputs.map(|o| o.into_iter().map(Cow::Owned).collect());
            let outputs = names.map(|n| check_outputs(&mut ctx, &n));
            let batch = check(card, inputs, &mut ctx.problems);
            match batch {
                Some(batch) if ctx.problems.is_empty() => {
                    Ok(ValidInferRequest { batch, id, outputs })
                }
                _ => Err(ApiError::validation(ctx.problems)),
            }
        }
    }
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
    parse_parts(protocol, card, body, None, max_depth)
}

/// Parses and validates a v2 body in the binary tensor data extension:
/// `header_len` (from `Inference-Header-Content-Length`) bytes of JSON, then
/// the binary tensor data.
pub fn parse_v2_binary(
    card: &ModelCard,
    body: &[u8],
    header_len: usize,
    max_depth: usize,
) -> Result<ValidInferRequest, ApiError> {
    if header_len > body.len() {
        return Err(ApiError::invalid_request(
            "Inference-Header-Content-Length is longer than the body.",
        ));
    }
    let (json, binary) = body.split_at(header_len);
    parse_parts(Protocol::V2, card, json, Some(binary), max_depth)
}

/// What a body parsed to, before the check against the card.
struct Parsed<'a> {
    id: Option<String>,
    inputs: Vec<WireTensor<'a>>,
    outputs: Option<Vec<Cow<'a, str>>>,
}

fn parse_parts(
    protocol: Protocol,
    card: &ModelCard,
    body: &[u8],
    binary: Option<&[u8]>,
    max_depth: usize,
) -> Result<ValidInferRequest, ApiError> {
    let top = match protocol {
        Protocol::V1 => "instances",
        Protocol::V2 => "inputs",
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
        too_many: None,
        binary,
        limit: card
            .inputs
            .iter()
            .map(|i| i.max_elements)
            .fold(0usize, usize::saturating_add),
        taken: 0,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = match protocol {
        Protocol::V1 => v1::V1Seed { ctx: &mut ctx }.deserialize(&mut de),
        Protocol::V2 => v2::V2Seed { ctx: &mut ctx }.deserialize(&mut de),
    }
    .and_then(|r| de.end().map(|()| r));
    if let Some(problem) = ctx.too_many.take() {
        return Err(ApiError::validation(vec![problem]));
    }
    let parsed = match parsed {
        Ok(r) => r,
        Err(e) if is_number_out_of_range(&e) => return Err(non_finite(top)),
        Err(e) if e.is_data() => {
            return Err(ApiError::new(ErrorCode::InvalidRequest).with_message(match protocol {
                Protocol::V1 => {
                    "The body must be a JSON object {\"instances\": [...]} (rows: values, arrays, or objects of named features or inputs) or {\"inputs\": ...} (columns)."
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
    let outputs = parsed.outputs.map(|names| check_outputs(&mut ctx, &names));
    let batch = check(card, parsed.inputs, &mut ctx.problems);
    match batch {
        Some(batch) if ctx.problems.is_empty() => Ok(ValidInferRequest {
            batch,
            id: parsed.id,
            outputs,
        }),
        _ => Err(ApiError::validation(ctx.problems)),
    }
}

/// The card outputs a v2 caller asked for, by index.
fn check_outputs(ctx: &mut Ctx<'_>, names: &[Cow<'_, str>]) -> Vec<usize> {
    let mut picked = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match ctx.card.output_index(name) {
            Some(o) if !picked.contains(&o) => picked.push(o),
            Some(_) => ctx.problem(|| format!("outputs[{i}].name"), "is asked for twice"),
            // Not listing the card's outputs: some may be withheld from
            // this caller (the model's metadata lists those it may see).
            None => ctx.problem(
                || format!("outputs[{i}].name"),
                "is not an output of this model (its metadata lists the outputs you may ask for)",
            ),
        }
    }
    picked
}

fn non_finite(field: &str) -> ApiError {
    ApiError::validation(vec![FieldProblem::new(
        field,
        "contains NaN, Infinity or a number too large to represent; send finite numbers",
    )])
}

/// Parsing state shared by the seeds.
struct Ctx<'c> {
    card: &'c ModelCard,
    problems: Vec<FieldProblem>,
    /// Set when the body holds more values (or rows) than the card allows;
    /// parsing stops at once.
    too_many: Option<FieldProblem>,
    /// The binary tensor data after the JSON header, if the body has one.
    binary: Option<&'c [u8]>,
    /// Most values the whole body may hold.
    limit: usize,
    /// Values read so far.
    taken: usize,
}

impl Ctx<'_> {
    fn problem(&mut self, field: impl FnOnce() -> String, problem: impl Into<Cow<'static, str>>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(FieldProblem::new(field(), problem));
        }
    }

    /// Counts one more value; false (and the problem noted) past the cap.
    fn take_one(&mut self, field: &str) -> bool {
        if self.taken >= self.limit {
            self.too_many = Some(FieldProblem::new(
                field,
                format!(
                    "holds more values than this model accepts in one request ({})",
                    self.limit
                ),
            ));
            return false;
        }
        self.taken += 1;
        true
    }
}

/// A depth whose arrays have not ended yet.
const UNSEEN: usize = usize::MAX;

/// Values, flat or nested, flattened in row-major order; the nesting's
/// dimensions are recorded (all arrays at one depth must agree).
struct Flat<'a> {
    values: Vec<Scalar<'a>>,
    /// Length of the arrays at each depth, as first seen.
    dims: Vec<usize>,
    /// Depth of the first value seen (every value must be at it).
    leaf_depth: Option<usize>,
    ragged: bool,
}

impl Flat<'_> {
    fn new() -> Self {
        Self {
            values: Vec::new(),
            dims: Vec::new(),
            leaf_depth: None,
            ragged: false,
        }
    }

    /// The nesting's dimensions, unless it was ragged.
    fn shape(&self) -> Option<Vec<i64>> {
        (!self.ragged && !self.dims.contains(&UNSEEN))
            .then(|| self.dims.iter().map(|&d| d as i64).collect())
    }
}

struct FlatSeed<'a, 'c, 'de> {
    flat: &'a mut Flat<'de>,
    ctx: &'a mut Ctx<'c>,
    depth: usize,
    field: &'a str,
}

impl<'de> DeserializeSeed<'de> for FlatSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> FlatSeed<'_, '_, 'de> {
    fn push<E: de::Error>(self, v: Scalar<'de>) -> Result<(), E> {
        if !self.ctx.take_one(self.field) {
            return Err(E::custom("value limit"));
        }
        match self.flat.leaf_depth {
            None => self.flat.leaf_depth = Some(self.depth),
            Some(d) if d != self.depth => self.flat.ragged = true,
            Some(_) => {}
        }
        self.flat.values.push(v);
        Ok(())
    }
}

impl<'de> Visitor<'de> for FlatSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor data")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Scalar::Float(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::UInt(v),
        })
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.push(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0;
        while seq
            .next_element_seed(FlatSeed {
                flat: &mut *self.flat,
                ctx: &mut *self.ctx,
                depth: self.depth + 1,
                field: self.field,
            })?
            .is_some()
        {
            n += 1;
        }
        // Inner arrays end first: lengths are kept by depth as they end.
        let flat = self.flat;
        if flat.dims.len() <= self.depth {
            flat.dims.resize(self.depth + 1, UNSEEN);
        }
        match flat.dims[self.depth] {
            UNSEEN => flat.dims[self.depth] = n,
            d if d != n => flat.ragged = true,
            _ => {}
        }
        if n == 0 && flat.leaf_depth.is_none() {
            // An empty array: its depth stands for the leaves'.
            flat.leaf_depth = Some(self.depth + 1);
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.push(Scalar::Other)
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
