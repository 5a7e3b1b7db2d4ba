//! Convolution layers, the residual stack and the Inception block of the autoencoders.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, ConvTranspose2dConfig, VarBuilder};

use crate::error::Result;
use crate::layout::{via_preferred, Layout};
use vq_ops::ops::relu as relu_op;
use vq_ops::ops::{conv2d_nhwc, conv2d_nhwc_add, conv_transpose2d_nhwc, ReluAt};
use vq_ops::ops::{is_cpu_f32 as cpu_f32, to_nchw, to_nhwc};

/// 2-D convolution `[B, C_in, H, W] → [B, C_out, H', W']` with PyTorch's default initialisation
/// (`kaiming_uniform(a=√5)`: weight and bias `U(−1/√fan_in, 1/√fan_in)`).
///
/// Variables: `weight` `[C_out, C_in, k, k]`, `bias` `[C_out]` (when enabled).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

impl Conv2d {
    /// A `k × k` convolution with the given stride and padding.
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((c_out, c_in, k, k), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(c_out, "bias", init)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            config: Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            },
        })
    }
}

impl Conv2d {
    /// `conv(x)` for `x` in `layout`, output in the same layout, with the ReLUs of `relu`
    /// before and after. On the CPU in f32 one channel-last op ([`conv2d_nhwc`]) with the ReLUs
    /// folded in; elsewhere candle's `conv2d` (channel-first).
    pub fn forward_in(
        &self,
        x: &Tensor,
        layout: Layout,
        relu: ReluAt,
    ) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("conv2d").entered();
        let (s, p) = (self.config.stride, self.config.padding);
        if cpu_f32(x) {
            let (w, b) = (&self.weight, self.bias.as_ref());
            return match layout {
                Layout::ChannelsLast => conv2d_nhwc(x, w, b, s, p, relu),
                Layout::ChannelsFirst => to_nchw(&conv2d_nhwc(&to_nhwc(x)?, w, b, s, p, relu)?),
            };
        }
        let y = input_relu(&layout.to_nchw(x)?, relu)?.conv2d(&self.weight, p, s, 1, 1)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        layout.from_nchw(&if relu.output { relu_op(&y)? } else { y })
    }
}

impl Conv2d {
    /// `skip + conv(x)` for `x` and `skip` in `layout` (the residual connection; no ReLU after).
    /// On the CPU in f32 one op ([`conv2d_nhwc_add`]) that adds `skip` in its output, when the
    /// layer has no bias.
    pub fn forward_add(
        &self,
        x: &Tensor,
        skip: &Tensor,
        layout: Layout,
    ) -> candle_core::Result<Tensor> {
        if cpu_f32(x) && layout == Layout::ChannelsLast && self.bias.is_none() {
            let _span = tracing::trace_span!("conv2d").entered();
            let (s, p) = (self.config.stride, self.config.padding);
            return conv2d_nhwc_add(x, &self.weight, skip, s, p, ReluAt::NONE);
        }
        skip + self.forward_in(x, layout, ReluAt::NONE)?
    }
}

/// `x`, or `relu(x)` when `relu.input` (candle's path).
fn input_relu(x: &Tensor, relu: ReluAt) -> candle_core::Result<Tensor> {
    if relu.input {
        relu_op(x)
    } else {
        Ok(x.clone())
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_in(x, Layout::ChannelsFirst, ReluAt::NONE)
    }
}

/// Transposed 2-D convolution `[B, C_in, H, W] → [B, C_out, H', W']`, PyTorch initialisation
/// (fan-in computed from the weight's second dimension, `C_out · k²`, as PyTorch does).
///
/// Variables: `weight` `[C_in, C_out, k, k]`, `bias` `[C_out]`.
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Tensor,
    config: ConvTranspose2dConfig,
}

impl ConvTranspose2d {
    /// A `k × k` transposed convolution with the given stride and padding.
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bound = 1.0 / ((c_out * k * k) as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Self {
            weight: vb.get_with_hints((c_in, c_out, k, k), "weight", init)?,
            bias: vb.get_with_hints(c_out, "bias", init)?,
            config: ConvTranspose2dConfig {
                padding,
                stride,
                ..Default::default()
            },
        })
    }
}

impl ConvTranspose2d {
    /// `conv_transpose(x)` for `x` in `layout`, output in the same layout, with the ReLUs of
    /// `relu` before and after (on the CPU in f32 one channel-last op,
    /// [`conv_transpose2d_nhwc`]).
    pub fn forward_in(
        &self,
        x: &Tensor,
        layout: Layout,
        relu: ReluAt,
    ) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("conv_transpose2d").entered();
        let c = &self.config;
        if cpu_f32(x) && c.output_padding == 0 && c.dilation == 1 {
            let (w, b, s, p) = (&self.weight, Some(&self.bias), c.stride, c.padding);
            return match layout {
                Layout::ChannelsLast => conv_transpose2d_nhwc(x, w, b, s, p, relu),
                Layout::ChannelsFirst => {
                    to_nchw(&conv_transpose2d_nhwc(&to_nhwc(x)?, w, b, s, p, relu)?)
                }
            };
        }
        let y = input_relu(&layout.to_nchw(x)?, relu)?.conv_transpose2d(
            &self.weight,
            c.padding,
            c.output_padding,
            c.stride,
            c.dilation,
        )?;
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        layout.from_nchw(&if relu.output { relu_op(&y)? } else { y })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_in(x, Layout::ChannelsFirst, ReluAt::NONE)
    }
}

