//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`,
//! docs/grpc.md), served through the same pipeline as REST.
//!
//! The gRPC listener runs the same edge and admission stages as the data
//! plane (`pipeline::grpc_plane`): a gRPC call is an HTTP/2 request, so the
//! request id, in-flight cap, deadline, ban check, authentication (from the
//! `x-api-key` / `authorization` metadata, or the client certificate), fair
//! share, rate limit, audit record, metrics and access log are the REST
//! ones. What is gRPC's own is here:
//!
//! - the service: its six calls, each taking the principal admission put in
//!   the request, the model calls going through [`service::infer`];
//! - the conversion of its tensors (raw or typed contents) to the wire
//!   tensors every transport hands the validator;
//! - errors: every refusal is rendered once, from Warden's stable code, as
//!   a trailers-only gRPC answer ([`error_response`]), with the code and
//!   request id in its metadata.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use tonic::{Request, Status};
use warden_core::{ApiError, ErrorCode, GrpcCode, Principal};
use warden_models::policy::{OutputPolicy, ShownData, ShownTensor};
use warden_oip::pb;
use warden_tensor::{DataType, TensorData};

use crate::pipeline::{Access, authorize};
use crate::service::{self, Answer, InferRequest};
use crate::state::AppState;
use crate::steps::ModelNote;

/// Which protocol a listener speaks: REST (HTTP/1.1 or HTTP/2) or gRPC.
/// The gRPC listener's requests carry it, so that the shared steps answer
/// in gRPC's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// REST: the Open Inference Protocol and KServe v1 over HTTP.
    #[default]
    Http,
    /// The Open Inference Protocol over gRPC.
    Grpc,
}

impl Transport {
    /// The metrics label and audit name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// The default `grpc.max_message_bytes`: room for the largest request any
/// model accepts — each input's element cap at its widest encoding (a
/// varint of 10 bytes, or a BYTES element's length cap and its prefix) —
/// and 64 KiB of framing, at least 4 MiB (gRPC's usual default).
pub fn max_message_bytes(repository: &warden_models::Repository) -> usize {
    let largest = repository
        .models()
        .iter()
        .map(|m| {
            m.card
                .inputs
                .iter()
                .map(|i| {
                    let per = match i.datatype {
                        DataType::Bytes => i.max_length.saturating_add(6),
                        _ => 10,
                    };
                    i.max_elements.saturating_mul(per)
                })
                .fold(0usize, usize::saturating_add)
        })
        .max()
        .unwrap_or(0);
    largest.saturating_add(64 << 10).clamp(4 << 20, 1 << 30)
}

/// `router` with the reflection services added (v1, and v1alpha, which
/// grpcurl still asks for first).
pub fn with_reflection<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
) -> axum::Router<S> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(warden_oip::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let router = match builder().build_v1() {
        Ok(v1) => router.route_service(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            v1,
        ),
        Err(e) => {
            tracing::error!(error = %e, "gRPC reflection (v1) not served");
            router
        }
    };
    match builder().build_v1alpha() {
        Ok(v1alpha) => router.route_service(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            v1alpha,
        ),
        Err(e) => {
            tracing::error!(error = %e, "gRPC reflection (v1alpha) not served");
            router
        }
    }
}

/// The answer to a path that is no service or method of this listener:
/// UNIMPLEMENTED (through the error table's `method_not_allowed`).
pub async fn unknown_call() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed).with_message("No such service or method.")
}

/// What a gRPC call noted for the edge. A tonic handler cannot put
/// extensions on its answer (an error answer is built from a `Status`), so
/// the edge hands each call this slot in the request and reads it back.
#[derive(Debug, Clone, Default)]
pub struct CallNote(Arc<Mutex<Noted>>);

#[derive(Debug, Default)]
struct Noted {
    model: Option<ModelNote>,
    error: Option<ApiError>,
}

impl CallNote {
    fn set_model(&self, note: Option<ModelNote>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).model = note;
    }

    /// Records `error` and returns a placeholder status: the edge renders
    /// the error itself ([`CallNote::finish`]).
    fn fail(&self, error: ApiError) -> Status {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).error = Some(error);
        Status::unknown("")
    }

    /// Moves what the call noted onto its answer, where the audit record,
    /// metrics and access log read it; a Warden error replaces tonic's
    /// answer and is rendered by the edge like every other. Refusals of
    /// tonic's own (a message over the cap, a malformed protobuf) are
    /// given Warden's codes.
    pub fn finish(&self, mut response: Response) -> Response {
        let noted = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        let model = noted.model;
        let mut response = match noted.error {
            Some(error) => axum::response::IntoResponse::into_response(error),
            None => match tonic_refusal(&response) {
                Some(error) => axum::response::IntoResponse::into_response(error),
                None => {
                    response.extensions_mut().remove::<Status>();
                    response
                }
            },
        };
        if let Some(model) = model {
            response.extensions_mut().insert(model);
        }
        response
    }
}

