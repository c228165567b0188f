//! Tests of request parsing and validation, both protocols.

use super::*;
use crate::card::CardDefaults;

const CARD: &str = r#"
max_batch = 3
[input]
name = "input"
[[input.features]]
name = "a"
min = 0.0
max = 10.0
[[input.features]]
name = "b"
min = 0.0
max = 1.0
[output]
label = "label"
probabilities = "probabilities"
classes = ["x", "y"]
"#;

fn card() -> ModelCard {
    ModelCard::parse(
        CARD,
        CardDefaults {
            max_batch: 64,
            range_tolerance: 0.0,
        },
    )
    .unwrap()
}

fn v1(body: &str) -> Result<ValidInferRequest, ApiError> {
    parse(Protocol::V1, &card(), body.as_bytes(), 32)
}

fn v2(body: &str) -> Result<ValidInferRequest, ApiError> {
    parse(Protocol::V2, &card(), body.as_bytes(), 32)
}

/// The first input's values, as f32.
fn values(r: &ValidInferRequest) -> Vec<f32> {
    r.batch.inputs[0].data.to_f32().unwrap_or_default()
}

fn fields(e: &ApiError) -> Vec<String> {
    e.details.iter().map(|d| d.field.clone()).collect()
}

#[test]
fn v1_positional_and_named_agree() {
    let a = v1(r#"{"instances": [[1, 0.5], [2.5, 1]]}"#).unwrap();
    let b = v1(r#"{"instances": [{"b": 0.5, "a": 1}, {"a": 2.5, "b": 1.0}]}"#).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.rows(), 2);
    assert_eq!(values(&a), [1.0, 0.5, 2.5, 1.0]);
}

#[test]
fn v1_structure_errors_are_invalid_request() {
    for body in [
        "",
        "{",
        "[]",
        r#"{"instances": 3}"#,
        r#"{"instances": [[1, 0.5]], "extra": 1}"#,
        r#"{"instances": [[1, 0.5]], "instances": [[1, 0.5]]}"#,
        r#"{}"#,
        r#"{"instances": [5]}"#,
        r#"{"instances": [[1, 0.5]]} trailing"#,
    ] {
        let e = v1(body).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{body}");
        assert!(e.details.is_empty());
    }
}

#[test]
fn v1_value_problems_name_the_fields() {
    let e = v1(r#"{"instances": [[1], [1, 0.5, 3], [11, "x"], [null, true]]}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    assert_eq!(
        fields(&e),
        ["instances"],
        "a batch of 4 > 3 is reported alone"
    );
    let e = v1(r#"{"instances": [[1], [1, 0.5, 3], [11, "x"]]}"#).unwrap_err();
    assert_eq!(
        fields(&e),
        ["instances[0]", "instances[1]"],
        "rows of the wrong length are reported before values"
    );
    let e = v1(r#"{"instances": [{"a": 1, "a": 2, "zz": 1}]}"#).unwrap_err();
    assert_eq!(
        fields(&e),
        ["instances[0].a", "instances[0].zz", "instances[0].b"]
    );
    let e = v1(r#"{"instances": [[1e9, 0.5]]}"#).unwrap_err();
    assert_eq!(fields(&e), ["instances[0].a"]);
    assert!(e.details[0].problem.contains("range"));
    let e = v1(r#"{"instances": []}"#).unwrap_err();
    assert_eq!(fields(&e), ["instances"]);
}

#[test]
fn non_finite_and_huge_numbers_are_validation_failures() {
    for body in [
        r#"{"instances": [[NaN, 0.5]]}"#,
        r#"{"instances": [[Infinity, 0.5]]}"#,
        r#"{"instances": [[1e400, 0.5]]}"#,
        r#"{"instances": [[-1e400, 0.5]]}"#,
    ] {
        let e = v1(body).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed, "{body}");
        assert_eq!(fields(&e), ["instances"]);
    }
}

#[test]
fn batch_limit_stops_early() {
    let rows = vec!["[1, 0.5]"; 10_000].join(",");
    let e = v1(&format!(r#"{{"instances": [{rows}]}}"#)).unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    assert!(e.details[0].problem.contains("at most 3"));
    let data = vec!["1"; 10_000].join(",");
    let e = v2(&format!(r#"{{"inputs": [{{"name": "input", "shape": [5000, 2], "datatype": "FP32", "data": [{data}]}}]}}"#)).unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
}

#[test]
fn deep_json_is_refused_before_parsing() {
    let body = format!(r#"{{"instances": {}{}}}"#, "[".repeat(200), "]".repeat(200));
    let e = v1(&body).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("nested"));
}

#[test]
fn v2_flat_and_nested_data() {
    let flat = v2(r#"{"id": "r1", "parameters": {"x": {"y": 1}}, "inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 0.5, 2, 1]}]}"#).unwrap();
    let nested = v2(r#"{"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP64", "parameters": {}, "data": [[1, 0.5], [2, 1]]}], "outputs": [{"name": "label"}]}"#).unwrap();
    assert_eq!(values(&flat), values(&nested));
    assert_eq!(flat.id.as_deref(), Some("r1"));
    assert_eq!(nested.outputs, Some(vec![0]));
    // `"outputs": null` is the same as no `outputs` (found by schemathesis).
    let null = v2(r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 0.5]}], "outputs": null}"#).unwrap();
    assert_eq!(null.outputs, None);
    let ints = v2(
        r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "INT64", "data": [3, 1]}]}"#,
    )
    .unwrap();
    assert_eq!(values(&ints), [3.0, 1.0]);
}

#[test]
fn v2_problems() {
    let t = |name: &str, shape: &str, dt: &str, data: &str| {
        v2(&format!(r#"{{"inputs": [{{"name": "{name}", "shape": {shape}, "datatype": "{dt}", "data": {data}}}]}}"#))
                .unwrap_err()
    };
    assert_eq!(
        fields(&t("x", "[1, 2]", "FP32", "[1, 0.5]")),
        ["inputs[0].name", "inputs"]
    );
    assert_eq!(
        fields(&t("input", "[1, 3]", "FP32", "[1, 0.5, 1]")),
        ["inputs[0].shape"]
    );
    assert_eq!(
        fields(&t("input", "[2, 2]", "FP32", "[1, 0.5]")),
        ["inputs[0].data"]
    );
    assert_eq!(
        fields(&t("input", "[1, 2]", "BYTES", "[\"a\", \"b\"]")),
        ["inputs[0].datatype"]
    );
    assert_eq!(
        fields(&t("input", "[1, 2]", "INT32", "[1.5, 0]")),
        ["inputs[0].data"]
    );
    assert_eq!(
        fields(&t("input", "[1, 2]", "FP32", "[1, 5]")),
        ["inputs[0].data[0].b"]
    );
    assert_eq!(
        fields(&t("input", "[0, 2]", "FP32", "[]")),
        ["inputs[0].shape"]
    );
    let e = v2(r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 0.5]}], "outputs": [{"name": "logits"}]}"#).unwrap_err();
    assert_eq!(fields(&e), ["outputs[0].name"]);
    for body in [
        r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 0.5], "extra": 1}]}"#,
        r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32"}]}"#,
        r#"{"inputs": {}}"#,
        r#"{"model": "x", "inputs": []}"#,
    ] {
        assert_eq!(
            v2(body).unwrap_err().code,
            ErrorCode::InvalidRequest,
            "{body}"
        );
    }
}

