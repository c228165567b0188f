//! v2 bodies in the binary tensor data extension: the first two bytes are
//! the `Inference-Header-Content-Length` value (so the fuzzer controls the
//! split, past the body's end included), the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_models::request::parse_v2_binary;

fuzz_target!(|data: &[u8]| {
    let Some((len, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let header = usize::from(u16::from_le_bytes(*len));
    for card in warden_fuzz::cards() {
        warden_fuzz::check(card, parse_v2_binary(card, body, header, 32));
    }
});
