//! The gRPC load generator of bench/grpc.sh: `ModelInfer` calls over TLS
//! with an API key in metadata, CONCURRENCY calls in flight spread over
//! CONNECTIONS HTTP/2 connections, for SECONDS, on one thread.
//!
//!     grpc_load HOST:PORT CA_FILE KEY REQUEST_JSON SECONDS CONCURRENCY CONNECTIONS
//!
//! REQUEST_JSON is an Open Inference Protocol JSON request
//! (`{"model_name", "inputs": [{"name", "shape", "datatype", "data"}]}`),
//! sent as raw contents. Prints one JSON line: requests/s, errors, and
//! latency p50/p99 in ms.

#![allow(clippy::print_stdout, clippy::unwrap_used, reason = "a benchmark tool")]

use std::time::{Duration, Instant};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use warden_oip::{GrpcInferenceServiceClient, pb};
use warden_tensor::{DataType, Tensor, TensorData};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (host, ca, key, request) = (&args[1], &args[2], &args[3], &args[4]);
    let seconds: f64 = args[5].parse().unwrap();
    let concurrency: usize = args[6].parse().unwrap();
    let connections: usize = args[7].parse().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(request).unwrap()).unwrap();
    let mut message = pb::ModelInferRequest {
        model_name: body["model_name"].as_str().unwrap().to_owned(),
        ..Default::default()
    };
    for t in body["inputs"].as_array().unwrap() {
        let datatype = DataType::parse(t["datatype"].as_str().unwrap()).unwrap();
        let values: Vec<f64> = t["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let tensor = Tensor {
            name: t["name"].as_str().unwrap().to_owned(),
            shape: t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect(),
            data: TensorData::from_f64(datatype, &values).unwrap(),
        };
        let (input, raw) = warden_oip::raw_input(&tensor);
        message.inputs.push(input);
        message.raw_input_contents.push(raw);
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    let mut clients = Vec::new();
    for _ in 0..connections {
        let channel = Endpoint::from_shared(format!("https://{host}"))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(GrpcInferenceServiceClient::new(channel));
    }
    let key: tonic::metadata::MetadataValue<_> = key.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        let mut client = clients[i % connections].clone();
        let message = message.clone();
        let key = key.clone();
        tasks.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let mut request = tonic::Request::new(message.clone());
                request.metadata_mut().insert("x-api-key", key.clone());
                let start = Instant::now();
                match client.model_infer(request).await {
                    Ok(_) => latencies.push(start.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (l, e) = r.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{}",
        serde_json::json!({
            "requests_per_s": all.len() as f64 / seconds,
            "errors": errors,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    );
}
