//! A CNI plugin's result (a plugin is a separate binary; its output is
//! parsed, not trusted) and the guest network frakti derives from it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(result) = serde_json::from_slice::<network::CniResult>(data) {
        let _ = result.pod_ips();
    }
    // The whole stored network record, as a restarted daemon reads it back.
    if let Ok(net) = serde_json::from_slice::<vm::net::VmNetwork>(data) {
        let _ = vm::net::guest_config(&net);
        let _ = net.nics().count();
    }
});
