//! A linear pre-scan of request bodies, before serde sees them.
//!
//! It rejects nesting deeper than the configured limit (serde_json's own
//! limit is 128 and reports it as a syntax error), and finds the bare
//! `NaN` / `Infinity` tokens that Python's `json.dumps` emits, so that they
//! are reported as the schema problem they are (`validation_failed`) rather
//! than as malformed JSON. Outside strings, JSON has no other token starting
//! with `N` or `I`. No library offers this check; it is 30 lines.

/// What the pre-scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Arrays/objects nested deeper than allowed.
    TooDeep,
    /// A bare `NaN`, `Infinity` or `-Infinity` token.
    NonFinite,
}

/// Scans `body` once. Does not check that it is otherwise valid JSON.
pub fn prescan(body: &[u8], max_depth: usize) -> Result<(), ScanError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(ScanError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'N' | b'I' => return Err(ScanError::NonFinite),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a serde_json error means a number too large for an f64 (`1e400`),
/// which is a non-finite value, not malformed JSON. serde_json exposes this
/// only through its message; a test pins the message.
pub fn is_number_out_of_range(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().starts_with("number out of range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_limited() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(prescan(deep.as_bytes(), 32), Err(ScanError::TooDeep));
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert_eq!(prescan(ok.as_bytes(), 32), Ok(()));
        // Brackets inside strings do not count, escaped quotes do not end strings.
        let s = format!("{{\"a\": \"{}\\\"[[[\"}}", "[".repeat(100));
        assert_eq!(prescan(s.as_bytes(), 2), Ok(()));
    }

    #[test]
    fn non_finite_tokens_are_found_outside_strings_only() {
        for body in [r#"{"instances": [[NaN, 1]]}"#, "[Infinity]", "[-Infinity]"] {
            assert_eq!(
                prescan(body.as_bytes(), 32),
                Err(ScanError::NonFinite),
                "{body}"
            );
        }
        assert_eq!(
            prescan(br#"{"id": "NaN Infinity", "x": [null, true]}"#, 32),
            Ok(())
        );
    }

    #[test]
    fn out_of_range_numbers_are_recognised() {
        let e = serde_json::from_str::<f64>("1e400").unwrap_err();
        assert!(is_number_out_of_range(&e), "{e}");
        let e = serde_json::from_str::<f64>("[").unwrap_err();
        assert!(!is_number_out_of_range(&e));
    }
}
