//! The autoencoders' building blocks, each a [`crate::features::Layer`] declared by its config
//! (the ReLUs around a convolution are part of it, so vq-ops can fuse them).

mod conv;
mod inception;
mod residual;

pub use conv::{Conv2d, ConvConfig, ConvTranspose2d};
pub use inception::Inception;
pub use residual::{Residual, ResidualStack, ResidualStackConfig};
