//! Serde configurations of the quantizers and the checked types they are validated into.
//!
//! Following linfa's convention, a `*Config` is plain data with defaults (what a TOML file holds)
//! and `validate()` turns it into a checked type (`Valid*`) before any tensor is created; every
//! constructor of this crate takes the checked type, so an invalid configuration cannot reach a
//! forward pass.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::fsq::{FsqConfig, ValidFsqConfig};
use crate::lfq::{LfqConfig, LfqLoss, ValidLfqConfig};
use crate::rvq::{RvqConfig, ValidRvqConfig};
use crate::structures::structures;

/// Hyper-parameters of one codebook's learning rule (the paper's eq. 3 and its EMA update).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodebookConfig {
    /// α: weight of the commitment term `‖z_e − sg[z_q]‖²`. Paper: 0.25.
    pub commitment: f64,
    /// β: overall weight of the VQ loss `β·(‖sg[z_e] − z_q‖² + α‖z_e − sg[z_q]‖²)`. Paper: 1.
    pub beta: f64,
    /// `true`: the codebook follows an exponential moving average of its assigned vectors
    /// (the paper's default). `false`: the codebook is a trainable variable learned by gradient
    /// (the paper's "without EMA" ablation).
    pub ema: bool,
    /// γ: EMA decay, in (0, 1). Paper: 0.99.
    pub decay: f64,
    /// ε: Laplace smoothing of the EMA cluster sizes.
    pub epsilon: f64,
    /// How the codewords start (default: k-means++ on projected latents; `"authors"` /
    /// `"normal"` is the authors' N(0, 1) draw).
    pub init: CodebookInit,
    /// Lloyd iterations after the k-means++ seeding ([`CodebookInit::Kmeans`]).
    pub kmeans_iters: usize,
    /// Training batches whose latents form the k-means sample (the trainer encodes them once
    /// before the first step; a quantizer used alone takes its first batch).
    pub init_batches: usize,
    /// Dead-codeword restart: every codeword whose EMA cluster size falls below this fraction of
    /// the mean cluster size (`ΣN / N`, the vectors a codeword receives per step on average) moves
    /// to a random vector of the current batch, with its EMA statistics reset (cluster size = the
    /// mean, running sum = the vector times it). 0 = never; EMA codebooks only. Not in the paper.
    pub restart_below: f64,
    /// How the gradient passes the quantization to the encoder: `straight-through` (the
    /// paper) or `rotation` (Fifty et al., 2024). The forward value is the codeword either way.
    pub gradient: VqGradient,
    /// SimVQ ("Addressing Representation Collapse in Vector Quantized Models with One Linear
    /// Layer", Zhu et al., 2024): the codebook is a frozen `N(0, 1/D)` draw times a learned
    /// `D × D` linear map, `C·Wᵀ`, learned by the VQ loss's codebook term (needs `ema = false`;
    /// `init` and restarts do not apply: the frozen draw is its initialisation). Not in the
    /// paper.
    pub sim_vq: bool,
    /// `l2` (the paper) or `cosine`: inputs and codewords l2-normalised, so the nearest codeword
    /// is the most similar in direction (vector-quantize-pytorch's `use_cosine_sim`). Not in
    /// the paper.
    pub distance: Distance,
}

/// How a VQ codebook compares vectors (TOML `distance = "cosine"` in `[model.codebook]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distance {
    /// Squared Euclidean distance.
    #[default]
    L2,
    /// Cosine similarity: inputs and codewords are l2-normalised (norms clamped at 1e-6), the
    /// search, the loss and the EMA statistics work on unit vectors, and every codeword is
    /// renormalised after each update; the output is the unit codeword.
    Cosine,
}

/// The gradient estimator of a VQ codebook (TOML `gradient = "rotation"` in
/// `[model.codebook]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VqGradient {
    /// The gradient with respect to the codeword is passed to the input unchanged.
    #[default]
    StraightThrough,
    /// The rotation trick ("Restructuring Vector Quantization with the Rotation Trick", Fifty et
    /// al., 2024): the output is `sg[λR]·z` with `R` the rotation (a reflection pair) taking
    /// `z`'s direction to the codeword's and `λ = ‖e‖/‖z‖`, so the gradient reaching `z` is
    /// rotated and scaled as the codeword is from `z`. As `vector-quantize-pytorch`'s
    /// `rotate_to` (norms clamped at 1e-6), except that the forward value is the codeword
    /// exactly rather than `λRz` after rounding.
    Rotation,
}

