//! A line from QEMU's monitor (QEMU serves a guest that may have taken it over).
#![no_main]

use hypervisor::qmp::Incoming;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = Incoming::parse(line);
    }
});
