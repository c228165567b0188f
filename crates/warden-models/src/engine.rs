//! Inference engines behind one trait, [`Backend`]: local ONNX Runtime today
//! ([`OnnxBackend`]); an upstream model server in gateway mode is another
//! implementation.
//!
//! `ort::Session::run` needs `&mut`, so each model version owns a small pool
//! of sessions (one intra-op thread each). A request waits for a free
//! session in a bounded queue (`runtime.queue_per_model`; beyond it the
//! answer is `overloaded`).
//!
//! Where inference runs is decided by its measured cost. At load, the
//! warm-up times the graph on 1 row and on a full batch, giving a cost
//! model `fixed + per_row × rows`. A call estimated above
//! `runtime.inline_inference_budget` (default 50 µs) runs on tokio's
//! blocking pool, so it can never stall other connections; a cheaper call
//! runs where the request already is, like the JSON parsing of the same
//! request, because handing it to another thread costs more than the call
//! itself (measured: the thread hop alone cost ~48 µs of CPU per request on
//! the bench machine, three times a random forest's inference). A budget of
//! 0 sends every call to the blocking pool.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType, ValueType};
use tokio::sync::Semaphore;

use crate::card::ModelCard;
use crate::runtime::Runtime;

/// What a model predicted for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Predicted class index per row (each `< classes`).
    pub labels: Vec<usize>,
    /// `rows × classes` probabilities, if the model has them.
    pub probabilities: Option<Vec<f32>>,
}

/// Why inference failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Every session busy and the queue full.
    #[error("all sessions busy and the queue is full")]
    Overloaded,
    /// The engine failed; the message is for the log only.
    #[error("inference failed: {0}")]
    Failed(String),
}

/// A boxed future, so that `Backend` stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An inference engine for one model version.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Runs a checked, row-major batch of `rows` rows.
    fn infer(
        &self,
        rows: usize,
        values: Vec<f32>,
    ) -> BoxFuture<'_, Result<Prediction, EngineError>>;
}

/// Pool sizing and placement.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Sessions (parallel inferences) per model version.
    pub sessions: usize,
    /// Requests that may wait for a session.
    pub queue: usize,
    /// Calls estimated to cost at most this run inline; costlier ones on the blocking pool.
    pub inline_budget: Duration,
}

/// Measured cost of one inference call: `fixed + per_row × rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostModel {
    /// Cost of a call independent of its size.
    pub fixed: Duration,
    /// Cost of each row.
    pub per_row: Duration,
}

impl CostModel {
    /// Estimated cost of a call with `rows` rows.
    pub fn estimate(&self, rows: usize) -> Duration {
        self.fixed.saturating_add(
            self.per_row
                .saturating_mul(u32::try_from(rows).unwrap_or(u32::MAX)),
        )
    }
}

struct Pool {
    sessions: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// The ONNX graph's names, as the card maps them.
#[derive(Debug, Clone)]
struct Io {
    input: String,
    width: usize,
    label: String,
    probabilities: Option<String>,
    classes: usize,
}

/// A model version served by ONNX Runtime.
pub struct OnnxBackend {
    pool: Arc<Pool>,
    io: Arc<Io>,
    cost: CostModel,
    inline_budget: Duration,
}

impl fmt::Debug for OnnxBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxBackend")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl OnnxBackend {
    /// Builds the session pool from ONNX bytes, checks the graph against the
    /// card, and runs one warm-up inference on the training means. Every
    /// error is a sentence for the operator.
    pub fn load(
        runtime: &Runtime,
        onnx: &[u8],
        card: &ModelCard,
        settings: PoolSettings,
    ) -> Result<Self, String> {
        let io = Io {
            input: card.input_name.clone(),
            width: card.features.len(),
            label: card.label_output.clone(),
            probabilities: card.probabilities_output.clone(),
            classes: card.classes.len(),
        };
        let mut sessions = Vec::with_capacity(settings.sessions);
        for _ in 0..settings.sessions {
            let session = Session::builder(runtime.environment())
                .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
                .and_then(|b| Ok(b.with_intra_threads(1)?))
                .and_then(|b| Ok(b.with_inter_threads(1)?))
                .and_then(|mut b| b.commit_from_memory(onnx))
                .map_err(|e| format!("ONNX Runtime cannot load the graph: {e}"))?;
            if sessions.is_empty() {
                check_graph(&session, &io)?;
            }
            sessions.push(session);
        }
        let pool = Arc::new(Pool {
            permits: Arc::new(Semaphore::new(sessions.len())),
            sessions: Mutex::new(sessions),
            waiting: AtomicUsize::new(0),
            queue: settings.queue,
        });
        let io = Arc::new(io);
        let cost = {
            let mut sessions = pool.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            measure(&mut sessions[0], &io, card)?
        };
        Ok(Self {
            pool,
            io,
            cost,
            inline_budget: settings.inline_budget,
        })
    }

