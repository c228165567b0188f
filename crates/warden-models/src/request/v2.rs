//! Open Inference Protocol (KServe v2) bodies.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Ctx, Key, OutputKind, Scalar, ValidInferRequest};

const NUMERIC_DATATYPES: &[&str] = &[
    "FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64",
];

pub(super) struct V2Seed<'a, 'c> {
    pub(super) ctx: &'a mut Ctx<'c>,
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
    /// `None` when the values are in the binary part.
    data: Option<Vec<f64>>,
    /// `parameters.binary_data_size`: the tensor's bytes in the binary part.
    binary_size: Option<u64>,
    all_integers: bool,
    non_numeric: bool,
}

/// Bytes per value of a numeric datatype in the binary part.
fn datatype_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "INT8" | "UINT8" => 1,
        "FP16" | "INT16" | "UINT16" => 2,
        "FP32" | "INT32" | "UINT32" => 4,
        "FP64" | "INT64" | "UINT64" => 8,
        _ => return None,
    })
}

/// Little-endian values of `datatype` (whose size is `size`) as f64.
fn decode(datatype: &str, bytes: &[u8], size: usize) -> Vec<f64> {
    bytes
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            match datatype {
                "INT8" => f64::from(c[0] as i8),
                "UINT8" => f64::from(c[0]),
                "FP16" => f64::from(f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
                "INT16" => f64::from(i16::from_le_bytes([b[0], b[1]])),
                "UINT16" => f64::from(u16::from_le_bytes([b[0], b[1]])),
                "FP32" => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                "INT32" => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                "UINT32" => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                "FP64" => f64::from_le_bytes(b),
                "INT64" => i64::from_le_bytes(b) as f64,
                _ => u64::from_le_bytes(b) as f64,
            }
        })
        .collect()
}

