//! Wire tensors against the card: the checks every transport shares.

use std::borrow::Cow;

use warden_core::FieldProblem;
use warden_tensor::{DataType, Tensor, TensorData};

use super::{MAX_PROBLEMS, Scalar, WireData, WireTensor};
use crate::card::{InputSpec, ModelCard, Valid};
use crate::engine::Batch;

/// Collects at most [`MAX_PROBLEMS`] problems.
struct Problems<'p>(&'p mut Vec<FieldProblem>);

impl Problems<'_> {
    fn add(&mut self, field: impl FnOnce() -> String, problem: impl Into<Cow<'static, str>>) {
        if self.0.len() < MAX_PROBLEMS {
            self.0.push(FieldProblem::new(field(), problem));
        }
    }
}

/// Checks `wires` against `card`: one tensor per card input (none missing,
/// none unknown or repeated), each of the card's datatype, rank, fixed and
/// capped dimensions, with as many values as its shape says, each of them
/// valid. Problems go to `problems`; `None` if there were any.
pub fn check(
    card: &ModelCard,
    wires: Vec<WireTensor<'_>>,
    problems: &mut Vec<FieldProblem>,
) -> Option<Batch> {
    let before = problems.len();
    let mut p = Problems(problems);
    let mut slots: Vec<Option<WireTensor<'_>>> = card.inputs.iter().map(|_| None).collect();
    for wire in wires {
        match card.inputs.iter().position(|i| i.name == wire.name) {
            Some(i) if slots[i].is_some() => {
                p.add(
                    || format!("{}.name", wire.field),
                    "names an input given twice",
                );
            }
            Some(i) => slots[i] = Some(wire),
            None => {
                let known: Vec<&str> = card.inputs.iter().map(|i| i.name.as_str()).collect();
                p.add(
                    || format!("{}.name", wire.field),
                    format!("is not an input of this model ({})", known.join(", ")),
                );
            }
        }
    }
    for (spec, slot) in card.inputs.iter().zip(&slots) {
        if slot.is_none() {
            let name = &spec.name;
            p.add(|| "inputs".into(), format!("input {name:?} is missing"));
        }
    }
    if p.0.len() > before {
        return None;
    }
    let mut inputs = Vec::with_capacity(card.inputs.len());
    let mut rows: Option<usize> = None;
    for (spec, wire) in card.inputs.iter().zip(slots.into_iter().flatten()) {
        let Some(tensor) = one(card, spec, wire, &mut p) else {
            continue;
        };
        if card.batched {
            let n = tensor.shape[0];
            match rows {
                Some(r) if r != n => {
                    let name = &spec.name;
                    p.add(
                        || "inputs".into(),
                        format!("input {name:?} has {n} rows, another input {r}: every input needs the same batch size"),
                    );
                }
                _ => rows = Some(n),
            }
        }
        inputs.push(tensor);
    }
    if p.0.len() > before {
        return None;
    }
    // Dimensions the graph ties together (a sequence length shared by ids
    // and mask) must agree across inputs.
    for group in &card.tied_dims {
        let size = |&(k, d): &(usize, usize)| inputs.get(k).and_then(|t| t.shape.get(d)).copied();
        let Some(first) = group.first() else { continue };
        let Some(want) = size(first) else { continue };
        for at in &group[1..] {
            if let Some(got) = size(at)
                && got != want
            {
                let (name, d) = (&card.inputs[at.0].name, at.1);
                let (other, d0) = (&card.inputs[first.0].name, first.1);
                p.add(
                    || "inputs".into(),
                    format!("input {name:?} has {got} in dimension {d}, input {other:?} {want} in dimension {d0}: the model needs them equal"),
                );
            }
        }
    }
    if p.0.len() > before {
        return None;
    }
    Some(Batch {
        rows: if card.batched { rows.unwrap_or(0) } else { 1 },
        inputs,
    })
}

