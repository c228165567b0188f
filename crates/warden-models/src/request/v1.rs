//! KServe v1 / TF-Serving bodies to wire tensors.
//!
//! Row format, `{"instances": [instance, ...]}`; an instance is
//! - for a model with one input: that input's value for one row (a number,
//!   a string, or nested arrays), or, for a tabular input, an array of the
//!   features or an object of named features;
//! - for a model with several inputs: an object keyed by input name.
//!
//! Columnar format, `{"inputs": value}`: the single input's whole batch, or
//! an object keyed by input name whose values are whole batches.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use warden_core::FieldProblem;

use super::{Ctx, Flat, FlatSeed, Key, Parsed, Scalar, WireData, WireTensor};

pub(super) struct V1Seed<'a, 'c> {
    pub(super) ctx: &'a mut Ctx<'c>,
}

impl<'de: 'c, 'c> DeserializeSeed<'de> for V1Seed<'_, 'c> {
    type Value = Parsed<'c>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

/// One input's values gathered across instances.
struct Column<'de> {
    values: Vec<Scalar<'de>>,
    /// Dimensions of one row, as the first row showed them.
    row_shape: Option<Vec<i64>>,
    /// Rows that supplied this input.
    rows: usize,
}

impl<'de: 'c, 'c> Visitor<'de> for V1Seed<'_, 'c> {
    type Value = Parsed<'c>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with \"instances\" or \"inputs\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parsed: Option<Vec<WireTensor<'de>>> = None;
        let mut signature = false;
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "instances" | "inputs" if parsed.is_some() => {
                    return Err(de::Error::custom("instances and inputs go alone"));
                }
                "instances" => {
                    let columns = map.next_value_seed(RowsSeed {
                        ctx: &mut *self.ctx,
                    })?;
                    parsed = Some(rows_to_wires(self.ctx, columns));
                }
                "inputs" => {
                    parsed = Some(map.next_value_seed(ColumnarSeed {
                        ctx: &mut *self.ctx,
                    })?);
                }
                // TF-Serving clients name a signature; Warden serves one.
                "signature_name" if !signature => {
                    map.next_value::<IgnoredAny>()?;
                    signature = true;
                }
                other => {
                    return Err(de::Error::unknown_field(
                        other,
                        &["instances", "inputs", "signature_name"],
                    ));
                }
            }
        }
        let inputs = parsed.ok_or_else(|| de::Error::missing_field("instances"))?;
        Ok(Parsed {
            id: None,
            inputs,
            outputs: None,
        })
    }
}

fn rows_to_wires<'de>(ctx: &mut Ctx<'_>, columns: Vec<Column<'de>>) -> Vec<WireTensor<'de>> {
    let card = ctx.card;
    if !ctx.problems.is_empty() {
        return Vec::new();
    }
    let rows = columns.iter().map(|c| c.rows).max().unwrap_or(0);
    if rows == 0 {
        ctx.problem(|| "instances".into(), "must hold at least one instance");
        return Vec::new();
    }
    if !card.batched && rows != 1 {
        ctx.problem(
            || "instances".into(),
            "this model takes no batch: send exactly one instance",
        );
        return Vec::new();
    }
    let mut wires = Vec::with_capacity(columns.len());
    for (spec, column) in card.inputs.iter().zip(columns) {
        if column.rows < rows {
            let name = &spec.name;
            ctx.problem(
                || format!("instances[{}].{name}", column.rows),
                "is missing",
            );
            continue;
        }
        let row_shape = column.row_shape.unwrap_or_default();
        let shape = if card.batched {
            std::iter::once(rows as i64).chain(row_shape).collect()
        } else {
            row_shape
        };
        wires.push(WireTensor {
            name: Cow::Owned(spec.name.clone()),
            datatype: None,
            shape,
            data: WireData::Values(column.values),
            field: "instances".into(),
            rows_first: true,
        });
    }
    wires
}

