//! The library behind the `vq-train` CLI (and `cargo xtask`): configs, the training loop,
//! checkpoints, metrics, evaluation, code dumps and pictures.
//!
//! A run folder holds `config.toml` (fully resolved), `metrics.jsonl` (reproducible for a seed),
//! `timings.jsonl` (throughput), `checkpoints/` (`LATEST` → `step-NNNNNNNN/` with
//! `model.safetensors`, `optimizer.safetensors`, `state.json`, `config.toml`), `plots/*.png` and
//! `reconstructions.png`.

pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod device;
pub mod error;
pub mod metrics;
pub mod optim;
pub mod report;
pub mod session;
pub mod trainer;

pub use config::{NonFinitePolicy, TrainConfig, TrainParams};
pub use error::{Result, TrainError};
pub use session::Session;
pub use trainer::{default_run_dir, train, RunSummary};

/// Keeps freed memory in the process instead of returning it to the kernel after every large
/// tensor (glibc's default), which otherwise costs a page fault per 4 KiB of every fresh
/// activation buffer and doubles the CPU forward pass. Binaries call this first.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