    /// The measured cost model.
    pub fn cost(&self) -> CostModel {
        self.cost
    }
}

/// Warm-up and cost measurement: the median of a few runs on 1 row and on a
/// full batch of the training means.
fn measure(session: &mut Session, io: &Io, card: &ModelCard) -> Result<CostModel, String> {
    let means: Vec<f32> = card
        .features
        .iter()
        .map(|f| f.mean.unwrap_or(0.0) as f32)
        .collect();
    let batch = card.max_batch.max(2);
    let mut time = |rows: usize| -> Result<Duration, String> {
        let values: Vec<f32> = means
            .iter()
            .copied()
            .cycle()
            .take(rows * means.len())
            .collect();
        let mut samples = Vec::with_capacity(9);
        for _ in 0..9 {
            let started = Instant::now();
            run(session, io, rows, values.clone())
                .map_err(|e| format!("warm-up inference failed: {e}"))?;
            samples.push(started.elapsed());
        }
        samples.sort();
        Ok(samples[samples.len() / 2])
    };
    let one = time(1)?;
    let full = time(batch)?;
    let per_row = full.saturating_sub(one) / u32::try_from(batch - 1).unwrap_or(u32::MAX);
    Ok(CostModel {
        fixed: one.saturating_sub(per_row),
        per_row,
    })
}

fn check_graph(session: &Session, io: &Io) -> Result<(), String> {
    let inputs = session.inputs();
    let [input] = inputs else {
        return Err(format!(
            "the graph has {} inputs; Warden serves graphs with one",
            inputs.len()
        ));
    };
    if input.name() != io.input {
        return Err(format!(
            "the card's input.name is {:?} but the graph's input is {:?}",
            io.input,
            input.name()
        ));
    }
    match input.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } if shape.len() == 2 && (shape[1] == io.width as i64) => {}
        ValueType::Tensor { ty, shape, .. } => {
            return Err(format!(
                "the graph's input is {ty:?} with shape {:?}; the card declares FP32 [N, {}] ({} features)",
                &shape[..],
                io.width,
                io.width
            ));
        }
        other => return Err(format!("the graph's input is {other:?}, not a tensor")),
    }
    let output = |name: &str| {
        session
            .outputs()
            .iter()
            .find(|o| o.name() == name)
            .map(|o| o.dtype().clone())
    };
    match output(&io.label) {
        Some(ValueType::Tensor {
            ty: TensorElementType::Int64,
            ..
        }) => {}
        Some(other) => {
            return Err(format!(
                "graph output {:?} is {other:?}, expected int64 class indices",
                io.label
            ));
        }
        None => {
            return Err(format!(
                "the graph has no output {:?} (card output.label)",
                io.label
            ));
        }
    }
    if let Some(name) = &io.probabilities {
        match output(name) {
            Some(ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            }) if shape.len() == 2 && (shape[1] == -1 || shape[1] == io.classes as i64) => {}
            Some(other) => {
                return Err(format!(
                    "graph output {name:?} is {other:?}, expected float [N, {}] ({} classes in the card)",
                    io.classes, io.classes
                ));
            }
            None => {
                return Err(format!(
                    "the graph has no output {name:?} (card output.probabilities)"
                ));
            }
        }
    }
    Ok(())
}

