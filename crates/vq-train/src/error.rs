//! Typed errors of the training library (the CLI wraps them with `anyhow`).

use std::path::PathBuf;

/// Errors of configuration, training, checkpoints and reports.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration file or override that cannot be used.
    #[error("{source_name}: {reason}")]
    Config { source_name: String, reason: String },
    /// A file or folder of the run could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint that does not fit the model or the config.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// NaN or Inf met during training.
    #[error("non-finite value at step {step} in {tensor}; the last good checkpoint is kept")]
    NonFinite { step: usize, tensor: String },
    #[error(transparent)]
    Data(Box<vq_data::DataError>),
    #[error(transparent)]
    Model(Box<vq_models::ModelError>),
    #[error(transparent)]
    Vq(Box<vq_core::VqError>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// SIGINT or SIGTERM stopped training after a checkpoint of step `step`.
    #[error("interrupted at step {step}; continue with vq-train train --resume {}", run.display())]
    Interrupted {
        step: usize,
        signal: i32,
        run: PathBuf,
    },
    /// Another process trains into the run folder.
    #[error("{} is in use by {} (one training per run folder); wait for it to finish or choose another --out", run.display(), match pid { Some(p) => format!("process {p}"), None => "another process".to_string() })]
    Locked { run: PathBuf, pid: Option<u32> },
    /// Drawing a plot or picture failed.
    #[error("plot {}: {reason}", path.display())]
    Plot { path: PathBuf, reason: String },
}

impl TrainError {
    pub(crate) fn config(source_name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl From<vq_core::ConfigError> for TrainError {
    fn from(e: vq_core::ConfigError) -> Self {
        Self::Vq(Box::new(e.into()))
    }
}

impl From<vq_data::DataError> for TrainError {
    fn from(e: vq_data::DataError) -> Self {
        Self::Data(Box::new(e))
    }
}

impl From<vq_models::ModelError> for TrainError {
    fn from(e: vq_models::ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

impl From<vq_core::VqError> for TrainError {
    fn from(e: vq_core::VqError) -> Self {
        Self::Vq(Box::new(e))
    }
}

/// Result alias of vq-train.
pub type Result<T> = std::result::Result<T, TrainError>;
