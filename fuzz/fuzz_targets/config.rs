//! Fuzz target: config parsing, overrides and validation never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The last line, when it looks like one, is also tried as a --set override.
    let overrides: Vec<String> = text.lines().last().filter(|l| l.contains('=')).map(|l| vec![l.to_string()]).unwrap_or_default();
    if let Ok(c) = vq_train::TrainConfig::from_toml(text, "fuzz.toml", &overrides) {
        let _ = c.validate();
        let _ = c.to_toml();
    }
});
