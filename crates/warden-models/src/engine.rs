//! Inference engines behind one trait, [`Backend`]: local ONNX Runtime
//! ([`OnnxBackend`]), and an upstream model server in gateway mode
//! ([`crate::gateway::GatewayBackend`]).
//!
//! `ort::Session::run` needs `&mut`, so each model version owns a small pool
//! of sessions (`runtime.sessions_per_model`, or the card's
//! `[runtime] sessions`; one intra-op thread each unless the card says
//! otherwise). Requests join a bounded queue
//! (`runtime.queue_per_model`; beyond it the answer is `overloaded`), and a
//! drain task takes what has queued — after yielding once, so that requests
//! already readable on other connections can join — and runs it as one
//! batch of at most the card's `max_batch` rows (dynamic batching), joined
//! along the batch dimension of every input. Only requests whose other
//! dimensions agree are joined (a text of 12 tokens and one of 40 are not:
//! padding would change what a model without a mask computes). Rows are
//! independent in a batched model, so a batch's answers are the answers
//! each request would have had alone; one call amortizes ONNX
//! Runtime's per-call cost, which under load is several times the cost of a
//! row (docs/benchmarks.md). A card with `dynamic_batching = false` runs
//! each request as its own call (measured on digits and breast-cancer:
//! 1.14–1.27× the requests/s batched at 64 connections, the same at one).
//!
//! Where a call runs depends on what it costs: a model whose calls average
//! under [`INLINE_BELOW`] (50 µs) runs them on the executor thread that
//! drains its queue; a slower one on tokio's blocking pool, so that it
//! cannot stall other connections. Handing work to another thread costs a
//! context switch each way, more than a demo model's whole call; batching
//! pays it once per batch, and running cheap calls inline not at all (+12%
//! requests/s, -11% CPU per request on iris, docs/benchmarks.md).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType, ValueType};
use tokio::sync::{Semaphore, oneshot};
use warden_tensor::{DataType, Tensor, TensorData};

use crate::card::{InputSpec, ModelCard, OutputSpec, Valid};
use crate::runtime::Runtime;

/// A checked batch for inference: the card's inputs, in card order, each
/// with `rows` entries in its batch dimension (when the model has one).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Entries of the batch dimension (1 for a model without one).
    pub rows: usize,
    /// The inputs, in card order.
    pub inputs: Vec<Tensor>,
}

/// What a model answered: the card's outputs, in card order.
pub type Outputs = Vec<Tensor>;

/// Why inference failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Every session busy and the queue full.
    #[error("all sessions busy and the queue is full")]
    Overloaded,
    /// The engine failed; the message is for the log only.
    #[error("inference failed: {0}")]
    Failed(String),
    /// Gateway mode: the upstream server failed, refused or gave an answer
    /// that does not fit the card (logged by the backend).
    #[error("the upstream model server is unavailable")]
    Unavailable,
    /// Gateway mode: the upstream server did not answer in time.
    #[error("the upstream model server did not answer in time")]
    TimedOut,
}

/// A boxed future, so that `Backend` stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An inference engine for one model version.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Runs a checked batch; answers the card's outputs.
    fn infer(&self, batch: Batch) -> BoxFuture<'_, Result<Outputs, EngineError>>;

    /// Requests waiting for inference (for the queue-depth metric).
    fn queued(&self) -> usize {
        0
    }

    /// Whether the engine can take calls now (model readiness); a gateway
    /// backend whose upstream is down is not ready.
    fn ready(&self) -> bool {
        true
    }
}

/// Pool sizing and placement.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Sessions (parallel inferences) per model version.
    pub sessions: usize,
    /// Requests that may wait for inference.
    pub queue: usize,
    /// Longest a request waits in the queue before it is answered
    /// `overloaded` instead of being run.
    pub queue_timeout: std::time::Duration,
}

