//! Where the project's outside material lives: the real datasets and the paper's tables (the
//! shared folder), and the PyTorch reference script (in the repository unless overridden).

use std::path::{Path, PathBuf};

/// The environment variable naming the shared folder (with `data/`, `bench/`, `paper/`).
pub const SHARED_DIR_VAR: &str = "VQ_SHARED_DIR";

/// `$VQ_SHARED_DIR`, else the `shared` folder beside the repository (`../shared` from its root).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os(SHARED_DIR_VAR) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// `<shared>/data/<name>` when it is a folder.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let p = shared_dir().join("data").join(name);
    p.is_dir().then_some(p)
}

/// The environment variable naming another PyTorch reference script for `bench --compare-torch`.
pub const TORCH_REFERENCE_VAR: &str = "VQ_TORCH_REFERENCE";

/// `$VQ_TORCH_REFERENCE`, else the repository's `bench/torch_reference.py`.
pub fn torch_reference() -> PathBuf {
    match std::env::var_os(TORCH_REFERENCE_VAR) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/torch_reference.py"),
    }
}
