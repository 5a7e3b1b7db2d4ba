//! Fuzz target: IDX parsing (gzip detection, header, dimensions, sizes) never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz.gz");
    if let Ok(bytes) = vq_data::idx::maybe_gunzip(data.to_vec(), p) {
        let _ = vq_data::idx::parse_idx(&bytes, p, 3);
        let _ = vq_data::idx::parse_idx(&bytes, p, 1);
    }
    let _ = vq_data::idx::parse_idx(data, Path::new("fuzz"), 3);
    if data.len() > 8 {
        let (a, b) = data.split_at(data.len() / 2);
        let _ = vq_data::idx::idx_dataset((a, Path::new("images")), (b, Path::new("labels")));
    }
});
