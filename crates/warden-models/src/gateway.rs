//! Gateway mode: a model whose card has an `[upstream]` table is answered by
//! an Open Inference Protocol server (Triton, KServe, MLServer, ...) instead
//! of a local ONNX file. Everything before and after inference — the whole
//! pipeline, the defenses and the output policy — is the same; this backend
//! only turns a checked batch (typed tensors) into one
//! `POST /v2/models/{m}/infer` (or, to a `grpc://` / `grpcs://` upstream,
//! one gRPC `ModelInfer` with raw contents) and the answer back into the
//! card's output tensors, after checking it against the card.
//!
//! What guards the call:
//! - one pooled client per model (HTTP/1.1, and HTTP/2 where TLS ALPN
//!   offers it), no redirects followed, no proxy from the environment;
//! - a connect timeout, and a deadline over the whole call, retries included;
//! - retries only when the connection could not be made (nothing was sent,
//!   so nothing can run twice), with a short doubling back-off;
//! - at most `max_in_flight` calls at once; beyond it requests wait up to
//!   the runtime's queue timeout, then get `overloaded`;
//! - a circuit breaker ([`Breaker`]) that opens after `breaker_failures`
//!   failed calls in a row and lets one trial call through after
//!   `breaker_open_for`, and an active health check that polls the model's
//!   readiness every `health_interval`, opening the breaker when the server
//!   says it is not ready and closing it when it is again;
//! - the answer is read up to a size bound derived from the batch, and
//!   every output the card declares must be there with the card's rank,
//!   fixed dimensions and the batch's rows, values of its datatype (a
//!   classifier's labels among its classes, its probabilities in [0, 1]
//!   summing to 1); anything else is an upstream failure.
//!
//! A failure never shows the client anything of the upstream: the client
//! gets `upstream_unavailable` (502, or 504 when the deadline passed), and
//! the log and `warden_upstream_requests_total` say what happened.
//!
//! The breaker is written here: the crates that offer one (failsafe and
//! similar) bring their own futures wrappers and back-off policies for a
//! state machine of twenty lines.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use warden_core::metrics::{Alert, UPSTREAM_REQUESTS, UPSTREAM_UP};

use warden_oip::{GrpcInferenceServiceClient, pb};
use warden_tensor::{DataType, Tensor, TensorData};

use crate::card::{ModelCard, Task, Upstream};
use crate::engine::{Backend, Batch, BoxFuture, EngineError, GraphTensor, Outputs};

/// Most bytes of an answer read per predicted value (a JSON number with
/// its separator, generously), plus a fixed allowance for the envelope.
const BYTES_PER_VALUE: usize = 64;
const ENVELOPE_BYTES: usize = 64 * 1024;
/// A dynamic output dimension (after the batch) counts this many values
/// towards the answer's size bound.
const DYNAMIC_DIM: usize = 1024;
/// The largest answer read, whatever the card says.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// A model served by an upstream Open Inference Protocol server.
pub struct GatewayBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The Warden model name (logs, metrics).
    model: String,
    client: reqwest::Client,
    /// Parsed once: a URL given as text is parsed again (host through IDNA)
    /// on every call.
    infer_url: reqwest::Url,
    ready_url: reqwest::Url,
    /// The card: its outputs and task decide what an answer must hold.
    card: ModelCard,
    settings: Upstream,
    permits: Semaphore,
    queue_timeout: Duration,
    breaker: Breaker,
    /// `Authorization: Bearer …` for the upstream, marked sensitive.
    authorization: Option<reqwest::header::HeaderValue>,
    /// A gRPC upstream (`grpc://`, `grpcs://`): its channel, in place of
    /// the REST client.
    grpc: Option<GrpcUpstream>,
}

/// The gRPC side of a gateway model: the endpoint (TLS, timeouts) built at
/// load, its channel opened on first use (a channel needs the runtime).
struct GrpcUpstream {
    endpoint: tonic::transport::Endpoint,
    channel: std::sync::OnceLock<tonic::transport::Channel>,
    /// The model's name on the upstream, and the version asked for.
    model: String,
    version: String,
}

impl GrpcUpstream {
    fn client(&self) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
        let channel = self
            .channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone();
        GrpcInferenceServiceClient::new(channel)
    }
}

