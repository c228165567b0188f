//! The benchmark floor: the least a Rust HTTP server can do for Warden's v1
//! predict route. It parses the same JSON body into numbers and returns a
//! constant prediction: no auth, no validation, no model, no logging. Serves
//! HTTPS with the given certificate (same TLS stack as Warden), or plain
//! HTTP without one.
//!
//! It also speaks just enough of the Open Inference Protocol v2 to stand as
//! a fast upstream for the gateway benchmark (bench/gateway.sh): `POST
//! /v2/models/{model}/infer` parses the body and answers a constant
//! one-row iris prediction; `GET /v2/models/{model}/ready` says ready.
//!
//! Usage: warden-bench-floor ADDR [CERT.pem KEY.pem]

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    reason = "a benchmark tool"
)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Request {
    instances: Vec<Vec<f64>>,
}

async fn predict(body: Bytes) -> Result<&'static str, axum::http::StatusCode> {
    let parsed: Request =
        serde_json::from_slice(&body).map_err(|_| axum::http::StatusCode::BAD_REQUEST)?;
    std::hint::black_box(parsed.instances);
    Ok(r#"{"predictions":[{"label":"setosa"}]}"#)
}

/// A constant OIP v2 answer for one iris row (label index and probabilities).
async fn v2_infer(body: Bytes) -> Result<Json, axum::http::StatusCode> {
    let parsed: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| axum::http::StatusCode::BAD_REQUEST)?;
    std::hint::black_box(parsed);
    Ok((
        JSON,
        r#"{"model_name":"iris","outputs":[{"name":"label","shape":[1],"datatype":"INT64","data":[0]},{"name":"probabilities","shape":[1,3],"datatype":"FP32","data":[1.0,0.0,0.0]}]}"#,
    ))
}

async fn v2_ready() -> Json {
    (JSON, r#"{"ready":true}"#)
}

type Json = ([(axum::http::HeaderName, &'static str); 1], &'static str);
const JSON: [(axum::http::HeaderName, &str); 1] =
    [(axum::http::header::CONTENT_TYPE, "application/json")];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(1)
        .map_or("127.0.0.1:8080", String::as_str)
        .parse()
        .unwrap();
    let app = Router::new()
        .route("/v1/models/{model}", post(predict))
        .route("/v2/models/{model}/infer", post(v2_infer))
        .route("/v2/models/{model}/ready", axum::routing::get(v2_ready));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let tls = args.get(2).zip(args.get(3)).map(|(cert, key)| {
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    eprintln!(
        "floor listening on {} ({})",
        listener.local_addr().unwrap(),
        if tls.is_some() { "https" } else { "http" }
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let service = TowerToHyperService::new(app);
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => builder.serve_connection(TokioIo::new(s), service).await,
                    Err(_) => return,
                },
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
        });
    }
}