struct Pool {
    sessions: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

/// One request waiting for its rows to be predicted.
struct Job {
    enqueued: std::time::Instant,
    batch: Batch,
    reply: oneshot::Sender<Result<Outputs, EngineError>>,
}

impl Job {
    /// Whether two requests can share a call: every input's dimensions
    /// after the batch one agree (a text batch of length 12 and one of
    /// length 40 are not merged; the card declares no padding).
    fn joins(&self, other: &Self) -> bool {
        self.batch
            .inputs
            .iter()
            .zip(&other.batch.inputs)
            .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

/// The card's tensors, as the graph must have them.
#[derive(Debug, Clone)]
struct Io {
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
    batched: bool,
}

/// A model version served by ONNX Runtime.
pub struct OnnxBackend {
    inner: Arc<Inner>,
    tied: Vec<Vec<(usize, usize)>>,
}

struct Inner {
    pool: Arc<Pool>,
    io: Arc<Io>,
    /// Most rows in one batch.
    batch_rows: usize,
    /// Whether concurrent requests share a call (the card's `dynamic_batching`);
    /// off, every request is its own call.
    batching: bool,
    /// Moving average of a call's duration in ns (see [`INLINE_BELOW`]).
    call_ns: AtomicU64,
    /// Most requests waiting.
    queue_limit: usize,
    queue_timeout: std::time::Duration,
    queue: Mutex<VecDeque<Job>>,
}

impl fmt::Debug for OnnxBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxBackend")
            .field("io", &self.inner.io)
            .finish_non_exhaustive()
    }
}

impl OnnxBackend {
    /// Builds the session pool from ONNX bytes, checks the graph against the
    /// card, and runs one warm-up inference on a full batch of typical
    /// values. Every error is a sentence for the operator.
    pub fn load(
        runtime: &Runtime,
        onnx: &[u8],
        card: &ModelCard,
        settings: PoolSettings,
    ) -> Result<Self, String> {
        let io = Io {
            inputs: card.inputs.clone(),
            outputs: card.outputs.clone(),
            batched: card.batched,
        };
        let count = card.runtime.sessions.unwrap_or(settings.sessions).max(1);
        let mut sessions = Vec::with_capacity(count);
        let mut tied = Vec::new();
        for _ in 0..count {
            let session = Session::builder(runtime.environment())
                .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
                .and_then(|b| Ok(b.with_intra_threads(card.runtime.intra_op_threads)?))
                .and_then(|b| Ok(b.with_inter_threads(card.runtime.inter_op_threads)?))
                .and_then(|mut b| b.commit_from_memory(onnx))
                .map_err(|e| format!("ONNX Runtime cannot load the graph: {e}"))?;
            if sessions.is_empty() {
                check_graph(&session, &io)?;
                tied = tied_dimensions(&session, card);
            }
            sessions.push(session);
        }
        let pool = Arc::new(Pool {
            permits: Arc::new(Semaphore::new(sessions.len())),
            sessions: Mutex::new(sessions),
        });
        let io = Arc::new(io);
        {
            let mut sessions = pool.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            let batch = warm_up_batch(card);
            run(&mut sessions[0], &io, batch)
                .map_err(|e| format!("warm-up inference failed: {e}"))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                io,
                batch_rows: card.max_batch,
                batching: card.dynamic_batching,
                call_ns: AtomicU64::new(u64::MAX),
                queue_limit: settings.queue,
                queue_timeout: settings.queue_timeout,
                queue: Mutex::new(VecDeque::new()),
            }),
            tied,
        })
    }

    /// The inputs' dimensions the graph ties together
    /// ([`tied_dimensions`]).
    pub fn tied_dims(&self) -> &[Vec<(usize, usize)>] {
        &self.tied
    }
}

