//! The agent frame decoder and the messages the host parses from frames
//! (everything from the guest is hostile): split anywhere, garbage between.
#![no_main]

use agent_api::messages::{AgentError, Response};
use agent_api::streams::{StreamEnd, split_payload, window_credit};
use agent_api::{Decoder, Welcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut decoder = Decoder::new();
    decoder.push(&data[..split]);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame() {
        frames.push(frame);
    }
    decoder.push(&data[split..]);
    while let Some(frame) = decoder.next_frame() {
        frames.push(frame);
    }
    for frame in frames {
        assert!(frame.payload.len() <= agent_api::frame::MAX_PAYLOAD);
        let _ = frame.parse::<Result<Response, AgentError>>();
        let _ = frame.parse::<Welcome>();
        let _ = frame.parse::<StreamEnd>();
        let _ = split_payload(&frame.payload);
        let _ = window_credit(&frame.payload);
        // What was decoded encodes back to a frame that decodes the same.
        let mut again = Decoder::new();
        again.push(&frame.encode());
        assert_eq!(again.next_frame().as_ref(), Some(&frame));
    }
});
