//! Typed errors of vq-core: invalid configurations (caught before any tensor is touched) and
//! tensor errors from candle.

/// A configuration value that cannot describe a valid quantizer. Each variant names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `N·D` differs from the declared capacity `W`.
    #[error("codebook [{n}, {d}]: N·D = {} but the capacity W is {w}", n * d)]
    CapacityMismatch { n: usize, d: usize, w: usize },
    /// The paper's structures have more embeddings than dimensions (`N > D`).
    #[error("codebook [{n}, {d}]: N must be greater than D (set `allow_n_le_d` to permit it)")]
    NotMoreEmbeddingsThanDims { n: usize, d: usize },
    /// A capacity that has no power-of-two structures.
    #[error("capacity W = {0} must be a power of two ≥ 2 to enumerate structures")]
    CapacityNotPowerOfTwo(usize),
    /// The pool holds no codebook.
    #[error("the codebook pool is empty (m = 0)")]
    EmptyPool,
    /// A temperature that is zero, negative or not finite.
    #[error("`{field}` must be a finite temperature > 0, got {value}")]
    NonPositiveTemperature { field: &'static str, value: f64 },
    /// The EMA decay must lie strictly between 0 and 1.
    #[error("`decay` must lie in (0, 1), got {0}")]
    DecayOutOfRange(f64),
    /// Multi-head attention needs the channel count to split evenly over the heads.
    #[error("`heads` = {heads} does not divide the channel count C = {channels}")]
    HeadsDoNotDivide { heads: usize, channels: usize },
    /// Any other field with a value outside its domain.
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Errors of vq-core.
#[derive(Debug, thiserror::Error)]
pub enum VqError {
    #[error("invalid quantizer configuration: {0}")]
    Config(#[from] ConfigError),
    /// A tensor passed in has the wrong rank, size or dtype.
    #[error("bad input tensor `{name}`: {reason}")]
    Input { name: &'static str, reason: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl VqError {
    pub(crate) fn input(name: &'static str, reason: impl Into<String>) -> Self {
        Self::Input {
            name,
            reason: reason.into(),
        }
    }
}

/// Result alias of vq-core.
pub type Result<T> = std::result::Result<T, VqError>;
