//! Shared helpers of the vq-train integration tests (included with `mod common;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use vq_train::TrainConfig;

/// `../shared/data/<name>` if present.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    // $VQ_SHARED_DIR (see xtask/src/paths.rs), else `shared` beside the repository.
    let shared = std::env::var_os("VQ_SHARED_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let p = shared.join("data").join(name);
    p.is_dir().then_some(p)
}

/// A small adaptive model (C = 32, W = 1024: five codebooks) on Fashion-MNIST: the real set
/// from ../shared/data when present, otherwise the embedded subset.
pub fn tiny_config(steps: usize) -> TrainConfig {
    let mut c = TrainConfig::default();
    match shared_data("fashion-mnist") {
        Some(p) => {
            c.data.name = vq_data::DatasetName::FashionMnist;
            c.data.path = Some(p);
        }
        None => {
            println!("NOTICE: ../shared/data/fashion-mnist not found; using the embedded subset")
        }
    }
    c.data.max_train = Some(2048);
    c.data.max_val = Some(128);
    c.model.hidden = 32;
    c.model.residual_hidden = 16;
    c.model.pool.capacity = Some(1024);
    c.train.steps = steps;
    c.train.batch_size = 32;
    c.train.lr = 1e-3;
    c.train.tau = vq_core::TauSchedule::Constant { tau: 1.0 };
    c.train.log_every = 10;
    c.train.gap_every = 10;
    c.train.val_every = 20;
    c.train.checkpoint_every = 20;
    c.train.progress = false;
    c.train.report = false;
    c
}

/// The `vq-train` binary of this build.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vq-train"))
}

/// Final weights, optimizer state and metrics of a run that ended at `step`.
pub fn final_files(run: &Path, step: usize) -> (Vec<u8>, Vec<u8>, String) {
    let ck = run.join("checkpoints").join(format!("step-{step:08}"));
    (
        std::fs::read(ck.join("model.safetensors")).unwrap(),
        std::fs::read(ck.join("optimizer.safetensors")).unwrap(),
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
    )
}

/// Writes `c` as `dir/cfg.toml`.
pub fn write_config(dir: &Path, c: &TrainConfig) -> PathBuf {
    let p = dir.join("cfg.toml");
    std::fs::write(&p, c.to_toml()).unwrap();
    p
}
