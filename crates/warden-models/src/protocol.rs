//! Response wire formats: v1 `predictions`, v2 inference responses and
//! model metadata. Serialized once, straight from borrowed data.

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};
use warden_tensor::{DataType, TensorData};

use crate::card::{FeatureKind, InputSpec, ModelCard, Task, Valid};
use crate::policy::{OutputPolicy, Shown, ShownData, ShownTensor};
use crate::repository::Model;

/// `{"predictions": [...]}`, one entry per row: for a classifier
/// `{"label": ..., "probabilities": {class: p, ...}}` (and any further
/// output shown, by name); otherwise the one output's row value, or an
/// object of the outputs shown.
pub fn v1_response(card: &ModelCard, shown: &Shown<'_>) -> Vec<u8> {
    struct Row<'a> {
        card: &'a ModelCard,
        shown: &'a Shown<'a>,
        row: usize,
    }
    impl Serialize for Row<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let tensors = &self.shown.tensors;
            let classifier = matches!(self.card.task, Task::Classification { .. });
            if !classifier && tensors.len() == 1 {
                return RowValue::of(&tensors[0], self.row).serialize(s);
            }
            let mut map = s.serialize_map(Some(tensors.len()))?;
            for t in tensors {
                match (&self.card.task, &t.data) {
                    (Task::Classification { label, .. }, ShownData::Labels(l))
                        if self.card.outputs[*label].name == t.name =>
                    {
                        map.serialize_entry("label", &l[self.row])?;
                    }
                    (
                        Task::Classification {
                            probabilities: Some(p),
                            classes,
                            ..
                        },
                        ShownData::Floats(v),
                    ) if self.card.outputs[*p].name == t.name => {
                        let n = classes.len();
                        map.serialize_entry(
                            "probabilities",
                            &ClassMap {
                                classes,
                                values: &v[self.row * n..(self.row + 1) * n],
                            },
                        )?;
                    }
                    _ => map.serialize_entry(t.name, &RowValue::of(t, self.row))?,
                }
            }
            map.end()
        }
    }
    #[derive(Serialize)]
    struct Body<'a> {
        predictions: Vec<Row<'a>>,
    }
    let predictions = (0..shown.rows)
        .map(|row| Row { card, shown, row })
        .collect();
    to_vec(&Body { predictions })
}

/// One row of a shown tensor, nested by its dimensions after the first
/// (a scalar when the row holds one value).
struct RowValue<'a> {
    data: &'a ShownData<'a>,
    start: usize,
    dims: &'a [usize],
}

impl<'a> RowValue<'a> {
    fn of(t: &'a ShownTensor<'a>, row: usize) -> Self {
        let dims = t.shape.get(1..).unwrap_or_default();
        let len: usize = dims.iter().product();
        // A row of one value ([N] or [N, 1]) is shown as that value.
        let dims = if len == 1 { &[][..] } else { dims };
        Self {
            data: &t.data,
            start: row * len,
            dims,
        }
    }
}

impl Serialize for RowValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.dims.split_first() {
            None => Element(self.data, self.start).serialize(s),
            Some((&n, rest)) => {
                let step: usize = rest.iter().product();
                let mut seq = s.serialize_seq(Some(n))?;
                for k in 0..n {
                    seq.serialize_element(&RowValue {
                        data: self.data,
                        start: self.start + k * step,
                        dims: rest,
                    })?;
                }
                seq.end()
            }
        }
    }
}

/// Element `i` of shown data, as its JSON value: integers as integers,
/// BOOL as booleans, BYTES as strings.
struct Element<'a>(&'a ShownData<'a>, usize);

impl Serialize for Element<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let i = self.1;
        let missing = || serde::ser::Error::custom("element out of range");
        match self.0 {
            ShownData::Labels(l) => l.get(i).ok_or_else(missing)?.serialize(s),
            ShownData::Floats(v) => v.get(i).ok_or_else(missing)?.serialize(s),
            ShownData::Raw(d) => match d {
                TensorData::Bool(v) => v.get(i).ok_or_else(missing)?.serialize(s),
                TensorData::U64(v) => v.get(i).ok_or_else(missing)?.serialize(s),
                TensorData::I64(v) => v.get(i).ok_or_else(missing)?.serialize(s),
                TensorData::Bytes(v) => {
                    String::from_utf8_lossy(v.get(i).ok_or_else(missing)?).serialize(s)
                }
                d if d.datatype().is_integer() => {
                    (d.number(i).ok_or_else(missing)? as i64).serialize(s)
                }
                d => d.number(i).ok_or_else(missing)?.serialize(s),
            },
        }
    }
}

/// Every element of shown data, flat.
struct FlatData<'a>(&'a ShownData<'a>);

impl Serialize for FlatData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = match self.0 {
            ShownData::Labels(l) => l.len(),
            ShownData::Floats(v) => v.len(),
            ShownData::Raw(d) => d.len(),
        };
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            seq.serialize_element(&Element(self.0, i))?;
        }
        seq.end()
    }
}

/// `{class: probability, ...}` in class order.
struct ClassMap<'a> {
    classes: &'a [String],
    values: &'a [f64],
}