/// The dynamic dimensions of the graph's inputs that share a symbolic name
/// (ONNX `dim_param`), as `(card input, dimension)` groups of two or more:
/// ONNX Runtime needs them equal at run time. The batch dimension is left
/// out (the rows of every input are checked equal anyway).
pub fn tied_dimensions(session: &Session, card: &ModelCard) -> Vec<Vec<(usize, usize)>> {
    let mut by_symbol: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
    for graph_input in session.inputs() {
        let Some(k) = card
            .inputs
            .iter()
            .position(|s| s.name == graph_input.name())
        else {
            continue;
        };
        let ValueType::Tensor {
            shape,
            dimension_symbols,
            ..
        } = graph_input.dtype()
        else {
            continue;
        };
        for (d, symbol) in dimension_symbols.iter().enumerate() {
            let dynamic = shape.get(d).is_some_and(|&n| n < 0);
            if symbol.is_empty() || !dynamic || (card.batched && d == 0) {
                continue;
            }
            match by_symbol.iter_mut().find(|(s, _)| s == symbol) {
                Some((_, dims)) => dims.push((k, d)),
                None => by_symbol.push((symbol.clone(), vec![(k, d)])),
            }
        }
    }
    by_symbol
        .into_iter()
        .map(|(_, dims)| dims)
        .filter(|dims| dims.len() > 1)
        .collect()
}

/// A full batch of typical values (training means, the lowest id or
/// category, empty strings), with each dynamic dimension after the batch
/// at 1: the graph must run and answer the declared outputs before the
/// model is served.
pub fn warm_up_batch(card: &ModelCard) -> Batch {
    let rows = if card.batched { card.max_batch } else { 1 };
    let inputs = card
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    -1 if i == 0 && card.batched => rows,
                    -1 => 1,
                    d => d as usize,
                })
                .collect();
            let n: usize = shape.iter().product();
            let data = match spec.datatype {
                DataType::Bool => TensorData::Bool(vec![false; n]),
                DataType::Bytes => TensorData::Bytes(vec![
                    match &spec.valid {
                        Valid::Categories(c) => c.first().cloned().unwrap_or_default().into_bytes(),
                        _ => Vec::new(),
                    };
                    n
                ]),
                d => {
                    let values: Vec<f64> = (0..n)
                        .map(|i| typical(spec, i % spec.fixed_row_len().unwrap_or(1).max(1)))
                        .collect();
                    TensorData::from_f64(d, &values).unwrap_or(TensorData::F32(vec![0.0; n]))
                }
            };
            Tensor {
                name: spec.name.clone(),
                shape,
                data,
            }
        })
        .collect();
    Batch { rows, inputs }
}

/// A value element `column` of a row of `spec` typically holds.
fn typical(spec: &InputSpec, column: usize) -> f64 {
    let (mean, _) = spec.element_stats(column);
    let (lo, hi) = spec.bounds(column).unwrap_or((0.0, 0.0));
    let v = mean.unwrap_or(if lo <= 0.0 && hi >= 0.0 { 0.0 } else { lo });
    let v = v.clamp(lo.min(hi), hi.max(lo));
    if spec.datatype.is_integer() {
        v.round()
    } else {
        v
    }
}

