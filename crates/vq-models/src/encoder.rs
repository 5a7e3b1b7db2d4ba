//! The encoder: two strided convolutions, a 3×3 convolution and the body.

use candle_nn::VarBuilder;

use crate::body::Body;
use crate::config::ValidModelConfig;
use crate::error::Result;
use crate::features::{module_via_layer, FeatureMap, Layer};
use crate::layers::{Conv2d, ConvConfig};

/// `[B, C_in, H, W] → [B, h, H/4, W/4]`: Conv 4×4 s2 (C → h/2), ReLU, Conv 4×4 s2 (h/2 → h),
/// ReLU, Conv 3×3 (h → h), then the body with its final ReLU (none for the plain CNN).
///
/// Variables: `conv1`, `conv2`, `conv3`, then `residual.*` or `inception.*`.
#[derive(Clone, Debug)]
pub struct Encoder {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    body: Body,
}

impl Encoder {
    pub fn new(cfg: &ValidModelConfig, vb: VarBuilder) -> Result<Self> {
        let (c, m) = (cfg.in_channels(), cfg.config());
        let h = m.hidden;
        let down = ConvConfig {
            kernel: 4,
            stride: 2,
            padding: 1,
            relu_after: true,
            ..Default::default()
        };
        Ok(Self {
            conv1: Conv2d::new(c, h / 2, down, vb.pp("conv1"))?,
            conv2: Conv2d::new(h / 2, h, down, vb.pp("conv2"))?,
            conv3: Conv2d::new(h, h, ConvConfig::default(), vb.pp("conv3"))?,
            body: Body::new(m, true, vb)?,
        })
    }
}

impl Layer for Encoder {
    fn forward_features(&self, x: &FeatureMap) -> candle_core::Result<FeatureMap> {
        let _span = tracing::trace_span!("encoder").entered();
        x.apply(&self.conv1)?
            .apply(&self.conv2)?
            .apply(&self.conv3)?
            .apply(&self.body)
    }
}

module_via_layer!(Encoder);
