//! Open Inference Protocol gRPC requests (`ModelInferRequest`, from
//! warden-oip) as the payload every transport hands the validator.

use std::borrow::Cow;

use warden_oip::pb;
use warden_tensor::DataType;

use super::{Payload, WireData, WireTensor};

/// The request as a payload: its id, its inputs as wire tensors and the
/// outputs it names.
pub fn payload(r: &pb::ModelInferRequest) -> Payload<'_> {
    Payload::Tensors {
        id: (!r.id.is_empty()).then(|| r.id.clone()),
        inputs: wire_inputs(r),
        outputs: (!r.outputs.is_empty())
            .then(|| r.outputs.iter().map(|o| o.name.clone()).collect()),
    }
}

/// The request's tensors as wire tensors: each input's raw contents (the
/// n-th entry of `raw_input_contents`), or its typed contents — never both.
fn wire_inputs(r: &pb::ModelInferRequest) -> Vec<WireTensor<'_>> {
    let raw = &r.raw_input_contents;
    let n = r.inputs.len();
    r.inputs
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let typed = t.contents.as_ref().filter(|c| !contents_empty(c));
            let data = match (raw.is_empty(), typed) {
                (false, Some(_)) => WireData::Invalid(Cow::Borrowed(
                    "has typed contents, and the request raw_input_contents: send one or the other",
                )),
                (false, None) if raw.len() != n => WireData::Invalid(Cow::Owned(format!(
                    "raw_input_contents has {} entries for {n} inputs",
                    raw.len()
                ))),
                (false, None) => match raw.get(k) {
                    Some(bytes) => WireData::Binary(bytes),
                    None => WireData::Invalid(Cow::Borrowed("has no raw_input_contents entry")),
                },
                (true, Some(c)) => typed_values(&t.datatype, c),
                (true, None) => WireData::Invalid(Cow::Borrowed(
                    "has no contents (typed contents or raw_input_contents)",
                )),
            };
            WireTensor {
                name: Cow::Borrowed(&t.name),
                datatype: Some(Cow::Borrowed(&t.datatype)),
                shape: t.shape.clone(),
                data,
                field: format!("inputs[{k}]"),
                rows_first: false,
            }
        })
        .collect()
}

fn contents_empty(c: &pb::InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

/// Typed contents as the tensor's values (the conversion the gateway
/// client uses for upstream answers too); the validator then checks them
/// against the card as it checks JSON values. A datatype it does not know
/// is named by the validator.
fn typed_values<'a>(datatype: &str, c: &'a pb::InferTensorContents) -> WireData<'a> {
    match DataType::parse(datatype) {
        None => WireData::Values(Vec::new()),
        Some(DataType::F16) => WireData::Invalid(Cow::Borrowed(
            "FP16 has no typed contents field: send raw_input_contents",
        )),
        Some(d) => match warden_oip::typed_contents(d, c) {
            Some(data) => WireData::Decoded(data),
            None => WireData::Invalid(Cow::Owned(format!(
                "has typed contents that do not fit {d}"
            ))),
        },
    }
}