fn element_type(d: DataType) -> TensorElementType {
    match d {
        DataType::Bool => TensorElementType::Bool,
        DataType::U8 => TensorElementType::Uint8,
        DataType::U16 => TensorElementType::Uint16,
        DataType::U32 => TensorElementType::Uint32,
        DataType::U64 => TensorElementType::Uint64,
        DataType::I8 => TensorElementType::Int8,
        DataType::I16 => TensorElementType::Int16,
        DataType::I32 => TensorElementType::Int32,
        DataType::I64 => TensorElementType::Int64,
        DataType::F16 => TensorElementType::Float16,
        DataType::F32 => TensorElementType::Float32,
        DataType::F64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

/// The OIP datatype of an ONNX element type, if Warden serves it.
pub fn datatype_of(t: TensorElementType) -> Option<DataType> {
    DataType::ALL.into_iter().find(|d| element_type(*d) == t)
}

/// One input or output of a graph, as ONNX Runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphTensor {
    /// Its name.
    pub name: String,
    /// Its element type; `Err` with a description for what Warden cannot
    /// serve (a sequence, a map, an element type without an OIP datatype).
    pub datatype: Result<DataType, String>,
    /// Its dimensions, -1 where dynamic.
    pub shape: Vec<i64>,
}

/// The inputs and outputs of an ONNX graph (`warden model init`).
pub fn describe_graph(
    runtime: &Runtime,
    onnx: &[u8],
) -> Result<(Vec<GraphTensor>, Vec<GraphTensor>), String> {
    let session = Session::builder(runtime.environment())
        .and_then(|mut b| b.commit_from_memory(onnx))
        .map_err(|e| format!("ONNX Runtime cannot load the graph: {e}"))?;
    let describe = |name: &str, t: &ValueType| GraphTensor {
        name: name.to_owned(),
        datatype: match t {
            ValueType::Tensor { ty, .. } => {
                datatype_of(*ty).ok_or_else(|| format!("a tensor of {ty:?}"))
            }
            other => Err(format!("{other:?}")),
        },
        shape: match t {
            ValueType::Tensor { shape, .. } => shape.to_vec(),
            _ => Vec::new(),
        },
    };
    Ok((
        session
            .inputs()
            .iter()
            .map(|i| describe(i.name(), i.dtype()))
            .collect(),
        session
            .outputs()
            .iter()
            .map(|o| describe(o.name(), o.dtype()))
            .collect(),
    ))
}

/// The card against the graph: every graph input declared (and no more),
/// every declared output present, with the same datatypes and ranks, and
/// the card's fixed dimensions where the graph fixes them.
fn check_graph(session: &Session, io: &Io) -> Result<(), String> {
    let shape_fits = |what: &str, name: &str, card: &[i64], graph: &[i64]| {
        if card.len() != graph.len() {
            return Err(format!(
                "{what} {name:?}: the card declares {} dimensions, the graph has {} ({graph:?})",
                card.len(),
                graph.len()
            ));
        }
        for (i, (&c, &g)) in card.iter().zip(graph).enumerate() {
            if g > 0 && c != g {
                return Err(format!(
                    "{what} {name:?}: dimension {i} is {g} in the graph, the card says {c} (shape {graph:?})"
                ));
            }
        }
        Ok(())
    };
    for graph_input in session.inputs() {
        let Some(spec) = io.inputs.iter().find(|s| s.name == graph_input.name()) else {
            return Err(format!(
                "the graph needs input {:?}, which the card does not declare",
                graph_input.name()
            ));
        };
        match graph_input.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                if *ty != element_type(spec.datatype) {
                    return Err(format!(
                        "input {:?} is {ty:?} in the graph; the card declares {}",
                        spec.name, spec.datatype
                    ));
                }
                shape_fits("input", &spec.name, &spec.shape, shape)?;
            }
            other => {
                return Err(format!(
                    "input {:?} is {other:?} in the graph, not a tensor",
                    spec.name
                ));
            }
        }
    }
    for spec in &io.inputs {
        if !session.inputs().iter().any(|i| i.name() == spec.name) {
            return Err(format!("the graph has no input {:?} (card)", spec.name));
        }
    }
    for spec in &io.outputs {
        let Some(graph_output) = session.outputs().iter().find(|o| o.name() == spec.name) else {
            return Err(format!("the graph has no output {:?} (card)", spec.name));
        };
        match graph_output.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                if *ty != element_type(spec.datatype) {
                    return Err(format!(
                        "output {:?} is {ty:?} in the graph; the card declares {}",
                        spec.name, spec.datatype
                    ));
                }
                shape_fits("output", &spec.name, &spec.shape, shape)?;
            }
            other => {
                return Err(format!(
                    "output {:?} is {other:?} in the graph, not a tensor (scikit-learn classifiers: export with zipmap off)",
                    spec.name
                ));
            }
        }
    }
    Ok(())
}

