//! Response wire formats: v1 `predictions`, v2 inference responses and
//! model metadata. Serialized once, straight from borrowed data.

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::card::{FeatureKind, ModelCard};
use crate::policy::{OutputPolicy, Shown};
use crate::repository::Model;

/// `{"predictions": [{"label": ..., "probabilities": {class: p, ...}}, ...]}`
pub fn v1_response(card: &ModelCard, shown: &Shown<'_>, rows: usize) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        predictions: Vec<Row<'a>>,
    }
    #[derive(Serialize)]
    struct Row<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        probabilities: Option<ClassMap<'a>>,
    }
    let classes = &card.classes;
    let predictions = (0..rows)
        .map(|r| Row {
            label: shown.labels.as_ref().map(|l| l[r]),
            probabilities: shown.probabilities.as_ref().map(|p| ClassMap {
                classes,
                values: &p[r * classes.len()..(r + 1) * classes.len()],
            }),
        })
        .collect();
    to_vec(&Body { predictions })
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

#[derive(Serialize)]
struct TensorOut<'a, T: Serialize> {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
    data: &'a [T],
}

/// The Open Inference Protocol response.
pub fn v2_response(
    model: &Model,
    version: u64,
    id: Option<&str>,
    shown: &Shown<'_>,
    rows: usize,
) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Out<'a> {
        Labels(TensorOut<'a, &'a str>),
        Probs(TensorOut<'a, f64>),
    }
    #[derive(Serialize)]
    struct Body<'a> {
        model_name: &'a str,
        model_version: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: Vec<Out<'a>>,
    }
    let mut outputs = Vec::with_capacity(2);
    if let Some(labels) = &shown.labels {
        outputs.push(Out::Labels(TensorOut {
            name: "label",
            datatype: "BYTES",
            shape: vec![rows as i64],
            data: labels,
        }));
    }
    if let Some(p) = &shown.probabilities {
        let classes = model.card.classes.len() as i64;
        outputs.push(Out::Probs(TensorOut {
            name: "probabilities",
            datatype: "FP32",
            shape: vec![rows as i64, classes],
            data: p,
        }));
    }
    to_vec(&Body {
        model_name: &model.name,
        model_version: version.to_string(),
        id,
        outputs,
    })
}

/// v2 model metadata, with the features and classes a caller needs to
/// build requests. Shows only the outputs the caller's policy allows.
pub fn v2_metadata(model: &Model, policy: &OutputPolicy) -> Vec<u8> {
    #[derive(Serialize)]
    struct TensorMeta {
        name: String,
        datatype: &'static str,
        shape: Vec<i64>,
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
    struct Parameters<'a> {
        description: &'a str,
        max_batch: usize,
        features: Vec<FeatureMeta<'a>>,
        classes: &'a [String],
    }
    #[derive(Serialize)]
    struct Body<'a> {
        name: &'a str,
        versions: Vec<String>,
        platform: &'static str,
        inputs: Vec<TensorMeta>,
        outputs: Vec<TensorMeta>,
        parameters: Parameters<'a>,
    }
    let card = &model.card;
    let mut outputs = vec![TensorMeta {
        name: "label".into(),
        datatype: "BYTES",
        shape: vec![-1],
    }];
    if policy.probabilities {
        outputs.push(TensorMeta {
            name: "probabilities".into(),
            datatype: "FP32",
            shape: vec![-1, card.classes.len() as i64],
        });
    }
    let features = card
        .features
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
    to_vec(&Body {
        name: &model.name,
        versions: model.versions.keys().map(u64::to_string).collect(),
        platform: "onnxruntime_onnx",
        inputs: vec![TensorMeta {
            name: card.input_name.clone(),
            datatype: "FP32",
            shape: vec![-1, card.features.len() as i64],
        }],
        outputs,
        parameters: Parameters {
            description: &card.description,
            max_batch: card.max_batch,
            features,
            classes: &card.classes,
        },
    })
}

/// Serializes a value built from plain data (strings, numbers, vectors),
/// which cannot fail.
fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