/// Initial codewords.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodebookInit {
    /// The authors' initialisation (`"normal"` or `"authors"`): codewords (and EMA sums) drawn
    /// from N(0, 1), EMA cluster sizes 0. When the projected vectors are small against `√D`,
    /// every vector picks the same codeword and the others are never used.
    #[serde(alias = "authors")]
    Normal,
    /// Codewords set to random vectors of the first training batch (EMA cluster sizes 1).
    Data,
    /// k-means++ seeding and Lloyd iterations on the codebook's own projected latents of the
    /// first `init_batches` batches ([`crate::kmeans`]); EMA cluster sizes from the final
    /// assignment, scaled to one batch.
    #[default]
    Kmeans,
}

impl CodebookInit {
    /// Short name for run labels and reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "authors",
            Self::Data => "data",
            Self::Kmeans => "kmeans",
        }
    }
}

impl Default for CodebookConfig {
    fn default() -> Self {
        Self {
            commitment: 0.25,
            beta: 1.0,
            ema: true,
            decay: 0.99,
            epsilon: 1e-5,
            init: CodebookInit::Kmeans,
            kmeans_iters: 10,
            init_batches: 4,
            restart_below: 0.03,
            gradient: VqGradient::StraightThrough,
            sim_vq: false,
            distance: Distance::L2,
        }
    }
}

impl CodebookConfig {
    /// The authors' settings: N(0, 1) codewords, no k-means, no restarts (the paper as
    /// published; large-D codebooks collapse to a few codewords, see docs/design.md).
    pub fn authors() -> Self {
        Self {
            init: CodebookInit::Normal,
            restart_below: 0.0,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        finite_non_negative("commitment", self.commitment)?;
        finite_non_negative("beta", self.beta)?;
        if !(self.decay > 0.0 && self.decay < 1.0) {
            return Err(ConfigError::DecayOutOfRange(self.decay));
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(ConfigError::invalid(
                "epsilon",
                format!("must be a finite number > 0, got {}", self.epsilon),
            ));
        }
        finite_non_negative("restart_below", self.restart_below)?;
        if self.restart_below >= 1.0 {
            return Err(ConfigError::invalid(
                "restart_below",
                format!(
                    "is a fraction of the mean cluster size and must be < 1, got {}",
                    self.restart_below
                ),
            ));
        }
        if self.init_batches == 0 {
            return Err(ConfigError::invalid("init_batches", "must be ≥ 1"));
        }
        if self.sim_vq && self.ema {
            return Err(ConfigError::invalid(
                "sim_vq",
                "SimVQ learns its linear map by gradient: set ema = false (and restart_below = 0)",
            ));
        }
        if self.restart_below > 0.0 && !self.ema {
            return Err(ConfigError::invalid(
                "restart_below",
                "dead-code restarts need an EMA codebook (ema = true)",
            ));
        }
        Ok(())
    }
}

fn finite_non_negative(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("must be a finite number ≥ 0, got {v}"),
        ))
    }
}

/// One codebook `[N, D]` and its learning rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VqConfig {
    /// N: number of codewords.
    pub num_embeddings: usize,
    /// D: dimension of each codeword.
    pub embedding_dim: usize,
    /// Learning rule of the codebook.
    pub codebook: CodebookConfig,
}

impl Default for VqConfig {
    fn default() -> Self {
        Self {
            num_embeddings: 512,
            embedding_dim: 128,
            codebook: CodebookConfig::default(),
        }
    }
}

impl VqConfig {
    /// Checks every field (`N ≥ 1`, `D ≥ 1`, α, β ≥ 0, γ ∈ (0, 1), ε > 0).
    pub fn validate(&self) -> Result<ValidVqConfig, ConfigError> {
        if self.num_embeddings == 0 {
            return Err(ConfigError::invalid("num_embeddings", "must be ≥ 1"));
        }
        if self.embedding_dim == 0 {
            return Err(ConfigError::invalid("embedding_dim", "must be ≥ 1"));
        }
        if self.num_embeddings > u32::MAX as usize {
            return Err(ConfigError::invalid(
                "num_embeddings",
                "must fit in u32 (codes are stored as u32)",
            ));
        }
        self.codebook.validate()?;
        Ok(ValidVqConfig(self.clone()))
    }
}

