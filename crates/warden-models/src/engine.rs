//! Inference engines behind one trait, [`Backend`]: local ONNX Runtime
//! ([`OnnxBackend`]), and an upstream model server in gateway mode
//! ([`crate::gateway::GatewayBackend`]).
//!
//! `ort::Session::run` needs `&mut`, so each model version owns a small pool
//! of sessions (one intra-op thread each). Requests join a bounded queue
//! (`runtime.queue_per_model`; beyond it the answer is `overloaded`), and a
//! drain task takes what has queued — after yielding once, so that requests
//! already readable on other connections can join — and runs it as one
//! batch of at most the card's `max_batch` rows (dynamic batching). Rows are
//! independent in the classifiers Warden serves, so a batch's answers are
//! the answers each request would have had alone; one call amortizes ONNX
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
use ort::value::{Tensor, TensorElementType, ValueType};
use tokio::sync::{Semaphore, oneshot};

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
    /// Runs a checked, row-major batch of `rows` rows.
    fn infer(
        &self,
        rows: usize,
        values: Vec<f32>,
    ) -> BoxFuture<'_, Result<Prediction, EngineError>>;

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
    rows: usize,
    values: Vec<f32>,
    reply: oneshot::Sender<Result<Prediction, EngineError>>,
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
    inner: Arc<Inner>,
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
        });
        let io = Arc::new(io);
        {
            let mut sessions = pool.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            warm_up(&mut sessions[0], &io, card)?;
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
        })
    }
}

/// One inference on a full batch of the training means: the graph must run
/// and give outputs of the right shape before the model is served.
fn warm_up(session: &mut Session, io: &Io, card: &ModelCard) -> Result<(), String> {
    let means: Vec<f32> = card
        .features
        .iter()
        .map(|f| f.mean.unwrap_or(0.0) as f32)
        .collect();
    let rows = card.max_batch;
    let values: Vec<f32> = means
        .iter()
        .copied()
        .cycle()
        .take(rows * means.len())
        .collect();
    run(session, io, rows, values)
        .map(drop)
        .map_err(|e| format!("warm-up inference failed: {e}"))
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

impl Backend for OnnxBackend {
    fn infer(
        &self,
        rows: usize,
        values: Vec<f32>,
    ) -> BoxFuture<'_, Result<Prediction, EngineError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let first = {
                let mut queue = self.inner.lock_queue();
                if queue.len() >= self.inner.queue_limit {
                    return Err(EngineError::Overloaded);
                }
                queue.push_back(Job {
                    enqueued: std::time::Instant::now(),
                    rows,
                    values,
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
        let mut jobs = Vec::new();
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
            if !jobs.is_empty() && rows + job.rows > self.batch_rows {
                break;
            }
            rows += job.rows;
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
            let (jobs, more) = self.take_batch();
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
            let result = self.run_batch(&jobs).await;
            answer(jobs, result);
            // Give the executor thread back between batches: a batch run
            // inline does not await, and a busy queue would otherwise keep
            // this loop on the thread for many calls in a row (and the
            // next batch gathers the requests read meanwhile).
            tokio::task::yield_now().await;
        }
    }

    async fn run_batch(&self, jobs: &[Job]) -> Result<Prediction, EngineError> {
        let rows: usize = jobs.iter().map(|j| j.rows).sum();
        let mut values = Vec::with_capacity(rows * self.io.width);
        for job in jobs {
            values.extend_from_slice(&job.values);
        }
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
                Some(session) => run(session, &io, rows, values),
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

/// Sends each request its own rows of a batch's prediction.
fn answer(jobs: Vec<Job>, result: Result<Prediction, EngineError>) {
    match result {
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Ok(prediction) => {
            let classes = prediction
                .probabilities
                .as_ref()
                .map(|p| p.len() / prediction.labels.len().max(1));
            let mut offset = 0;
            for job in jobs {
                let end = offset + job.rows;
                let mine = Prediction {
                    labels: prediction.labels[offset..end].to_vec(),
                    probabilities: prediction
                        .probabilities
                        .as_ref()
                        .zip(classes)
                        .map(|(p, c)| p[offset * c..end * c].to_vec()),
                };
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
