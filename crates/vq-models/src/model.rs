//! The paper's autoencoders (CNN, CNN+ResNet, CNN+Inception) around any vq-core quantizer.

use std::fmt;
use std::str::FromStr;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vq_core::{
    AdaptiveConfig, AdaptiveQuantizer, BackProjection, CodebookConfig, Granularity, Quantizer,
    QuantizerOutput, Router, SelectionLogits, Step, ValidAdaptiveConfig,
};

use crate::error::{ModelError, Result};
use crate::layers::{Conv2d, ConvTranspose2d, Inception, ResidualStack};
use crate::layout::{via_preferred, Layout};
use vq_ops::ops::ReluAt;

/// Encoder/decoder family (the paper's encoder ablation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncoderKind {
    /// Convolutions only.
    Cnn,
    /// Convolutions + a residual stack (the paper's base model).
    #[default]
    CnnResnet,
    /// Convolutions + an Inception block.
    CnnInception,
}

/// Which quantizer sits between encoder and decoder: `"adaptive"` or `"fixed:N,D"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizerSpec {
    /// The pool `structures(capacity)` with attention selection.
    Adaptive,
    /// One codebook `[N, D]` (the paper's Table 1).
    Fixed { n: usize, d: usize },
}

impl fmt::Display for QuantizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Adaptive => write!(f, "adaptive"),
            Self::Fixed { n, d } => write!(f, "fixed:{n},{d}"),
        }
    }
}

impl FromStr for QuantizerSpec {
    type Err = String;
    /// Accepts `adaptive`, `fixed:N,D`, `fixed:[N,D]` and `fixed:NxD`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "adaptive" {
            return Ok(Self::Adaptive);
        }
        let Some(rest) = s.strip_prefix("fixed:") else {
            return Err(format!("`{s}`: expected \"adaptive\" or \"fixed:N,D\""));
        };
        let rest = rest.trim().trim_start_matches('[').trim_end_matches(']');
        let parts: Vec<&str> = rest.split([',', 'x']).map(str::trim).collect();
        match parts.as_slice() {
            [n, d] => match (n.parse::<usize>(), d.parse::<usize>()) {
                (Ok(n), Ok(d)) if n > 0 && d > 0 => Ok(Self::Fixed { n, d }),
                _ => Err(format!("`{s}`: N and D must be positive integers")),
            },
            _ => Err(format!("`{s}`: expected \"fixed:N,D\"")),
        }
    }
}

impl Serialize for QuantizerSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for QuantizerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The whole model (the `[model]` table of a config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Encoder/decoder family.
    pub encoder: EncoderKind,
    /// h: channels of the latents (the quantizer's C). Paper: 128.
    pub hidden: usize,
    /// Channels inside a residual block. Paper: 32.
    pub residual_hidden: usize,
    /// Residual blocks per stack. Paper: 2.
    pub residual_layers: usize,
    /// `"adaptive"` or `"fixed:N,D"`.
    pub quantizer: QuantizerSpec,
    /// W: capacity `N·D` of every codebook. Paper: 65536.
    pub capacity: usize,
    /// The adaptive quantizer's codebooks `[[N, D], …]`, each of capacity W (not in the paper,
    /// which pools every structure of W); empty (the default): every structure of W.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pool: Vec<[usize; 2]>,
    /// Attention heads of the selector. Paper: 2.
    pub heads: usize,
    /// Per-vector or per-image codebook selection.
    pub granularity: Granularity,
    /// How attention becomes selection logits.
    pub selection_logits: SelectionLogits,
    /// How the pool's codebook is chosen: `attention` (the paper) or `min-error`.
    pub router: Router,
    /// How each codebook's output returns to `hidden` channels: `linear` (1×1) or `conv3x3`
    /// (the authors' script).
    pub back_projection: BackProjection,
    /// Whether the decoder starts with a 3×3 `hidden → hidden` convolution (the paper and the
    /// zalando VQ-VAE it builds on); the authors' script removes it, its place taken by the
    /// per-codebook 3×3 back-projection.
    pub decoder_conv1: bool,
    /// Permit codebooks with `N ≤ D`.
    pub allow_n_le_d: bool,
    /// α, β, EMA on/off, γ, ε.
    pub codebook: CodebookConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            encoder: EncoderKind::CnnResnet,
            hidden: 128,
            residual_hidden: 32,
            residual_layers: 2,
            quantizer: QuantizerSpec::Adaptive,
            capacity: 65536,
            heads: 2,
            granularity: Granularity::PerVector,
            selection_logits: SelectionLogits::LogAttention,
            router: Router::Attention,
            back_projection: BackProjection::Linear,
            decoder_conv1: true,
            allow_n_le_d: false,
            pool: Vec::new(),
            codebook: CodebookConfig::default(),
        }
    }
}

