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

fn fields(e: &ApiError) -> Vec<String> {
    e.details.iter().map(|d| d.field.clone()).collect()
}

#[test]
fn v1_positional_and_named_agree() {
    let a = v1(r#"{"instances": [[1, 0.5], [2.5, 1]]}"#).unwrap();
    let b = v1(r#"{"instances": [{"b": 0.5, "a": 1}, {"a": 2.5, "b": 1.0}]}"#).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.rows, 2);
    assert_eq!(a.values, [1.0, 0.5, 2.5, 1.0]);
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
        [
            "instances[0]",
            "instances[1]",
            "instances[2].a",
            "instances[2].b"
        ]
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
    assert_eq!(flat.values, nested.values);
    assert_eq!(flat.id.as_deref(), Some("r1"));
    assert_eq!(nested.outputs, Some(vec![OutputKind::Label]));
    // `"outputs": null` is the same as no `outputs` (found by schemathesis).
    let null = v2(r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 0.5]}], "outputs": null}"#).unwrap();
    assert_eq!(null.outputs, None);
    let ints = v2(
        r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "INT64", "data": [3, 1]}]}"#,
    )
    .unwrap();
    assert_eq!(ints.values, [3.0, 1.0]);
}

#[test]
fn v2_problems() {
    let t = |name: &str, shape: &str, dt: &str, data: &str| {
        v2(&format!(r#"{{"inputs": [{{"name": "{name}", "shape": {shape}, "datatype": "{dt}", "data": {data}}}]}}"#))
                .unwrap_err()
    };
    assert_eq!(
        fields(&t("x", "[1, 2]", "FP32", "[1, 0.5]")),
        ["inputs[0].name"]
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
        ["inputs[0].datatype", "inputs[0].data"]
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
                assert!(r.rows >= 1 && r.rows <= c.max_batch);
                assert_eq!(r.values.len(), r.rows * c.features.len());
                assert!(r.values.iter().all(|v| v.is_finite()));
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
    }

    fn json_v2(rows: i64, cols: i64, data: &[f64]) -> String {
        serde_json::json!({"inputs": [{"name": "input", "shape": [rows, cols], "datatype": "FP64", "data": data}]}).to_string()
    }
}