impl std::fmt::Debug for GatewayBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBackend")
            .field("model", &self.inner.model)
            .field("infer_url", &self.inner.infer_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Why a call failed, for the log and the metric's `outcome` label.
#[derive(Debug)]
enum CallError {
    Connect(String),
    Timeout,
    Status(u16),
    /// A gRPC upstream's status (its number).
    Grpc(tonic::Code),
    Invalid(String),
    Transport(String),
}

impl CallError {
    /// A 4xx other than 408 and 429: the server is up and refused this
    /// request (e.g. a batch above its own limit).
    fn upstream_is_alive(&self) -> bool {
        use tonic::Code;
        match self {
            Self::Status(s) => (400..500).contains(s) && *s != 408 && *s != 429,
            // gRPC's counterparts of those 4xx: the request was refused.
            Self::Grpc(code) => matches!(
                code,
                Code::InvalidArgument
                    | Code::NotFound
                    | Code::AlreadyExists
                    | Code::PermissionDenied
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::Unimplemented
                    | Code::Unauthenticated
            ),
            _ => false,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::Status(_) | Self::Grpc(_) => "status",
            Self::Invalid(_) => "invalid",
            Self::Transport(_) => "transport",
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Timeout => f.write_str("no answer within the timeout"),
            Self::Status(s) => write!(f, "answered HTTP {s}"),
            Self::Grpc(code) => write!(f, "answered gRPC {code:?}"),
            Self::Invalid(e) => write!(f, "answer does not match the model card: {e}"),
            Self::Transport(e) => write!(f, "transport error: {e}"),
        }
    }
}

impl GatewayBackend {
    /// Builds the client for `card`'s upstream (files relative to the model
    /// folder `dir`) and, inside a tokio runtime, starts the health check.
    /// Nothing is sent yet: an upstream that is down at start makes the
    /// model not ready, not the start fail. Errors are sentences for the
    /// operator.
    pub fn load(
        model: &str,
        card: &ModelCard,
        dir: &Path,
        queue_timeout: Duration,
    ) -> Result<Self, String> {
        let settings = card
            .upstream
            .clone()
            .ok_or("the card has no [upstream] table")?;
        let client = client(&settings, dir)?;
        let authorization = settings
            .bearer_token
            .as_ref()
            .map(|source| bearer(source, dir))
            .transpose()?;
        let remote = settings.model.as_deref().unwrap_or(model);
        let base = match &settings.version {
            Some(v) => format!("{}/v2/models/{remote}/versions/{v}", settings.url),
            None => format!("{}/v2/models/{remote}", settings.url),
        };
        let grpc = settings
            .grpc
            .then(|| grpc_endpoint(&settings, dir))
            .transpose()?
            .map(|endpoint| GrpcUpstream {
                endpoint,
                channel: std::sync::OnceLock::new(),
                model: remote.to_owned(),
                version: settings.version.clone().unwrap_or_default(),
            });
        let inner = Arc::new(Inner {
            model: model.to_owned(),
            client,
            infer_url: upstream_url(&format!("{base}/infer"))?,
            ready_url: upstream_url(&format!("{base}/ready"))?,
            grpc,
            card: card.clone(),
            permits: Semaphore::new(settings.max_in_flight),
            queue_timeout,
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_open_for),
            authorization,
            settings,
        });
        metrics::gauge!(UPSTREAM_UP, "model" => inner.model.clone()).set(1.0);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(health_checks(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }
}

/// The inputs and outputs an upstream server reports for `model`
/// (`GET /v2/models/{model}`), over the same client a gateway model uses
/// (its CA, client certificate and bearer token; files relative to
/// `dir`): what `warden model init --upstream` writes a card from.
pub async fn upstream_tensors(
    settings: &Upstream,
    dir: &Path,
    model: &str,
) -> Result<(Vec<GraphTensor>, Vec<GraphTensor>), String> {
    #[derive(Deserialize)]
    struct Metadata {
        #[serde(default)]
        inputs: Vec<Tensor>,
        #[serde(default)]
        outputs: Vec<Tensor>,
    }
    #[derive(Deserialize)]
    struct Tensor {
        name: String,
        datatype: String,
        #[serde(default)]
        shape: Vec<i64>,
    }
    if settings.grpc {
        let endpoint = grpc_endpoint(settings, dir)?;
        let mut client = GrpcInferenceServiceClient::new(endpoint.connect_lazy());
        let mut request = tonic::Request::new(pb::ModelMetadataRequest {
            name: model.to_owned(),
            version: settings.version.clone().unwrap_or_default(),
        });
        request.set_timeout(settings.timeout);
        if let Some(source) = &settings.bearer_token
            && let Ok(v) = tonic::metadata::MetadataValue::try_from(bearer(source, dir)?.as_bytes())
        {
            request.metadata_mut().insert("authorization", v);
        }
        let meta = client
            .model_metadata(request)
            .await
            .map_err(|e| {
                format!(
                    "{}: ModelMetadata: {:?} {}",
                    settings.url,
                    e.code(),
                    e.message()
                )
            })?
            .into_inner();
        let convert = |t: pb::model_metadata_response::TensorMetadata| GraphTensor {
            datatype: DataType::parse(&t.datatype)
                .ok_or_else(|| format!("the datatype {:?}", t.datatype)),
            name: t.name,
            shape: t.shape,
        };
        return Ok((
            meta.inputs.into_iter().map(convert).collect(),
            meta.outputs.into_iter().map(convert).collect(),
        ));
    }
    let client = client(settings, dir)?;
    let url = match &settings.version {
        Some(v) => format!("{}/v2/models/{model}/versions/{v}", settings.url),
        None => format!("{}/v2/models/{model}", settings.url),
    };
    let mut request = client.get(&url).timeout(settings.timeout);
    if let Some(source) = &settings.bearer_token {
        request = request.header(reqwest::header::AUTHORIZATION, bearer(source, dir)?);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{url}: {}", source_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!(
            "{url}: answered HTTP {}",
            response.status().as_u16()
        ));
    }
    let body = read_bounded(response, ENVELOPE_BYTES * 16)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let meta: Metadata =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not model metadata: {e}"))?;
    let convert = |t: Tensor| GraphTensor {
        datatype: DataType::parse(&t.datatype)
            .ok_or_else(|| format!("the datatype {:?}", t.datatype)),
        name: t.name,
        shape: t.shape,
    };
    Ok((
        meta.inputs.into_iter().map(convert).collect(),
        meta.outputs.into_iter().map(convert).collect(),
    ))
}

/// The `Authorization` value for `[upstream] bearer_token`, read with the
/// secret-file permission check (a relative file is in the model folder).
fn bearer(
    source: &warden_core::SecretSource,
    dir: &Path,
) -> Result<reqwest::header::HeaderValue, String> {
    let source = match source {
        warden_core::SecretSource::File { file } => warden_core::SecretSource::File {
            file: dir.join(file),
        },
        other => other.clone(),
    };
    let token = source
        .read(false)
        .map_err(|e| format!("upstream.bearer_token: {e}"))?;
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(token.expose());
    let mut header = reqwest::header::HeaderValue::from_bytes(&value)
        .map_err(|_| "upstream.bearer_token: not a valid header value".to_owned())?;
    value.fill(0);
    header.set_sensitive(true);
    Ok(header)
}

