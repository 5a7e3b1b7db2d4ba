//! VQ-VAE autoencoders of the paper around any [`vq_core::Quantizer`].
//!
//! - [`EncoderKind::CnnResnet`] (the base, as the VQ-VAE reference code): Conv 4×4 s2 (C→h/2),
//!   ReLU, Conv 4×4 s2 (h/2→h), ReLU, Conv 3×3 (h→h), 2 residual blocks, ReLU; the decoder mirrors
//!   it with two transposed convolutions.
//! - [`EncoderKind::Cnn`]: the same without residual blocks.
//! - [`EncoderKind::CnnInception`]: an Inception block instead of the residual stack.
//!
//! Latents are `[B, h, H/4, W/4]` (28 → 7×7, 32 → 8×8, 64 → 16×16, 256 → 64×64).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use vq_core::{PoolConfig, SeededVarMap, Step};
//! use vq_models::{ModelConfig, VqVae};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A small model: h = 16 and a pool of capacity W = 256 ([32, 8], [64, 4], [128, 2]).
//! let cfg = ModelConfig {
//!     hidden: 16,
//!     residual_hidden: 8,
//!     pool: PoolConfig { capacity: Some(256), ..Default::default() },
//!     ..Default::default()
//! }
//! .validate(1)?;
//! let params = SeededVarMap::new(0);
//! let model = VqVae::new(&cfg, params.var_builder(DType::F32, &Device::Cpu))?;
//! let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
//! let out = model.forward(&x, &mut Step::eval())?;
//! assert_eq!(out.reconstruction.dims(), &[2, 1, 28, 28]);
//! # Ok(()) }
//! ```

pub mod error;

mod body;
mod config;
mod decoder;
mod encoder;
pub mod features;
pub mod layers;
mod vqvae;

pub use config::{EncoderKind, ModelConfig, QuantizerSpec, ValidModelConfig};
pub use decoder::Decoder;
pub use encoder::Encoder;
pub use error::{ModelError, Result};
pub use features::{FeatureMap, Layer, MemoryFormat};
pub use vqvae::{VqVae, VqVaeOutput};
