//! Typed errors of vq-models.

/// Errors of model configuration and forward passes.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model configuration value that cannot be used; names the field.
    #[error("model config `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    /// An input tensor of the wrong shape.
    #[error("model input: {0}")]
    Input(String),
    #[error(transparent)]
    Vq(#[from] vq_core::VqError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<vq_core::ConfigError> for ModelError {
    fn from(e: vq_core::ConfigError) -> Self {
        Self::Vq(e.into())
    }
}

/// Result alias of vq-models.
pub type Result<T> = std::result::Result<T, ModelError>;
