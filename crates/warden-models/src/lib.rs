//! Warden's model side.
//!
//! - [`card`]: the model card (`model.toml`): input and output tensors,
//!   task, training statistics, output policy.
//! - [`task`]: what a classifier's outputs mean (classes, probabilities).
//! - [`repository`]: the model repository folder, loaded and checked against
//!   the ONNX graphs at start.
//! - [`engine`]: the [`Backend`](engine::Backend) trait and its ONNX Runtime
//!   implementation (a bounded pool of sessions per model version).
//! - [`gateway`]: gateway mode, the same trait answered by an upstream Open
//!   Inference Protocol server.
//! - [`request`]: the one place a request body becomes a
//!   [`ValidInferRequest`](request::ValidInferRequest) (v1 and v2 protocols).
//! - [`policy`]: what of a prediction the caller may see.
//! - [`protocol`]: response wire formats.
//! - [`graph`]: the lookup tables an ONNX graph indexes with its inputs.
//! - [`integrity`]: SHA-256 pins and Ed25519 signatures of model files.
//! - [`sealed`]: AES-256-GCM encryption at rest (model files, raw-input snapshots).

pub mod card;
pub mod defenses;
pub mod engine;
pub mod gateway;
pub mod graph;
pub mod integrity;
pub mod json;
pub mod policy;
pub mod protocol;
pub mod repository;
pub mod request;
pub mod runtime;
pub mod sealed;
pub mod task;

pub use card::{Feature, FeatureKind, InputSpec, ModelCard, OutputSpec, Task};
pub use engine::{Backend, Batch, EngineError, Outputs};
pub use repository::{Model, ModelVersion, Repository, RepositoryError};
pub use request::{Protocol, ValidInferRequest};