impl ModelConfig {
    /// The model of the authors' published script (caihongch/Adaptive-dynamic-quantization,
    /// `gumbel.py` at 19e25cf), as far as it differs from [`ModelConfig::default`]:
    /// `granularity = "raw-view"`, `selection_logits = "attention-probs"`,
    /// `back_projection = "conv3x3"`, `decoder_conv1 = false` and the authors' codebook
    /// (`codebook.init = "authors"`, no restarts). `configs/authors-variant.toml` sets the same
    /// keys; docs/design.md lists every difference.
    pub fn authors_variant() -> Self {
        Self::default().into_authors_variant()
    }

    /// This config with the keys of [`ModelConfig::authors_variant`] set (sizes, encoder,
    /// quantizer and capacity kept).
    pub fn into_authors_variant(self) -> Self {
        Self {
            granularity: Granularity::RawView,
            selection_logits: SelectionLogits::AttentionProbs,
            back_projection: BackProjection::Conv3x3,
            decoder_conv1: false,
            codebook: CodebookConfig::authors(),
            ..self
        }
    }
}

/// A [`ModelConfig`] checked for a number of input channels.
#[derive(Clone, Debug)]
pub struct ValidModelConfig {
    config: ModelConfig,
    in_channels: usize,
    quantizer: ValidAdaptiveConfig,
}

impl ValidModelConfig {
    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// Image channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// The quantizer's validated configuration.
    pub fn quantizer(&self) -> &ValidAdaptiveConfig {
        &self.quantizer
    }
}

impl ModelConfig {
    /// The vq-core configuration of the quantizer.
    pub fn quantizer_config(&self) -> AdaptiveConfig {
        let pool = match self.quantizer {
            QuantizerSpec::Adaptive => self.pool.clone(),
            QuantizerSpec::Fixed { n, d } => vec![[n, d]],
        };
        AdaptiveConfig {
            channels: self.hidden,
            capacity: Some(self.capacity),
            pool,
            heads: self.heads,
            granularity: self.granularity,
            logits: self.selection_logits,
            router: self.router,
            back_projection: self.back_projection,
            allow_n_le_d: self.allow_n_le_d,
            codebook: self.codebook.clone(),
        }
    }

    /// Checks every field for images of `in_channels` channels.
    pub fn validate(&self, in_channels: usize) -> Result<ValidModelConfig> {
        let bad = |field, reason: &str| {
            Err(ModelError::Config {
                field,
                reason: reason.into(),
            })
        };
        if in_channels == 0 {
            return bad("channels", "images need at least one channel");
        }
        if self.hidden < 2 || !self.hidden.is_multiple_of(2) {
            return bad(
                "hidden",
                "must be an even number ≥ 2 (the first convolution has hidden/2 channels)",
            );
        }
        if self.encoder == EncoderKind::CnnInception && !self.hidden.is_multiple_of(4) {
            return bad(
                "hidden",
                "must be divisible by 4 for the Inception block's four branches",
            );
        }
        if self.encoder == EncoderKind::CnnResnet
            && (self.residual_hidden == 0 || self.residual_layers == 0)
        {
            return bad(
                "residual_layers",
                "the residual stack needs ≥ 1 layer of ≥ 1 channel",
            );
        }
        if let Some(dup) = self
            .pool
            .iter()
            .enumerate()
            .find_map(|(i, nd)| self.pool[..i].contains(nd).then_some(nd))
        {
            return bad("pool", &format!("lists [{}, {}] twice", dup[0], dup[1]));
        }
        if !self.pool.is_empty() && self.quantizer != QuantizerSpec::Adaptive {
            return bad(
                "pool",
                "only the adaptive quantizer has a pool (a fixed one is its own [N, D])",
            );
        }
        let quantizer = self.quantizer_config().validate()?;
        Ok(ValidModelConfig {
            config: self.clone(),
            in_channels,
            quantizer,
        })
    }
}

/// `[B, C_in, H, W] → [B, h, H/4, W/4]`.
///
/// Variables: `conv1`, `conv2`, `conv3`, then `residual.*` or `inception.*`.
#[derive(Clone, Debug)]
pub struct Encoder {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    residual: Option<ResidualStack>,
    inception: Option<Inception>,
}

