//! What a task reads from a model's outputs: a classifier's class indices
//! and probabilities. The engine answers tensors; this is the one place
//! that knows which of them hold classes (the card's `[classification]`).

use std::borrow::Cow;

use warden_tensor::{Tensor, TensorData};

use crate::card::{ModelCard, Task};

/// Each row's predicted class (an index into the card's classes), from the
/// label output: INT64 indices, or BYTES class names. An index outside the
/// classes is an error (for the log): the graph and the card disagree.
pub fn class_indices(card: &ModelCard, answer: &[Tensor]) -> Result<Vec<usize>, String> {
    let Task::Classification { label, classes, .. } = &card.task else {
        return Err("not a classifier".into());
    };
    let tensor = answer.get(*label).ok_or("label output missing")?;
    match &tensor.data {
        TensorData::I64(v) => v
            .iter()
            .map(|&l| usize::try_from(l).ok().filter(|&l| l < classes.len()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "label index outside the card's classes".into()),
        TensorData::Bytes(v) => v
            .iter()
            .map(|name| classes.iter().position(|c| c.as_bytes() == name.as_slice()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "label outside the card's classes".into()),
        other => Err(format!("label output is {}", other.datatype())),
    }
}

/// The classifier's probabilities, `rows × classes`, if it has them
/// (borrowed when the output is FP32, as most are).
pub fn probabilities<'a>(card: &ModelCard, answer: &'a [Tensor]) -> Option<Cow<'a, [f32]>> {
    let Task::Classification {
        probabilities: Some(p),
        ..
    } = &card.task
    else {
        return None;
    };
    match &answer.get(*p)?.data {
        TensorData::F32(v) => Some(Cow::Borrowed(v)),
        other => other.to_f32().map(Cow::Owned),
    }
}

/// Each row's class for the extraction monitor: the predicted class of a
/// classifier, one class (0) for every other task.
pub fn monitor_classes(card: &ModelCard, answer: &[Tensor], rows: usize) -> Vec<usize> {
    class_indices(card, answer).unwrap_or_else(|_| vec![0; rows])
}
