//! Open Inference Protocol (KServe v2) bodies, JSON and the binary tensor
//! data extension, to wire tensors.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Ctx, Flat, FlatSeed, Key, Parsed, WireData, WireTensor};

pub(super) struct V2Seed<'a, 'c> {
    pub(super) ctx: &'a mut Ctx<'c>,
}

impl<'de: 'c, 'c> DeserializeSeed<'de> for V2Seed<'_, 'c> {
    type Value = Parsed<'c>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

/// One v2 input tensor as read, before its binary data is attached.
struct RawTensor<'de> {
    name: Cow<'de, str>,
    shape: Vec<i64>,
    datatype: Cow<'de, str>,
    /// `None` when the values are in the binary part.
    data: Option<Flat<'de>>,
    /// `parameters.binary_data_size`: the tensor's bytes in the binary part.
    binary_size: Option<u64>,
}

impl<'de: 'c, 'c> Visitor<'de> for V2Seed<'_, 'c> {
    type Value = Parsed<'c>;
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
                    // Unknown OIP parameters are accepted and ignored (docs/api.md).
                    map.next_value::<IgnoredAny>()?;
                    parameters = true;
                }
                "inputs" if inputs.is_some() => return Err(de::Error::duplicate_field("inputs")),
                "inputs" => {
                    inputs = Some(map.next_value_seed(TensorsSeed {
                        ctx: &mut *self.ctx,
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
        let inputs = attach_binary(self.ctx, inputs);
        Ok(Parsed {
            id,
            inputs,
            outputs,
        })
    }
}

/// Gives each input its values: its JSON `data`, or its share of the binary
/// part (the shares follow one another in input order).
fn attach_binary<'c>(ctx: &mut Ctx<'c>, inputs: Vec<RawTensor<'c>>) -> Vec<WireTensor<'c>> {
    let binary = ctx.binary.unwrap_or_default();
    // Added with a check: sizes near 2^64 must not wrap around to the
    // body's length.
    let claimed: Option<u64> = inputs
        .iter()
        .filter_map(|t| t.binary_size)
        .try_fold(0u64, u64::checked_add);
    let usable = ctx.binary.is_some() && claimed == Some(binary.len() as u64);
    if ctx.binary.is_some() && !usable {
        let claimed = claimed.map_or_else(|| "more than 2^64".to_owned(), |c| c.to_string());
        let n = binary.len();
        let claimants: Vec<usize> = (0..inputs.len())
            .filter(|&k| inputs[k].binary_size.is_some())
            .collect();
        ctx.problem(
            || match claimants.as_slice() {
                [k] => format!("inputs[{k}].parameters.binary_data_size"),
                [] => "inputs[0].parameters.binary_data_size".into(),
                _ => "inputs".into(),
            },
            format!(
                "the inputs' parameters.binary_data_size add up to {claimed} bytes, but the body holds {n} bytes of binary data"
            ),
        );
    }
    let mut offset = 0usize;
    let mut wires = Vec::with_capacity(inputs.len());
    for (k, t) in inputs.into_iter().enumerate() {
        let field = format!("inputs[{k}]");
        let data = match (t.data, t.binary_size) {
            (Some(flat), None) => WireData::Values(flat.values),
            (Some(_), Some(_)) => {
                ctx.problem(
                    || field.clone(),
                    "has both data and parameters.binary_data_size; send one",
                );
                WireData::Unusable
            }
            (None, Some(_)) if ctx.binary.is_none() => {
                ctx.problem(
                    || format!("{field}.parameters.binary_data_size"),
                    "needs the binary data extension (an Inference-Header-Content-Length header)",
                );
                WireData::Unusable
            }
            (None, Some(size)) if usable => {
                // The sizes add up to the binary part's length, so each
                // share is in bounds (and checked all the same).
                let end = usize::try_from(size)
                    .ok()
                    .and_then(|size| offset.checked_add(size));
                match end.and_then(|end| binary.get(offset..end).map(|s| (end, s))) {
                    Some((end, share)) => {
                        offset = end;
                        WireData::Binary(share)
                    }
                    None => WireData::Unusable,
                }
            }
            (None, _) => WireData::Unusable,
        };
        wires.push(WireTensor {
            name: t.name,
            datatype: Some(t.datatype),
            shape: t.shape,
            data,
            field,
            rows_first: false,
        });
    }
    wires
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput<'a> {
    #[serde(borrow)]
    name: Key<'a>,
    #[serde(default, rename = "parameters")]
    _parameters: IgnoredAny,
}

struct TensorsSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
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
        // A few more tensors than the model takes are parsed, to be reported.
        let most = self.ctx.card.inputs.len() + 8;
        let mut tensors = Vec::with_capacity(self.ctx.card.inputs.len());
        while tensors.len() < most {
            let field = format!("inputs[{}].data", tensors.len());
            match seq.next_element_seed(TensorSeed {
                ctx: &mut *self.ctx,
                field: &field,
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
    field: &'a str,
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
                    // parameters are accepted and ignored (docs/api.md).
                    binary_size = map.next_value::<BinarySize>()?.0;
                    parameters_seen = true;
                }
                "data" if data.is_none() => {
                    let mut flat = Flat::new();
                    map.next_value_seed(FlatSeed {
                        flat: &mut flat,
                        ctx: &mut *self.ctx,
                        depth: 0,
                        field: self.field,
                    })?;
                    data = Some(flat);
                }
                k if FIELDS.contains(&k) => return Err(de::Error::custom("duplicate field")),
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        if data.is_none() && binary_size.is_none() {
            return Err(de::Error::missing_field("data"));
        }
        Ok(RawTensor {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            data,
            binary_size,
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