/// A [`VqConfig`] whose fields have been checked; the only way to build a
/// [`VectorQuantizer`](crate::VectorQuantizer).
#[derive(Clone, Debug, PartialEq)]
pub struct ValidVqConfig(VqConfig);

impl ValidVqConfig {
    /// N.
    pub fn num_embeddings(&self) -> usize {
        self.0.num_embeddings
    }
    /// D.
    pub fn embedding_dim(&self) -> usize {
        self.0.embedding_dim
    }
    /// The learning rule.
    pub fn codebook(&self) -> &CodebookConfig {
        &self.0.codebook
    }
    /// The configuration this was validated from.
    pub fn config(&self) -> &VqConfig {
        &self.0
    }
}

/// Which vectors share one codebook choice in the adaptive quantizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// Every latent vector (spatial position) picks its own codebook (the paper's reading).
    #[default]
    PerVector,
    /// One choice per image for all of its positions; the attention query is the mean of the
    /// image's latent vectors.
    PerImage,
    /// The authors' published script: the unit is a row of the raw `z_e.view(-1, C)` of the
    /// channel-first `[B, C, H, W]` tensor, i.e. `C` consecutive elements of one image's
    /// channel-major memory (for `C = 2·H·W`, one channel pair over all positions), not a
    /// latent vector. There are `B·H·W` such rows; each codebook's back-projected output is
    /// viewed the same way and the chosen rows are put back by the inverse view. Codes of this
    /// selection cannot be decoded position by position.
    RawView,
}

/// How each codebook's `D`-dimensional output returns to the encoder's `C` channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackProjection {
    /// `D → C` linear map per vector (a 1×1 convolution), the paper's "dimension
    /// transformation".
    #[default]
    Linear,
    /// A 3×3 convolution `D → C` with bias and padding 1 over the `[H, W]` positions, as in the
    /// authors' script (where it replaces the decoder's first convolution). Needs latents with
    /// two spatial dimensions; a codebook's output at one position then depends on its codes
    /// at the 8 neighbours, so a pool's codes (one codebook per position) cannot be decoded.
    Conv3x3,
}

/// How the multi-head attention between the query and the per-codebook keys becomes the logits
/// fed to the Gumbel-Softmax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectionLogits {
    /// `log(mean_h softmax_i(q_h·k_{h,i}/√d_h))`: the Gumbel-Softmax samples codebook `i` with
    /// the head-averaged attention probability, i.e. the paper's `π(i) ∝ exp(k_iᵀ z_e)` (exactly
    /// so for one head). Computed stably with log-sum-exp.
    #[default]
    LogAttention,
    /// `mean_h q_h·k_{h,i}/√d_h`: the head-averaged attention scores before the softmax.
    MeanScores,
    /// The head-averaged attention *probabilities* used directly as logits, as in the authors'
    /// published code (`F.gumbel_softmax(attn_weights)`); selection is then close to uniform.
    AttentionProbs,
}

/// Which VQ losses make the pool's loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolLoss {
    /// The mean over the pool of every codebook's VQ loss on every vector (the paper's
    /// "mean of the pool's VQ losses"): the commitment term of every codebook pulls the
    /// encoder, whether or not a vector uses it.
    #[default]
    Mean,
    /// Each vector's VQ loss in the codebook that quantizes it only, averaged over the vectors
    /// (not in the paper). The codebooks a vector does not use no longer pull the encoder toward
    /// their codewords, and a pool that routes every vector to one codebook trains as that
    /// fixed codebook does. Every codebook still sees every vector in its EMA update; the
    /// min-error router's back-projection terms stay over the whole pool, so every
    /// back-projection keeps learning. Not with `granularity = "raw-view"`.
    Selected,
}

/// Which codebook of the pool each selection unit uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Router {
    /// The paper's: attention between the unit and one learned key per codebook gives logits
    /// (see [`SelectionLogits`]), a hard straight-through Gumbel-Softmax (or the argmax, at
    /// evaluation) picks the codebook.
    #[default]
    Attention,
    /// Not in the paper: every codebook already quantizes every vector, so each unit takes the
    /// codebook whose back-projected output `project_out(q_i)` is nearest to `z_e` (squared L2,
    /// summed over the image's positions for per-image units; ties to the lowest index). No
    /// selector and no noise. Each codebook's VQ loss gains `β‖project_out(sg[q_i]) − sg[z_e]‖²`
    /// (mean squared error), which trains the back-projections to return to the encoder's
    /// space, so that the distances compare like with like.
    MinError,
    /// A diagnostic, not a router: every unit takes codebook `index` of the pool
    /// (`router = { only = 5 }`). The pool is otherwise unchanged (every codebook still
    /// quantizes every vector, is EMA-updated and adds its VQ loss to the mean), so comparing
    /// it with the fixed codebook `index` separates the cost of routing from the cost of the
    /// pool itself.
    Only(usize),
}