/// A v2 body in the binary tensor data extension: (body, header length).
fn binary_body(header: serde_json::Value, data: &[u8]) -> (Vec<u8>, usize) {
    let mut body = header.to_string().into_bytes();
    let len = body.len();
    body.extend_from_slice(data);
    (body, len)
}

fn binary_input(shape: [i64; 2], datatype: &str, size: usize) -> serde_json::Value {
    serde_json::json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype,
        "parameters": {"binary_data_size": size}}],
        "parameters": {"binary_data_output": true}})
}

#[test]
fn v2_binary_tensor_data_of_every_numeric_datatype() {
    let c = card();
    let expected = [1.0f64, 0.5, 2.0, 0.0];
    let encodings: Vec<(&str, Vec<u8>)> = vec![
        (
            "FP32",
            expected
                .iter()
                .flat_map(|v| (*v as f32).to_le_bytes())
                .collect(),
        ),
        (
            "FP64",
            expected.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        // 1.0, 0.5, 2.0, 0.0 in IEEE half precision.
        (
            "FP16",
            [0x3c00u16, 0x3800, 0x4000, 0x0000]
                .iter()
                .flat_map(|h| h.to_le_bytes())
                .collect(),
        ),
    ];
    for (datatype, bytes) in encodings {
        let (body, len) = binary_body(binary_input([2, 2], datatype, bytes.len()), &bytes);
        let r = parse_v2_binary(&c, &body, len, 32).unwrap_or_else(|e| panic!("{datatype}: {e:?}"));
        assert_eq!(r.rows(), 2);
        assert_eq!(values(&r), [1.0, 0.5, 2.0, 0.0], "{datatype}");
    }
    let ints: [(&str, Vec<u8>); 4] = [
        ("INT8", vec![1, 0, 2, 1]),
        (
            "UINT16",
            [1u16, 0, 2, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            "INT32",
            [1i32, 0, 2, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            "INT64",
            [1i64, 0, 2, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    ];
    for (datatype, bytes) in ints {
        let (body, len) = binary_body(binary_input([2, 2], datatype, bytes.len()), &bytes);
        let r = parse_v2_binary(&c, &body, len, 32).unwrap_or_else(|e| panic!("{datatype}: {e:?}"));
        assert_eq!(values(&r), [1.0, 0.0, 2.0, 1.0], "{datatype}");
    }
}

#[test]
fn v2_binary_tensor_data_is_checked_like_json_data() {
    let c = card();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let code = |header: serde_json::Value, data: &[u8]| {
        let (body, len) = binary_body(header, data);
        parse_v2_binary(&c, &body, len, 32).unwrap_err()
    };
    // NaN and out-of-range values: validation_failed naming the feature.
    let e = code(binary_input([1, 2], "FP32", 8), &f32s(&[f32::NAN, 0.5]));
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    assert_eq!(fields(&e), ["inputs[0].data[0].a"]);
    let e = code(binary_input([1, 2], "FP32", 8), &f32s(&[1.0, 7.0]));
    assert_eq!(fields(&e), ["inputs[0].data[0].b"]);
    // Sizes that do not add up.
    let e = code(binary_input([1, 2], "FP32", 8), &f32s(&[1.0]));
    assert_eq!(fields(&e), ["inputs[0].parameters.binary_data_size"]);
    let e = code(binary_input([2, 2], "FP32", 8), &f32s(&[1.0, 0.5]));
    assert_eq!(fields(&e), ["inputs[0].parameters.binary_data_size"]);
    // Too many rows: refused before any value is decoded.
    let e = code(binary_input([4, 2], "FP32", 32), &f32s(&[0.0; 8]));
    assert_eq!(fields(&e), ["inputs[0].shape"]);
    // Data both ways, or binary bytes no input claims.
    let both = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
        "data": [1, 0.5], "parameters": {"binary_data_size": 8}}]});
    assert_eq!(fields(&code(both, &f32s(&[1.0, 0.5]))), ["inputs[0]"]);
    let json_only = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 0.5]}]});
    let e = code(json_only.clone(), &f32s(&[1.0]));
    assert_eq!(fields(&e), ["inputs[0].parameters.binary_data_size"]);
    // Without binary bytes, a JSON-only body in this framing is fine.
    let (body, len) = binary_body(json_only, &[]);
    assert_eq!(
        values(&parse_v2_binary(&c, &body, len, 32).unwrap()),
        [1.0, 0.5]
    );
    // Sizes that wrap around to the body's length (2^64 - 8 + 24 = 16):
    // refused, not sliced out of bounds.
    let wrapping = serde_json::json!({"inputs": [
        {"name": "input", "shape": [1, 2], "datatype": "FP32",
         "parameters": {"binary_data_size": u64::MAX - 7}},
        {"name": "input", "shape": [1, 2], "datatype": "FP32",
         "parameters": {"binary_data_size": 24}}]});
    let e = code(wrapping, &f32s(&[1.0, 0.5, 1.0, 0.5]));
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    assert!(fields(&e).contains(&"inputs".to_owned()), "{e:?}");
    // A shape far past the batch limit, whose byte count would overflow:
    // refused on the shape, nothing computed from it.
    let huge = binary_input([4_611_686_018_427_387_904, 2], "FP64", 0);
    let e = code(huge, &[]);
    assert_eq!(fields(&e), ["inputs[0].shape"]);
    // parameters: null is none; anything but an object or null is malformed.
    let null_params = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
        "data": [1, 0.5], "parameters": null}]});
    assert_eq!(values(&v2(&null_params.to_string()).unwrap()), [1.0, 0.5]);
    let array_params = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
        "parameters": [8]}]});
    let (body, len) = binary_body(array_params, &f32s(&[1.0, 0.5]));
    let e = parse_v2_binary(&c, &body, len, 32).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    // A header length past the body, and binary_data_size without the extension.
    let e = parse_v2_binary(&c, b"{}", 3, 32).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    let e = v2(&binary_input([1, 2], "FP32", 8).to_string()).unwrap_err();
    assert_eq!(fields(&e), ["inputs[0].parameters.binary_data_size"]);
}

