//! Inference engines behind one trait, [`Backend`]: local ONNX Runtime today
//! ([`OnnxBackend`]); an upstream model server in gateway mode is another
//! implementation.
//!
//! `ort::Session::run` needs `&mut`, so each model version owns a small pool
//! of sessions (one intra-op thread each). A request waits for a free
//! session in a bounded queue (`runtime.queue_per_model`; beyond it the
//! answer is `overloaded`) and runs on tokio's blocking pool, never on an
//! async executor thread.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
    fn infer(&self, rows: usize, values: Vec<f32>) -> BoxFuture<'_, Result<Prediction, EngineError>>;
}

/// Pool sizing.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Sessions (parallel inferences) per model version.
    pub sessions: usize,
    /// Requests that may wait for a session.
    pub queue: usize,
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
}

impl fmt::Debug for OnnxBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxBackend").field("io", &self.io).finish_non_exhaustive()
    }
}

impl OnnxBackend {
    /// Builds the session pool from ONNX bytes, checks the graph against the
    /// card, and runs one warm-up inference on the training means. Every
    /// error is a sentence for the operator.
    pub fn load(runtime: &Runtime, onnx: &[u8], card: &ModelCard, settings: PoolSettings) -> Result<Self, String> {
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
        let backend = Self {
            pool: Arc::new(Pool {
                permits: Arc::new(Semaphore::new(sessions.len())),
                sessions: Mutex::new(sessions),
                waiting: AtomicUsize::new(0),
                queue: settings.queue,
            }),
            io: Arc::new(io),
        };
        let means: Vec<f32> = card.features.iter().map(|f| f.mean.unwrap_or(0.0) as f32).collect();
        let mut session = backend.pool.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        run(&mut session[0], &backend.io, 1, means).map_err(|e| format!("warm-up inference failed: {e}"))?;
        drop(session);
        Ok(backend)
    }
}

fn check_graph(session: &Session, io: &Io) -> Result<(), String> {
    let inputs = session.inputs();
    let [input] = inputs else {
        return Err(format!("the graph has {} inputs; Warden serves graphs with one", inputs.len()));
    };
    if input.name() != io.input {
        return Err(format!("the card's input.name is {:?} but the graph's input is {:?}", io.input, input.name()));
    }
    match input.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. }
            if shape.len() == 2 && (shape[1] == io.width as i64) => {}
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
    let output = |name: &str| session.outputs().iter().find(|o| o.name() == name).map(|o| o.dtype().clone());
    match output(&io.label) {
        Some(ValueType::Tensor { ty: TensorElementType::Int64, .. }) => {}
        Some(other) => return Err(format!("graph output {:?} is {other:?}, expected int64 class indices", io.label)),
        None => return Err(format!("the graph has no output {:?} (card output.label)", io.label)),
    }
    if let Some(name) = &io.probabilities {
        match output(name) {
            Some(ValueType::Tensor { ty: TensorElementType::Float32, shape, .. })
                if shape.len() == 2 && (shape[1] == -1 || shape[1] == io.classes as i64) => {}
            Some(other) => {
                return Err(format!(
                    "graph output {name:?} is {other:?}, expected float [N, {}] ({} classes in the card)",
                    io.classes, io.classes
                ));
            }
            None => return Err(format!("the graph has no output {name:?} (card output.probabilities)")),
        }
    }
    Ok(())
}

fn run(session: &mut Session, io: &Io, rows: usize, values: Vec<f32>) -> Result<Prediction, String> {
    let tensor = Tensor::from_array(([rows, io.width], values)).map_err(|e| e.to_string())?;
    let outputs = session.run(ort::inputs![io.input.as_str() => tensor]).map_err(|e| e.to_string())?;
    let labels_value = outputs.get(&io.label).ok_or("label output missing")?;
    let (_, raw_labels) = labels_value.try_extract_tensor::<i64>().map_err(|e| e.to_string())?;
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
            let (_, p) = value.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
            if p.len() != rows * io.classes {
                return Err(format!("{} probabilities for {rows} rows × {} classes", p.len(), io.classes));
            }
            Some(p.to_vec())
        }
    };
    Ok(Prediction { labels, probabilities })
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
            self.pool.sessions.lock().unwrap_or_else(PoisonError::into_inner).push(s);
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
    fn infer(&self, rows: usize, values: Vec<f32>) -> BoxFuture<'_, Result<Prediction, EngineError>> {
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
            let session = pool.sessions.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some(session) = session else {
                return Err(EngineError::Failed("no session free despite a permit".into()));
            };
            let mut lease = Lease { pool: Arc::clone(pool), session: Some(session) };
            let io = Arc::clone(&self.io);
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
                Err(join) => Err(EngineError::Failed(format!("inference task failed: {join}"))),
            }
        })
    }
}