/// A refusal tonic answered by itself (before Warden's handler ran), as
/// Warden's error: a message over `max_message_bytes` (tonic says
/// OUT_OF_RANGE; gRPC's own implementations say RESOURCE_EXHAUSTED, as
/// Warden does), or a body that is not the call's protobuf message.
fn tonic_refusal(response: &Response) -> Option<ApiError> {
    let status = response.extensions().get::<Status>()?;
    Some(match status.code() {
        tonic::Code::OutOfRange if status.message().contains("too large") => ApiError::new(
            ErrorCode::PayloadTooLarge,
        )
        .with_message("The message is larger than this server accepts (grpc.max_message_bytes)."),
        tonic::Code::Internal | tonic::Code::InvalidArgument => {
            ApiError::invalid_request("The message is not a valid protobuf message of this call.")
        }
        // gRPC's UNIMPLEMENTED, through the table's method_not_allowed.
        tonic::Code::Unimplemented => {
            ApiError::new(ErrorCode::MethodNotAllowed).with_message("No such method.")
        }
        _ => {
            tracing::warn!(code = ?status.code(), message = status.message(), "gRPC call refused by tonic");
            ApiError::internal()
        }
    })
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static WARDEN_CODE: HeaderName = HeaderName::from_static("warden-code");
static WARDEN_ERROR: HeaderName = HeaderName::from_static("warden-error-bin");

/// A Warden error as a trailers-only gRPC answer: `grpc-status` from the
/// error table (docs/api.md, "Errors"; DEADLINE_EXCEEDED when the call's
/// deadline passed), `grpc-message` the error's sentence and field
/// problems, `warden-code` the stable code, `warden-error-bin` the REST
/// error envelope (JSON, with the request id), and the headers the error
/// carries (`retry-after`, the RateLimit fields) as metadata.
pub fn error_response(
    mut response: Response,
    error: &ApiError,
    request_id: &str,
    deadline: bool,
) -> Response {
    let code = if deadline {
        GrpcCode::DeadlineExceeded
    } else {
        error.code.grpc()
    };
    *response.status_mut() = StatusCode::OK;
    *response.body_mut() = Body::empty();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::WWW_AUTHENTICATE);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(code.number())),
    );
    let mut message = error.message.to_string();
    for d in &error.details {
        message.push_str(&format!(" {}: {};", d.field, d.problem));
    }
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message.trim_end_matches(';'))) {
        headers.insert(GRPC_MESSAGE.clone(), v);
    }
    headers.insert(
        WARDEN_CODE.clone(),
        HeaderValue::from_static(error.code.as_str()),
    );
    let envelope =
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(error.to_body(request_id));
    if let Ok(v) = HeaderValue::from_str(&envelope) {
        headers.insert(WARDEN_ERROR.clone(), v);
    }
    response
}