/// A tensor as an ONNX Runtime value.
fn to_value(t: Tensor) -> Result<DynValue, String> {
    use ort::value::Tensor as T;
    let shape = t.shape;
    let e = |e: ort::Error| e.to_string();
    Ok(match t.data {
        TensorData::Bool(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::U8(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::U16(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::U32(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::U64(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::I8(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::I16(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::I32(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::I64(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::F16(v) => {
            let v: Vec<half::f16> = v.into_iter().map(half::f16::from_bits).collect();
            T::from_array((shape, v)).map_err(e)?.into_dyn()
        }
        TensorData::F32(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::F64(v) => T::from_array((shape, v)).map_err(e)?.into_dyn(),
        TensorData::Bytes(v) => {
            // Validation let through only UTF-8 without NUL (ONNX strings).
            let strings = v
                .into_iter()
                .map(String::from_utf8)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "a BYTES element is not UTF-8".to_owned())?;
            T::from_string_array((shape, &strings[..]))
                .map_err(e)?
                .into_dyn()
        }
    })
}

/// An ONNX Runtime output as a tensor of `spec`'s datatype.
fn from_value(spec: &OutputSpec, value: &DynValue) -> Result<Tensor, String> {
    fn take<T: ort::value::PrimitiveTensorElementType + Copy + fmt::Debug>(
        value: &DynValue,
    ) -> Result<(Vec<usize>, Vec<T>), String> {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
        let shape = shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect();
        Ok((shape, data.to_vec()))
    }
    let (shape, data) = match spec.datatype {
        DataType::Bool => take::<bool>(value).map(|(s, d)| (s, TensorData::Bool(d)))?,
        DataType::U8 => take::<u8>(value).map(|(s, d)| (s, TensorData::U8(d)))?,
        DataType::U16 => take::<u16>(value).map(|(s, d)| (s, TensorData::U16(d)))?,
        DataType::U32 => take::<u32>(value).map(|(s, d)| (s, TensorData::U32(d)))?,
        DataType::U64 => take::<u64>(value).map(|(s, d)| (s, TensorData::U64(d)))?,
        DataType::I8 => take::<i8>(value).map(|(s, d)| (s, TensorData::I8(d)))?,
        DataType::I16 => take::<i16>(value).map(|(s, d)| (s, TensorData::I16(d)))?,
        DataType::I32 => take::<i32>(value).map(|(s, d)| (s, TensorData::I32(d)))?,
        DataType::I64 => take::<i64>(value).map(|(s, d)| (s, TensorData::I64(d)))?,
        DataType::F16 => take::<half::f16>(value).map(|(s, d)| {
            (
                s,
                TensorData::F16(d.into_iter().map(half::f16::to_bits).collect()),
            )
        })?,
        DataType::F32 => take::<f32>(value).map(|(s, d)| (s, TensorData::F32(d)))?,
        DataType::F64 => take::<f64>(value).map(|(s, d)| (s, TensorData::F64(d)))?,
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(|e| e.to_string())?;
            let shape = shape
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(0))
                .collect();
            (
                shape,
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
    };
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

fn run(session: &mut Session, io: &Io, batch: Batch) -> Result<Outputs, String> {
    let rows = batch.rows;
    let mut inputs = Vec::with_capacity(batch.inputs.len());
    for t in batch.inputs {
        let name = t.name.clone();
        inputs.push((name, to_value(t)?));
    }
    let outputs = session.run(inputs).map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(io.outputs.len());
    for spec in &io.outputs {
        let value = outputs
            .get(&spec.name)
            .ok_or_else(|| format!("output {:?} missing", spec.name))?;
        let t = from_value(spec, value)?;
        if t.shape.len() != spec.shape.len()
            || t.shape.iter().product::<usize>() != t.data.len()
            || (io.batched && t.shape.first() != Some(&rows))
            || t.shape
                .iter()
                .zip(&spec.shape)
                .any(|(&got, &want)| want > 0 && got != want as usize)
        {
            return Err(format!(
                "output {:?} has shape {:?} for {rows} rows; the card declares {:?}",
                spec.name, t.shape, spec.shape
            ));
        }
        answer.push(t);
    }
    Ok(answer)
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

impl Backend for OnnxBackend {
    fn infer(&self, batch: Batch) -> BoxFuture<'_, Result<Outputs, EngineError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let first = {
                let mut queue = self.inner.lock_queue();
                if queue.len() >= self.inner.queue_limit {
                    return Err(EngineError::Overloaded);
                }
                queue.push_back(Job {
                    enqueued: std::time::Instant::now(),
                    batch,
                    reply,
                });
                queue.len() == 1
            };
            // The first request into an empty queue starts a drain task; the
            // others are taken by one already running. The task is spawned, not
            // awaited here, so a client that goes away cannot strand the
            // requests batched with its own.
            if first {
                tokio::spawn(Arc::clone(&self.inner).drain_task());
            }
            answer.await.unwrap_or_else(|_| {
                Err(EngineError::Failed(
                    "the batch ended without an answer".into(),
                ))
            })
        })
    }

    fn queued(&self) -> usize {
        self.inner.lock_queue().len()
    }
}

impl Inner {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes queued requests in order, up to `batch_rows` rows (always at
    /// least one request; exactly one when batching is off).
    fn take_batch(&self) -> (Vec<Job>, bool) {
        let mut queue = self.lock_queue();
        let mut jobs: Vec<Job> = Vec::new();
        let mut rows = 0;
        while let Some(job) = queue.front() {
            // A request that waited past the queue timeout is shed, not run:
            // its client is better served by a quick 503 and a retry.
            if job.enqueued.elapsed() > self.queue_timeout {
                if let Some(stale) = queue.pop_front() {
                    let _ = stale.reply.send(Err(EngineError::Overloaded));
                }
                continue;
            }
            if let Some(first) = jobs.first()
                && (rows + job.batch.rows > self.batch_rows || !first.joins(job))
            {
                break;
            }
            rows += job.batch.rows;
            jobs.extend(queue.pop_front());
            if !self.batching {
                break;
            }
        }
        (jobs, !queue.is_empty())
    }

    /// The drain task, boxed so that it can spawn itself.
    fn drain_task(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(self.drain())
    }

    /// Runs batches until the queue is empty.
    async fn drain(self: Arc<Self>) {
        let mut guard = Respawn {
            inner: Arc::clone(&self),
            done: false,
        };
        // Let requests that are already readable on other connections queue up first.
        if self.batching {
            tokio::task::yield_now().await;
        }
        loop {
            let (mut jobs, more) = self.take_batch();
            if jobs.is_empty() {
                guard.done = true;
                return;
            }
            if more && self.pool.permits.available_permits() > 0 {
                // More wait and a session is free: let another drain start on
                // them. (When every session is busy, each is held by a drain
                // loop that comes back for more, so nothing is stranded.)
                tokio::spawn(Arc::clone(&self).drain_task());
            }
            let result = self.run_batch(&mut jobs).await;
            answer(jobs, result);
            // Give the executor thread back between batches: a batch run
            // inline does not await, and a busy queue would otherwise keep
            // this loop on the thread for many calls in a row (and the
            // next batch gathers the requests read meanwhile).
            tokio::task::yield_now().await;
        }
    }

    /// Runs the jobs' inputs as one call. Their inputs are taken (the
    /// answers need only each job's row count).
    async fn run_batch(&self, jobs: &mut [Job]) -> Result<Outputs, EngineError> {
        let batch = match jobs {
            [one] => Batch {
                rows: one.batch.rows,
                inputs: std::mem::take(&mut one.batch.inputs),
            },
            _ => {
                let rows = jobs.iter().map(|j| j.batch.rows).sum();
                let mut inputs = Vec::with_capacity(self.io.inputs.len());
                for i in 0..self.io.inputs.len() {
                    let parts: Vec<&Tensor> =
                        jobs.iter().filter_map(|j| j.batch.inputs.get(i)).collect();
                    inputs.push(Tensor::concat(&parts).ok_or_else(|| {
                        EngineError::Failed("batched requests do not join".into())
                    })?);
                }
                Batch { rows, inputs }
            }
        };
        let permit = Arc::clone(&self.pool.permits)
            .acquire_owned()
            .await
            .map_err(|_| EngineError::Failed("session pool closed".into()))?;
        let session = self
            .pool
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
            pool: Arc::clone(&self.pool),
            session: Some(session),
        };
        let io = Arc::clone(&self.io);
        let inline = self.call_ns.load(Ordering::Relaxed) < INLINE_BELOW.as_nanos() as u64;
        let call = move || {
            let started = Instant::now();
            let out = match lease.session.as_mut() {
                Some(session) => run(session, &io, batch),
                None => Err("lease without session".into()),
            };
            let took = started.elapsed();
            drop(lease);
            drop(permit);
            (out, took)
        };
        let (result, took) = if inline {
            call()
        } else {
            match tokio::task::spawn_blocking(call).await {
                Ok(done) => done,
                Err(join) => {
                    return Err(EngineError::Failed(format!(
                        "inference task failed: {join}"
                    )));
                }
            }
        };
        self.note_call(took);
        result.map_err(EngineError::Failed)
    }

    /// Updates the moving average of a call's duration (weight 1/8 for the
    /// newest; the first call sets it).
    fn note_call(&self, took: Duration) {
        let old = self.call_ns.load(Ordering::Relaxed);
        self.call_ns
            .store(moving_average(old, took), Ordering::Relaxed);
    }
}

/// Calls that take less than this on average run on the async executor
/// thread that drains the queue; slower ones go to tokio's blocking pool.
///
/// The hand-off to the blocking pool costs two context switches per batch,
/// more than a demo model's whole call (5–25 µs); blocking an executor
/// thread this briefly is within tokio's guidance (well under 100 µs
/// between awaits; the drain loop yields after every batch). A model whose
/// calls grow slower (a heavier model, full batches) moves to the pool after
/// one call of ~0.4 ms or more, or a few slower ones, so a slow model never
/// holds up other connections for long; the first call of every model goes
/// to the pool, as the average starts unknown.
pub const INLINE_BELOW: Duration = Duration::from_micros(50);

/// The call-duration average after a call that took `took` (`u64::MAX`:
/// no call yet).
fn moving_average(old: u64, took: Duration) -> u64 {
    let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX - 1);
    if old == u64::MAX {
        ns
    } else {
        old - old / 8 + ns / 8
    }
}

/// Sends each request its own rows of a batch's outputs.
fn answer(jobs: Vec<Job>, result: Result<Outputs, EngineError>) {
    match result {
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Ok(outputs) if jobs.len() == 1 => {
            if let Some(job) = jobs.into_iter().next() {
                let _ = job.reply.send(Ok(outputs));
            }
        }
        Ok(outputs) => {
            let mut offset = 0;
            for job in jobs {
                let end = offset + job.batch.rows;
                // `run` checked that every output's first dimension is the
                // batch's row count, so these ranges are in bounds.
                let mine = outputs.iter().map(|o| o.rows(offset..end)).collect();
                offset = end;
                let _ = job.reply.send(Ok(mine));
            }
        }
    }
}

/// If a drain task ends without emptying the queue (a panic), another one
/// is started, so queued requests are never stranded.
struct Respawn {
    inner: Arc<Inner>,
    done: bool,
}

impl Drop for Respawn {
    fn drop(&mut self) {
        if !self.done && !self.inner.lock_queue().is_empty() {
            tokio::spawn(Arc::clone(&self.inner).drain_task());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap calls run inline; a model that turns slow moves to the blocking
    /// pool within a few calls, and back once it is cheap again.
    #[test]
    fn the_call_average_decides_where_calls_run() {
        let inline = |avg: u64| avg < INLINE_BELOW.as_nanos() as u64;
        let mut avg = u64::MAX;
        assert!(!inline(avg), "the first call goes to the pool");
        avg = moving_average(avg, Duration::from_micros(10));
        assert!(inline(avg));
        let mut slow_calls = 0;
        while inline(avg) {
            avg = moving_average(avg, Duration::from_millis(2));
            slow_calls += 1;
        }
        assert_eq!(
            slow_calls, 1,
            "one 2 ms call is enough to leave the executor"
        );
        let mut fast_calls = 0;
        while !inline(avg) {
            avg = moving_average(avg, Duration::from_micros(10));
            fast_calls += 1;
        }
        assert!((5..40).contains(&fast_calls), "{fast_calls}");
        // A call too long for u64 nanoseconds does not wrap around.
        assert!(!inline(moving_average(avg, Duration::MAX)));
    }
}