/// Checks one input.
fn one(
    card: &ModelCard,
    spec: &InputSpec,
    wire: WireTensor<'_>,
    p: &mut Problems<'_>,
) -> Option<Tensor> {
    let field = &wire.field;
    // Datatype: the card's, or for a float input any number type (its values
    // are converted, as a JSON client cannot always choose).
    let sent = match &wire.datatype {
        None => spec.datatype,
        Some(name) => match DataType::parse(name) {
            Some(d) if d == spec.datatype || (spec.datatype.is_float() && d.is_numeric()) => d,
            _ => {
                p.add(
                    || format!("{field}.datatype"),
                    format!("must be {}", spec.datatype),
                );
                return None;
            }
        },
    };
    // Shape: rank, fixed dimensions, caps.
    let rank = spec.shape.len();
    if wire.shape.len() != rank || wire.shape.iter().any(|&d| d < 0) {
        p.add(
            || format!("{field}.shape"),
            format!(
                "must have {rank} dimensions like {:?} (-1: any size)",
                spec.shape
            ),
        );
        return None;
    }
    let shape: Vec<usize> = wire.shape.iter().map(|&d| d as usize).collect();
    for (i, ((&got, &want), &cap)) in shape
        .iter()
        .zip(&spec.shape)
        .zip(&spec.max_shape)
        .enumerate()
    {
        if want > 0 && got != want as usize {
            p.add(
                || format!("{field}.shape"),
                format!("dimension {i} must be {want} (shape {:?})", spec.shape),
            );
            return None;
        }
        if got > cap {
            let what = if i == 0 && card.batched {
                format!("has {got} rows; this model accepts at most {cap} per request")
            } else {
                format!("dimension {i} is {got}; this model accepts at most {cap}")
            };
            p.add(|| format!("{field}.shape"), what);
            return None;
        }
        if got == 0 {
            let what = if i == 0 && card.batched {
                "must have at least one row".to_owned()
            } else {
                format!("dimension {i} must be at least 1")
            };
            p.add(|| format!("{field}.shape"), what);
            return None;
        }
    }
    let count = shape.iter().product::<usize>();
    if count > spec.max_elements {
        p.add(
            || format!("{field}.shape"),
            format!(
                "holds {count} values; this model accepts at most {} for this input",
                spec.max_elements
            ),
        );
        return None;
    }
    // Values: JSON scalars, or binary data of the sent datatype.
    let decoded;
    let values: Vec<Scalar<'_>> = match wire.data {
        WireData::Values(v) => v,
        WireData::Unusable => return None,
        WireData::Decoded(data) => {
            decoded = data;
            scalars(&decoded)
        }
        WireData::Invalid(problem) => {
            p.add(|| field.clone(), problem);
            return None;
        }
        WireData::Binary(bytes) => {
            if let Some(size) = sent.size()
                && bytes.len() != count * size
            {
                p.add(
                    || format!("{field}.parameters.binary_data_size"),
                    format!(
                        "is {} bytes; shape and datatype need {}",
                        bytes.len(),
                        count * size
                    ),
                );
                return None;
            }
            // BYTES: counted before anything is copied, so a body of empty
            // strings cannot cost memory past the element cap.
            if sent == DataType::Bytes {
                match TensorData::bytes_elements(bytes) {
                    Ok(n) if n == count => {}
                    Ok(n) => {
                        p.add(
                            || format!("{field}.parameters.binary_data_size"),
                            format!("holds {n} BYTES elements; shape needs {count}"),
                        );
                        return None;
                    }
                    Err(e) => {
                        p.add(
                            || format!("{field}.parameters.binary_data_size"),
                            e.to_string(),
                        );
                        return None;
                    }
                }
            }
            match TensorData::from_le_bytes(sent, bytes) {
                Ok(data) => {
                    decoded = data;
                    scalars(&decoded)
                }
                Err(e) => {
                    p.add(
                        || format!("{field}.parameters.binary_data_size"),
                        e.to_string(),
                    );
                    return None;
                }
            }
        }
    };
    // Whole numbers for an integer datatype, whatever the input's own type.
    if sent.is_integer()
        && values
            .iter()
            .any(|v| matches!(v, Scalar::Float(f) if f.fract() != 0.0))
    {
        p.add(
            || format!("{field}.data"),
            format!("holds non-integer values for the datatype {sent}"),
        );
        return None;
    }
    if values.len() != count {
        p.add(
            || format!("{field}.data"),
            format!("has {} values; shape needs {count}", values.len()),
        );
        return None;
    }
    let name_of = |i: usize| -> String {
        let width = spec.fixed_row_len().unwrap_or(1).max(1);
        if !spec.features.is_empty() {
            let base = if wire.rows_first {
                field.clone()
            } else {
                format!("{field}.data")
            };
            format!("{base}[{}].{}", i / width, spec.features[i % width].name)
        } else if wire.rows_first {
            let row = i / shape.iter().skip(1).product::<usize>().max(1);
            format!("{field}[{row}].{}", spec.name)
        } else {
            format!("{field}.data[{i}]")
        }
    };
    let data = convert(spec, &values, &name_of, p)?;
    Some(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

/// Binary data as scalars, for the same checks as JSON values.
fn scalars(data: &TensorData) -> Vec<Scalar<'_>> {
    match data {
        TensorData::Bool(v) => v.iter().map(|&b| Scalar::Bool(b)).collect(),
        TensorData::U64(v) => v
            .iter()
            .map(|&x| i64::try_from(x).map_or(Scalar::UInt(x), Scalar::Int))
            .collect(),
        TensorData::Bytes(v) => v.iter().map(|b| Scalar::Bytes(Cow::Borrowed(b))).collect(),
        // Integers as integers: through f64 an INT64 above 2^53 would change.
        TensorData::I64(v) => v.iter().map(|&x| Scalar::Int(x)).collect(),
        TensorData::U32(v) => v.iter().map(|&x| Scalar::Int(i64::from(x))).collect(),
        TensorData::I32(v) => v.iter().map(|&x| Scalar::Int(i64::from(x))).collect(),
        TensorData::U16(v) => v.iter().map(|&x| Scalar::Int(i64::from(x))).collect(),
        TensorData::I16(v) => v.iter().map(|&x| Scalar::Int(i64::from(x))).collect(),
        TensorData::U8(v) => v.iter().map(|&x| Scalar::Int(i64::from(x))).collect(),
        TensorData::I8(v) => v.iter().map(|&x| Scalar::Int(i64::from(x))).collect(),
        d => (0..d.len())
            .map(|i| Scalar::Float(d.number(i).unwrap_or(f64::NAN)))
            .collect(),
    }
}