/// `x + Conv1×1(ReLU(Conv3×3(ReLU(x))))` (no biases), as in the VQ-VAE reference code.
///
/// Variables: `conv3.weight`, `conv1.weight`.
#[derive(Clone, Debug)]
pub struct Residual {
    conv3: Conv2d,
    conv1: Conv2d,
}

impl Residual {
    pub fn new(hidden: usize, residual_hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv3: Conv2d::new(hidden, residual_hidden, 3, 1, 1, false, vb.pp("conv3"))?,
            conv1: Conv2d::new(residual_hidden, hidden, 1, 1, 0, false, vb.pp("conv1"))?,
        })
    }
}

impl Residual {
    /// `x` in `layout` (shape preserving).
    pub fn forward_in(&self, x: &Tensor, layout: Layout) -> candle_core::Result<Tensor> {
        let h = self.conv3.forward_in(x, layout, ReluAt::BOTH)?;
        self.conv1.forward_add(&h, x, layout)
    }
}

impl Module for Residual {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        via_preferred(x, |x, l| self.forward_in(x, l))
    }
}

/// A stack of [`Residual`] blocks followed by a ReLU.
///
/// Variables: `layers.{i}.*`.
#[derive(Clone, Debug)]
pub struct ResidualStack {
    layers: Vec<Residual>,
}

impl ResidualStack {
    pub fn new(hidden: usize, residual_hidden: usize, n: usize, vb: VarBuilder) -> Result<Self> {
        let layers = (0..n)
            .map(|i| Residual::new(hidden, residual_hidden, vb.pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }
}

impl ResidualStack {
    /// `x` in `layout` (shape preserving).
    pub fn forward_in(&self, x: &Tensor, layout: Layout) -> candle_core::Result<Tensor> {
        relu_op(&self.forward_without_relu(x, layout)?)
    }

    /// The stack without its final ReLU, for a caller that fuses it into the next convolution.
    pub fn forward_without_relu(&self, x: &Tensor, layout: Layout) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward_in(&h, layout)?;
        }
        Ok(h)
    }
}

impl Module for ResidualStack {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        via_preferred(x, |x, l| self.forward_in(x, l))
    }
}

/// Inception block: parallel `1×1`, `1×1 → 3×3`, `1×1 → 5×5` and `3×3 max-pool → 1×1`
/// branches of `C/4` channels each, concatenated to `C` channels, then ReLU (shape preserving).
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
}

impl Inception {
    /// `channels` must be divisible by 4.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let q = channels / 4;
        Ok(Self {
            b1: Conv2d::new(channels, q, 1, 1, 0, true, vb.pp("b1"))?,
            b3_reduce: Conv2d::new(channels, q, 1, 1, 0, true, vb.pp("b3_reduce"))?,
            b3: Conv2d::new(q, q, 3, 1, 1, true, vb.pp("b3"))?,
            b5_reduce: Conv2d::new(channels, q, 1, 1, 0, true, vb.pp("b5_reduce"))?,
            b5: Conv2d::new(q, q, 5, 1, 2, true, vb.pp("b5"))?,
            pool_proj: Conv2d::new(channels, q, 1, 1, 0, true, vb.pp("pool_proj"))?,
        })
    }
}

/// 3×3 max-pool, stride 1, "same" size: edge-replicated padding (equal to −∞ padding for a
/// max, since the edge value is inside every border window).
fn max_pool3_same(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .max_pool2d_with_stride(3, 1)
}

impl Inception {
    /// `x` in `layout` (shape preserving).
    pub fn forward_in(&self, x: &Tensor, layout: Layout) -> candle_core::Result<Tensor> {
        let a = self.b1.forward_in(x, layout, ReluAt::NONE)?;
        let b3 = self.b3_reduce.forward_in(x, layout, ReluAt::OUTPUT)?;
        let b = self.b3.forward_in(&b3, layout, ReluAt::NONE)?;
        let b5 = self.b5_reduce.forward_in(x, layout, ReluAt::OUTPUT)?;
        let c = self.b5.forward_in(&b5, layout, ReluAt::NONE)?;
        let pooled = layout.from_nchw(&max_pool3_same(&layout.to_nchw(x)?)?)?;
        let d = self.pool_proj.forward_in(&pooled, layout, ReluAt::NONE)?;
        relu_op(&Tensor::cat(&[a, b, c, d], layout.channel_axis())?)
    }
}

impl Module for Inception {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        via_preferred(x, |x, l| self.forward_in(x, l))
    }
}
