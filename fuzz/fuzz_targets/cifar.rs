//! Fuzz target: CIFAR-10 binary batch parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vq_data::cifar::parse_cifar(data, std::path::Path::new("fuzz.bin"));
});
