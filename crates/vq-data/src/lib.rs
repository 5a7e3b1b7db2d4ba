//! Datasets for VQ autoencoders, as batches of f32 tensors `[B, C, H, W]`.
//!
//! - Local files in the datasets' own formats: MNIST / Fashion-MNIST IDX ([`idx`]), CIFAR-10
//!   binary batches ([`cifar`]), image folders: class-per-folder, Tiny-ImageNet, CelebA and the
//!   retinopathy CSV ([`folder`]).
//! - Hugging Face Hub parquet datasets through `hf-hub`, cache first ([`hub`]).
//! - A real Fashion-MNIST subset embedded in the crate ([`embedded`]), the default.
//! - [`Batcher`]: seeded shuffles, normalisation, decoding on a background thread.
//! - [`DataConfig`] + [`load`]: the registry keyed by dataset name.
//!
//! ```
//! use std::sync::Arc;
//! use vq_data::{load, Batcher, BatcherConfig, Cursor, DataConfig};
//!
//! # fn main() -> Result<(), vq_data::DataError> {
//! let data = load(&DataConfig::default())?; // embedded Fashion-MNIST subset
//! let batcher = Batcher::new(data.train.clone(), BatcherConfig::default(), data.normalization.clone())?;
//! let batch = batcher.stream(Cursor::default(), false).next().unwrap()?;
//! assert_eq!(batch.images.dims(), &[64, 1, 28, 28]);
//! # Ok(()) }
//! ```

pub mod batcher;
pub mod cifar;
pub mod config;
pub mod dataset;
pub mod embedded;
pub mod error;
pub mod folder;
pub mod hub;
pub mod idx;
pub mod image_ops;

pub use batcher::{Batch, BatchStream, Batcher, BatcherConfig, Cursor, Normalization};
pub use config::{
    known_statistics, load, BadImagePolicy, DataConfig, DatasetName, LoadedData, NormalizeKind,
    Subset,
};
pub use dataset::{check_images, Dataset, ImageFileDataset, InMemoryDataset, Sample};
pub use error::{DataError, Result};
pub use image_ops::ImageSpec;
