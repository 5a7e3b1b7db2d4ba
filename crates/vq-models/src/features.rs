//! Feature maps that carry their memory format, and the [`Layer`] trait of every block that
//! runs on them: a model picks the format once ([`FeatureMap::new`]) and its layers follow it.

use candle_core::{Result, Tensor};
use vq_ops::ops::{is_cpu_f32 as cpu_f32, relu, to_nchw, to_nhwc};

/// Memory format of 4-D activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryFormat {
    /// `[B, C, H, W]`: candle's convolutions, and the public API of every layer.
    ChannelsFirst,
    /// `[B, H, W, C]`: the CPU convolution ops of vq-ops.
    ChannelsLast,
}

impl MemoryFormat {
    /// The format the layers run fastest in for `x`'s device and dtype: channel-last on the CPU
    /// in f32 (vq-ops' convolutions), channel-first elsewhere (candle's).
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
}

/// A 4-D activation `[B, C, H, W]` stored in a [`MemoryFormat`].
#[derive(Clone, Debug)]
pub struct FeatureMap {
    tensor: Tensor,
    format: MemoryFormat,
}

impl FeatureMap {
    /// `x` `[B, C, H, W]` in the format [`MemoryFormat::for_tensor`] picks for it.
    pub fn new(x: &Tensor) -> Result<Self> {
        Self::from_nchw(x, MemoryFormat::for_tensor(x))
    }

    /// `x` `[B, C, H, W]` stored in `format`.
    pub fn from_nchw(x: &Tensor, format: MemoryFormat) -> Result<Self> {
        let tensor = match format {
            MemoryFormat::ChannelsFirst => x.clone(),
            MemoryFormat::ChannelsLast => to_nhwc(x)?,
        };
        Ok(Self { tensor, format })
    }

    /// A tensor already stored in `format` (`[B, H, W, C]` for channel-last).
    pub fn from_stored(tensor: Tensor, format: MemoryFormat) -> Self {
        Self { tensor, format }
    }

    /// The values as `[B, C, H, W]`.
    pub fn to_nchw(&self) -> Result<Tensor> {
        match self.format {
            MemoryFormat::ChannelsFirst => Ok(self.tensor.clone()),
            MemoryFormat::ChannelsLast => to_nchw(&self.tensor),
        }
    }

    /// The stored tensor (`[B, H, W, C]` for channel-last).
    pub fn stored(&self) -> &Tensor {
        &self.tensor
    }

    /// The memory format.
    pub fn format(&self) -> MemoryFormat {
        self.format
    }

    /// Another tensor stored in this map's format.
    pub fn with(&self, tensor: Tensor) -> Self {
        Self::from_stored(tensor, self.format)
    }

    /// `f` applied to the values as `[B, C, H, W]`, the result stored in this map's format.
    pub fn map_nchw(&self, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Self::from_nchw(&f(&self.to_nchw()?)?, self.format)
    }

    /// `relu(self)`.
    pub fn relu(&self) -> Result<Self> {
        Ok(self.with(relu(&self.tensor)?))
    }

    /// The maps concatenated along the channels (all in the first map's format).
    pub fn cat_channels(maps: &[FeatureMap]) -> Result<Self> {
        let format = maps
            .first()
            .map_or(MemoryFormat::ChannelsFirst, |m| m.format);
        if maps.iter().any(|m| m.format != format) {
            candle_core::bail!("cat_channels: feature maps in different memory formats");
        }
        let parts: Vec<&Tensor> = maps.iter().map(|m| &m.tensor).collect();
        Ok(Self::from_stored(
            Tensor::cat(&parts, format.channel_axis())?,
            format,
        ))
    }

    /// `layer(self)`.
    pub fn apply(&self, layer: &impl Layer) -> Result<Self> {
        layer.forward_features(self)
    }
}

/// A block of the autoencoders: runs on a [`FeatureMap`] in whatever format it carries and
/// returns one in the same format.
pub trait Layer {
    /// `x` → the layer's output, in `x`'s memory format.
    fn forward_features(&self, x: &FeatureMap) -> Result<FeatureMap>;
}

/// [`candle_core::Module::forward`] for a [`Layer`]: `x` `[B, C, H, W]` in its preferred format, the result
/// back as `[B, C, H, W]`.
pub(crate) fn forward_nchw(layer: &impl Layer, x: &Tensor) -> Result<Tensor> {
    FeatureMap::new(x)?.apply(layer)?.to_nchw()
}

/// Implements candle's `Module` (channel-first tensors) for [`Layer`]s.
macro_rules! module_via_layer {
    ($($t:ty),*) => {$(
        impl candle_core::Module for $t {
            fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
                $crate::features::forward_nchw(self, x)
            }
        }
    )*};
}
pub(crate) use module_via_layer;
