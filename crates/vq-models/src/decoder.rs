//! The decoder: a 3×3 convolution, the body and two strided transposed convolutions.

use candle_nn::VarBuilder;

use crate::body::Body;
use crate::config::ValidModelConfig;
use crate::error::Result;
use crate::features::{module_via_layer, FeatureMap, Layer};
use crate::layers::{Conv2d, ConvConfig, ConvTranspose2d};

/// `[B, h, H/4, W/4] → [B, C_in, H, W]`: Conv 3×3 (h → h; absent when `decoder_conv1 = false`),
/// the body, ReLU, ConvT 4×4 s2 (h → h/2), ReLU, ConvT 4×4 s2 (h/2 → C). The ReLU after the
/// body is declared as `deconv1`'s input ReLU (so the residual stack's final ReLU of the
/// reference code runs inside `deconv1`).
///
/// Variables: `conv1` (unless `decoder_conv1 = false`), then `residual.*` or `inception.*`,
/// `deconv1`, `deconv2`.
#[derive(Clone, Debug)]
pub struct Decoder {
    conv1: Option<Conv2d>,
    body: Body,
    deconv1: ConvTranspose2d,
    deconv2: ConvTranspose2d,
}

impl Decoder {
    pub fn new(cfg: &ValidModelConfig, vb: VarBuilder) -> Result<Self> {
        let (c, m) = (cfg.in_channels(), cfg.config());
        let h = m.hidden;
        let up = ConvConfig {
            kernel: 4,
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let relu_up_relu = ConvConfig {
            relu_before: true,
            relu_after: true,
            ..up
        };
        Ok(Self {
            conv1: m
                .decoder_conv1
                .then(|| Conv2d::new(h, h, ConvConfig::default(), vb.pp("conv1")))
                .transpose()?,
            body: Body::new(m, false, vb.clone())?,
            deconv1: ConvTranspose2d::new(h, h / 2, relu_up_relu, vb.pp("deconv1"))?,
            deconv2: ConvTranspose2d::new(h / 2, c, up, vb.pp("deconv2"))?,
        })
    }
}

impl Layer for Decoder {
    fn forward_features(&self, z: &FeatureMap) -> candle_core::Result<FeatureMap> {
        let _span = tracing::trace_span!("decoder").entered();
        let h = match &self.conv1 {
            Some(conv1) => z.apply(conv1)?,
            None => z.clone(),
        };
        h.apply(&self.body)?
            .apply(&self.deconv1)?
            .apply(&self.deconv2)
    }
}

module_via_layer!(Decoder);