fn run(
    session: &mut Session,
    io: &Io,
    rows: usize,
    values: Vec<f32>,
) -> Result<Prediction, String> {
    let tensor = Tensor::from_array(([rows, io.width], values)).map_err(|e| e.to_string())?;
    let outputs = session
        .run(ort::inputs![io.input.as_str() => tensor])
        .map_err(|e| e.to_string())?;
    let labels_value = outputs.get(&io.label).ok_or("label output missing")?;
    let (_, raw_labels) = labels_value
        .try_extract_tensor::<i64>()
        .map_err(|e| e.to_string())?;
    if raw_labels.len() != rows {
        return Err(format!("{} labels for {rows} rows", raw_labels.len()));
    }
    let labels = raw_labels
        .iter()
        .map(|&l| usize::try_from(l).ok().filter(|&l| l < io.classes))
        .collect::<Option<Vec<_>>>()
        .ok_or("label index outside the card's classes")?;
    let probabilities = match &io.probabilities {
        None => None,
        Some(name) => {
            let value = outputs.get(name).ok_or("probabilities output missing")?;
            let (_, p) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| e.to_string())?;
            if p.len() != rows * io.classes {
                return Err(format!(
                    "{} probabilities for {rows} rows × {} classes",
                    p.len(),
                    io.classes
                ));
            }
            Some(p.to_vec())
        }
    };
    Ok(Prediction {
        labels,
        probabilities,
    })
}

/// Holds a session out of the pool; gives it back on drop, even if
/// inference panics, so the pool never shrinks.
struct Lease {
    pool: Arc<Pool>,
    session: Option<Session>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(s);
        }
    }
}

/// Decrements the waiting count when the waiter leaves (served or cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Backend for OnnxBackend {
    fn infer(
        &self,
        rows: usize,
        values: Vec<f32>,
    ) -> BoxFuture<'_, Result<Prediction, EngineError>> {
        Box::pin(async move {
            let pool = &self.pool;
            let permit = match Arc::clone(&pool.permits).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if pool.waiting.fetch_add(1, Ordering::AcqRel) >= pool.queue {
                        pool.waiting.fetch_sub(1, Ordering::AcqRel);
                        return Err(EngineError::Overloaded);
                    }
                    let _waiting = Waiting(&pool.waiting);
                    Arc::clone(&pool.permits)
                        .acquire_owned()
                        .await
                        .map_err(|_| EngineError::Failed("pool closed".into()))?
                }
            };
            let session = pool
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some(session) = session else {
                return Err(EngineError::Failed(
                    "no session free despite a permit".into(),
                ));
            };
            let mut lease = Lease {
                pool: Arc::clone(pool),
                session: Some(session),
            };
            let io = Arc::clone(&self.io);
            if self.cost.estimate(rows) <= self.inline_budget {
                let out = match lease.session.as_mut() {
                    Some(session) => run(session, &io, rows, values),
                    None => Err("lease without session".into()),
                };
                drop(lease);
                drop(permit);
                return out.map_err(EngineError::Failed);
            }
            // The lease and the permit move into the task: if this future is
            // dropped (client gone), the session still returns to the pool
            // before its permit is released.
            let result = tokio::task::spawn_blocking(move || {
                let out = match lease.session.as_mut() {
                    Some(session) => run(session, &io, rows, values),
                    None => Err("lease without session".into()),
                };
                drop(lease);
                drop(permit);
                out
            })
            .await;
            match result {
                Ok(Ok(prediction)) => Ok(prediction),
                Ok(Err(message)) => Err(EngineError::Failed(message)),
                Err(join) => Err(EngineError::Failed(format!(
                    "inference task failed: {join}"
                ))),
            }
        })
    }
}
