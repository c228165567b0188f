//! One Criterion benchmark per pipeline stage (docs/pipeline.md), each calling the
//! same step function the server runs, on the demo models with real ONNX
//! Runtime, so a regression in one stage shows up by name:
//!
//! ```text
//! cargo bench -p warden-server --bench stages            # all stages
//! cargo bench -p warden-server --bench stages -- infer   # one group
//! ```
//!
//! Stages: `auth` (a cached API key, the hot path; JWTs and cache misses
//! are measured end to end in docs/benchmarks.md),
//! `limit` (ban check + `default` policy, memory backend), `validate` (v1
//! and v2 bodies against the card), `infer` (one row through the batching
//! engine, alone and as 64 concurrent requests), `policy` (output policy + response serialization), `audit`
//! (building the record and handing it to the batched writer). Needs the
//! ONNX Runtime library: `./scripts/setup.sh`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request};
use axum::response::IntoResponse;
use criterion::{Criterion, criterion_group, criterion_main};
use warden_audit::{AuditKey, AuditLog, WriterSettings};
use warden_auth::{Authenticator, KeyAdmin, NewKey};
use warden_core::Roles;
use warden_models::card::CardDefaults;
use warden_models::engine::PoolSettings;
use warden_models::policy::OutputPolicy;
use warden_models::repository::LoadSettings;
use warden_models::runtime::Runtime;
use warden_models::{Protocol, Repository, protocol, request};
use warden_server::client_addr::{ClientAddr, PeerAddr};
use warden_server::state::{AppState, Identity, RequestLimits, Shared};
use warden_server::steps::{self, AccessLine, ModelNote, Plane, PrincipalNote};
use warden_store::SqliteStore;

const IRIS_V1: &[u8] = br#"{"instances": [[5.1, 3.5, 1.4, 0.2]]}"#;

/// The server's default audit writer (batched, 50 ms window) over `store`,
/// started on `runtime`.
fn batched_audit(runtime: &tokio::runtime::Runtime, store: Arc<SqliteStore>) -> Arc<AuditLog> {
    runtime.block_on(async {
        AuditLog::start(
            store,
            AuditKey::new(&[7; 32]),
            WriterSettings {
                replica: "bench".into(),
                sync: false,
                window: Duration::from_millis(50),
                queue: 10_000,
                checkpoint_every: Duration::from_secs(60),
                retention: Default::default(),
            },
        )
        .unwrap()
    })
}

fn state(runtime: &tokio::runtime::Runtime) -> (AppState, String) {
    let onnx = Runtime::init(None).expect("ONNX Runtime: run ./scripts/setup.sh");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let repository = Repository::load(
        &models,
        LoadSettings {
            runtime: onnx,
            pool: PoolSettings {
                sessions: 1,
                queue: 1024,
                queue_timeout: Duration::from_secs(2),
            },
            card: CardDefaults {
                max_batch: 64,
                range_tolerance: 0.25,
            },
            security: &warden_models::repository::UNSIGNED,
        },
    )
    .unwrap();
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let roles = Arc::new(Roles::builtin());
    let key = KeyAdmin::new(store.as_ref(), &roles)
        .create(&NewKey {
            name: "bench".into(),
            role: "predict".into(),
            models: None,
            expires_in: None,
        })
        .unwrap()
        .key
        .to_string();
    let audit_store = Arc::new(SqliteStore::in_memory().unwrap());
    let audit = batched_audit(runtime, audit_store);
    let mut config = warden_core::config::Config::default_with(&Default::default()).unwrap();
    // Never refuse during the measurement: the check itself is the cost.
    for rate in config.limits.rates.values_mut() {
        rate.quota = 1_000_000_000;
        rate.window = Duration::from_secs(1);
        rate.burst = 1_000_000_000;
    }
    let state = AppState(Arc::new(Shared {
        repository: Arc::new(repository),
        authenticator: Arc::new(Authenticator::new(store.clone(), roles.clone())),
        limits: RequestLimits {
            body_limit: 1024 * 1024,
            json_max_depth: 32,
            request_timeout: Duration::from_secs(5),
        },
        trusted_proxies: Vec::new(),
        tls: true,
        access_log: None,
        openapi: Default::default(),
        docs: false,
        identity: Arc::new(Identity {
            store,
            roles,
            key_rotation_grace: Duration::from_secs(60),
            oauth: None,
        }),
        limiter: Arc::new(warden_limits::Limiter::in_memory(
            config.limits,
            Arc::new(warden_limits::SystemClock),
        )),
        in_flight: tokio::sync::Semaphore::new(1024),
        admin_in_flight: tokio::sync::Semaphore::new(16),
        principal_in_flight: warden_server::fair::PrincipalSlots::new(1024),
        refusals: Arc::default(),
        refusal_lines: Arc::default(),
        audit: Some(audit),
        seal_key: None,
        max_in_flight: 1024,
        metrics: warden_server::metrics::install(),
        certificates: Vec::new(),
        throttled: Default::default(),
        timeline: Default::default(),
        rate_watch: None,
    }));
    (state, key)
}

fn digits_v2() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/digits/fixtures.json");
    let fixtures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let row = &fixtures["inputs"][0];
    serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]
    }))
    .unwrap()
}