impl Router {
    /// Whether the choice is deterministic (no Gumbel noise: sampled and argmax agree).
    pub fn is_deterministic(self) -> bool {
        !matches!(self, Router::Attention)
    }
}

/// One member of a pool: a VQ codebook `[N, D]` (TOML `[N, D]`), an FSQ quantizer
/// (TOML `"fsq:8,8,8,5,5,5"`, the levels per channel; see [`crate::Fsq`]) or an LFQ quantizer
/// (TOML `"lfq:16"`, its bits; see [`crate::Lfq`]) or a residual stack (TOML `"rvq:2x256,8"`,
/// K stages of `[N, D]`; see [`crate::ResidualVq`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a pool member: [N, D], \"fsq:L1,L2,...\", \"lfq:BITS\" or \"rvq:KxN,D\""
)]
pub enum PoolMember {
    /// A VQ codebook of `N` codewords of dimension `D`.
    Vq([usize; 2]),
    /// FSQ with these levels per channel.
    Fsq(FsqLevels),
    /// LFQ with this many bits (channels).
    Lfq(LfqBits),
    /// Residual VQ: K stages of `[N, D]`.
    Rvq(RvqShape),
}

impl From<[usize; 2]> for PoolMember {
    fn from(nd: [usize; 2]) -> Self {
        Self::Vq(nd)
    }
}

impl PoolMember {
    /// An FSQ member with these levels per channel.
    pub fn fsq(levels: &[u32]) -> Self {
        Self::Fsq(FsqLevels(levels.to_vec()))
    }

    /// An LFQ member of `bits` channels (`2^bits` codes).
    pub fn lfq(bits: u32) -> Self {
        Self::Lfq(LfqBits(bits))
    }

    /// A residual member of `stages` codebooks `[n, d]`.
    pub fn rvq(stages: usize, n: usize, d: usize) -> Self {
        Self::Rvq(RvqShape { stages, n, d })
    }

    /// Whether a pool with this member needs equal rate (every member the same number of
    /// codes) rather than equal capacity `N·D = W`: FSQ, LFQ and residual members.
    fn needs_equal_rate(&self) -> bool {
        !matches!(self, Self::Vq(_))
    }
}

impl std::fmt::Display for PoolMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vq([n, d]) => write!(f, "[{n}, {d}]"),
            Self::Fsq(l) => write!(f, "{}", String::from(l.clone())),
            Self::Lfq(b) => write!(f, "{}", String::from(*b)),
            Self::Rvq(r) => write!(f, "{}", String::from(*r)),
        }
    }
}

/// FSQ levels per channel, written `"fsq:8,8,8,5,5,5"` in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FsqLevels(pub Vec<u32>);

impl TryFrom<String> for FsqLevels {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        let rest = s
            .trim()
            .strip_prefix("fsq:")
            .ok_or_else(|| format!("`{s}`: expected \"fsq:L1,L2,...\" (levels per channel)"))?;
        let levels = rest
            .split(',')
            .map(|v| v.trim().parse::<u32>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("`{s}`: levels must be whole numbers ({e})"))?;
        Ok(Self(levels))
    }
}

impl From<FsqLevels> for String {
    fn from(l: FsqLevels) -> String {
        let v: Vec<String> = l.0.iter().map(u32::to_string).collect();
        format!("fsq:{}", v.join(","))
    }
}

/// LFQ bits, written `"lfq:16"` in a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LfqBits(pub u32);

impl TryFrom<String> for LfqBits {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        let rest = s
            .trim()
            .strip_prefix("lfq:")
            .ok_or_else(|| format!("`{s}`: expected \"lfq:BITS\""))?;
        rest.trim()
            .parse::<u32>()
            .map(Self)
            .map_err(|e| format!("`{s}`: the bits must be a whole number ({e})"))
    }
}