/// The values as the input's datatype, each checked.
fn convert(
    spec: &InputSpec,
    values: &[Scalar<'_>],
    name_of: &dyn Fn(usize) -> String,
    p: &mut Problems<'_>,
) -> Option<TensorData> {
    let before = p.0.len();
    let width = spec.fixed_row_len().unwrap_or(1).max(1);
    let data = match spec.datatype {
        DataType::Bool => TensorData::Bool(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Scalar::Bool(b) => *b,
                    _ => {
                        p.add(|| name_of(i), "must be true or false");
                        false
                    }
                })
                .collect(),
        ),
        DataType::Bytes => TensorData::Bytes(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let bytes: &[u8] = match v {
                        Scalar::Str(s) => s.as_bytes(),
                        Scalar::Bytes(b) => b,
                        _ => {
                            p.add(|| name_of(i), "must be a string");
                            return Vec::new();
                        }
                    };
                    if let Err(problem) = check_bytes(spec, bytes) {
                        p.add(|| name_of(i), problem);
                    }
                    bytes.to_vec()
                })
                .collect(),
        ),
        d if d.is_float() => {
            let mut out = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                let checked = match (v, spec.features.get(i % width)) {
                    (Scalar::Str(s), Some(f)) => f.check_str(s),
                    (Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_), Some(f)) => {
                        f.check_number(number(v))
                    }
                    (Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_), None) => {
                        check_valid(spec, number(v))
                    }
                    _ => Err("must be a number"),
                };
                match checked {
                    Ok(x) => out.push(x),
                    Err(problem) => {
                        p.add(|| name_of(i), problem);
                        out.push(0.0);
                    }
                }
            }
            TensorData::from_f64(d, &out)?
        }
        d => {
            // Integers: whole, within the type, then the card's ids or range.
            let (lo, hi) = d.integer_bounds()?;
            let mut out: Vec<i128> = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                let whole = match v {
                    Scalar::Int(x) => Some(i128::from(*x)),
                    Scalar::UInt(x) => Some(i128::from(*x)),
                    Scalar::Float(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e38 => {
                        Some(*x as i128)
                    }
                    Scalar::Float(_) => {
                        p.add(
                            || name_of(i),
                            "must be a whole number (this input is an integer)",
                        );
                        None
                    }
                    _ => {
                        p.add(|| name_of(i), "must be a number");
                        None
                    }
                };
                let Some(x) = whole else {
                    out.push(0);
                    continue;
                };
                let problem = if x < lo || x > hi {
                    Some(format!("is outside the range of {d}"))
                } else {
                    match &spec.valid {
                        Valid::Ids(n) if x < 0 || x >= i128::from(*n) => Some(format!(
                            "is not a valid id: ids are 0 to {}",
                            n.saturating_sub(1)
                        )),
                        Valid::Range { lo, hi } if (x as f64) < *lo || (x as f64) > *hi => {
                            Some("is outside the range this model accepts".to_owned())
                        }
                        _ => None,
                    }
                };
                if let Some(problem) = problem {
                    p.add(|| name_of(i), problem);
                }
                out.push(x);
            }
            integers(d, &out)?
        }
    };
    (p.0.len() == before).then_some(data)
}