fn client(settings: &Upstream, dir: &Path) -> Result<reqwest::Client, String> {
    let read = |file: &PathBuf| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| format!("upstream: cannot read {}: {e}", path.display()))
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(settings.max_in_flight)
        // Under the 5 s after which uvicorn-based servers (MLServer, KServe)
        // close an idle connection, so a request is not sent on one they
        // are closing.
        .pool_idle_timeout(Duration::from_secs(4))
        .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &settings.ca {
        let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
            .map_err(|e| format!("upstream.ca: not a PEM certificate bundle: {e}"))?;
        if certs.is_empty() {
            return Err("upstream.ca: no certificate in the file".into());
        }
        builder = builder.tls_certs_only(certs);
    }
    if let Some((cert, key)) = &settings.client_identity {
        // The key is a secret: read with the same permission check as
        // every secret file (not readable by group or others).
        let key = warden_core::SecretSource::File {
            file: dir.join(key),
        }
        .read(false)
        .map_err(|e| format!("upstream.client_key: {e}"))?;
        let mut pem = zeroize::Zeroizing::new(read(cert)?);
        pem.push(b'\n');
        pem.extend_from_slice(key.expose());
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("upstream.client_cert: not a PEM certificate and key: {e}"))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("upstream: cannot build the HTTP client: {e}"))
}

/// An upstream route's URL, parsed (and refused, at load) once.
fn upstream_url(url: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(url).map_err(|e| format!("upstream.url: {url}: {e}"))
}

/// The gRPC endpoint of a `grpc://` / `grpcs://` upstream: the same
/// connect timeout, CA (or the system's roots), client certificate and
/// TLS library (rustls with aws-lc-rs) as the REST client.
fn grpc_endpoint(settings: &Upstream, dir: &Path) -> Result<tonic::transport::Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |file: &PathBuf| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| format!("upstream: cannot read {}: {e}", path.display()))
    };
    let mut endpoint = Endpoint::from_shared(settings.url.clone())
        .map_err(|e| format!("upstream.url: {e}"))?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| format!("upstream: {e}"))?;
    if settings.url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &settings.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &settings.client_identity {
            let key = warden_core::SecretSource::File {
                file: dir.join(key),
            }
            .read(false)
            .map_err(|e| format!("upstream.client_key: {e}"))?;
            tls = tls.identity(Identity::from_pem(read(cert)?, key.expose()));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("upstream: TLS settings: {e}"))?;
    }
    Ok(endpoint)
}

/// The request body of `POST .../infer`.
#[derive(Serialize)]
struct InferRequest<'a> {
    inputs: &'a [Tensor],
    outputs: Vec<RequestedOutput<'a>>,
}

#[derive(Serialize)]
struct RequestedOutput<'a> {
    name: &'a str,
}

/// The parts of the answer Warden reads; anything else is ignored.
#[derive(Deserialize)]
struct InferResponse {
    outputs: Vec<OutputTensor>,
}

#[derive(Deserialize)]
struct OutputTensor {
    name: String,
    #[serde(default)]
    shape: Vec<u64>,
    data: serde_json::Value,
}

impl Backend for GatewayBackend {
    fn infer(&self, batch: Batch) -> BoxFuture<'_, Result<Outputs, EngineError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            match inner.breaker.admit() {
                Admission::Refused => {
                    inner.count("breaker_open");
                    Err(EngineError::Unavailable)
                }
                Admission::Call => inner.infer(batch).await,
                // The trial call runs to its end even if its caller leaves:
                // its outcome is the breaker's only news of the upstream,
                // and a caller that cancelled trials over and over would
                // otherwise keep an open breaker open for everyone.
                Admission::Trial => tokio::spawn(async move { inner.infer(batch).await })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "upstream trial call failed");
                        Err(EngineError::Unavailable)
                    }),
            }
        })
    }

    fn ready(&self) -> bool {
        !self.inner.breaker.is_open()
    }
}