/// `[instance, ...]` → one column per card input.
struct RowsSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_, '_> {
    type Value = Vec<Column<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_, '_> {
    type Value = Vec<Column<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of instances")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let card = self.ctx.card;
        let max = card.max_batch;
        let mut columns: Vec<Column<'de>> = card
            .inputs
            .iter()
            .map(|_| Column {
                values: Vec::new(),
                row_shape: None,
                rows: 0,
            })
            .collect();
        let mut row = 0;
        loop {
            if row == max {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.ctx.too_many = Some(FieldProblem::new(
                        "instances",
                        format!(
                            "more than {max} rows; this model accepts at most {max} per request"
                        ),
                    ));
                    return Err(de::Error::custom("batch limit"));
                }
                break;
            }
            let seed = InstanceSeed {
                ctx: &mut *self.ctx,
                columns: &mut columns,
                row,
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            row += 1;
        }
        Ok(columns)
    }
}

/// One instance: appends one row to each input's column.
struct InstanceSeed<'a, 'c, 'de> {
    ctx: &'a mut Ctx<'c>,
    columns: &'a mut Vec<Column<'de>>,
    row: usize,
}

impl<'de> DeserializeSeed<'de> for InstanceSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let card = self.ctx.card;
        if card.inputs.len() == 1 && card.inputs[0].features.is_empty() {
            // The single input's value for this row; an object is read as
            // named inputs.
            d.deserialize_any(SingleSeed(self))
        } else if card.inputs.len() == 1 {
            d.deserialize_any(TabularSeed(self))
        } else {
            d.deserialize_map(NamedSeed(self))
        }
    }
}

impl<'de> InstanceSeed<'_, '_, 'de> {
    /// Adds one row of input `i` from its flattened value.
    fn add(&mut self, i: usize, flat: Flat<'de>) {
        let name = &self.ctx.card.inputs[i].name;
        let row = self.row;
        let column = &mut self.columns[i];
        let Some(shape) = flat.shape() else {
            self.ctx.problem(
                || format!("instances[{row}].{name}"),
                "is ragged: nested arrays of one level must have one length",
            );
            return;
        };
        match &column.row_shape {
            Some(s) if *s != shape => {
                self.ctx.problem(
                    || format!("instances[{row}].{name}"),
                    format!(
                        "has shape {shape:?}; the first instance's is {s:?} (pad rows to one shape)"
                    ),
                );
            }
            Some(_) => {}
            None => column.row_shape = Some(shape),
        }
        if column.rows != row {
            self.ctx
                .problem(|| format!("instances[{row}].{name}"), "is given twice");
            return;
        }
        column.values.extend(flat.values);
        column.rows += 1;
    }
}

/// A single non-tabular input: the instance is its value.
struct SingleSeed<'a, 'c, 'de>(InstanceSeed<'a, 'c, 'de>);

impl<'de> SingleSeed<'_, '_, 'de> {
    /// Reads the instance with `read` and adds it as one row.
    fn with<E>(self, read: impl FnOnce(FlatSeed<'_, '_, 'de>) -> Result<(), E>) -> Result<(), E> {
        let mut inst = self.0;
        let mut flat = Flat::new();
        read(FlatSeed {
            flat: &mut flat,
            ctx: &mut *inst.ctx,
            depth: 0,
            field: "instances",
        })?;
        inst.add(0, flat);
        Ok(())
    }
}

impl<'de> Visitor<'de> for SingleSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an instance")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.with(|s| s.visit_f64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.with(|s| s.visit_i64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.with(|s| s.visit_u64(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.with(|s| s.visit_bool(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.with(|s| s.visit_borrowed_str(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.with(|s| s.visit_str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.with(|s| s.visit_unit())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.with(|s| s.visit_seq(seq))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        NamedSeed(self.0).visit_map(map)
    }
}

/// An object keyed by input name.
struct NamedSeed<'a, 'c, 'de>(InstanceSeed<'a, 'c, 'de>);

impl<'de> Visitor<'de> for NamedSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of named inputs")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut inst = self.0;
        let card = inst.ctx.card;
        let row = inst.row;
        while let Some(Key(name)) = map.next_key()? {
            match card.inputs.iter().position(|i| i.name == name) {
                Some(i) => {
                    let mut flat = Flat::new();
                    map.next_value_seed(FlatSeed {
                        flat: &mut flat,
                        ctx: &mut *inst.ctx,
                        depth: 0,
                        field: "instances",
                    })?;
                    inst.add(i, flat);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    inst.ctx.problem(
                        || format!("instances[{row}].{name}"),
                        "is not an input of this model",
                    );
                }
            }
        }
        Ok(())
    }
}

/// A tabular input's row: an array of the features, or an object of
/// named features.
struct TabularSeed<'a, 'c, 'de>(InstanceSeed<'a, 'c, 'de>);