/// Properties over arbitrary input: parsing never panics, every refusal is
/// `invalid_request` or `validation_failed`, and whatever is accepted holds
/// exactly `rows × features` finite values within the batch limit.
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn check(protocol: Protocol, body: &[u8]) {
        let c = card();
        match parse(protocol, &c, body, 32) {
            Ok(r) => {
                assert!(r.rows() >= 1 && r.rows() <= c.max_batch);
                assert_eq!(values(&r).len(), r.rows() * c.inputs[0].features.len());
                assert!(values(&r).iter().all(|v| v.is_finite()));
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.code,
                        ErrorCode::InvalidRequest | ErrorCode::ValidationFailed
                    ),
                    "{e:?}"
                );
                assert!(e.details.len() <= 16);
            }
        }
    }

    /// JSON-ish text built from the tokens these bodies are made of, so that
    /// generated inputs reach deep into the parser, not just its first byte.
    fn jsonish() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just("\"instances\"".to_string()),
            Just("\"inputs\"".to_string()),
            Just("\"name\"".to_string()),
            Just("\"input\"".to_string()),
            Just("\"shape\"".to_string()),
            Just("\"datatype\"".to_string()),
            Just("\"FP32\"".to_string()),
            Just("\"data\"".to_string()),
            Just("\"a\"".to_string()),
            Just("\"b\"".to_string()),
            Just("null".to_string()),
            Just("NaN".to_string()),
            Just("1e400".to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            (0u8..4).prop_map(|i| i.to_string()),
        ];
        prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
    }

    fn instances() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            (-5.0f64..15.0).prop_map(|f| f.to_string()),
            Just("\"x\"".to_string()),
            Just("null".to_string()),
            Just("1e999".to_string()),
        ];
        let row = prop::collection::vec(value, 0..4).prop_map(|v| format!("[{}]", v.join(",")));
        prop::collection::vec(row, 0..6)
            .prop_map(|rows| format!("{{\"instances\": [{}]}}", rows.join(",")))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
            check(Protocol::V1, &body);
            check(Protocol::V2, &body);
        }

        #[test]
        fn jsonish_text(body in jsonish()) {
            check(Protocol::V1, body.as_bytes());
            check(Protocol::V2, body.as_bytes());
        }

        #[test]
        fn v1_shaped_bodies(body in instances()) {
            check(Protocol::V1, body.as_bytes());
        }

        #[test]
        fn v2_shaped_bodies(rows in 0i64..5, cols in 0i64..4, data in prop::collection::vec(-5.0f64..15.0, 0..20)) {
            let body = json_v2(rows, cols, &data);
            check(Protocol::V2, body.as_bytes());
        }

        /// The binary extension: any header length, declared size, datatype
        /// and tail bytes (NaN bit patterns included).
        #[test]
        fn v2_binary_bodies(
            rows in 0i64..5,
            cols in 0i64..4,
            datatype in prop::sample::select(vec!["FP32", "FP64", "FP16", "INT8", "UINT64", "BYTES"]),
            declared in 0usize..80,
            tail in prop::collection::vec(any::<u8>(), 0..80),
            cut in 0usize..400,
        ) {
            let header = serde_json::json!({"inputs": [{"name": "input", "shape": [rows, cols],
                "datatype": datatype, "parameters": {"binary_data_size": declared}}]}).to_string();
            let mut body = header.clone().into_bytes();
            body.extend_from_slice(&tail);
            let c = card();
            for len in [header.len(), cut.min(body.len() + 1)] {
                match parse_v2_binary(&c, &body, len, 32) {
                    Ok(r) => {
                        prop_assert!(r.rows() >= 1 && r.rows() <= c.max_batch);
                        prop_assert_eq!(values(&r).len(), r.rows() * c.inputs[0].features.len());
                        prop_assert!(values(&r).iter().all(|v| v.is_finite()));
                    }
                    Err(e) => prop_assert!(matches!(
                        e.code,
                        ErrorCode::InvalidRequest | ErrorCode::ValidationFailed
                    ), "{:?}", e),
                }
            }
        }
    }

    /// A card with an input of each kind: ids over a dynamic sequence,
    /// BYTES with categories, FP16 with a range, BOOL.
    const TENSOR_CARD: &str = r#"
