//! The residual block (which owns its skip-add) and the residual stack of the VQ-VAE reference
//! code.

use candle_nn::VarBuilder;

use super::conv::{Conv2d, ConvConfig};
use crate::error::Result;
use crate::features::{module_via_layer, FeatureMap, Layer};

/// `x + Conv1×1(ReLU(Conv3×3(ReLU(x))))` (no biases), as in the VQ-VAE reference code.
///
/// Variables: `conv3.weight`, `conv1.weight`.
#[derive(Clone, Debug)]
pub struct Residual {
    conv3: Conv2d,
    conv1: Conv2d,
}

impl Residual {
    /// A block on `channels` channels with `hidden` channels inside.
    pub fn new(channels: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let conv3 = ConvConfig {
            bias: false,
            relu_before: true,
            relu_after: true,
            ..Default::default()
        };
        let conv1 = ConvConfig {
            kernel: 1,
            padding: 0,
            bias: false,
            ..Default::default()
        };
        Ok(Self {
            conv3: Conv2d::new(channels, hidden, conv3, vb.pp("conv3"))?,
            conv1: Conv2d::new(hidden, channels, conv1, vb.pp("conv1"))?,
        })
    }
}

impl Layer for Residual {
    fn forward_features(&self, x: &FeatureMap) -> candle_core::Result<FeatureMap> {
        self.conv1.forward_plus(&x.apply(&self.conv3)?, x)
    }
}

/// How a [`ResidualStack`] is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResidualStackConfig {
    /// Channels in and out (the model's h).
    pub channels: usize,
    /// Channels inside each block.
    pub hidden: usize,
    /// Number of blocks.
    pub blocks: usize,
    /// Whether the stack ends with a ReLU (the reference code's does; a decoder whose next
    /// convolution starts with a ReLU leaves it to that convolution).
    pub relu_after: bool,
}

/// [`Residual`] blocks, then a ReLU when `relu_after` (shape preserving).
///
/// Variables: `layers.{i}.*`.
#[derive(Clone, Debug)]
pub struct ResidualStack {
    layers: Vec<Residual>,
    relu_after: bool,
}

impl ResidualStack {
    pub fn new(config: ResidualStackConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..config.blocks)
            .map(|i| Residual::new(config.channels, config.hidden, vb.pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            relu_after: config.relu_after,
        })
    }
}

impl Layer for ResidualStack {
    fn forward_features(&self, x: &FeatureMap) -> candle_core::Result<FeatureMap> {
        let mut h = x.clone();
        for block in &self.layers {
            h = h.apply(block)?;
        }
        if self.relu_after {
            h = h.relu()?;
        }
        Ok(h)
    }
}

module_via_layer!(Residual, ResidualStack);
