//! A registry's `hosts.toml` (mirrors, TLS, plain HTTP), as an operator or a
//! config-management tool may write it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One directory for every run: `_default/hosts.toml` is rewritten each time.
fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir(dir.path().join("_default")).expect("_default");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    std::fs::write(dir.path().join("_default/hosts.toml"), data).expect("write hosts.toml");
    let hosts = images::hosts::Hosts::new(Some(dir.path().to_path_buf()));
    for registry in ["registry.example:5000", "docker.io", "127.0.0.1:5000"] {
        if let Ok(endpoints) = hosts.endpoints(registry) {
            for e in endpoints {
                let _ = e.url();
            }
        }
    }
});
