//! Parse, don't validate: the one place a request body becomes a
//! [`ValidInferRequest`], for both wire protocols.
//!
//! - v1 (KServe v1 / TF-Serving): `{"instances": [[...], ...]}` or
//!   `{"instances": [{"feature": value, ...}, ...]}`.
//! - v2 (Open Inference Protocol): `{"id"?, "parameters"?, "inputs": [{"name",
//!   "shape", "datatype", "parameters"?, "data"}], "outputs"?: [{"name"}]}`.
//!
//! v2 also takes the binary tensor data extension (Triton's
//! `binary_tensor_data`, which tritonclient and KServe's client use by
//! default): the body is a JSON header of `Inference-Header-Content-Length`
//! bytes followed by raw little-endian tensor data, and an input whose
//! `parameters.binary_data_size` is set takes its values from there instead
//! of `data` ([`parse_v2_binary`]). The same checks apply to the values.
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

#[cfg(test)]
mod tests;
mod v1;
mod v2;

use v1::V1Seed;
use v2::V2Seed;

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

fn parse_parts(
    protocol: Protocol,
    card: &ModelCard,
    body: &[u8],
    binary: Option<&[u8]>,
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
        binary,
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
    /// The binary tensor data after the JSON header, if the body has one.
    binary: Option<&'c [u8]>,
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