impl<'de> Visitor<'de> for TabularSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of values or an object of named features")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let mut inst = self.0;
        let mut flat = Flat::new();
        FlatSeed {
            flat: &mut flat,
            ctx: &mut *inst.ctx,
            depth: 0,
            field: "instances",
        }
        .visit_seq(seq)?;
        let width = inst.ctx.card.inputs[0].features.len();
        let got = flat.values.len();
        if flat.dims.len() != 1 || got != width {
            let row = inst.row;
            inst.ctx.problem(
                || format!("instances[{row}]"),
                format!("has {got} values; this model takes {width}"),
            );
            flat.values.resize(width, Scalar::Other);
            flat.dims = vec![width];
            flat.ragged = false;
        }
        inst.add(0, flat);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut inst = self.0;
        let spec = &inst.ctx.card.inputs[0];
        let width = spec.features.len();
        let row = inst.row;
        let mut values = vec![Scalar::Other; width];
        let mut seen = vec![false; width];
        while let Some(Key(name)) = map.next_key()? {
            match spec.feature_index.get(&*name).copied() {
                Some(col) if seen[col] => {
                    map.next_value::<IgnoredAny>()?;
                    inst.ctx
                        .problem(|| format!("instances[{row}].{name}"), "is given twice");
                }
                Some(col) => {
                    seen[col] = true;
                    let mut flat = Flat::new();
                    map.next_value_seed(FlatSeed {
                        flat: &mut flat,
                        ctx: &mut *inst.ctx,
                        depth: 0,
                        field: "instances",
                    })?;
                    match (flat.dims.is_empty(), flat.values.pop()) {
                        (true, Some(v)) => values[col] = v,
                        _ => inst.ctx.problem(
                            || format!("instances[{row}].{name}"),
                            "must be a single value",
                        ),
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    inst.ctx.problem(
                        || format!("instances[{row}].{name}"),
                        "is not a feature of this model",
                    );
                }
            }
        }
        for (col, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
            let name = &spec.features[col].name;
            inst.ctx
                .problem(|| format!("instances[{row}].{name}"), "is missing");
        }
        let flat = Flat {
            values,
            dims: vec![width],
            leaf_depth: Some(1),
            ragged: false,
        };
        inst.add(0, flat);
        Ok(())
    }
}

/// `{"inputs": batch}` or `{"inputs": {"name": batch, ...}}`.
struct ColumnarSeed<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
}

impl<'de> DeserializeSeed<'de> for ColumnarSeed<'_, '_> {
    type Value = Vec<WireTensor<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> ColumnarSeed<'_, '_> {
    fn wire(&mut self, name: Cow<'de, str>, flat: Flat<'de>) -> WireTensor<'de> {
        let field = format!("inputs.{name}");
        let shape = match flat.shape() {
            Some(s) => s,
            None => {
                self.ctx.problem(
                    || field.clone(),
                    "is ragged: nested arrays of one level must have one length",
                );
                Vec::new()
            }
        };
        WireTensor {
            name,
            datatype: None,
            shape,
            data: WireData::Values(flat.values),
            field,
            rows_first: false,
        }
    }
}

impl<'de> Visitor<'de> for ColumnarSeed<'_, '_> {
    type Value = Vec<WireTensor<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch, or an object of named batches")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, seq: A) -> Result<Self::Value, A::Error> {
        let card = self.ctx.card;
        if card.inputs.len() != 1 {
            self.ctx.problem(
                || "inputs".into(),
                "this model has several inputs: send an object keyed by input name",
            );
        }
        let mut flat = Flat::new();
        FlatSeed {
            flat: &mut flat,
            ctx: &mut *self.ctx,
            depth: 0,
            field: "inputs",
        }
        .visit_seq(seq)?;
        let name = Cow::Owned(card.inputs[0].name.clone());
        Ok(vec![self.wire(name, flat)])
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut wires = Vec::new();
        while let Some(Key(name)) = map.next_key()? {
            let mut flat = Flat::new();
            map.next_value_seed(FlatSeed {
                flat: &mut flat,
                ctx: &mut *self.ctx,
                depth: 0,
                field: "inputs",
            })?;
            wires.push(self.wire(name, flat));
        }
        Ok(wires)
    }
}