impl From<LfqBits> for String {
    fn from(b: LfqBits) -> String {
        format!("lfq:{}", b.0)
    }
}

/// The shape of a residual member, written `"rvq:KxN,D"` (K stages of `[N, D]`) in a
/// configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RvqShape {
    /// K.
    pub stages: usize,
    /// N.
    pub n: usize,
    /// D.
    pub d: usize,
}

impl TryFrom<String> for RvqShape {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}`: expected \"rvq:KxN,D\" (K stages of [N, D] codebooks)");
        let rest = s.trim().strip_prefix("rvq:").ok_or_else(bad)?;
        let (k, nd) = rest.split_once('x').ok_or_else(bad)?;
        let (n, d) = nd.split_once(',').ok_or_else(bad)?;
        let num = |v: &str| v.trim().parse::<usize>().map_err(|_| bad());
        Ok(Self {
            stages: num(k)?,
            n: num(n)?,
            d: num(d)?,
        })
    }
}

impl From<RvqShape> for String {
    fn from(r: RvqShape) -> String {
        format!("rvq:{}x{},{}", r.stages, r.n, r.d)
    }
}

/// A checked [`PoolMember`].
#[derive(Clone, Debug, PartialEq)]
pub enum ValidMember {
    /// A VQ codebook.
    Vq(ValidVqConfig),
    /// An FSQ quantizer.
    Fsq(ValidFsqConfig),
    /// An LFQ quantizer.
    Lfq(ValidLfqConfig),
    /// A residual stack.
    Rvq(ValidRvqConfig),
}

impl ValidMember {
    /// N: the number of codes.
    pub fn num_codes(&self) -> usize {
        match self {
            Self::Vq(c) => c.num_embeddings(),
            Self::Fsq(c) => c.codebook_size() as usize,
            Self::Lfq(c) => c.codebook_size() as usize,
            Self::Rvq(c) => c.codebook_size() as usize,
        }
    }
    /// Its label in logs and reports: `[N,D]` for a VQ codebook, `fsq:L1,L2,…`, `lfq:BITS`.
    pub fn label(&self) -> String {
        match self {
            Self::Vq(c) => format!("[{},{}]", c.num_embeddings(), c.embedding_dim()),
            Self::Fsq(c) => String::from(FsqLevels(c.levels().to_vec())),
            Self::Lfq(c) => String::from(LfqBits(c.bits() as u32)),
            Self::Rvq(c) => String::from(RvqShape {
                stages: c.stages(),
                n: c.stage().num_embeddings(),
                d: c.stage().embedding_dim(),
            }),
        }
    }
    /// D: the width of the vectors it quantizes.
    pub fn dim(&self) -> usize {
        match self {
            Self::Vq(c) => c.embedding_dim(),
            Self::Fsq(c) => c.levels().len(),
            Self::Lfq(c) => c.bits(),
            Self::Rvq(c) => c.stage().embedding_dim(),
        }
    }
}

/// The pool of codebooks of an [`AdaptiveQuantizer`](crate::AdaptiveQuantizer) and how it
/// routes: everything of its configuration but the input width. A model config nests it as it
/// is (its keys sit beside the model's own in a TOML `[model]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    /// W: the capacity every codebook of the pool must have (`N·D = W`). With no `structures`
    /// the pool is [`structures(W)`](crate::structures).
    pub capacity: Option<usize>,
    /// The pool's members (key `pool`: `[[N, D], "fsq:8,8,8,5,5,5", "lfq:16", ...]`); empty
    /// means `structures(capacity)`. A pool with an FSQ or LFQ member must have equal rate:
    /// every member the same number of codes (`capacity` is then not checked).
    #[serde(rename = "pool", skip_serializing_if = "Vec::is_empty")]
    pub structures: Vec<PoolMember>,
    /// Attention heads of the selector (paper: 2). Must divide `channels`.
    pub heads: usize,
    /// Per latent vector or per image selection.
    pub granularity: Granularity,
    /// How attention becomes Gumbel-Softmax logits.
    pub selection_logits: SelectionLogits,
    /// How a codebook is chosen (the paper's attention selector, or the nearest output).
    pub router: Router,
    /// How each codebook's output returns to `C` channels.
    pub back_projection: BackProjection,
    /// Permit codebooks with `N ≤ D`.
    pub allow_n_le_d: bool,
    /// Learning rule shared by every codebook of the pool.
    pub codebook: CodebookConfig,
    /// Loss of every LFQ member (TOML `[model.lfq]`).
    pub lfq: LfqLoss,
    /// Quantize dropout of every residual member: the fewest stages a training forward keeps
    /// (none: every stage, always).
    pub rvq_min_stages: Option<usize>,
    /// Which VQ losses make the pool's loss: `mean` (the paper) or `selected`.
    pub vq_loss: PoolLoss,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            capacity: Some(65536),
            structures: Vec::new(),
            heads: 2,
            granularity: Granularity::PerVector,
            selection_logits: SelectionLogits::LogAttention,
            router: Router::Attention,
            back_projection: BackProjection::Linear,
            allow_n_le_d: false,
            codebook: CodebookConfig::default(),
            lfq: LfqLoss::default(),
            rvq_min_stages: None,
            vq_loss: PoolLoss::Mean,
        }
    }
}

