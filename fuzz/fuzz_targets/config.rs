//! Configuration text: TOML parsing and validation never panic, and every
//! refusal names what is wrong. Inputs that name files are skipped (a
//! secret `{ file = ... }` would make the fuzzer read the machine's files).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_core::config::{Config, Overrides, RawConfig};

fuzz_target!(|text: &str| {
    if text.contains("file") {
        return;
    }
    let Ok(raw) = toml::from_str::<RawConfig>(text) else {
        return;
    };
    if let Err(e) = Config::from_raw(raw, &Overrides::default()) {
        assert!(!e.to_string().is_empty());
    }
});
