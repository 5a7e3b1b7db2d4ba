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