/// `grpc-message` encoding: printable ASCII but `%` as is, every other byte
/// as `%XX` (gRPC over HTTP/2, "Responses").
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The deadline of a call: its `grpc-timeout` (gRPC over HTTP/2: up to 8
/// digits and a unit, H M S m u n), if it sent one.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC inference service.
#[derive(Debug, Clone)]
pub struct Inference {
    state: AppState,
}

impl Inference {
    /// The service over `state`.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// The principal admission authenticated, and the call's note slot.
fn call<T>(request: &Request<T>) -> Result<(Principal, CallNote), Status> {
    let note = request.extensions().get::<CallNote>().cloned();
    match (request.extensions().get::<Principal>(), note) {
        (Some(p), Some(note)) => Ok((p.clone(), note)),
        // Admission runs before every model call: a bug if not.
        _ => {
            tracing::error!("gRPC call without a principal or note");
            Err(Status::internal(""))
        }
    }
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn model_note(model: &warden_models::Model, version: u64) -> ModelNote {
    ModelNote {
        model: model.name.as_str().into(),
        version,
        rows: 0,
        input_sha256: None,
        inputs: None,
        defense_flags: Vec::new(),
    }
}

#[tonic::async_trait]
impl warden_oip::GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<tonic::Response<pb::ServerLiveResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<tonic::Response<pb::ServerReadyResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerReadyResponse {
            ready: true,
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<tonic::Response<pb::ModelReadyResponse>, Status> {
        let (caller, note) = call(&request)?;
        let r = request.get_ref();
        match authorize(
            &self.state,
            &caller,
            &r.name,
            version(&r.version),
            Access::Read,
        ) {
            Ok((model, v)) => {
                note.set_model(Some(model_note(&model, v.version)));
                Ok(tonic::Response::new(pb::ModelReadyResponse { ready: true }))
            }
            Err(e) => Err(note.fail(e)),
        }
    }

    async fn server_metadata(
        &self,
        request: Request<pb::ServerMetadataRequest>,
    ) -> Result<tonic::Response<pb::ServerMetadataResponse>, Status> {
        call(&request)?;
        Ok(tonic::Response::new(pb::ServerMetadataResponse {
            name: "warden".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<tonic::Response<pb::ModelMetadataResponse>, Status> {
        let (caller, note) = call(&request)?;
        let r = request.get_ref();
        let (model, v) = match authorize(
            &self.state,
            &caller,
            &r.name,
            version(&r.version),
            Access::Read,
        ) {
            Ok(found) => found,
            Err(e) => return Err(note.fail(e)),
        };
        note.set_model(Some(model_note(&model, v.version)));
        let card = &model.card;
        let policy = OutputPolicy::for_caller(card, &caller);
        let meta = |name: &str, datatype: DataType, shape: &[i64]| {
            pb::model_metadata_response::TensorMetadata {
                name: name.to_owned(),
                datatype: datatype.as_str().to_owned(),
                shape: shape.to_vec(),
            }
        };
        Ok(tonic::Response::new(pb::ModelMetadataResponse {
            name: model.name.to_string(),
            versions: model.versions.keys().map(u64::to_string).collect(),
            platform: warden_models::protocol::platform(&model).to_owned(),
            inputs: card
                .inputs
                .iter()
                .map(|i| meta(&i.name, i.datatype, &i.shape))
                .collect(),
            outputs: warden_models::protocol::visible_outputs(card, &policy)
                .into_iter()
                .map(|(name, datatype, shape)| meta(name, datatype, shape))
                .collect(),
            ..Default::default()
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<tonic::Response<pb::ModelInferResponse>, Status> {
        let (caller, note) = call(&request)?;
        let default = request
            .extensions()
            .get::<crate::steps::DeferredDefault>()
            .cloned();
        let r = request.get_ref();
        let infer = InferRequest {
            model: &r.model_name,
            version: version(&r.model_version),
            payload: warden_models::request::grpc::payload(r),
            default: default.as_ref(),
        };
        let mut model = None;
        let served = service::infer(&self.state, &caller, infer, &mut model, render).await;
        note.set_model(model);
        match served {
            Ok(served) => {
                let mut headers = HeaderMap::new();
                served.charge.add_headers(&mut headers);
                let mut response = tonic::Response::new(served.body);
                *response.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
                Ok(response)
            }
            Err(e) => Err(note.fail(e)),
        }
    }
}

/// The answer: every output shown, as raw contents (little-endian, BYTES
/// length-prefixed), in its datatype.
fn render(answer: Answer<'_>) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(answer.shown.tensors.len());
    let mut raw = Vec::with_capacity(answer.shown.tensors.len());
    for t in &answer.shown.tensors {
        let data = shown_data(t);
        let mut bytes = Vec::new();
        data.write_le_bytes(&mut bytes);
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: t.name.to_owned(),
            datatype: t.datatype.as_str().to_owned(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        });
        raw.push(bytes.into());
    }
    pb::ModelInferResponse {
        model_name: answer.model.name.to_string(),
        model_version: answer.version.to_string(),
        id: answer.id.unwrap_or_default().to_owned(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

/// An output as shown, as tensor data of its datatype.
fn shown_data(t: &ShownTensor<'_>) -> TensorData {
    match &t.data {
        ShownData::Labels(labels) => {
            TensorData::Bytes(labels.iter().map(|l| l.as_bytes().to_vec()).collect())
        }
        ShownData::Floats(v) => {
            TensorData::from_f64(t.datatype, v).unwrap_or_else(|| TensorData::F64(v.clone()))
        }
        ShownData::Raw(d) => d.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_says() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(t("1u"), Some(Duration::from_micros(1)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b%c"), "a b%25c");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn every_error_code_has_its_grpc_status() {
        for code in ErrorCode::ALL {
            let r = error_response(
                Response::new(Body::empty()),
                &ApiError::new(*code).with_retry_after(3),
                "id1",
                false,
            );
            let h = r.headers();
            assert_eq!(h["grpc-status"], code.grpc().number().to_string());
            assert_eq!(h["warden-code"], code.as_str());
            assert_eq!(h["content-type"], "application/grpc");
            assert!(h.contains_key("warden-error-bin"));
        }
        assert_eq!(ErrorCode::RateLimited.grpc(), GrpcCode::ResourceExhausted);
        assert_eq!(ErrorCode::Unauthenticated.grpc(), GrpcCode::Unauthenticated);
        assert_eq!(ErrorCode::Internal.grpc(), GrpcCode::Internal);
    }
}
