//! The model's configuration (`[model]` of a run config) and its validated form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vq_core::{
    AdaptiveConfig, BackProjection, CodebookConfig, FsqLevels, Granularity, LfqBits, PoolConfig,
    PoolMember, RvqShape, SelectionLogits, ValidAdaptiveConfig,
};

use crate::error::{ModelError, Result};

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

/// Which quantizer sits between encoder and decoder: `"adaptive"`, `"fixed:N,D"`,
/// `"fsq:L1,L2,..."`, `"lfq:BITS"` or `"rvq:KxN,D"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantizerSpec {
    /// The pool `structures(capacity)` with attention selection.
    Adaptive,
    /// One codebook `[N, D]` (the paper's Table 1).
    Fixed { n: usize, d: usize },
    /// Finite scalar quantization with these levels per channel, between projections
    /// `hidden → len(levels) → hidden` (a pool of one FSQ member).
    Fsq(FsqLevels),
    /// Lookup-free quantization with this many bits, between projections
    /// `hidden → bits → hidden` (a pool of one LFQ member; its loss is `[model.lfq]`).
    Lfq(LfqBits),
    /// Residual VQ, K stages of `[N, D]`, between projections `hidden → D → hidden` (a pool
    /// of one residual member; quantize dropout is `model.rvq_min_stages`).
    Rvq(RvqShape),
}

impl fmt::Display for QuantizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Adaptive => write!(f, "adaptive"),
            Self::Fixed { n, d } => write!(f, "fixed:{n},{d}"),
            Self::Fsq(l) => write!(f, "{}", String::from(l.clone())),
            Self::Lfq(b) => write!(f, "{}", String::from(*b)),
            Self::Rvq(r) => write!(f, "{}", String::from(*r)),
        }
    }
}

impl FromStr for QuantizerSpec {
    type Err = String;
    /// Accepts `adaptive`, `fixed:N,D`, `fixed:[N,D]`, `fixed:NxD`, `fsq:L1,L2,...`,
    /// `lfq:BITS` and `rvq:KxN,D`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "adaptive" {
            return Ok(Self::Adaptive);
        }
        if s.starts_with("fsq:") {
            return FsqLevels::try_from(s.to_string()).map(Self::Fsq);
        }
        if s.starts_with("lfq:") {
            return LfqBits::try_from(s.to_string()).map(Self::Lfq);
        }
        if s.starts_with("rvq:") {
            return RvqShape::try_from(s.to_string()).map(Self::Rvq);
        }
        let Some(rest) = s.strip_prefix("fixed:") else {
            return Err(format!(
                "`{s}`: expected \"adaptive\", \"fixed:N,D\", \"fsq:L1,L2,...\", \"lfq:BITS\" or \"rvq:KxN,D\""
            ));
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
    /// Whether the decoder starts with a 3×3 `hidden → hidden` convolution (the paper and the
    /// zalando VQ-VAE it builds on); the authors' script removes it, its place taken by the
    /// per-codebook 3×3 back-projection.
    pub decoder_conv1: bool,
    /// The quantizer's pool and routing (vq-core's own config; its keys sit in `[model]`):
    /// `capacity` (W, paper 65536; W must be `N·D` of a fixed codebook too), `pool` (the
    /// adaptive quantizer's `[[N, D], …]`, not in the paper; empty: every structure of W),
    /// `heads` (paper 2), `granularity`, `selection_logits`, `router` (`attention`, the
    /// paper's, or `min-error`), `back_projection` (`linear` or the authors' `conv3x3`),
    /// `allow_n_le_d`, and `[model.pool.codebook]` (α, β, EMA, γ, ε, initialisation, restarts).
    #[serde(flatten)]
    pub pool: PoolConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            encoder: EncoderKind::CnnResnet,
            hidden: 128,
            residual_hidden: 32,
            residual_layers: 2,
            quantizer: QuantizerSpec::Adaptive,
            decoder_conv1: true,
            pool: PoolConfig::default(),
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
            decoder_conv1: false,
            pool: PoolConfig {
                granularity: Granularity::RawView,
                selection_logits: SelectionLogits::AttentionProbs,
                back_projection: BackProjection::Conv3x3,
                codebook: CodebookConfig::authors(),
                ..self.pool
            },
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
        let structures = match &self.quantizer {
            QuantizerSpec::Adaptive => self.pool.structures.clone(),
            &QuantizerSpec::Fixed { n, d } => vec![PoolMember::Vq([n, d])],
            QuantizerSpec::Fsq(levels) => vec![PoolMember::Fsq(levels.clone())],
            &QuantizerSpec::Lfq(bits) => vec![PoolMember::Lfq(bits)],
            &QuantizerSpec::Rvq(shape) => vec![PoolMember::Rvq(shape)],
        };
        AdaptiveConfig {
            channels: self.hidden,
            pool: PoolConfig {
                structures,
                ..self.pool.clone()
            },
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
        let structures = &self.pool.structures;
        if let Some(dup) = structures
            .iter()
            .enumerate()
            .find_map(|(i, nd)| structures[..i].contains(nd).then_some(nd))
        {
            return bad("pool", &format!("lists {dup} twice"));
        }
        if !structures.is_empty() && self.quantizer != QuantizerSpec::Adaptive {
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
