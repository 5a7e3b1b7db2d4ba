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
#[cfg(feature = "fault-injection")]
pub mod faults;
#[cfg(not(feature = "fault-injection"))]
mod faults;
pub mod lock;
pub mod metrics;
pub mod optim;
pub mod quality;
pub mod report;
pub mod session;
/// Stop signals (SIGINT, SIGTERM): [`vq_ops::runtime::signals`].
pub use vq_ops::runtime::signals;
pub mod trainer;

pub use config::{
    FrozenConfig, HyperParams, NonFinitePolicy, RunControls, TrainConfig, TrainParams,
};
pub use error::{Result, TrainError};
pub use session::Session;
pub use trainer::{default_run_dir, train, RunSummary, TrainOptions};

/// Tunes the CPU runtime for training; binaries call this first, before any tensor exists.
///
/// - glibc returns every freed large buffer to the kernel by default, so each fresh activation
///   costs a page fault per 4 KiB; keep freed memory instead.
/// - candle's element-wise thread pool spins between ops and competes with the rayon threads
///   that run the GEMMs on small machines: unless `CANDLE_NUM_THREADS` is set, element-wise ops
///   run on the calling thread.
///
/// What each was worth is measured in docs/benchmarks.md ("Where the time went").
pub fn tune_cpu_runtime() {
    vq_ops::runtime::keep_freed_memory();
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Called at the start of `main`, before any other thread exists.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