impl Inner {
    /// One call the breaker admitted.
    async fn infer(&self, batch: Batch) -> Result<Outputs, EngineError> {
        // From here the breaker hears how the call ended. A request dropped
        // half-way (its client gone, server.request_timeout spent waiting
        // elsewhere) cancels the call without counting it: a client going
        // away says nothing about the upstream's health, and counting it
        // would let any caller open the breaker for everyone.
        let mut attempt = Attempt {
            inner: self,
            settled: false,
        };
        let Ok(Ok(_permit)) =
            tokio::time::timeout(self.queue_timeout, self.permits.acquire()).await
        else {
            attempt.settled = true;
            self.breaker.release_trial();
            return Err(EngineError::Overloaded);
        };
        let call = self.call(&batch);
        let result = match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        };
        attempt.settled = true;
        match result {
            Ok(prediction) => {
                self.count("ok");
                if self.breaker.success() {
                    self.opened_or_closed(false, "a call succeeded");
                }
                Ok(prediction)
            }
            Err(e) => {
                self.count(e.outcome());
                tracing::warn!(model = %self.model, upstream = %self.infer_url, error = %e, "upstream call failed");
                if e.upstream_is_alive() {
                    // It answered: a refusal of this request (4xx) says
                    // nothing about the server's health, so one caller's
                    // bad batches cannot open the breaker for everyone.
                    if self.breaker.success() {
                        self.opened_or_closed(false, "the upstream answered");
                    }
                } else if self.breaker.failure() {
                    self.opened_or_closed(true, &e.to_string());
                }
                Err(match e {
                    CallError::Timeout => EngineError::TimedOut,
                    _ => EngineError::Unavailable,
                })
            }
        }
    }

    async fn call(&self, batch: &Batch) -> Result<Outputs, CallError> {
        if let Some(grpc) = &self.grpc {
            return self.call_grpc(grpc, batch).await;
        }
        let outputs = self
            .card
            .outputs
            .iter()
            .map(|o| RequestedOutput { name: &o.name })
            .collect();
        let body = serde_json::to_vec(&InferRequest {
            inputs: &batch.inputs,
            outputs,
        })
        .map_err(|e| CallError::Transport(e.to_string()))?;
        let rows = batch.rows;
        let mut attempt = 0;
        let response = loop {
            let sent = self
                .authorized(self.client.post(self.infer_url.clone()))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) => break r,
                Err(e) if e.is_connect() && attempt < self.settings.retries => {
                    tracing::debug!(model = %self.model, attempt, error = %e, "upstream connect failed, retrying");
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                    attempt += 1;
                }
                Err(e) if e.is_connect() => return Err(CallError::Connect(source_chain(&e))),
                Err(e) if e.is_timeout() => return Err(CallError::Timeout),
                Err(e) => return Err(CallError::Transport(source_chain(&e))),
            }
        };
        if !response.status().is_success() {
            return Err(CallError::Status(response.status().as_u16()));
        }
        let limit = ENVELOPE_BYTES.saturating_add(
            self.answer_values(rows)
                .saturating_mul(BYTES_PER_VALUE)
                .min(MAX_ANSWER_BYTES),
        );
        let bytes = read_bounded(response, limit).await?;
        self.check(rows, &bytes).map_err(CallError::Invalid)
    }

    /// Most values an answer for `rows` rows may hold: each output's fixed
    /// dimensions, a dynamic one counted as [`DYNAMIC_DIM`].
    fn answer_values(&self, rows: usize) -> usize {
        self.card
            .outputs
            .iter()
            .map(|o| {
                o.shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match d {
                        -1 if i == 0 && self.card.batched => rows,
                        -1 => DYNAMIC_DIM,
                        d => d as usize,
                    })
                    .fold(1usize, usize::saturating_mul)
            })
            .fold(0usize, usize::saturating_add)
    }

    /// Checks an answer against the card: every declared output, with the
    /// card's rank and fixed dimensions and `rows` rows, its values of the
    /// card's datatype (numbers may come in another number type: JSON does
    /// not keep them apart); a classifier's labels (indices, or class
    /// names) among its classes, its probabilities finite in [0, 1] with
    /// rows summing to 1.
    /// One `ModelInfer` call to a gRPC upstream: the batch as raw input
    /// contents, every card output asked for, the bearer token in the
    /// metadata, the answer bounded like a REST answer and checked by the
    /// same [`Inner::check_answer`].
    async fn call_grpc(&self, grpc: &GrpcUpstream, batch: &Batch) -> Result<Outputs, CallError> {
        let (inputs, raw): (Vec<_>, Vec<_>) =
            batch.inputs.iter().map(warden_oip::raw_input).unzip();
        let message = pb::ModelInferRequest {
            model_name: grpc.model.clone(),
            model_version: grpc.version.clone(),
            inputs,
            outputs: self
                .card
                .outputs
                .iter()
                .map(|o| pb::model_infer_request::InferRequestedOutputTensor {
                    name: o.name.clone(),
                    parameters: Default::default(),
                })
                .collect(),
            raw_input_contents: raw,
            ..Default::default()
        };
        let rows = batch.rows;
        let limit = ENVELOPE_BYTES.saturating_add(
            self.answer_values(rows)
                .saturating_mul(BYTES_PER_VALUE)
                .min(MAX_ANSWER_BYTES),
        );
        let mut client = grpc.client().max_decoding_message_size(limit);
        let mut attempt = 0;
        let answer = loop {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(self.settings.timeout);
            self.authorize_grpc(&mut request);
            match client.model_infer(request).await {
                Ok(r) => break r.into_inner(),
                // The channel could not reach the server: nothing was run.
                Err(e)
                    if e.code() == tonic::Code::Unavailable && attempt < self.settings.retries =>
                {
                    tracing::debug!(model = %self.model, attempt, error = %e.message(), "upstream unavailable, retrying");
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                    attempt += 1;
                }
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    return Err(CallError::Connect(e.message().to_owned()));
                }
                Err(e)
                    if matches!(
                        e.code(),
                        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                    ) =>
                {
                    return Err(CallError::Timeout);
                }
                Err(e) => return Err(CallError::Grpc(e.code())),
            }
        };
        // The answer's tensors (raw contents, or typed), then the checks of
        // a REST answer: one set of rules whatever the upstream speaks.
        let raw = &answer.raw_output_contents;
        let outputs = answer
            .outputs
            .iter()
            .enumerate()
            .map(|(k, o)| {
                let tensor = warden_oip::output_tensor(o, raw.get(k).map(|b| &b[..]))
                    .map_err(|e| CallError::Invalid(e.to_string()))?;
                Ok(OutputTensor {
                    name: tensor.name.clone(),
                    shape: tensor.shape.iter().map(|&d| d as u64).collect(),
                    data: serde_json::to_value(&tensor.data)
                        .map_err(|e| CallError::Invalid(e.to_string()))?,
                })
            })
            .collect::<Result<Vec<_>, CallError>>()?;
        self.check_answer(rows, InferResponse { outputs })
            .map_err(CallError::Invalid)
    }

    /// Adds the upstream's bearer token to a gRPC call's metadata.
    fn authorize_grpc<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = &self.authorization
            && let Ok(mut v) = tonic::metadata::MetadataValue::try_from(value.as_bytes())
        {
            v.set_sensitive(true);
            request.metadata_mut().insert("authorization", v);
        }
    }

    fn check(&self, rows: usize, body: &[u8]) -> Result<Outputs, String> {
        let answer: InferResponse =
            serde_json::from_slice(body).map_err(|e| format!("not an inference response: {e}"))?;
        self.check_answer(rows, answer)
    }

    /// The answer against the card: every declared output, its rank, fixed
    /// dimensions and rows, values of its datatype, labels among the
    /// classes, probabilities in [0, 1] summing to 1.
    fn check_answer(&self, rows: usize, answer: InferResponse) -> Result<Outputs, String> {
        let card = &self.card;
        let mut outputs = Vec::with_capacity(card.outputs.len());
        for (i, spec) in card.outputs.iter().enumerate() {
            let o = answer
                .outputs
                .iter()
                .find(|o| o.name == spec.name)
                .ok_or_else(|| format!("no output {:?}", spec.name))?;
            let label = matches!(&card.task, Task::Classification { label, .. } if *label == i);
            // The shape: the declared one if given (a one-column [N] / [N, 1]
            // label either way), else judged by the data alone.
            let mut shape: Vec<usize> = o.shape.iter().map(|&d| d as usize).collect();
            if label && (shape.len() == 2 && shape[1] == 1) && spec.shape.len() == 1 {
                shape.truncate(1);
            }
            let expected: Vec<Option<usize>> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(k, &d)| match d {
                    -1 if k == 0 && card.batched => Some(rows),
                    -1 => None,
                    d => Some(d as usize),
                })
                .collect();
            if shape.is_empty() && expected.iter().all(Option::is_some) {
                shape = expected.iter().flatten().copied().collect();
            }
            let fits = shape.len() == expected.len()
                && shape
                    .iter()
                    .zip(&expected)
                    .all(|(g, e)| e.is_none_or(|e| e == *g));
            // The upstream's shape is not trusted: its product may overflow.
            let count = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format!("output {:?} has shape {:?}", spec.name, o.shape))?;
            let values = flatten(&o.data, count)?;
            if !fits || values.len() != count {
                return Err(format!(
                    "output {:?} has shape {:?} and {} values, expected {:?} for {rows} rows",
                    spec.name,
                    o.shape,
                    values.len(),
                    spec.shape
                ));
            }
            let data = if label {
                self.labels(&values)?
            } else {
                json_values(spec.datatype, &values)
                    .map_err(|e| format!("output {:?}: {e}", spec.name))?
            };
            outputs.push(Tensor {
                name: spec.name.clone(),
                shape,
                data,
            });
        }
        if let Some(probs) = crate::task::probabilities(card, &outputs) {
            let classes = card.classes().len().max(1);
            if probs
                .iter()
                .any(|f| !(f.is_finite() && (-1e-6..=1.0 + 1e-6).contains(f)))
            {
                return Err("a probability is not a number in [0, 1]".into());
            }
            for row in probs.chunks(classes) {
                let sum: f32 = row.iter().sum();
                if (sum - 1.0).abs() > 1e-3 {
                    return Err(format!("probabilities of a row sum to {sum}, not 1"));
                }
            }
        }
        Ok(outputs)
    }

    /// A classifier's labels as the card's label datatype: indices below
    /// the number of classes, or class names.
    fn labels(&self, values: &[&serde_json::Value]) -> Result<TensorData, String> {
        let classes = self.card.classes();
        let indices = values
            .iter()
            .map(|v| match v {
                serde_json::Value::Number(n) => n
                    .as_u64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                            .map(|f| f as u64)
                    })
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|i| *i < classes.len())
                    .ok_or_else(|| {
                        format!("label {n} is not a class index below {}", classes.len())
                    }),
                serde_json::Value::String(s) => classes
                    .iter()
                    .position(|c| c == s)
                    .ok_or_else(|| "a label is not one of the card's classes".to_owned()),
                _ => Err("a label is neither a number nor a string".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let label = match &self.card.task {
            Task::Classification { label, .. } => &self.card.outputs[*label],
            _ => return Err("not a classifier".into()),
        };
        Ok(match label.datatype {
            DataType::Bytes => TensorData::Bytes(
                indices
                    .into_iter()
                    .map(|i| classes[i].clone().into_bytes())
                    .collect(),
            ),
            _ => TensorData::I64(indices.into_iter().map(|i| i as i64).collect()),
        })
    }

    /// Adds the upstream's bearer token, if the card gives one.
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(value) => request.header(reqwest::header::AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!(UPSTREAM_REQUESTS, "model" => self.model.clone(), "outcome" => outcome)
            .increment(1);
    }

    /// Logs a breaker transition (with the alert when it opens) and sets the gauge.
    fn opened_or_closed(&self, opened: bool, why: &str) {
        metrics::gauge!(UPSTREAM_UP, "model" => self.model.clone()).set(if opened {
            0.0
        } else {
            1.0
        });
        if opened {
            Alert::UpstreamDown.count();
            tracing::error!(
                alert = Alert::UpstreamDown.as_str(),
                model = %self.model,
                upstream = %self.settings.url,
                reason = %why,
                "upstream unavailable: calls refused until it recovers"
            );
        } else {
            tracing::info!(model = %self.model, upstream = %self.settings.url, reason = %why, "upstream available again");
        }
    }
}

