//! The block between the convolutions of the encoder and of the decoder: a residual stack, an
//! Inception block, or nothing (the paper's encoder ablation).

use candle_nn::VarBuilder;

use crate::config::{EncoderKind, ModelConfig};
use crate::error::Result;
use crate::features::{FeatureMap, Layer};
use crate::layers::{Inception, ResidualStack, ResidualStackConfig};

/// The middle of an encoder or decoder, with or without its final ReLU.
///
/// Variables: `residual.*` or `inception.*`.
#[derive(Clone, Debug)]
pub(crate) enum Body {
    Cnn,
    Residual(ResidualStack),
    Inception(Box<Inception>),
}

impl Body {
    /// The body of `m.encoder`, ending with a ReLU when `relu_after`.
    pub(crate) fn new(m: &ModelConfig, relu_after: bool, vb: VarBuilder) -> Result<Self> {
        Ok(match m.encoder {
            EncoderKind::Cnn => Self::Cnn,
            EncoderKind::CnnResnet => {
                let config = ResidualStackConfig {
                    channels: m.hidden,
                    hidden: m.residual_hidden,
                    blocks: m.residual_layers,
                    relu_after,
                };
                Self::Residual(ResidualStack::new(config, vb.pp("residual"))?)
            }
            EncoderKind::CnnInception => Self::Inception(Box::new(Inception::new(
                m.hidden,
                relu_after,
                vb.pp("inception"),
            )?)),
        })
    }
}

impl Layer for Body {
    fn forward_features(&self, x: &FeatureMap) -> candle_core::Result<FeatureMap> {
        match self {
            Self::Cnn => Ok(x.clone()),
            Self::Residual(r) => x.apply(r),
            Self::Inception(i) => x.apply(i.as_ref()),
        }
    }
}
