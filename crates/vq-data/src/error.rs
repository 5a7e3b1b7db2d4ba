//! Typed errors of vq-data; each names the file (and row) and what was wrong with it.

use std::path::PathBuf;

/// Errors of dataset loading and batching.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `.gz` file that is not gzip, or a truncated/corrupt gzip stream.
    #[error("{}: not a valid gzip stream: {reason}", path.display())]
    Gzip { path: PathBuf, reason: String },
    /// A file whose contents do not follow its format (magic, dimensions, sizes).
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    /// One row of a table (CSV, parquet, annotation list) is wrong.
    #[error("{}: row {row}: {reason}", path.display())]
    Row {
        path: PathBuf,
        row: usize,
        reason: String,
    },
    /// An image that cannot be decoded.
    #[error("{}: cannot decode image: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
    /// A folder without the images the layout expects.
    #[error("{}: {reason}", path.display())]
    Empty { path: PathBuf, reason: String },
    #[error("{count} image file(s) cannot be decoded, first: {first}; fix or remove them, or set data.on_bad_image = \"skip\" to leave them out")]
    BadImages { count: usize, first: String },
    /// A file that is neither in the Hugging Face cache nor downloadable.
    #[error("hub dataset {repo} (revision {revision}), file {file}: {reason}; the cache was looked up in {}", cache.display())]
    Hub {
        repo: String,
        revision: String,
        file: String,
        cache: PathBuf,
        reason: String,
    },
    /// A data configuration value that cannot be used.
    #[error("data config `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    /// The background batching thread stopped.
    #[error("the batch loader thread stopped: {0}")]
    Loader(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn row(path: impl Into<PathBuf>, row: usize, reason: impl Into<String>) -> Self {
        Self::Row {
            path: path.into(),
            row,
            reason: reason.into(),
        }
    }
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Config {
            field,
            reason: reason.into(),
        }
    }
}

/// Result alias of vq-data.
pub type Result<T> = std::result::Result<T, DataError>;

/// Reads a whole file, mapping errors to [`DataError::Io`].
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}