/// A call admitted by the breaker. Dropped unsettled (the request went
/// away mid-call), the call is cancelled and counted only in the metrics
/// (`cancelled`), never as a failure. (A trial call runs in a task of its
/// own and is not dropped so; should it be, at shutdown, its turn goes to
/// the next caller.)
struct Attempt<'a> {
    inner: &'a Inner,
    settled: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.inner.count("cancelled");
            self.inner.breaker.release_trial();
        }
    }
}

/// JSON values as `datatype`: numbers of any spelling for a number type
/// (an integer type takes whole numbers in its range only; floats must be
/// finite), booleans, strings.
fn json_values(datatype: DataType, values: &[&serde_json::Value]) -> Result<TensorData, String> {
    use serde_json::Value;
    match datatype {
        DataType::Bool => values
            .iter()
            .map(|v| v.as_bool().ok_or("a value is not a boolean"))
            .collect::<Result<Vec<_>, _>>()
            .map(TensorData::Bool)
            .map_err(Into::into),
        DataType::Bytes => values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone().into_bytes()),
                _ => Err("a value is not a string"),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TensorData::Bytes)
            .map_err(Into::into),
        d if d.is_float() => {
            let f = values
                .iter()
                .map(|v| v.as_f64().filter(|f| f.is_finite()))
                .collect::<Option<Vec<f64>>>()
                .ok_or("a value is not a finite number")?;
            TensorData::from_f64(d, &f).ok_or_else(|| "not a number type".into())
        }
        d => {
            let (lo, hi) = d.integer_bounds().ok_or("not an integer type")?;
            let ints = values
                .iter()
                .map(|v| match v {
                    Value::Number(n) => n
                        .as_i64()
                        .map(i128::from)
                        .or_else(|| n.as_u64().map(i128::from))
                        .filter(|i| (lo..=hi).contains(i)),
                    _ => None,
                })
                .collect::<Option<Vec<i128>>>()
                .ok_or_else(|| format!("a value is not a whole number within {d}"))?;
            let f: Vec<f64> = ints.iter().map(|&i| i as f64).collect();
            match d {
                // Past 2^53 an f64 would round: keep 64-bit integers exact.
                DataType::I64 => Ok(TensorData::I64(ints.iter().map(|&i| i as i64).collect())),
                DataType::U64 => Ok(TensorData::U64(ints.iter().map(|&i| i as u64).collect())),
                _ => TensorData::from_f64(d, &f).ok_or_else(|| "not a number type".into()),
            }
        }
    }
}