impl Encoder {
    pub fn new(cfg: &ValidModelConfig, vb: VarBuilder) -> Result<Self> {
        let (c, m) = (cfg.in_channels(), cfg.config());
        let h = m.hidden;
        Ok(Self {
            conv1: Conv2d::new(c, h / 2, 4, 2, 1, true, vb.pp("conv1"))?,
            conv2: Conv2d::new(h / 2, h, 4, 2, 1, true, vb.pp("conv2"))?,
            conv3: Conv2d::new(h, h, 3, 1, 1, true, vb.pp("conv3"))?,
            residual: (m.encoder == EncoderKind::CnnResnet)
                .then(|| {
                    ResidualStack::new(h, m.residual_hidden, m.residual_layers, vb.pp("residual"))
                })
                .transpose()?,
            inception: (m.encoder == EncoderKind::CnnInception)
                .then(|| Inception::new(h, vb.pp("inception")))
                .transpose()?,
        })
    }
}

impl Encoder {
    /// `x` `[B, C_in, H, W]` in `layout` → `[B, h, H/4, W/4]` in `layout`.
    pub fn forward_in(&self, x: &Tensor, layout: Layout) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("encoder").entered();
        let h = self.conv1.forward_in(x, layout, ReluAt::OUTPUT)?;
        let h = self.conv2.forward_in(&h, layout, ReluAt::OUTPUT)?;
        let h = self.conv3.forward_in(&h, layout, ReluAt::NONE)?;
        match (&self.residual, &self.inception) {
            (Some(r), _) => r.forward_in(&h, layout),
            (_, Some(i)) => i.forward_in(&h, layout),
            _ => Ok(h),
        }
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        via_preferred(x, |x, l| self.forward_in(x, l))
    }
}

/// `[B, h, H/4, W/4] → [B, C_in, H, W]`.
///
/// Variables: `conv1` (unless `decoder_conv1 = false`), then `residual.*` or `inception.*`,
/// `deconv1`, `deconv2`.
#[derive(Clone, Debug)]
pub struct Decoder {
    conv1: Option<Conv2d>,
    residual: Option<ResidualStack>,
    inception: Option<Inception>,
    deconv1: ConvTranspose2d,
    deconv2: ConvTranspose2d,
}

impl Decoder {
    pub fn new(cfg: &ValidModelConfig, vb: VarBuilder) -> Result<Self> {
        let (c, m) = (cfg.in_channels(), cfg.config());
        let h = m.hidden;
        Ok(Self {
            conv1: m
                .decoder_conv1
                .then(|| Conv2d::new(h, h, 3, 1, 1, true, vb.pp("conv1")))
                .transpose()?,
            residual: (m.encoder == EncoderKind::CnnResnet)
                .then(|| {
                    ResidualStack::new(h, m.residual_hidden, m.residual_layers, vb.pp("residual"))
                })
                .transpose()?,
            inception: (m.encoder == EncoderKind::CnnInception)
                .then(|| Inception::new(h, vb.pp("inception")))
                .transpose()?,
            deconv1: ConvTranspose2d::new(h, h / 2, 4, 2, 1, vb.pp("deconv1"))?,
            deconv2: ConvTranspose2d::new(h / 2, c, 4, 2, 1, vb.pp("deconv2"))?,
        })
    }
}

impl Decoder {
    /// `z` `[B, h, H/4, W/4]` in `layout` → `[B, C_in, H, W]` in `layout`.
    pub fn forward_in(&self, z: &Tensor, layout: Layout) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("decoder").entered();
        let h = match &self.conv1 {
            Some(conv1) => conv1.forward_in(z, layout, ReluAt::NONE)?,
            None => z.clone(),
        };
        // ReLU(stack) → deconv1 → ReLU: both ReLUs fused into deconv1 (the residual stack's
        // final ReLU becomes deconv1's input ReLU).
        let (h, relu_in) = match (&self.residual, &self.inception) {
            (Some(r), _) => (r.forward_without_relu(&h, layout)?, true),
            (_, Some(i)) => (i.forward_in(&h, layout)?, false),
            _ => (h, true),
        };
        let both = ReluAt {
            input: relu_in,
            output: true,
        };
        let h = self.deconv1.forward_in(&h, layout, both)?;
        self.deconv2.forward_in(&h, layout, ReluAt::NONE)
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        via_preferred(z, |z, l| self.forward_in(z, l))
    }
}

