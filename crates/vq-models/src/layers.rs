//! Convolution layers, the residual stack and the Inception block of the autoencoders.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, ConvTranspose2dConfig, VarBuilder};

use crate::error::Result;
use crate::relu::relu;

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
    /// `relu(conv(x))`; on the CPU one op, the ReLU folded into the convolution's output and
    /// its backward into the convolution's output gradient (no separate node, no extra pass).
    pub fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, then_relu: bool) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("conv2d").entered();
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            let (s, p) = (self.config.stride, self.config.padding);
            let b = self.bias.as_ref();
            return crate::conv::conv2d_cpu(x, &self.weight, b, s, p, then_relu);
        }
        let y = x.conv2d(&self.weight, self.config.padding, self.config.stride, 1, 1)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        if then_relu {
            relu(&y)
        } else {
            Ok(y)
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, false)
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
    /// `relu(conv_transpose(x))`, on the CPU as one op (see [`Conv2d::forward_relu`]).
    pub fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, then_relu: bool) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("conv_transpose2d").entered();
        let c = &self.config;
        if x.device().is_cpu()
            && x.dtype() == candle_core::DType::F32
            && c.output_padding == 0
            && c.dilation == 1
        {
            return crate::conv::conv_transpose2d_cpu(
                x,
                &self.weight,
                Some(&self.bias),
                c.stride,
                c.padding,
                then_relu,
            );
        }
        let y = x.conv_transpose2d(
            &self.weight,
            c.padding,
            c.output_padding,
            c.stride,
            c.dilation,
        )?;
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        if then_relu {
            relu(&y)
        } else {
            Ok(y)
        }
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, false)
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

impl Module for Residual {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv3.forward_relu(&relu(x)?)?;
        x + self.conv1.forward(&h)?
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

impl Module for ResidualStack {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        relu(&h)
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

impl Module for Inception {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let a = self.b1.forward(x)?;
        let b = self.b3.forward(&self.b3_reduce.forward_relu(x)?)?;
        let c = self.b5.forward(&self.b5_reduce.forward_relu(x)?)?;
        let d = self.pool_proj.forward(&max_pool3_same(x)?)?;
        relu(&Tensor::cat(&[a, b, c, d], 1)?)
    }
}