fn number(v: &Scalar<'_>) -> f64 {
    match v {
        Scalar::Int(x) => *x as f64,
        Scalar::UInt(x) => *x as f64,
        Scalar::Float(x) => *x,
        _ => f64::NAN,
    }
}

/// A float against the input's range (and its datatype's).
fn check_valid(spec: &InputSpec, v: f64) -> Result<f64, &'static str> {
    if !v.is_finite() {
        return Err("must be a finite number (NaN and Infinity are not allowed)");
    }
    match &spec.valid {
        Valid::Range { lo, hi } if v < *lo || v > *hi => {
            Err("is outside the range this model accepts")
        }
        _ => Ok(v),
    }
}

/// A BYTES element against the input's length cap and categories. ONNX
/// strings are UTF-8 without NUL; anything else would fail in the runtime.
fn check_bytes(spec: &InputSpec, bytes: &[u8]) -> Result<(), Cow<'static, str>> {
    if bytes.len() > spec.max_length {
        return Err(format!("is longer than {} bytes", spec.max_length).into());
    }
    let Ok(s) = std::str::from_utf8(bytes) else {
        return Err("must be UTF-8 text".into());
    };
    if s.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    if let Valid::Categories(c) = &spec.valid
        && !c.iter().any(|x| x == s)
    {
        return Err("is not one of the allowed categories".into());
    }
    Ok(())
}

/// Checked whole numbers as `datatype`.
fn integers(datatype: DataType, v: &[i128]) -> Option<TensorData> {
    // Every value was checked to fit the type; `as` cannot truncate here.
    Some(match datatype {
        DataType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
        DataType::U16 => TensorData::U16(v.iter().map(|&x| x as u16).collect()),
        DataType::U32 => TensorData::U32(v.iter().map(|&x| x as u32).collect()),
        DataType::U64 => TensorData::U64(v.iter().map(|&x| x as u64).collect()),
        DataType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
        DataType::I16 => TensorData::I16(v.iter().map(|&x| x as i16).collect()),
        DataType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
        DataType::I64 => TensorData::I64(v.iter().map(|&x| x as i64).collect()),
        _ => return None,
    })
}