/// The values of a tensor's `data`, flat (OIP allows nested arrays), at
/// most `expected + 1` of them so that a huge answer is not copied.
fn flatten(data: &serde_json::Value, expected: usize) -> Result<Vec<&serde_json::Value>, String> {
    fn walk<'v>(
        v: &'v serde_json::Value,
        depth: usize,
        out: &mut Vec<&'v serde_json::Value>,
        cap: usize,
    ) -> Result<(), String> {
        match v {
            serde_json::Value::Array(items) if depth < 4 => {
                for item in items {
                    if out.len() > cap {
                        break;
                    }
                    walk(item, depth + 1, out, cap)?;
                }
                Ok(())
            }
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                Err("tensor data nested too deep".into())
            }
            _ if depth == 0 => Err("tensor data is not an array".into()),
            scalar => {
                out.push(scalar);
                Ok(())
            }
        }
    }
    let mut out = Vec::with_capacity(expected.min(1 << 16));
    walk(data, 0, &mut out, expected)?;
    Ok(out)
}

/// The response body, refused beyond `limit` bytes.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, CallError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(CallError::Invalid(format!(
            "answer larger than {limit} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        if e.is_timeout() {
            CallError::Timeout
        } else {
            CallError::Transport(source_chain(&e))
        }
    })? {
        if body.len() + chunk.len() > limit {
            return Err(CallError::Invalid(format!(
                "answer larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes (reqwest's own message is only the outermost).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Polls the upstream's readiness while the backend lives: not ready (or
/// no answer) opens the breaker at once; ready closes it.
async fn health_checks(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => i.settings.health_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { break };
        if let Some(grpc) = &inner.grpc {
            let mut request = tonic::Request::new(pb::ModelReadyRequest {
                name: grpc.model.clone(),
                version: grpc.version.clone(),
            });
            request.set_timeout(period);
            inner.authorize_grpc(&mut request);
            let verdict =
                match tokio::time::timeout(period, grpc.client().model_ready(request)).await {
                    Ok(Ok(r)) if r.get_ref().ready => Ok(()),
                    Ok(Ok(_)) => Err("ModelReady answered not ready".to_owned()),
                    Ok(Err(e)) => Err(format!("ModelReady failed: {:?} {}", e.code(), e.message())),
                    Err(_) => Err("ModelReady did not answer in time".to_owned()),
                };
            match verdict {
                Ok(()) if inner.breaker.healthy() => {
                    inner.opened_or_closed(false, "readiness check passed")
                }
                Err(why) if inner.breaker.trip() => inner.opened_or_closed(true, &why),
                _ => {}
            }
            continue;
        }
        let probe = inner
            .authorized(inner.client.get(inner.ready_url.clone()))
            // Bounded by the period (checks never pile up), not by the
            // call timeout: a card may give inference a tighter deadline
            // than a readiness answer needs.
            .timeout(period)
            .send()
            .await;
        let verdict = match probe {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("readiness answered HTTP {}", r.status().as_u16())),
            Err(e) => Err(format!("readiness check failed: {}", source_chain(&e))),
        };
        match verdict {
            Ok(()) if inner.breaker.healthy() => {
                inner.opened_or_closed(false, "readiness check passed")
            }
            Err(why) if inner.breaker.trip() => inner.opened_or_closed(true, &why),
            _ => {}
        }
    }
}

/// A circuit breaker: closed (calls pass; failures in a row are counted),
/// open (calls are refused until a time), half-open (one trial call is in
/// flight; its outcome closes or re-opens the breaker).
///
/// The health check and the calls share it without undoing each other: a
/// failed readiness check opens it; a passing one closes it only if a
/// readiness check opened it, and otherwise, when calls opened it, only
/// lets the next call be the trial at once (a server that says it is ready
/// but fails inference stays open).
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
    /// Mirrors "state is not Closed", for lock-free readiness reads;
    /// written only under the state lock.
    open: AtomicBool,
}

/// What the breaker says to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Closed: go.
    Call,
    /// Open past its time: this call is the one trial.
    Trial,
    /// Open: refused at once.
    Refused,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, by_health: bool },
    HalfOpen,
}

