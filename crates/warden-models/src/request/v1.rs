//! KServe v1 / TF-Serving bodies: `{"instances": [[...], {...}]}`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Ctx, Key, ScalarSeed, ValidInferRequest};

pub(super) struct V1Seed<'a, 'c> {
    pub(super) ctx: &'a mut Ctx<'c>,
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
    pub(super) ctx: &'a mut Ctx<'c>,
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
    pub(super) ctx: &'a mut Ctx<'c>,
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
