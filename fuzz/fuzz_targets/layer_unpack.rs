//! An image layer (a tar from a registry, hostile): applied to a fresh
//! root, it may fail, but nothing may appear outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let top = tempfile::tempdir().expect("a temporary directory");
    let root = top.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let _ = images::unpack::apply_layer(&root, data);
    let beside: Vec<_> = std::fs::read_dir(top.path())
        .expect("read the top directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(beside, ["root"], "the layer wrote outside its root");
});
