//! CRI requests as a client may send them (protobuf), through frakti's
//! conversion into its own types: an error is fine, a panic is not.
#![no_main]

use cri::fuzzing;
use cri::proto;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(req) = proto::RunPodSandboxRequest::decode(body) {
                let _ =
                    fuzzing::sandbox_config(req.config.unwrap_or_default(), req.runtime_handler);
            }
        }
        1 => {
            if let Ok(req) = proto::CreateContainerRequest::decode(body) {
                let _ = fuzzing::container_config(req.config.unwrap_or_default());
                let _ =
                    fuzzing::sandbox_config(req.sandbox_config.unwrap_or_default(), String::new());
            }
        }
        2 => {
            if let Ok(req) = proto::UpdateContainerResourcesRequest::decode(body) {
                let _ = fuzzing::container_resources(req.linux.unwrap_or_default());
            }
        }
        3 => {
            if let Ok(req) = proto::ListContainersRequest::decode(body) {
                let _ = fuzzing::container_filter(req.filter);
            }
        }
        _ => {
            if let Ok(req) = proto::ListPodSandboxRequest::decode(body) {
                let _ = fuzzing::sandbox_filter(req.filter);
            }
        }
    }
});