/// An [`AdaptiveQuantizer`](crate::AdaptiveQuantizer)'s configuration: the width of its input
/// and its pool. A pool of one is the fixed-codebook model of the paper's Table 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// C: channel count of the encoder output (the attention's model dimension).
    pub channels: usize,
    /// The codebooks and their routing.
    #[serde(flatten)]
    pub pool: PoolConfig,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            channels: 128,
            pool: PoolConfig::default(),
        }
    }
}

impl AdaptiveConfig {
    /// The paper's adaptive pool: `structures(capacity)` over `channels`, 2 heads.
    pub fn adaptive(channels: usize, capacity: usize) -> Self {
        Self {
            channels,
            pool: PoolConfig {
                capacity: Some(capacity),
                ..PoolConfig::default()
            },
        }
    }

    /// A pool of one fixed codebook `[n, d]` (the paper's Table 1 model); no capacity check.
    pub fn fixed(channels: usize, n: usize, d: usize) -> Self {
        Self {
            channels,
            pool: PoolConfig {
                capacity: None,
                structures: vec![PoolMember::Vq([n, d])],
                ..PoolConfig::default()
            },
        }
    }

    /// Checks every field and resolves the pool.
    pub fn validate(&self) -> Result<ValidAdaptiveConfig, ConfigError> {
        if self.channels == 0 {
            return Err(ConfigError::invalid("channels", "must be ≥ 1"));
        }
        let p = &self.pool;
        p.codebook.validate()?;
        if p.granularity == Granularity::RawView && p.vq_loss == PoolLoss::Selected {
            return Err(ConfigError::invalid(
                "vq_loss",
                "\"selected\" weighs each latent vector's loss by its codebook; raw-view \
                 selection units are not latent vectors",
            ));
        }
        if p.granularity == Granularity::RawView && p.router == Router::MinError {
            return Err(ConfigError::invalid(
                "granularity",
                "\"raw-view\" (the authors' selection unit) works with the attention router only; \
                 the min-error router compares whole latent vectors",
            ));
        }
        let pool: Vec<PoolMember> = if p.structures.is_empty() {
            match p.capacity {
                Some(w) => structures(w)?.into_iter().map(PoolMember::Vq).collect(),
                None => {
                    return Err(ConfigError::invalid(
                        "pool",
                        "is empty and no `capacity` is given to derive it from",
                    ))
                }
            }
        } else {
            p.structures.clone()
        };
        if pool.is_empty() {
            return Err(ConfigError::EmptyPool);
        }
        if let Router::Only(i) = p.router {
            if i >= pool.len() {
                return Err(ConfigError::invalid(
                    "router",
                    format!("`only = {i}` names no codebook of a pool of {}", pool.len()),
                ));
            }
        }
        let implicit = pool.iter().any(PoolMember::needs_equal_rate);
        let per_vector = |m: &PoolMember| matches!(m, PoolMember::Vq(_) | PoolMember::Fsq(_));
        if let Some(m) = pool.iter().find(|m| !per_vector(m)) {
            if pool.len() > 1 && p.vq_loss == PoolLoss::Selected {
                return Err(ConfigError::invalid(
                    "vq_loss",
                    format!(
                        "\"selected\" weighs each latent vector's loss by its codebook, which \
                         {m} does not give (an LFQ member's codebook entropy belongs to the \
                         batch; a residual member's loss is the sum of its stages')"
                    ),
                ));
            }
        }
        let mut codebooks = Vec::with_capacity(pool.len());
        for member in &pool {
            let valid = match member {
                PoolMember::Fsq(levels) => ValidMember::Fsq(FsqConfig::new(&levels.0).validate()?),
                &PoolMember::Rvq(RvqShape { stages, n, d }) => ValidMember::Rvq(
                    RvqConfig {
                        stages,
                        num_embeddings: n,
                        embedding_dim: d,
                        codebook: p.codebook.clone(),
                        min_stages: match p.rvq_min_stages {
                            Some(k) if k == 0 || k > stages => {
                                return Err(ConfigError::invalid(
                                    "rvq_min_stages",
                                    format!(
                                        "must be 1 to the stages of {member} ({stages}), got {k}"
                                    ),
                                ))
                            }
                            Some(k) => k,
                            None => stages,
                        },
                    }
                    .validate()?,
                ),
                PoolMember::Lfq(bits) => ValidMember::Lfq(
                    LfqConfig {
                        bits: bits.0,
                        loss: p.lfq.clone(),
                    }
                    .validate()?,
                ),
                &PoolMember::Vq([n, d]) => {
                    if let (Some(w), false) = (p.capacity, implicit) {
                        if n.checked_mul(d) != Some(w) {
                            return Err(ConfigError::CapacityMismatch { n, d, w });
                        }
                    }
                    if n <= d && !p.allow_n_le_d {
                        return Err(ConfigError::NotMoreEmbeddingsThanDims { n, d });
                    }
                    ValidMember::Vq(
                        VqConfig {
                            num_embeddings: n,
                            embedding_dim: d,
                            codebook: p.codebook.clone(),
                        }
                        .validate()?,
                    )
                }
            };
            codebooks.push(valid);
        }
        if implicit {
            let n0 = codebooks[0].num_codes();
            if let Some((i, m)) = codebooks
                .iter()
                .enumerate()
                .find(|(_, m)| m.num_codes() != n0)
            {
                return Err(ConfigError::invalid(
                    "pool",
                    format!(
                        "a pool with FSQ, LFQ or residual members needs equal rate (every member \
                         the same number of codes): {} has {n0} codes, {} has {}",
                        pool[0],
                        pool[i],
                        m.num_codes()
                    ),
                ));
            }
        }
        if codebooks.len() > 1 {
            if p.heads == 0 {
                return Err(ConfigError::invalid("heads", "must be ≥ 1"));
            }
            if !self.channels.is_multiple_of(p.heads) {
                return Err(ConfigError::HeadsDoNotDivide {
                    heads: p.heads,
                    channels: self.channels,
                });
            }
        }
        Ok(ValidAdaptiveConfig {
            config: self.clone(),
            codebooks,
        })
    }
}