fn stages(c: &mut Criterion) {
    // One thread drives the measured future and every task it spawns (the
    // model's drain task, the audit writer), as a connection's requests run
    // on one executor thread in the server; a multi-thread runtime would add
    // a cross-thread wake-up to every inference.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (state, key) = state(&rt);
    let client = ClientAddr(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_str(&key).unwrap());
    let principal = rt
        .block_on(steps::authenticate(
            &state,
            &headers,
            None,
            Plane::Data,
            Some(client),
        ))
        .unwrap();
    let iris = state.repository.get("iris").unwrap();
    let digits = state.repository.get("digits").unwrap();

    let mut g = c.benchmark_group("auth");
    g.bench_function("api_key_cached", |b| {
        b.to_async(&rt).iter(|| async {
            steps::authenticate(&state, black_box(&headers), None, Plane::Data, Some(client))
                .await
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("limit");
    g.bench_function("ban_check_and_default_policy", |b| {
        b.to_async(&rt).iter(|| async {
            steps::ban_check(&state, Plane::Data, Some(client))
                .await
                .unwrap();
            steps::rate_limit(&state, black_box(&principal))
                .await
                .unwrap()
        })
    });
    g.finish();

    let digits_body = digits_v2();
    let mut g = c.benchmark_group("validate");
    g.bench_function("v1_iris_1_row", |b| {
        b.iter(|| request::parse(Protocol::V1, &iris.card, black_box(IRIS_V1), 32).unwrap())
    });
    g.bench_function("v2_digits_1_row", |b| {
        b.iter(|| request::parse(Protocol::V2, &digits.card, black_box(&digits_body), 32).unwrap())
    });
    g.finish();

    let iris_values = request::parse(Protocol::V1, &iris.card, IRIS_V1, 32)
        .unwrap()
        .batch;
    let digits_values = request::parse(Protocol::V2, &digits.card, &digits_body, 32)
        .unwrap()
        .batch;
    let mut g = c.benchmark_group("infer");
    for (name, model, values) in [
        ("iris_1_row", &iris, &iris_values),
        ("digits_1_row", &digits, &digits_values),
    ] {
        let version = model.version(None).unwrap().clone();
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                version
                    .backend
                    .infer(black_box(values.clone()))
                    .await
                    .unwrap()
            })
        });
    }
    // 64 one-row requests at once, as 64 connections would send them: the
    // batching engine runs them as one call (`dynamic_batching`), so this is
    // the cost of a batch, not of 64 calls.
    let version = iris.version(None).unwrap().clone();
    g.bench_function("iris_64_concurrent_requests", |b| {
        b.to_async(&rt).iter(|| {
            futures_util::future::join_all(
                (0..64).map(|_| version.backend.infer(black_box(iris_values.clone()))),
            )
        })
    });
    g.finish();

    let prediction = rt
        .block_on(
            iris.version(None)
                .unwrap()
                .backend
                .infer(iris_values.clone()),
        )
        .unwrap();
    let mut g = c.benchmark_group("policy");
    g.bench_function("iris_v1_response", |b| {
        b.iter(|| {
            let policy = OutputPolicy::for_caller(&iris.card, black_box(&principal));
            let outputs = policy.default_outputs(&iris.card);
            let shown = policy.apply(&iris.card, &prediction, 1, &outputs).unwrap();
            protocol::v1_response(&iris.card, &shown)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("audit");
    let digest = steps::input_digest(&iris_values.inputs);
    g.bench_function("record_and_enqueue", |b| {
        b.to_async(&rt).iter(|| async {
            let mut req = Request::post("/v1/models/iris:predict")
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(PeerAddr(SocketAddr::from(([127, 0, 0, 1], 40000))));
            let id = steps::assign_request_id(&mut req);
            let line = AccessLine::start(&req, id, client, Instant::now());
            let mut response = b"{}".into_response();
            response.extensions_mut().insert(ModelNote {
                model: "iris".into(),
                version: 1,
                rows: 1,
                input_sha256: Some(digest),
                inputs: None,
                defense_flags: Vec::new(),
            });
            response
                .extensions_mut()
                .insert(PrincipalNote(principal.id.clone()));
            steps::audit(&state, &line, response).await
        })
    });
    // The whole cost of one record once committed to a file-backed SQLite
    // store (WAL, batched): handing it over, the HMAC chain, the insert and
    // the commit. On this one thread nothing overlaps, so the time per
    // iteration is the CPU a record costs, writer included.
    let dir = tempfile::tempdir().unwrap();
    let file_store = Arc::new(SqliteStore::open(&dir.path().join("audit.db")).unwrap());
    let log = batched_audit(&rt, file_store);
    // A record as the server writes it for a one-row iris prediction.
    let record = format!(
        r#"{{"time_us":1796000000000000,"request_id":"0193a1b2c3d4e5f60718293a4b5c6d7e","plane":"data","protocol":"http","principal":"key:abcdefabcdef","client":"127.0.0.1","method":"POST","route":"/v1/models/iris:predict","status":200,"outcome":"ok","model":"iris","version":1,"rows":1,"input_sha256":"{}","defense_flags":[],"latency_us":812}}"#,
        "ab".repeat(32)
    );
    g.bench_function("committed_per_record_sqlite_file", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (log, record) = (Arc::clone(&log), record.clone());
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    log.record(record.clone()).await.unwrap();
                }
                log.flush().await.unwrap();
                started.elapsed()
            }
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = stages
}
criterion_main!(benches);
