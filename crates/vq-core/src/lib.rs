//! Vector quantizers for [candle](https://github.com/huggingface/candle) models, after
//! "Balance of Number of Embedding and their Dimensions in Vector Quantization"
//! (Chen et al., 2024).
//!
//! - [`VectorQuantizer`]: one codebook `[N, D]`, nearest codeword by squared L2 (exact and
//!   memory-bounded, see [`SearchMethod`]), straight-through output, the paper's loss
//!   `β·(‖sg[z_e] − z_q‖² + α‖z_e − sg[z_q]‖²)`, EMA or gradient-learned codebook.
//! - [`AdaptiveQuantizer`]: the paper's adaptive dynamic quantizer. A pool of codebooks of equal
//!   capacity `N·D = W` (see [`structures`]), each with projections `C → D → C`; an attention
//!   selector scores the codebooks and a hard straight-through Gumbel-Softmax picks one per
//!   latent vector (or per image). A pool of one is the fixed-codebook model.
//! - [`Fsq`]: finite scalar quantization, an implicit codebook of rounded bounded channels
//!   (no loss, no parameters).
//! - [`gumbel`]: differentiable Gumbel-Softmax and temperature schedules.
//! - [`gradient_gap`]: the paper's eq. 5.
//! - [`SeededVarMap`]: reproducible initialisation (candle's CPU RNG cannot be seeded).
//!
//! Every configuration is validated into a checked type before any tensor is created.
//!
//! # Example
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rand::SeedableRng;
//! use vq_core::{AdaptiveConfig, AdaptiveQuantizer, Quantizer, SeededVarMap, Step};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! // Pool of all [N, D] with N·D = 256 and N > D, over 16-channel latents.
//! let config = AdaptiveConfig::adaptive(16, 256).validate()?;
//! let params = SeededVarMap::new(0);
//! let quantizer = AdaptiveQuantizer::new(&config, params.var_builder(DType::F32, &dev))?;
//!
//! let z_e = Tensor::randn(0f32, 1.0, (2, 16, 4, 4), &dev)?; // encoder output [B, C, H, W]
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0); // Gumbel noise
//! let out = quantizer.forward(&z_e, &mut Step::train(1.0, &mut rng))?;
//! assert_eq!(out.z_q.dims(), &[2, 16, 4, 4]);
//! let loss = out.loss; // add the reconstruction loss of your decoder, then backward
//! # let _ = loss;
//! let codes = quantizer.encode(&z_e)?; // codebook id and row per position, [2, 4, 4] each
//! let z = quantizer.decode(&codes)?; // [2, 16, 4, 4]
//! # assert_eq!(z.dims(), &[2, 16, 4, 4]);
//! # Ok(()) }
//! ```

mod adaptive;
mod config;
mod error;
mod fsq;
mod fused_linear;
mod gap;
pub mod gumbel;
pub mod init;
mod kmeans;
mod lfq;
mod quantizer;
mod rvq;
mod search;
mod structures;
mod vq;

pub use adaptive::{AdaptiveQuantizer, Member, ProjectedQuantizer};
pub use config::{
    AdaptiveConfig, BackProjection, CodebookConfig, CodebookInit, Distance, FsqLevels, Granularity,
    LfqBits, PoolConfig, PoolLoss, PoolMember, Router, RvqShape, SelectionLogits,
    ValidAdaptiveConfig, ValidMember, ValidVqConfig, VqConfig, VqGradient,
};
pub use error::{ConfigError, Result, VqError};
pub use fsq::{Fsq, FsqConfig, ValidFsqConfig, FSQ_MAX_CODES, FSQ_MAX_LEVELS};
pub use gap::{gradient_gap, GradientGap};
pub use gumbel::{TauSchedule, Temperature};
pub use init::SeededVarMap;
pub use lfq::{Lfq, LfqConfig, LfqEntropy, LfqLoss, ValidLfqConfig, LFQ_MAX_BITS};
pub use quantizer::{Codes, Quantizer, QuantizerOutput, RowQuantizer, Selection, Step};
pub use rvq::{ResidualVq, RvqConfig, ValidRvqConfig, RVQ_MAX_CODES};
pub use search::SearchMethod;
pub use structures::structures;
pub use vq::{VectorQuantizer, VqOutput};
