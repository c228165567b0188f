//! KServe v1 bodies, parsed and validated against each demo model's card.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_models::request::{Protocol, parse};

fuzz_target!(|body: &[u8]| {
    for card in warden_fuzz::cards() {
        warden_fuzz::check(card, parse(Protocol::V1, card, body, 32));
    }
});
