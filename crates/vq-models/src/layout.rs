//! Activation layouts: channel-first `[B, C, H, W]` (candle's convolutions, the public API) and
//! channel-last `[B, H, W, C]` (the CPU convolution ops of vq-ops), chosen per tensor.

use candle_core::{Result, Tensor};
use vq_ops::ops::{is_cpu_f32 as cpu_f32, to_nchw, to_nhwc};

/// Memory layout of 4-D activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[B, C, H, W]`.
    ChannelsFirst,
    /// `[B, H, W, C]`.
    ChannelsLast,
}

impl Layout {
    /// The layout the layers run fastest in for `x`'s device and dtype: channel-last on the CPU
    /// in f32 (the convolution ops of [`crate::conv`]), channel-first elsewhere (candle's).
    pub fn for_tensor(x: &Tensor) -> Self {
        if cpu_f32(x) {
            Self::ChannelsLast
        } else {
            Self::ChannelsFirst
        }
    }

    /// The axis of the channels.
    pub fn channel_axis(self) -> usize {
        match self {
            Self::ChannelsFirst => 1,
            Self::ChannelsLast => 3,
        }
    }

    /// `x` `[B, C, H, W]` in this layout.
    pub fn from_nchw(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::ChannelsFirst => Ok(x.clone()),
            Self::ChannelsLast => to_nhwc(x),
        }
    }

    /// `x` in this layout as `[B, C, H, W]`.
    pub fn to_nchw(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::ChannelsFirst => Ok(x.clone()),
            Self::ChannelsLast => to_nchw(x),
        }
    }
}

/// Runs `f` on `x` `[B, C, H, W]` converted to [`Layout::for_tensor`] and returns its result
/// (in that layout) as `[B, C, H, W]`.
pub fn via_preferred(
    x: &Tensor,
    f: impl FnOnce(&Tensor, Layout) -> Result<Tensor>,
) -> Result<Tensor> {
    let l = Layout::for_tensor(x);
    l.to_nchw(&f(&l.from_nchw(x)?, l)?)
}