/// What [`VqVae::forward`] returns.
#[derive(Clone, Debug)]
pub struct VqVaeOutput {
    /// `[B, C, H, W]`: the reconstruction.
    pub reconstruction: Tensor,
    /// `[B, h, H/4, W/4]`: the encoder output.
    pub z_e: Tensor,
    /// Scalar: mean squared reconstruction error.
    pub recon_loss: Tensor,
    /// Scalar: `recon_loss + quantizer loss` (the paper's eq. 4).
    pub loss: Tensor,
    /// The quantizer's output and statistics.
    pub quant: QuantizerOutput,
}

/// Encoder → quantizer → decoder.
///
/// Variables: `encoder.*`, `quantizer.*`, `decoder.*`.
#[derive(Clone, Debug)]
pub struct VqVae<Q: Quantizer = AdaptiveQuantizer> {
    encoder: Encoder,
    quantizer: Q,
    decoder: Decoder,
}

impl VqVae<AdaptiveQuantizer> {
    /// Builds the model a validated config describes.
    pub fn new(cfg: &ValidModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            quantizer: AdaptiveQuantizer::new(cfg.quantizer(), vb.pp("quantizer"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
        })
    }
}

impl<Q: Quantizer> VqVae<Q> {
    /// Assembles a model from parts (any quantizer with `C = hidden`).
    pub fn from_parts(encoder: Encoder, quantizer: Q, decoder: Decoder) -> Self {
        Self {
            encoder,
            quantizer,
            decoder,
        }
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    /// The quantizer.
    pub fn quantizer(&self) -> &Q {
        &self.quantizer
    }
    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The quantizer's data-driven codebook initialisation (see
    /// [`Quantizer::initialise_codebooks`]) from the latents of the training batches `images`
    /// (each `[B, C, H, W]`), encoded without gradient. Returns whether anything was initialised.
    pub fn initialise_codebooks(
        &self,
        images: &[Tensor],
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool> {
        let _span = tracing::debug_span!("initialise_codebooks", batches = images.len()).entered();
        let mut rows = Vec::with_capacity(images.len());
        let mut per_step = 0;
        for x in images {
            let z = self.encoder.forward(x)?.detach(); // [B, h, H', W']
            let c = z.dim(1)?;
            let flat = z.permute((0, 2, 3, 1))?.contiguous()?.reshape(((), c))?;
            per_step = per_step.max(flat.dim(0)?);
            rows.push(flat);
        }
        if rows.is_empty() {
            return Ok(false);
        }
        let flat = Tensor::cat(&rows, 0)?;
        Ok(self.quantizer.initialise_codebooks(&flat, per_step, rng)?)
    }

    /// `x` `[B, C, H, W]` (H, W divisible by 4) → reconstruction, losses and statistics.
    pub fn forward(&self, x: &Tensor, step: &mut Step<'_>) -> Result<VqVaeOutput> {
        let _span = tracing::trace_span!("vqvae").entered();
        let (_, _, h, w) = x
            .dims4()
            .map_err(|_| ModelError::Input(format!("expected [B, C, H, W], got {:?}", x.dims())))?;
        if h % 4 != 0 || w % 4 != 0 {
            return Err(ModelError::Input(format!(
                "height and width must be divisible by 4, got {h}×{w}"
            )));
        }
        // The layers (and on the CPU the quantizer) run channel-last; the caller sees
        // [B, C, H, W]: z_e and z_q are converted for the output, off the loss's path.
        let l = Layout::for_tensor(x);
        let z_l = self.encoder.forward_in(&l.from_nchw(x)?, l)?;
        let (z_e, quant, reconstruction) = match l {
            Layout::ChannelsLast => {
                let mut quant = self.quantizer.forward_channels_last(&z_l, step)?;
                let recon = self.decoder.forward_in(&quant.z_q, l)?;
                quant.z_q = l.to_nchw(&quant.z_q)?;
                (l.to_nchw(&z_l)?, quant, l.to_nchw(&recon)?)
            }
            Layout::ChannelsFirst => {
                let quant = self.quantizer.forward(&z_l, step)?;
                let recon = self.decoder.forward_in(&quant.z_q, l)?;
                (z_l, quant, recon)
            }
        };
        let recon_loss = (&reconstruction - x)?.sqr()?.mean_all()?;
        let loss = (&recon_loss + &quant.loss)?;
        Ok(VqVaeOutput {
            reconstruction,
            z_e,
            recon_loss,
            loss,
            quant,
        })
    }
}
