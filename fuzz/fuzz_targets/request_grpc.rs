//! gRPC `ModelInferRequest` messages: arbitrary bytes decoded as the
//! protobuf message (most are not one), then converted and validated for
//! every demo card as the gRPC listener does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_models::request::{grpc, validate};
use warden_oip::pb::ModelInferRequest;
use warden_oip::prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ModelInferRequest::decode(data) else {
        return;
    };
    for card in warden_fuzz::cards() {
        warden_fuzz::check(card, validate(card, grpc::payload(&request), 32));
    }
});
