//! The reference for bench/tensors.sh: raw ONNX Runtime on a demo graph,
//! with nothing of Warden around it — one session, one intra-op thread (as
//! Warden's sessions), calls of a fixed batch size in a loop.
//!
//!     raw_ort MODEL_DIR SECONDS [SEQUENCE]
//!
//! Tries batch sizes 1, 8, 32 and 64 for SECONDS / 4 each, built from the
//! first row of the model's fixtures (a text input cut or padded to
//! SEQUENCE tokens, default 16), and prints one JSON line per batch size
//! and a last one with the best: {"model", "batch", "rows_per_s",
//! "cpu_us_per_row"}.

#![allow(clippy::print_stdout, clippy::unwrap_used, reason = "a benchmark tool")]

use std::path::Path;
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(&args[1]);
    let seconds: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8.0);
    let sequence: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
    let lib = std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from);
    let runtime = warden_models::runtime::Runtime::init(lib.as_deref()).unwrap();
    let onnx = std::fs::read(dir.join("1/model.onnx")).unwrap();
    let mut session = Session::builder(runtime.environment())
        .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
        .and_then(|b| Ok(b.with_intra_threads(1)?))
        .and_then(|b| Ok(b.with_inter_threads(1)?))
        .and_then(|mut b| b.commit_from_memory(&onnx))
        .unwrap();
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("fixtures.json")).unwrap()).unwrap();
    let case = &fixture["cases"][0]["inputs"];
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut best = (0usize, 0.0f64, 0.0f64);
    for batch in [1usize, 8, 32, 64] {
        // One row of each input, repeated `batch` times.
        let mut inputs = Vec::new();
        for t in case.as_array().unwrap() {
            let shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let rows = shape[0];
            let data = t["data"].as_array().unwrap();
            let per_row = data.len() / rows;
            let mut row: Vec<f64> = data[..per_row]
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let mut row_shape = shape[1..].to_vec();
            if t["datatype"] == "INT64" && row_shape.len() == 1 && row_shape[0] > 1 {
                // A token sequence: cut or pad to SEQUENCE.
                row.resize(
                    sequence,
                    if t["name"] == "attention_mask" {
                        1.0
                    } else {
                        2.0
                    },
                );
                row_shape = vec![sequence];
            }
            let mut full_shape = vec![batch];
            full_shape.extend(&row_shape);
            let value = match t["datatype"].as_str().unwrap() {
                "INT64" => {
                    let v: Vec<i64> = (0..batch)
                        .flat_map(|_| row.iter().map(|&x| x as i64))
                        .collect();
                    Tensor::from_array((full_shape, v)).unwrap().into_dyn()
                }
                _ => {
                    let v: Vec<f32> = (0..batch)
                        .flat_map(|_| row.iter().map(|&x| x as f32))
                        .collect();
                    Tensor::from_array((full_shape, v)).unwrap().into_dyn()
                }
            };
            inputs.push((t["name"].as_str().unwrap().to_owned(), value));
        }
        let budget = Duration::from_secs_f64(seconds / 4.0);
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let mut rows = 0usize;
        while start.elapsed() < budget {
            let refs: Vec<(&str, &ort::value::DynValue)> =
                inputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
            let out = session.run(refs).unwrap();
            drop(out);
            rows += batch;
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu_used = cpu_seconds() - cpu;
        let rate = rows as f64 / wall;
        let cpu_per_row = cpu_used * 1e6 / rows as f64;
        println!(
            "{}",
            serde_json::json!({"model": name, "batch": batch, "rows_per_s": rate.round(), "cpu_us_per_row": (cpu_per_row * 10.0).round() / 10.0})
        );
        if rate > best.1 {
            best = (batch, rate, cpu_per_row);
        }
    }
    println!(
        "{}",
        serde_json::json!({"model": name, "best": true, "batch": best.0, "rows_per_s": best.1.round(), "cpu_us_per_row": (best.2 * 10.0).round() / 10.0})
    );
}