impl Serialize for ClassMap<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.classes.len()))?;
        for (c, v) in self.classes.iter().zip(self.values) {
            map.serialize_entry(c, v)?;
        }
        map.end()
    }
}

/// The Open Inference Protocol response: every output shown, in its
/// datatype (class labels as BYTES).
pub fn v2_response(model: &Model, version: u64, id: Option<&str>, shown: &Shown<'_>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Out<'a> {
        name: &'a str,
        datatype: &'static str,
        shape: &'a [usize],
        data: FlatData<'a>,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        model_name: &'a str,
        model_version: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: Vec<Out<'a>>,
    }
    let outputs = shown
        .tensors
        .iter()
        .map(|t| Out {
            name: t.name,
            datatype: t.datatype.as_str(),
            shape: &t.shape,
            data: FlatData(&t.data),
        })
        .collect();
    to_vec(&Body {
        model_name: &model.name,
        model_version: version.to_string(),
        id,
        outputs,
    })
}

/// v2 model metadata: every input with its datatype and shape, the outputs
/// the caller's policy shows, and (in `parameters`) the task, the batch
/// limit, the features of a tabular input and the classes.
pub fn v2_metadata(model: &Model, policy: &OutputPolicy) -> Vec<u8> {
    #[derive(Serialize)]
    struct TensorMeta<'a> {
        name: &'a str,
        datatype: &'static str,
        shape: &'a [i64],
    }
    #[derive(Serialize)]
    struct FeatureMeta<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        categories: Option<&'a [String]>,
    }
    #[derive(Serialize)]
    struct InputMeta<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ids: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        categories: Option<&'a [String]>,
        max_shape: &'a [usize],
        max_elements: usize,
    }
    #[derive(Serialize)]
    struct Parameters<'a> {
        description: &'a str,
        task: &'static str,
        max_batch: usize,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        features: Vec<FeatureMeta<'a>>,
        input_limits: Vec<InputMeta<'a>>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        classes: &'a [String],
    }
    #[derive(Serialize)]
    struct Body<'a> {
        name: &'a str,
        versions: Vec<String>,
        platform: &'static str,
        inputs: Vec<TensorMeta<'a>>,
        outputs: Vec<TensorMeta<'a>>,
        parameters: Parameters<'a>,
    }
    let card = &model.card;
    let outputs = visible_outputs(card, policy)
        .into_iter()
        .map(|(name, datatype, shape)| TensorMeta {
            name,
            datatype: datatype.as_str(),
            shape,
        })
        .collect();
    let features = card
        .tabular()
        .map(|t| &t.features[..])
        .unwrap_or_default()
        .iter()
        .map(|f| match &f.kind {
            FeatureKind::Numeric { lo, hi } => FeatureMeta {
                name: &f.name,
                min: Some(*lo),
                max: Some(*hi),
                categories: None,
            },
            FeatureKind::Category(c) => FeatureMeta {
                name: &f.name,
                min: None,
                max: None,
                categories: Some(c),
            },
        })
        .collect();
    let input_limits = card.inputs.iter().map(input_meta).collect();
    fn input_meta(i: &InputSpec) -> InputMeta<'_> {
        let (min, max, ids, categories) = match &i.valid {
            _ if !i.features.is_empty() => (None, None, None, None),
            Valid::Range { lo, hi } => (Some(*lo), Some(*hi), None, None),
            Valid::Ids(n) => (None, None, Some(*n), None),
            Valid::Categories(c) => (None, None, None, Some(&c[..])),
            Valid::Any => (None, None, None, None),
        };
        InputMeta {
            name: &i.name,
            min,
            max,
            ids,
            categories,
            max_shape: &i.max_shape,
            max_elements: i.max_elements,
        }
    }
    to_vec(&Body {
        name: &model.name,
        versions: model.versions.keys().map(u64::to_string).collect(),
        platform: platform(model),
        inputs: card
            .inputs
            .iter()
            .map(|i| TensorMeta {
                name: &i.name,
                datatype: i.datatype.as_str(),
                shape: &i.shape,
            })
            .collect(),
        outputs,
        parameters: Parameters {
            description: &card.description,
            task: card.task.as_str(),
            max_batch: card.max_batch,
            features,
            input_limits,
            classes: card.classes(),
        },
    })
}

/// The outputs metadata lists for a caller: those its policy shows, each
/// with the datatype it is answered in (class labels as BYTES).
pub fn visible_outputs<'c>(
    card: &'c ModelCard,
    policy: &OutputPolicy,
) -> Vec<(&'c str, DataType, &'c [i64])> {
    policy
        .default_outputs(card)
        .into_iter()
        .filter_map(|i| {
            let o = card.outputs.get(i)?;
            let label = matches!(&card.task, Task::Classification { label, .. } if *label == i);
            let datatype = if label { DataType::Bytes } else { o.datatype };
            Some((o.name.as_str(), datatype, &o.shape[..]))
        })
        .collect()
}

/// The metadata's `platform`: the runtime that answers.
pub fn platform(model: &Model) -> &'static str {
    if model.card.upstream.is_some() {
        "gateway"
    } else {
        "onnxruntime_onnx"
    }
}

/// Serializes a value built from plain data (strings, numbers, vectors),
/// which cannot fail.
fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