impl Breaker {
    fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold,
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
            open: AtomicBool::new(false),
        }
    }

    /// Sets the state; returns whether the open flag changed.
    fn set(&self, state: &mut State, new: State) -> bool {
        *state = new;
        let open = !matches!(new, State::Closed { .. });
        self.open.swap(open, Ordering::Relaxed) != open
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether calls are being refused (for readiness).
    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether a call may go out now; an open breaker past its time lets
    /// exactly one through, as the trial.
    fn admit(&self) -> Admission {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Admission::Call,
            State::Open { until, .. } if Instant::now() >= until => {
                self.set(&mut state, State::HalfOpen);
                Admission::Trial
            }
            State::Open { .. } | State::HalfOpen => Admission::Refused,
        }
    }

    /// A trial admitted but never sent (no room within the queue timeout):
    /// let the next caller try.
    fn release_trial(&self) {
        let mut state = self.state();
        if matches!(*state, State::HalfOpen) {
            let reopened = State::Open {
                until: Instant::now(),
                by_health: false,
            };
            self.set(&mut state, reopened);
        }
    }

    /// A call succeeded (or the server answered). Returns true if that
    /// closed the breaker.
    fn success(&self) -> bool {
        let mut state = self.state();
        self.set(&mut state, State::Closed { failures: 0 })
    }

    /// A call failed. Returns true if that opened the breaker.
    fn failure(&self) -> bool {
        let mut state = self.state();
        let next = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            State::Closed { .. } | State::HalfOpen => State::Open {
                until: Instant::now() + self.open_for,
                by_health: false,
            },
            open @ State::Open { .. } => open,
        };
        self.set(&mut state, next)
    }

    /// A readiness check failed: open now. Returns true if it was not open.
    fn trip(&self) -> bool {
        let mut state = self.state();
        let open = State::Open {
            until: Instant::now() + self.open_for,
            by_health: true,
        };
        self.set(&mut state, open)
    }

    /// A readiness check passed. Returns true if that closed the breaker.
    fn healthy(&self) -> bool {
        let mut state = self.state();
        match *state {
            State::Open {
                by_health: true, ..
            } => self.set(&mut state, State::Closed { failures: 0 }),
            State::Open {
                by_health: false, ..
            } => {
                let trial_now = State::Open {
                    until: Instant::now(),
                    by_health: false,
                };
                self.set(&mut state, trial_now)
            }
            State::Closed { .. } | State::HalfOpen => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(b: &Breaker) -> bool {
        b.admit() != Admission::Refused
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_lets_one_trial_through() {
        let b = Breaker::new(3, Duration::from_millis(30));
        assert!(!b.failure() && !b.failure());
        assert!(!b.success(), "a success while closed changes nothing");
        assert!(!b.failure() && !b.failure(), "the count restarted");
        assert!(b.failure(), "the third failure in a row opens it");
        assert!(b.is_open() && !admits(&b));
        std::thread::sleep(Duration::from_millis(40));
        assert!(admits(&b), "one trial after open_for");
        assert!(!admits(&b), "only one");
        assert!(
            !b.failure(),
            "a failed trial re-opens (already open: no new alert)"
        );
        assert!(!admits(&b));
        std::thread::sleep(Duration::from_millis(40));
        assert!(admits(&b));
        assert!(b.success(), "a good trial closes it");
        assert!(!b.is_open() && admits(&b));
    }

    #[test]
    fn health_checks_and_calls_do_not_undo_each_other() {
        let b = Breaker::new(2, Duration::from_secs(60));
        // A readiness failure opens it; a readiness pass closes it.
        assert!(b.trip() && !b.trip());
        assert!(b.healthy() && !b.is_open());
        // Passing checks do not reset the failure count while closed.
        assert!(!b.failure());
        assert!(!b.healthy());
        assert!(b.failure(), "the second failure in a row still opens it");
        // Opened by calls: a passing check does not close it, it only
        // makes the next call the trial, without waiting a minute.
        assert!(!b.healthy());
        assert!(b.is_open());
        assert!(admits(&b), "the trial goes at once");
        assert!(!admits(&b));
        assert!(!b.failure(), "the trial failed: open again, for open_for");
        assert!(b.is_open() && !admits(&b));
        // A trial that could not be sent hands the turn to the next caller.
        assert!(!b.healthy());
        assert!(admits(&b));
        b.release_trial();
        assert!(admits(&b));
        assert!(b.success() && !b.is_open());
    }

    /// An upstream on loopback that answers every call with one good
    /// prediction after `delay` (HTTP/1.1, one request per connection).
    async fn slow_upstream(delay: Duration) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Headers, then the body its Content-Length announces.
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let body = r#"{"outputs":[{"name":"predict","shape":[1],"datatype":"INT64","data":[1]},{"name":"predict_proba","shape":[1,2],"datatype":"FP32","data":[0.25,0.75]}]}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn calls_cancelled_by_their_clients_leave_the_breaker_closed() {
        let addr = slow_upstream(Duration::from_millis(300)).await;
        let mut b = backend(CARD);
        b.infer_url = upstream_url(&format!("http://{addr}/v2/models/m/infer")).unwrap();
        b.permits = Semaphore::new(2000);
        b.breaker = Breaker::new(5, Duration::from_secs(60));
        // 1,000 callers that give up mid-call, as clients that disconnect do.
        let mut callers = tokio::task::JoinSet::new();
        let b = Arc::new(b);
        for _ in 0..1000 {
            let b = Arc::clone(&b);
            callers.spawn(async move {
                tokio::time::timeout(Duration::from_millis(50), b.infer(two(0.5, 0.5)))
                    .await
                    .is_err()
            });
        }
        let cancelled = callers.join_all().await;
        assert!(
            cancelled.iter().all(|c| *c),
            "every call was cancelled mid-call"
        );
        assert!(
            !b.breaker.is_open(),
            "cancelled calls are not upstream failures"
        );
        // The next request is served.
        let served = b.infer(two(0.5, 0.5)).await.unwrap();
        assert_eq!(served[0].data, TensorData::I64(vec![1]));
    }

    #[tokio::test]
    async fn a_trial_call_whose_caller_leaves_still_settles_the_breaker() {
        let addr = slow_upstream(Duration::from_millis(200)).await;
        let mut b = backend(CARD);
        b.infer_url = upstream_url(&format!("http://{addr}/v2/models/m/infer")).unwrap();
        b.breaker = Breaker::new(1, Duration::from_millis(10));
        assert!(b.breaker.failure(), "open");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let g = GatewayBackend { inner: Arc::new(b) };
        // The trial's caller gives up at once; the trial goes on.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), g.infer(two(0.5, 0.5))).await;
        assert!(gave_up.is_err());
        assert!(g.inner.breaker.is_open(), "the trial is still out");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !g.inner.breaker.is_open(),
            "the trial's success closed the breaker"
        );
    }

    /// One row of the test card's two features.
    fn two(a: f32, b: f32) -> Batch {
        Batch {
            rows: 1,
            inputs: vec![Tensor {
                name: "x".into(),
                shape: vec![1, 2],
                data: TensorData::F32(vec![a, b]),
            }],
        }
    }

    fn backend(card: &str) -> Inner {
        let card = ModelCard::parse(
            card,
            crate::card::CardDefaults {
                max_batch: 64,
                range_tolerance: 0.25,
            },
        )
        .unwrap();
        let settings = card.upstream.clone().unwrap();
        Inner {
            model: "m".into(),
            client: reqwest::Client::new(),
            infer_url: upstream_url("http://127.0.0.1:9/v2/models/m/infer").unwrap(),
            ready_url: upstream_url("http://127.0.0.1:9/v2/models/m/ready").unwrap(),
            card: card.clone(),
            permits: Semaphore::new(1),
            queue_timeout: Duration::from_secs(1),
            breaker: Breaker::new(1, Duration::from_secs(1)),
            authorization: None,
            grpc: None,
            settings,
        }
    }

    const CARD: &str = r#"
        [input]
        name = "x"
        features = [{ name = "a" }, { name = "b" }]
        [output]
        label = "predict"
        probabilities = "predict_proba"
        classes = ["no", "yes"]
        [upstream]
        url = "http://127.0.0.1:1/"
    "#;

    #[test]
    fn answers_are_checked_against_the_card() {
        let b = backend(CARD);
        let good = br#"{"model_name":"m","outputs":[
            {"name":"predict","shape":[2],"datatype":"INT64","data":[1,0]},
            {"name":"predict_proba","shape":[2,2],"datatype":"FP64","data":[[0.25,0.75],[0.9,0.1]]}]}"#;
        let p = b.check(2, good).unwrap();
        assert_eq!(p[0].data, TensorData::I64(vec![1, 0]));
        assert_eq!(p[1].data, TensorData::F32(vec![0.25, 0.75, 0.9, 0.1]));
        let names = br#"{"outputs":[{"name":"predict","shape":[1,1],"data":["yes"]},
            {"name":"predict_proba","shape":[1,2],"data":[0.5,0.5]}]}"#;
        assert_eq!(b.check(1, names).unwrap()[0].data, TensorData::I64(vec![1]));

        for (bad, why) in [
            (&br#"nonsense"#[..], "not an inference response"),
            (br#"{"outputs":[]}"#, "no output"),
            (br#"{"outputs":[{"name":"predict","data":[2]},{"name":"predict_proba","data":[0.5,0.5]}]}"#, "class index"),
            (br#"{"outputs":[{"name":"predict","data":[-1]},{"name":"predict_proba","data":[0.5,0.5]}]}"#, "class index"),
            (br#"{"outputs":[{"name":"predict","data":[0.5]},{"name":"predict_proba","data":[0.5,0.5]}]}"#, "class index"),
            (br#"{"outputs":[{"name":"predict","data":["maybe"]},{"name":"predict_proba","data":[0.5,0.5]}]}"#, "classes"),
            (br#"{"outputs":[{"name":"predict","data":[0,1]},{"name":"predict_proba","data":[0.5,0.5]}]}"#, "shape"),
            (br#"{"outputs":[{"name":"predict","shape":[3],"data":[0]},{"name":"predict_proba","data":[0.5,0.5]}]}"#, "shape"),
            (br#"{"outputs":[{"name":"predict","data":[0]},{"name":"predict_proba","data":[0.5,0.6]}]}"#, "sum"),
            (br#"{"outputs":[{"name":"predict","data":[0]},{"name":"predict_proba","data":[1.5,-0.5]}]}"#, "[0, 1]"),
            (br#"{"outputs":[{"name":"predict","data":[0]},{"name":"predict_proba","data":[0.5]}]}"#, "shape"),
            (br#"{"outputs":[{"name":"predict","data":[0]},{"name":"predict_proba","data":[[[[[0.5,0.5]]]]]}]}"#, "deep"),
            (br#"{"outputs":[{"name":"predict","data":0}]}"#, "not an array"),
        ] {
            let e = b.check(1, bad).unwrap_err();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }

    #[test]
    fn upstream_tables_are_checked() {
        let defaults = crate::card::CardDefaults {
            max_batch: 64,
            range_tolerance: 0.25,
        };
        let with = |table: &str| {
            ModelCard::parse(
                &CARD.replace("url = \"http://127.0.0.1:1/\"", table),
                defaults,
            )
            .map(|c| c.upstream.unwrap())
        };
        for ok in [
            "url = \"http://localhost:8080\"",
            "url = \"http://[::1]:8080\"",
            "url = \"http://127.0.0.2\"",
            "url = \"http://models.internal\"\nallow_plaintext = true",
        ] {
            with(ok).unwrap();
        }
        let u = with("url = \"https://triton:8000/base/\"\ntimeout = \"250ms\"").unwrap();
        assert_eq!(u.url, "https://triton:8000/base");
        assert_eq!(u.timeout, Duration::from_millis(250));
        assert_eq!((u.retries, u.breaker_failures), (2, 5));
        for (table, key) in [
            ("url = \"ftp://x\"", "upstream.url"),
            ("url = \"http://models.internal:8080\"", "upstream.url"),
            ("url = \"https://x:99999\"", "upstream.url"),
            ("url = \"http://user:pw@x\"", "upstream.url"),
            ("url = \"http://x?a=b\"", "upstream.url"),
            ("url = \"http://localhost\"\nca = \"ca.pem\"", "upstream.ca"),
            (
                "url = \"http://localhost\"\nbearer_token = { env = \"T\" }",
                "upstream.bearer_token",
            ),
            (
                "url = \"https://x\"\nbearer_token = \"inline\"",
                "TOML parse error",
            ),
            (
                "url = \"https://x\"\nclient_cert = \"c.pem\"",
                "upstream.client_cert",
            ),
            (
                "url = \"http://localhost\"\ntimeout = \"0s\"",
                "upstream.timeout",
            ),
            (
                "url = \"http://localhost\"\nretries = 11",
                "upstream.retries",
            ),
            (
                "url = \"http://localhost\"\nmodel = \"../etc\"",
                "upstream.model",
            ),
            (
                "url = \"http://localhost\"\nbreaker_failures = 0",
                "upstream.breaker_failures",
            ),
            (
                "url = \"http://localhost\"\nmax_in_flight = 0",
                "upstream.max_in_flight",
            ),
        ] {
            let e = with(table).unwrap_err().0;
            assert!(e.starts_with(key), "{table}: {e}");
        }
        let example = ModelCard::parse(
            include_str!("../../../examples/gateway/iris/model.toml"),
            defaults,
        )
        .unwrap();
        assert_eq!(example.upstream.unwrap().url, "http://127.0.0.1:8080");
        let pinned = CARD.to_owned() + "\n[integrity]\nrequire_signature = true\n";
        let e = ModelCard::parse(&pinned, defaults).unwrap_err().0;
        assert!(e.starts_with("integrity"), "{e}");
    }
}