/// An [`AdaptiveConfig`] whose pool is resolved and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidAdaptiveConfig {
    config: AdaptiveConfig,
    codebooks: Vec<ValidMember>,
}

impl ValidAdaptiveConfig {
    /// The members of the pool, in order.
    pub fn codebooks(&self) -> &[ValidMember] {
        &self.codebooks
    }
    /// The `[N, D]` of each member (codes, and the width of the vectors it quantizes).
    pub fn pool(&self) -> Vec<[usize; 2]> {
        self.codebooks
            .iter()
            .map(|c| [c.num_codes(), c.dim()])
            .collect()
    }
    /// Each member's label (see [`ValidMember::label`]).
    pub fn labels(&self) -> Vec<String> {
        self.codebooks.iter().map(ValidMember::label).collect()
    }
    /// C.
    pub fn channels(&self) -> usize {
        self.config.channels
    }
    /// Attention heads.
    pub fn heads(&self) -> usize {
        self.config.pool.heads
    }
    /// Per-vector or per-image selection.
    pub fn granularity(&self) -> Granularity {
        self.config.pool.granularity
    }
    /// Logit mode of the selector.
    pub fn logits(&self) -> SelectionLogits {
        self.config.pool.selection_logits
    }
    /// How a codebook is chosen.
    pub fn router(&self) -> Router {
        self.config.pool.router
    }
    /// How each codebook's output returns to `C` channels.
    pub fn back_projection(&self) -> BackProjection {
        self.config.pool.back_projection
    }
    /// Which VQ losses make the pool's loss.
    pub fn vq_loss(&self) -> PoolLoss {
        self.config.pool.vq_loss
    }
    /// The configuration this was validated from.
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }
}
