//! Convolution and transposed convolution with the ReLUs around them declared in their config.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::features::{module_via_layer, FeatureMap, Layer, MemoryFormat};
use vq_ops::ops::{conv2d_nhwc, conv2d_nhwc_add, conv_transpose2d_nhwc, is_cpu_f32, relu, ReluAt};

/// How a (transposed) convolution is built, and the ReLUs around it (like candle's
/// `Conv2dConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvConfig {
    /// Kernel size `k` (a `k × k` window).
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// `conv(relu(x))`.
    pub relu_before: bool,
    /// `relu(conv(x))`.
    pub relu_after: bool,
}

impl Default for ConvConfig {
    /// A biased 3×3 "same" convolution without ReLUs.
    fn default() -> Self {
        Self {
            kernel: 3,
            stride: 1,
            padding: 1,
            bias: true,
            relu_before: false,
            relu_after: false,
        }
    }
}

impl ConvConfig {
    /// The ReLUs as the fused op's flags (vq-ops folds them into the convolution).
    fn relus(&self) -> ReluAt {
        ReluAt {
            input: self.relu_before,
            output: self.relu_after,
        }
    }
}

/// The weight `shape` and (when `bias`) the bias `[c_out]`, both with PyTorch's default
/// initialisation (`kaiming_uniform(a=√5)`): `U(−1/√fan_in, 1/√fan_in)`.
fn torch_params(
    vb: &VarBuilder,
    shape: (usize, usize, usize, usize),
    fan_in: usize,
    c_out: usize,
    bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = candle_nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let weight = vb.get_with_hints(shape, "weight", init)?;
    let bias = match bias {
        true => Some(vb.get_with_hints(c_out, "bias", init)?),
        false => None,
    };
    Ok((weight, bias))
}

/// `y + bias` broadcast over `[B, C, H, W]`, then `relu` when `relu_after` (candle's path).
fn finish_nchw(y: Tensor, bias: Option<&Tensor>, relu_after: bool) -> candle_core::Result<Tensor> {
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    relu_if(relu_after, y)
}

/// `relu(x)` when `on`, else `x` (candle's path).
fn relu_if(on: bool, x: Tensor) -> candle_core::Result<Tensor> {
    if on {
        relu(&x)
    } else {
        Ok(x)
    }
}

/// 2-D convolution `[B, C_in, H, W] → [B, C_out, H', W']` with PyTorch's initialisation (weight
/// and bias `U(−1/√fan_in, 1/√fan_in)`, `fan_in = C_in·k²`).
///
/// Variables: `weight` `[C_out, C_in, k, k]`, `bias` `[C_out]` (when enabled).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: ConvConfig,
}

impl Conv2d {
    pub fn new(c_in: usize, c_out: usize, config: ConvConfig, vb: VarBuilder) -> Result<Self> {
        let k = config.kernel;
        let (weight, bias) =
            torch_params(&vb, (c_out, c_in, k, k), c_in * k * k, c_out, config.bias)?;
        Ok(Self {
            weight,
            bias,
            config,
        })
    }

    /// `skip + conv(x)` (the residual connection, `skip` shaped like the output). On the CPU in
    /// f32 one op ([`conv2d_nhwc_add`]) adds `skip` in its output when the layer has no bias
    /// and no ReLU after.
    pub(crate) fn forward_plus(
        &self,
        x: &FeatureMap,
        skip: &FeatureMap,
    ) -> candle_core::Result<FeatureMap> {
        let c = &self.config;
        let fused = x.format() == MemoryFormat::ChannelsLast && is_cpu_f32(x.stored());
        if fused && self.bias.is_none() && !c.relu_after {
            let _span = tracing::trace_span!("conv2d").entered();
            let (w, s) = (&self.weight, skip.stored());
            let y = conv2d_nhwc_add(x.stored(), w, s, c.stride, c.padding, c.relus())?;
            return Ok(x.with(y));
        }
        Ok(skip.with((skip.stored() + self.forward_features(x)?.stored())?))
    }
}

impl Layer for Conv2d {
    /// On the CPU in f32 one channel-last op ([`conv2d_nhwc`]) with the ReLUs folded in;
    /// otherwise candle's `conv2d` (channel-first).
    fn forward_features(&self, x: &FeatureMap) -> candle_core::Result<FeatureMap> {
        let _span = tracing::trace_span!("conv2d").entered();
        let c = &self.config;
        let (w, b) = (&self.weight, self.bias.as_ref());
        if x.format() == MemoryFormat::ChannelsLast && is_cpu_f32(x.stored()) {
            let y = conv2d_nhwc(x.stored(), w, b, c.stride, c.padding, c.relus())?;
            return Ok(x.with(y));
        }
        x.map_nchw(|x| {
            let y = relu_if(c.relu_before, x.clone())?.conv2d(w, c.padding, c.stride, 1, 1)?;
            finish_nchw(y, b, c.relu_after)
        })
    }
}

/// Transposed 2-D convolution `[B, C_in, H, W] → [B, C_out, H', W']`, PyTorch initialisation
/// (fan-in from the weight's second dimension, `C_out·k²`, as PyTorch computes it).
///
/// Variables: `weight` `[C_in, C_out, k, k]`, `bias` `[C_out]` (when enabled).
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: ConvConfig,
}

impl ConvTranspose2d {
    pub fn new(c_in: usize, c_out: usize, config: ConvConfig, vb: VarBuilder) -> Result<Self> {
        let k = config.kernel;
        let (weight, bias) =
            torch_params(&vb, (c_in, c_out, k, k), c_out * k * k, c_out, config.bias)?;
        Ok(Self {
            weight,
            bias,
            config,
        })
    }
}

impl Layer for ConvTranspose2d {
    /// On the CPU in f32 one channel-last op ([`conv_transpose2d_nhwc`]) with the ReLUs folded
    /// in; otherwise candle's `conv_transpose2d` (channel-first).
    fn forward_features(&self, x: &FeatureMap) -> candle_core::Result<FeatureMap> {
        let _span = tracing::trace_span!("conv_transpose2d").entered();
        let c = &self.config;
        let (w, b) = (&self.weight, self.bias.as_ref());
        if x.format() == MemoryFormat::ChannelsLast && is_cpu_f32(x.stored()) {
            let y = conv_transpose2d_nhwc(x.stored(), w, b, c.stride, c.padding, c.relus())?;
            return Ok(x.with(y));
        }
        x.map_nchw(|x| {
            let y = relu_if(c.relu_before, x.clone())?
                .conv_transpose2d(w, c.padding, 0, c.stride, 1)?;
            let y = match b {
                Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
                None => y,
            };
            relu_if(c.relu_after, y)
        })
    }
}

module_via_layer!(Conv2d, ConvTranspose2d);
