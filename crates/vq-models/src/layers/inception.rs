//! The Inception block of the paper's CNN+Inception encoder ablation.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::conv::{Conv2d, ConvConfig};
use crate::error::Result;
use crate::features::{module_via_layer, FeatureMap, Layer, MemoryFormat};

/// Parallel `1×1`, `1×1 → 3×3`, `1×1 → 5×5` and `3×3 max-pool → 1×1` branches of `C/4`
/// channels each, concatenated to `C` channels, then a ReLU when `relu_after` (shape
/// preserving).
///
/// Variables: `b1`, `b3_reduce`, `b3`, `b5_reduce`, `b5`, `pool_proj`.
#[derive(Clone, Debug)]
pub struct Inception {
    b1: Conv2d,
    b3_reduce: Conv2d,
    b3: Conv2d,
    b5_reduce: Conv2d,
    b5: Conv2d,
    pool_proj: Conv2d,
    relu_after: bool,
}

impl Inception {
    /// A block on `channels` channels (divisible by 4); `relu_after` as for
    /// [`super::ResidualStackConfig::relu_after`].
    pub fn new(channels: usize, relu_after: bool, vb: VarBuilder) -> Result<Self> {
        let q = channels / 4;
        let one = ConvConfig {
            kernel: 1,
            padding: 0,
            ..Default::default()
        };
        let reduce = ConvConfig {
            relu_after: true,
            ..one
        };
        let five = ConvConfig {
            kernel: 5,
            padding: 2,
            ..Default::default()
        };
        Ok(Self {
            b1: Conv2d::new(channels, q, one, vb.pp("b1"))?,
            b3_reduce: Conv2d::new(channels, q, reduce, vb.pp("b3_reduce"))?,
            b3: Conv2d::new(q, q, ConvConfig::default(), vb.pp("b3"))?,
            b5_reduce: Conv2d::new(channels, q, reduce, vb.pp("b5_reduce"))?,
            b5: Conv2d::new(q, q, five, vb.pp("b5"))?,
            pool_proj: Conv2d::new(channels, q, one, vb.pp("pool_proj"))?,
            relu_after,
        })
    }
}

/// 3×3 max-pool, stride 1, "same" size, as the elementwise maximum of the nine shifted windows
/// of the edge-replicated input (equal to −∞ padding for a max, since the edge value is inside
/// every border window). candle's `max_pool2d` has no gradient for a stride below the kernel
/// size; `maximum` and `narrow` have.
fn max_pool3_same(x: &FeatureMap) -> candle_core::Result<FeatureMap> {
    let (h_axis, w_axis) = match x.format() {
        MemoryFormat::ChannelsFirst => (2, 3),
        MemoryFormat::ChannelsLast => (1, 2),
    };
    let t = x.stored();
    let (h, w) = (t.dim(h_axis)?, t.dim(w_axis)?);
    let padded = t.pad_with_same(h_axis, 1, 1)?.pad_with_same(w_axis, 1, 1)?;
    let mut max: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = padded.narrow(h_axis, dy, h)?;
        for dx in 0..3 {
            let window = rows.narrow(w_axis, dx, w)?;
            max = Some(match max {
                None => window,
                Some(m) => m.maximum(&window)?,
            });
        }
    }
    Ok(x.with(max.expect("nine windows").contiguous()?))
}

impl Layer for Inception {
    fn forward_features(&self, x: &FeatureMap) -> candle_core::Result<FeatureMap> {
        let branches = [
            x.apply(&self.b1)?,
            x.apply(&self.b3_reduce)?.apply(&self.b3)?,
            x.apply(&self.b5_reduce)?.apply(&self.b5)?,
            max_pool3_same(x)?.apply(&self.pool_proj)?,
        ];
        let y = FeatureMap::cat_channels(&branches)?;
        if self.relu_after {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

module_via_layer!(Inception);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The nine-window maximum equals candle's `max_pool2d` (forward only: it has no backward
    /// for stride 1) on the input padded with a value below every element, in both formats.
    #[test]
    fn max_pool3_same_matches_candle_max_pool() {
        let x = vq_core::init::randn(5, "pool", &[2, 3, 5, 4], &Device::Cpu).unwrap();
        let low = (x.min_all().unwrap().to_scalar::<f32>().unwrap() - 1.0) as f64;
        let shifted = (&x - low).unwrap();
        let want = shifted
            .pad_with_zeros(2, 1, 1)
            .unwrap()
            .pad_with_zeros(3, 1, 1)
            .unwrap()
            .max_pool2d_with_stride(3, 1)
            .unwrap();
        let want = (want + low).unwrap();
        for format in [MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast] {
            let got = max_pool3_same(&FeatureMap::from_nchw(&x, format).unwrap())
                .unwrap()
                .to_nchw()
                .unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            // The shift there and back rounds: a few ulps of values below ~5.
            assert!(diff.to_scalar::<f32>().unwrap() <= 2e-6, "{format:?}");
        }
    }
}