/// IEEE 754 half precision to single. Written out because it is the only
/// half-float operation needed (a crate for one conversion is not worth it).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: value = frac × 2^-24.
        (0, _) => {
            let v = frac as f32 * 2f32.powi(-24);
            return if sign == 0 { v } else { -v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000,
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

impl<'de> Visitor<'de> for V2Seed<'_, '_> {
    type Value = ValidInferRequest;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an inference request object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const FIELDS: &[&str] = &["id", "model_name", "parameters", "inputs", "outputs"];
        let mut id: Option<String> = None;
        let mut parameters = false;
        let mut model_name = false;
        let mut inputs: Option<Vec<RawTensor<'de>>> = None;
        let mut outputs: Option<Vec<Cow<'de, str>>> = None;
        let mut outputs_seen = false;
        let limit = self
            .ctx
            .card
            .max_batch
            .saturating_mul(self.ctx.card.features.len());
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "id" if id.is_some() => return Err(de::Error::duplicate_field("id")),
                "id" => id = Some(map.next_value()?),
                "model_name" if model_name => return Err(de::Error::duplicate_field("model_name")),
                "model_name" => {
                    // KServe's client names the model in the body too; the
                    // path decides which model runs.
                    map.next_value::<Key<'de>>()?;
                    model_name = true;
                }
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
                "outputs" if outputs_seen => {
                    return Err(de::Error::duplicate_field("outputs"));
                }
                "outputs" => {
                    // `null` is the same as leaving it out (the schema allows
                    // it, and OIP clients send it).
                    let requested: Option<Vec<RequestedOutput<'de>>> = map.next_value()?;
                    outputs = requested.map(|r| r.into_iter().map(|o| o.name.0).collect());
                    outputs_seen = true;
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
            data: Some(Vec::new()),
            binary_size: None,
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
    let data = match (tensor.data, tensor.binary_size, ctx.binary) {
        (Some(data), None, None | Some([])) => data,
        (Some(_), None, Some(tail)) => {
            let n = tail.len();
            ctx.problem(
                || "inputs[0].parameters.binary_data_size".into(),
                format!("is missing, but the body holds {n} bytes of binary data"),
            );
            Vec::new()
        }
        (Some(_), Some(_), _) => {
            ctx.problem(
                || "inputs[0]".into(),
                "has both data and parameters.binary_data_size; send one",
            );
            Vec::new()
        }
        (None, Some(_), None) => {
            ctx.problem(
                || "inputs[0].parameters.binary_data_size".into(),
                "needs the binary data extension (an Inference-Header-Content-Length header)",
            );
            Vec::new()
        }
        (None, Some(size), Some(tail)) => {
            let bytes = datatype_size(&tensor.datatype).unwrap_or(4);
            if size != tail.len() as u64 {
                let n = tail.len();
                ctx.problem(
                    || "inputs[0].parameters.binary_data_size".into(),
                    format!("is {size}, but the body holds {n} bytes of binary data"),
                );
            } else if ctx.problems.is_empty() {
                // rows ≤ max_batch here (a larger shape is a problem above),
                // so this cannot overflow; saturating all the same.
                let needed = rows.saturating_mul(width).saturating_mul(bytes);
                if size != needed as u64 {
                    ctx.problem(
                        || "inputs[0].parameters.binary_data_size".into(),
                        format!("is {size} bytes; shape and datatype need {needed}"),
                    );
                }
            }
            if ctx.problems.is_empty() {
                decode(&tensor.datatype, tail, bytes)
            } else {
                Vec::new()
            }
        }
        (None, None, _) => {
            ctx.problem(
                || "inputs[0].data".into(),
                "is missing (or set parameters.binary_data_size)",
            );
            Vec::new()
        }
    };
    if ctx.problems.is_empty() && data.len() != rows * width {
        let got = data.len();
        ctx.problem(
            || "inputs[0].data".into(),
            format!("has {got} values; shape needs {}", rows * width),
        );
    }
    if !ctx.problems.is_empty() {
        return (0, Vec::new());
    }
    let mut values = Vec::with_capacity(rows * width);
    for (i, v) in data.into_iter().enumerate() {
        values.push(ctx.check(i / width, i % width, "inputs[0].data", Scalar::Number(v)));
    }
    (rows, values)
}

struct TensorsSeed<'a, 'c> {
    pub(super) ctx: &'a mut Ctx<'c>,
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
    pub(super) ctx: &'a mut Ctx<'c>,
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
        let (mut name, mut shape, mut datatype, mut data) = (None, None, None, None);
        let (mut binary_size, mut parameters_seen) = (None, false);
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "name" if name.is_none() => name = Some(map.next_value::<Key<'de>>()?.0),
                "shape" if shape.is_none() => shape = Some(map.next_value::<Vec<i64>>()?),
                "datatype" if datatype.is_none() => {
                    datatype = Some(map.next_value::<Key<'de>>()?.0)
                }
                "parameters" if !parameters_seen => {
                    // Only binary_data_size means anything here; other
                    // parameters are accepted and ignored (SPEC §3).
                    binary_size = map.next_value::<BinarySize>()?.0;
                    parameters_seen = true;
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
        if data.is_none() && binary_size.is_none() {
            return Err(de::Error::missing_field("data"));
        }
        let (all_integers, non_numeric) = data
            .as_ref()
            .map_or((true, false), |d: &Flat| (d.all_integers, d.non_numeric));
        Ok(RawTensor {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            data: data.map(|d| d.values),
            binary_size,
            all_integers,
            non_numeric,
        })
    }
}

/// An input tensor's `parameters` (an object, or null): `binary_data_size`
/// is read, anything else ignored.
struct BinarySize(Option<u64>);

impl<'de> de::Deserialize<'de> for BinarySize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BinarySize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameters object")
            }
            fn visit_unit<E>(self) -> Result<BinarySize, E> {
                Ok(BinarySize(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BinarySize, A::Error> {
                let mut size = None;
                while let Some(Key(key)) = map.next_key()? {
                    if key == "binary_data_size" && size.is_none() {
                        size = Some(map.next_value::<u64>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(BinarySize(size))
            }
        }
        d.deserialize_any(V)
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