task = "tensor"
max_batch = 4
[[inputs]]
name = "ids"
datatype = "INT64"
shape = [-1, -1]
ids = 10
max_shape = [4, 6]
[[inputs]]
name = "tag"
datatype = "BYTES"
shape = [-1]
categories = ["a", "b"]
[[inputs]]
name = "h"
datatype = "FP16"
shape = [-1, 2]
range = [-1.0, 1.0]
[[inputs]]
name = "f"
datatype = "BOOL"
shape = [-1]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1]
"#;

    fn tensor_card() -> ModelCard {
        ModelCard::parse(
            TENSOR_CARD,
            CardDefaults {
                max_batch: 64,
                range_tolerance: 0.0,
            },
        )
        .unwrap()
    }

    /// Whatever is accepted fits the tensor card exactly.
    fn check_tensors(
        c: &ModelCard,
        parsed: Result<ValidInferRequest, ApiError>,
    ) -> Result<(), TestCaseError> {
        match parsed {
            Ok(r) => {
                let rows = r.rows();
                prop_assert!(rows >= 1 && rows <= c.max_batch);
                for (spec, t) in c.inputs.iter().zip(&r.batch.inputs) {
                    prop_assert_eq!(t.datatype(), spec.datatype);
                    prop_assert_eq!(t.shape[0], rows);
                    prop_assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
                    prop_assert!(t.shape.iter().zip(&spec.max_shape).all(|(g, m)| g <= m));
                    for i in 0..t.data.len() {
                        if let Some(v) = t.data.number(i) {
                            let (lo, hi) = spec.bounds(0).unwrap();
                            prop_assert!(v >= lo && v <= hi, "{} = {v}", spec.name);
                        }
                    }
                    if let warden_tensor::TensorData::Bytes(b) = &t.data {
                        prop_assert!(b.iter().all(|s| s == b"a" || s == b"b"));
                    }
                }
            }
            Err(e) => prop_assert!(
                matches!(
                    e.code,
                    ErrorCode::InvalidRequest | ErrorCode::ValidationFailed
                ),
                "{:?}",
                e
            ),
        }
        Ok(())
    }

    fn element() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            (-3i64..12).prop_map(serde_json::Value::from),
            (-2.0f64..2.0).prop_map(serde_json::Value::from),
            Just(serde_json::json!("a")),
            Just(serde_json::json!("zz")),
            Just(serde_json::json!(true)),
            Just(serde_json::Value::Null),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// v2 JSON over the tensor card: any shapes, datatypes and values.
        #[test]
        fn tensor_card_json_bodies(
            rows in 0i64..6,
            len in 0i64..8,
            datatypes in prop::collection::vec(prop::sample::select(vec!["INT64", "BYTES", "FP16", "FP32", "BOOL", "INT8"]), 4),
            data in prop::collection::vec(prop::collection::vec(element(), 0..30), 4),
            drop_one in any::<bool>(),
        ) {
            let names = ["ids", "tag", "h", "f"];
            let shapes = [vec![rows, len], vec![rows], vec![rows, 2], vec![rows]];
            let mut inputs: Vec<serde_json::Value> = (0..4)
                .map(|i| serde_json::json!({"name": names[i], "shape": shapes[i], "datatype": datatypes[i], "data": data[i]}))
                .collect();
            if drop_one {
                inputs.pop();
            }
            let body = serde_json::json!({ "inputs": inputs }).to_string();
            let c = tensor_card();
            check_tensors(&c, parse(Protocol::V2, &c, body.as_bytes(), 32))?;
        }

        /// v2 binary over the tensor card: arbitrary bytes for each input.
        #[test]
        fn tensor_card_binary_bodies(
            rows in 0i64..6,
            len in 0i64..8,
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 4),
        ) {
            let names = ["ids", "tag", "h", "f"];
            let types = ["INT64", "BYTES", "FP16", "BOOL"];
            let shapes = [vec![rows, len], vec![rows], vec![rows, 2], vec![rows]];
            let inputs: Vec<serde_json::Value> = (0..4)
                .map(|i| serde_json::json!({"name": names[i], "shape": shapes[i], "datatype": types[i],
                    "parameters": {"binary_data_size": parts[i].len()}}))
                .collect();
            let header = serde_json::json!({ "inputs": inputs }).to_string();
            let mut body = header.clone().into_bytes();
            for p in &parts {
                body.extend_from_slice(p);
            }
            let c = tensor_card();
            check_tensors(&c, parse_v2_binary(&c, &body, header.len(), 32))?;
        }

        /// v1 rows of named inputs over the tensor card.
        #[test]
        fn tensor_card_v1_rows(rows in prop::collection::vec(prop::collection::vec(element(), 0..8), 0..6)) {
            let instances: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| serde_json::json!({"ids": r, "tag": r.first(), "h": r.iter().take(2).collect::<Vec<_>>(), "f": r.last()}))
                .collect();
            let body = serde_json::json!({ "instances": instances }).to_string();
            let c = tensor_card();
            check_tensors(&c, parse(Protocol::V1, &c, body.as_bytes(), 32))?;
        }
    }

    fn json_v2(rows: i64, cols: i64, data: &[f64]) -> String {
        serde_json::json!({"inputs": [{"name": "input", "shape": [rows, cols], "datatype": "FP64", "data": data}]}).to_string()
    }
}
