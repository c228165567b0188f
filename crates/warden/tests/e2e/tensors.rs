//! Any ONNX model: the tensor demo models through the real server (v2 JSON,
//! v2 binary, v1 rows and columns), every datatype path through a test
//! graph with BYTES, FP16 and BOOL tensors, bad tensor input from outside,
//! and `warden model init` producing cards that serve the demo graphs.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{BIN, Warden, copy_dir, repo};

/// Sends a v2 body in the binary tensor data extension: each input's data
/// as little-endian bytes after the JSON header.
async fn post_binary(
    w: &Warden,
    path: &str,
    key: &str,
    inputs: &[(Value, Vec<u8>)],
) -> (StatusCode, Value) {
    let header: Vec<Value> = inputs
        .iter()
        .map(|(t, bytes)| {
            let mut t = t.clone();
            t["parameters"] = json!({"binary_data_size": bytes.len()});
            t
        })
        .collect();
    let json = json!({ "inputs": header }).to_string();
    let mut body = json.clone().into_bytes();
    for (_, bytes) in inputs {
        body.extend(bytes);
    }
    let r = w
        .client
        .post(w.url(path))
        .header("x-api-key", key)
        .header("inference-header-content-length", json.len().to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn fixture(model: &str) -> Value {
    let path = repo().join("models").join(model).join("fixtures.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The little-endian bytes of a fixture input's data.
fn le_bytes(input: &Value) -> Vec<u8> {
    let data = input["data"].as_array().unwrap();
    match input["datatype"].as_str().unwrap() {
        "INT64" => data
            .iter()
            .flat_map(|v| v.as_i64().unwrap().to_le_bytes())
            .collect(),
        "FP32" => data
            .iter()
            .flat_map(|v| (v.as_f64().unwrap() as f32).to_le_bytes())
            .collect(),
        other => panic!("fixture datatype {other}"),
    }
}

fn output<'v>(answer: &'v Value, name: &str) -> &'v Value {
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {answer}"))
}

/// Every fixture case of the tensor demo models, over v2 JSON and v2
/// binary, answers what onnxruntime answered, as the card's policy shows
/// it: labels as class names, probabilities and values rounded to 2
/// decimals (the recommender's clamped to [1, 5]), integers as integers.
#[tokio::test]
async fn tensor_demo_models_answer_like_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let w = Warden::start(&dir.path().join("data"), &[]);
    let key = w.printed_key.clone().unwrap();
    for model in ["diabetes", "recommender", "digits-cnn", "sentiment"] {
        let cases = fixture(model)["cases"].as_array().unwrap().clone();
        let (_, meta) = w.get(&format!("/v2/models/{model}"), Some(&key)).await;
        let classes: Vec<String> = meta["parameters"]["classes"]
            .as_array()
            .map(|c| c.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        for case in cases {
            let inputs = case["inputs"].as_array().unwrap();
            let path = format!("/v2/models/{model}/infer");
            let (status, _, json_answer) = w
                .post(&path, &key, json!({ "inputs": inputs }).to_string())
                .await;
            assert_eq!(status, StatusCode::OK, "{model}: {json_answer}");
            let framed: Vec<(Value, Vec<u8>)> = inputs
                .iter()
                .map(|i| {
                    (
                        json!({"name": i["name"], "shape": i["shape"], "datatype": i["datatype"]}),
                        le_bytes(i),
                    )
                })
                .collect();
            let (status, binary_answer) = post_binary(&w, &path, &key, &framed).await;
            assert_eq!(status, StatusCode::OK, "{model}: {binary_answer}");
            assert_eq!(json_answer["outputs"], binary_answer["outputs"], "{model}");
            for expected in case["outputs"].as_array().unwrap() {
                let name = expected["name"].as_str().unwrap();
                let want = expected["data"].as_array().unwrap();
                match (model, name) {
                    ("digits-cnn" | "sentiment", "label") => {
                        let got = output(&json_answer, "label");
                        assert_eq!(got["datatype"], "BYTES");
                        let names: Vec<&str> = want
                            .iter()
                            .map(|i| classes[i.as_u64().unwrap() as usize].as_str())
                            .collect();
                        assert_eq!(got["data"], json!(names), "{model}");
                    }
                    ("digits-cnn" | "sentiment", "probabilities")
                    | ("diabetes", "value")
                    | ("recommender", "score") => {
                        let got = output(&json_answer, name);
                        assert_eq!(got["shape"], expected["shape"], "{model} {name}");
                        for (g, w) in got["data"].as_array().unwrap().iter().zip(want) {
                            let mut w = w.as_f64().unwrap();
                            if model == "recommender" {
                                w = w.clamp(1.0, 5.0);
                            }
                            let g = g.as_f64().unwrap();
                            assert!((g - w).abs() <= 0.005 + 1e-9, "{model} {name}: {g} vs {w}");
                        }
                    }
                    // Logits are not shown to a predict-only caller; the admin key
                    // here sees what the card's default policy shows.
                    _ => {}
                }
            }
        }
    }
    // v1 rows and columns of the multi-input models.
    let (status, _, rows) = w
        .post(
            "/v1/models/recommender:predict",
            &key,
            json!({"instances": [{"user_id": 3, "item_id": 7}, {"user_id": 4, "item_id": 199}]})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    let (status, _, columns) = w
        .post(
            "/v1/models/recommender:predict",
            &key,
            json!({"inputs": {"user_id": [3, 4], "item_id": [7, 199]}}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{columns}");
    assert_eq!(rows, columns);
    assert_eq!(rows["predictions"].as_array().unwrap().len(), 2);
    let (status, _, text) = w
        .post(
            "/v1/models/sentiment:predict",
            &key,
            json!({"instances": [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]}]})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text["predictions"][0]["label"].is_string(), "{text}");
}

/// Bad tensor input from outside: each is a 4xx with the envelope and
/// `details` naming the input, and the next request is served.
#[tokio::test]
async fn bad_tensor_input_is_refused_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let w = Warden::start(&dir.path().join("data"), &[]);
    let key = w.printed_key.clone().unwrap();
    let text = |ids: Value, mask: Value, shape: Value| {
        json!({"inputs": [
            {"name": "input_ids", "shape": shape, "datatype": "INT64", "data": ids},
            {"name": "attention_mask", "shape": shape, "datatype": "INT64", "data": mask}]})
    };
    let ok_text = text(json!([5, 6, 7]), json!([1, 1, 1]), json!([1, 3]));
    let image = |shape: Value, n: usize| json!({"inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "data": vec![1.0; n]}]});
    let pair = |user: Value, item: Value| {
        json!({"inputs": [
            {"name": "user_id", "shape": [1], "datatype": "INT64", "data": [user]},
            {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [item]}]})
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("sentiment", {
            let mut v = text(json!([5.0, 6.5, 7.0]), json!([1, 1, 1]), json!([1, 3]));
            v["inputs"][0]["datatype"] = json!("FP32");
            v.to_string()
        }, 422, "inputs[0].datatype"),
        ("sentiment", text(json!([5, 6]), json!([1, 1]), json!([1, 3])).to_string(), 422, "inputs[0].data"),
        ("digits-cnn", image(json!([1, 1, 8, 9]), 72).to_string(), 422, "inputs[0].shape"),
        ("sentiment", json!({"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [5, 6, 7]}]}).to_string(), 422, "inputs"),
        ("sentiment", {
            let mut v = ok_text.clone();
            v["inputs"].as_array_mut().unwrap().push(json!({"name": "extra", "shape": [1], "datatype": "INT64", "data": [1]}));
            v.to_string()
        }, 422, "inputs[2].name"),
        ("digits-cnn", json!({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": vec![json!("x"); 64]}]}).to_string(), 422, "inputs[0].data[0]"),
        ("digits-cnn", image(json!([1, 1, 8, 8]), 64).to_string().replacen("1.0", "NaN", 1), 422, "inputs"),
        ("digits-cnn", image(json!([1, 1, 8, 8]), 64).to_string().replacen("1.0", "1e400", 1), 422, "inputs"),
        ("digits-cnn", image(json!([1, 1, 8, 8]), 64).to_string().replacen("1.0", "17.0", 1), 422, "inputs[0].data[0]"),
        ("sentiment", text(json!([5, 6, 7]), json!([1, 1, 3.5]), json!([1, 3])).to_string(), 422, "inputs[1].data"),
        ("recommender", pair(json!(-1), json!(7)).to_string(), 422, "inputs[0].data[0]"),
        ("recommender", pair(json!(3), json!(200)).to_string(), 422, "inputs[1].data[0]"),
        ("sentiment", text(json!(vec![5; 129]), json!(vec![1; 129]), json!([1, 129])).to_string(), 422, "inputs[0].shape"),
        // Ids and mask of different lengths: the graph ties the two
        // `sequence` dimensions, so this would fail inside ONNX Runtime.
        ("sentiment", json!({"inputs": [
            {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [5, 6, 7]},
            {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]}]}).to_string(), 422, "inputs"),
        // Past the element cap: refused while the body is read.
        ("digits-cnn", image(json!([65, 1, 8, 8]), 65 * 64).to_string(), 422, "inputs[0]"),
    ];
    for (model, body, status, field) in cases {
        let (got, _, e) = w
            .post(&format!("/v2/models/{model}/infer"), &key, body.clone())
            .await;
        assert_eq!(got.as_u16(), status, "{model} {field}: {e}");
        assert!(e["code"].is_string() && e["request_id"].is_string(), "{e}");
        let named = e["details"].as_array().is_some_and(|d| {
            d.iter()
                .any(|p| p["field"].as_str().unwrap_or_default().starts_with(field))
        });
        assert!(named, "{model}: {field} not named in {e}");
        // The next request is served normally.
        let (ok, _, _) = w
            .post("/v2/models/sentiment/infer", &key, ok_text.to_string())
            .await;
        assert_eq!(ok, StatusCode::OK);
    }
    // A million tokens is refused before inference (here, by the body limit).
    let million = text(
        json!(vec![5; 1_000_000]),
        json!(vec![1; 1_000_000]),
        json!([1, 1_000_000]),
    );
    let (got, _, e) = w
        .post("/v2/models/sentiment/infer", &key, million.to_string())
        .await;
    assert!(
        got == StatusCode::PAYLOAD_TOO_LARGE || got == StatusCode::UNPROCESSABLE_ENTITY,
        "{got}: {e}"
    );
    // FP16 with an odd byte count, in the binary extension.
    let (got, e) = post_binary(
        &w,
        "/v2/models/digits-cnn/infer",
        &key,
        &[(
            json!({"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP16"}),
            vec![0u8; 127],
        )],
    )
    .await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
}

fn bytes_prefixed(items: &[&str]) -> Vec<u8> {
    items
        .iter()
        .flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes()))
        .collect()
}

/// BYTES, FP16 and BOOL inputs and BYTES and BOOL outputs, JSON and binary,
/// through a test graph; a tensor model shows nothing to a predict key and
/// what the card lists to admin.
#[tokio::test]
async fn every_datatype_path_reaches_the_graph_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    copy_dir(&repo().join("crates/warden/tests/models"), &models);
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let body = json!({"inputs": [
        {"name": "text", "shape": [3], "datatype": "BYTES", "data": ["red", "blue", "purple"]},
        {"name": "half", "shape": [3, 2], "datatype": "FP16", "data": [0.5, 0.25, 1, 1, 0, 0]},
        {"name": "flag", "shape": [3], "datatype": "BOOL", "data": [true, false, false]}]});
    let (status, _, answer) = w
        .post("/v2/models/mixed/infer", &key, body.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(output(&answer, "score")["data"], json!([11.75, 5.0, 0.0]));
    assert_eq!(output(&answer, "echo")["datatype"], "BYTES");
    assert_eq!(
        output(&answer, "echo")["data"],
        json!(["red", "blue", "purple"])
    );
    assert_eq!(output(&answer, "even")["data"], json!([false, false, true]));
    // The same in binary: BYTES length-prefixed, FP16 as half floats, BOOL as bytes.
    let half: Vec<u8> = [0x3800u16, 0x3400, 0x3c00, 0x3c00, 0, 0]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let framed = [
        (
            json!({"name": "text", "shape": [3], "datatype": "BYTES"}),
            bytes_prefixed(&["red", "blue", "purple"]),
        ),
        (
            json!({"name": "half", "shape": [3, 2], "datatype": "FP16"}),
            half.clone(),
        ),
        (
            json!({"name": "flag", "shape": [3], "datatype": "BOOL"}),
            vec![1, 0, 0],
        ),
    ];
    let (status, binary) = post_binary(&w, "/v2/models/mixed/infer", &key, &framed).await;
    assert_eq!(status, StatusCode::OK, "{binary}");
    assert_eq!(binary["outputs"], answer["outputs"]);
    // BYTES with a length prefix past the body; a string over max_length; a
    // BOOL byte that is not 0 or 1: refused, naming the input.
    let mut past = bytes_prefixed(&["red", "blue"]);
    past.extend(99u32.to_le_bytes());
    past.extend(b"x");
    for (text, flag) in [
        (past, vec![1, 0, 0]),
        (
            bytes_prefixed(&["red", "blue", "a-very-long-colour-name"]),
            vec![1, 0, 0],
        ),
        (bytes_prefixed(&["red", "blue", "x"]), vec![1, 0, 2]),
    ] {
        let framed = [
            (
                json!({"name": "text", "shape": [3], "datatype": "BYTES"}),
                text,
            ),
            (
                json!({"name": "half", "shape": [3, 2], "datatype": "FP16"}),
                half.clone(),
            ),
            (
                json!({"name": "flag", "shape": [3], "datatype": "BOOL"}),
                flag,
            ),
        ];
        let (status, e) = post_binary(&w, "/v2/models/mixed/infer", &key, &framed).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(
            e["details"][0]["field"]
                .as_str()
                .unwrap()
                .starts_with("inputs["),
            "{e}"
        );
    }
    // A predict key sees nothing of a tensor model whose card lists no
    // output for its role.
    let out = w.cli(&["keys", "create", "--name", "p", "--role", "predict"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let predict = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, _, hidden) = w
        .post("/v2/models/mixed/infer", &predict, body.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{hidden}");
    assert_eq!(hidden["outputs"], json!([]));
    let asked = json!({"inputs": body["inputs"], "outputs": [{"name": "score"}]});
    let (status, _, e) = w
        .post("/v2/models/mixed/infer", &predict, asked.to_string())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (_, meta) = w.get("/v2/models/mixed", Some(&predict)).await;
    assert_eq!(meta["outputs"], json!([]), "{meta}");
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
}

/// `warden model init` on each demo graph writes a card that loads and
/// serves it with the same answers; it never overwrites a card without
/// --force, and a folder without a graph is exit 2 naming the path.
#[tokio::test]
async fn model_init_writes_cards_that_serve_the_demo_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let init = |args: &[&str]| {
        Command::new(BIN)
            .args(["model", "init"])
            .args(args)
            .output()
            .unwrap()
    };
    for m in [
        "iris",
        "breast-cancer",
        "digits",
        "diabetes",
        "recommender",
        "digits-cnn",
        "sentiment",
    ] {
        let target = models.join(m).join("1");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::copy(
            repo().join("models").join(m).join("1/model.onnx"),
            target.join("model.onnx"),
        )
        .unwrap();
        let folder = models.join(m);
        let out = init(&[folder.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{m}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A sample fills the statistics: iris from a CSV of its fixture rows.
    let rows = fixture("iris")["inputs"].as_array().unwrap().clone();
    let mut csv = String::from("sepal_length,sepal_width,petal_length,petal_width\n");
    for r in &rows {
        let cells: Vec<String> = r
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    let sample = dir.path().join("iris.csv");
    std::fs::write(&sample, csv).unwrap();
    let iris = models.join("iris");
    let out = init(&[iris.to_str().unwrap(), "--sample", sample.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "no overwrite without --force");
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.toml"));
    let out = init(&[
        iris.to_str().unwrap(),
        "--sample",
        sample.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card = std::fs::read_to_string(iris.join("model.toml")).unwrap();
    assert!(
        card.contains("name = \"petal_length\"") && card.contains("mean = "),
        "{card}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = init(&[empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(empty.to_str().unwrap()));

    // Served: the same labels and values as the demo cards give.
    let w = Warden::start(
        &dir.path().join("data"),
        &["--models", models.to_str().unwrap()],
    );
    let key = w.printed_key.clone().unwrap();
    let (status, _, answer) = w
        .post("/v2/models/iris/infer", &key, json!({"inputs": [{"name": "input", "shape": [rows.len(), 4], "datatype": "FP32", "data": rows}]}).to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let expected: Vec<String> = fixture("iris")["label_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("class_{i}"))
        .collect();
    assert_eq!(output(&answer, "label")["data"], json!(expected));
    for model in ["diabetes", "recommender", "sentiment"] {
        for case in fixture(model)["cases"].as_array().unwrap() {
            let (status, _, answer) = w
                .post(
                    &format!("/v2/models/{model}/infer"),
                    &key,
                    json!({"inputs": case["inputs"]}).to_string(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{model}: {answer}");
            // admin sees every output, rounded to 2 decimals.
            for expected in case["outputs"].as_array().unwrap() {
                let name = expected["name"].as_str().unwrap();
                let got = output(&answer, name);
                if name == "label" {
                    let classes: Vec<String> = expected["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| format!("class_{i}"))
                        .collect();
                    assert_eq!(got["data"], json!(classes), "{model}");
                    continue;
                }
                for (g, w) in got["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(expected["data"].as_array().unwrap())
                {
                    assert!(
                        (g.as_f64().unwrap() - w.as_f64().unwrap()).abs() <= 0.005 + 1e-9,
                        "{model} {name}"
                    );
                }
            }
        }
    }
    // The id bound the card took from the graph's lookup table.
    let bad = json!({"inputs": [
        {"name": "user_id", "shape": [1], "datatype": "INT64", "data": [100]},
        {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [-1]}]});
    let (status, _, e) = w
        .post("/v2/models/recommender/infer", &key, bad.to_string())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["details"].as_array().unwrap().len(), 2, "{e}");
}
