//! The paper's adaptive dynamic quantizer (Algorithm 1, Fig. 1): a pool of projected codebooks,
//! an attention selector and a hard Gumbel-Softmax choice per data point.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::config::{
    BackProjection, Granularity, PoolLoss, Router, SelectionLogits, ValidAdaptiveConfig,
    ValidMember, ValidVqConfig,
};
use crate::error::{Result, VqError};
use crate::fsq::Fsq;
use crate::fused_linear::FusedLinear;
use crate::gumbel::{gumbel_softmax, gumbel_softmax_with_noise, one_hot_argmax, selection_counts};
use crate::lfq::Lfq;
use crate::quantizer::{
    from_flat, to_flat, Codes, Quantizer, QuantizerOutput, RowQuantizer, Selection, Step,
};
use crate::rvq::ResidualVq;
use crate::search::SearchMethod;
use crate::vq::{VectorQuantizer, VqOutput};

/// One member of the pool with its own projections `C → D` (before) and `D → C` (after).
///
/// Variables: `project_in.{weight,bias}`, `quantizer.*` (a VQ codebook; FSQ has none),
/// `project_out.{weight,bias}` (`[C, D]` for the linear back-projection, `[C, D, 3, 3]` for the
/// 3×3 convolution).
#[derive(Clone, Debug)]
pub struct ProjectedQuantizer {
    project_in: FusedLinear,
    quantizer: Member,
    project_out: ProjectOut,
}

/// The quantizer inside a [`ProjectedQuantizer`].
#[derive(Clone, Debug)]
pub enum Member {
    /// A VQ codebook.
    Vq(VectorQuantizer),
    /// Finite scalar quantization (no codebook, no loss).
    Fsq(Fsq),
    /// Lookup-free quantization (no codebook; an entropy loss).
    Lfq(Lfq),
    /// A residual stack of VQ codebooks.
    Rvq(ResidualVq),
}

impl Member {
    /// The member as a quantizer of rows.
    fn rows(&self) -> &dyn RowQuantizer {
        match self {
            Self::Vq(q) => q,
            Self::Fsq(q) => q,
            Self::Lfq(q) => q,
            Self::Rvq(q) => q,
        }
    }

    /// Quantizes the projected vectors `z` `[T, D]` (see [`VectorQuantizer::forward`]); FSQ
    /// gives a zero loss.
    fn forward(&self, z: &Tensor, update: bool) -> Result<VqOutput> {
        self.rows().forward_rows(z, update)
    }

    /// `[T]` indices → `[T, D]` codes.
    fn decode(&self, indices: &Tensor) -> Result<Tensor> {
        self.rows().indices_to_codes(indices)
    }

    /// N: the number of codes.
    pub fn num_codes(&self) -> usize {
        match self {
            Self::Vq(q) => q.config().num_embeddings(),
            Self::Fsq(q) => q.config().codebook_size() as usize,
            Self::Lfq(q) => q.config().codebook_size() as usize,
            Self::Rvq(q) => q.config().codebook_size() as usize,
        }
    }

    /// β of the member's VQ loss (1 for FSQ and LFQ, which have none, so that the min-error
    /// router's back-projection term keeps its unit weight).
    fn beta(&self) -> f64 {
        match self {
            Self::Vq(q) => q.config().codebook().beta,
            Self::Rvq(q) => q.config().stage().codebook().beta,
            Self::Fsq(_) | Self::Lfq(_) => 1.0,
        }
    }
}

/// The `D → C` back-projection of one codebook.
#[derive(Clone, Debug)]
enum ProjectOut {
    Linear(FusedLinear),
    /// 3×3, padding 1, with bias (PyTorch's default `Conv2d` initialisation).
    Conv3x3 {
        weight: Tensor,
        bias: Tensor,
    },
}

impl ProjectOut {
    fn new(d: usize, c: usize, kind: BackProjection, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            BackProjection::Linear => Self::Linear(FusedLinear::new(d, c, vb)?),
            BackProjection::Conv3x3 => {
                let bound = 1.0 / ((d * 9) as f64).sqrt();
                let init = Init::Uniform {
                    lo: -bound,
                    up: bound,
                };
                Self::Conv3x3 {
                    weight: vb.get_with_hints((c, d, 3, 3), "weight", init)?,
                    bias: vb.get_with_hints(c, "bias", init)?,
                }
            }
        })
    }

    /// `[T, D]` rows of positions `shape` (`[B, H, W]` for the convolution) → `[T, C]`.
    fn forward(&self, q: &Tensor, shape: &[usize]) -> Result<Tensor> {
        match self {
            Self::Linear(l) => Ok(l.forward(q)?),
            Self::Conv3x3 { weight, bias } => {
                let &[b, h, w] = shape else {
                    return Err(VqError::input(
                        "z_e",
                        format!("the 3×3 back-projection needs positions [B, H, W], got {shape:?}"),
                    ));
                };
                let x = q.reshape((b, h, w, q.dim(1)?))?;
                let y = if vq_ops::ops::is_cpu_f32(&x) {
                    // One convolution op over the channel-last positions, whose backward
                    // computes the input, kernel and bias gradients directly.
                    let none = vq_ops::ops::ReluAt::NONE;
                    vq_ops::ops::conv2d_nhwc(&x, weight, Some(bias), 1, 1, none)?
                } else {
                    conv3x3_composed(&x, weight, bias)?
                };
                Ok(y.reshape((b * h * w, weight.dim(0)?))?)
            }
        }
    }

    /// Whether an output row depends on its own code only (not on neighbouring positions).
    fn is_pointwise(&self) -> bool {
        matches!(self, Self::Linear(_))
    }
}

/// A 3×3, padding-1 convolution of channel-last `x` `[B, H, W, D]` with `weight` `[C, D, 3, 3]`
/// and `bias` `[C]` → `[B, H, W, C]`, from candle ops (any device and dtype): im2col, whose
/// column (ky·3 + kx)·D + d holds the input at offset (ky − 1, kx − 1), channel d, then one GEMM
/// with the kernel viewed as `[C, 3, 3, D]` → `[C, 9D]`. The CPU takes the fused op instead: here
/// each narrow's backward fills and adds a padded copy.
fn conv3x3_composed(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, h, w, d) = x.dims4()?;
    let c = weight.dim(0)?;
    let padded = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut cols = Vec::with_capacity(9);
    for ky in 0..3 {
        for kx in 0..3 {
            cols.push(padded.narrow(1, ky, h)?.narrow(2, kx, w)?);
        }
    }
    let cols = Tensor::cat(&cols, 3)?.reshape((b * h * w, 9 * d))?;
    let kernel = weight.permute((0, 2, 3, 1))?.reshape((c, 9 * d))?;
    Ok(vq_ops::ops::linear(&cols, &kernel, bias)?.reshape((b, h, w, c))?)
}

impl ProjectedQuantizer {
    /// Builds the projections and the codebook for `channels` input channels, with the
    /// default linear back-projection.
    pub fn new(channels: usize, config: &ValidVqConfig, vb: VarBuilder) -> Result<Self> {
        let member = ValidMember::Vq(config.clone());
        Self::with_back_projection(channels, &member, BackProjection::Linear, vb)
    }

    /// Builds the projections and the member with the given back-projection.
    pub fn with_back_projection(
        channels: usize,
        config: &ValidMember,
        back: BackProjection,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = config.dim();
        let quantizer = match config {
            ValidMember::Vq(c) => Member::Vq(VectorQuantizer::new(c, vb.pp("quantizer"))?),
            ValidMember::Fsq(c) => Member::Fsq(Fsq::new(c)),
            ValidMember::Lfq(c) => Member::Lfq(Lfq::new(c)),
            ValidMember::Rvq(c) => Member::Rvq(ResidualVq::new(c, vb.pp("quantizer"))?),
        };
        Ok(Self {
            project_in: FusedLinear::new(channels, d, vb.pp("project_in"))?,
            quantizer,
            project_out: ProjectOut::new(d, channels, back, vb.pp("project_out"))?,
        })
    }

    /// The member's quantizer.
    pub fn member(&self) -> &Member {
        &self.quantizer
    }

    /// The member's VQ codebook (`None` for FSQ, LFQ and residual stacks).
    pub fn quantizer(&self) -> Option<&VectorQuantizer> {
        match &self.quantizer {
            Member::Vq(q) => Some(q),
            Member::Fsq(_) | Member::Lfq(_) | Member::Rvq(_) => None,
        }
    }

    /// `[T, C]` → `[T, D]`: the vectors this codebook quantizes.
    pub fn project(&self, flat: &Tensor) -> Result<Tensor> {
        Ok(self.project_in.forward(flat)?)
    }

    /// `[T, C]` rows of positions `shape` (`[B, *S]`, `T = B·|S|`) → (`[T, C]` projected back
    /// after quantization, the codebook's output).
    pub fn forward(
        &self,
        flat: &Tensor,
        shape: &[usize],
        update: bool,
    ) -> Result<(Tensor, VqOutput)> {
        let (back, out, _) = self.forward_with_projection(flat, shape, update)?;
        Ok((back, out))
    }

    /// [`Self::forward`] that also returns the projected vectors `[T, D]` it quantized.
    fn forward_with_projection(
        &self,
        flat: &Tensor,
        shape: &[usize],
        update: bool,
    ) -> Result<(Tensor, VqOutput, Tensor)> {
        let z = self.project_in.forward(flat)?;
        let out = self.quantizer.forward(&z, update)?;
        Ok((self.project_out.forward(&out.quantized, shape)?, out, z))
    }

    /// `[T]`: each vector's VQ loss in this codebook,
    /// `β·(mean_d (sg[z] − e)² + α·mean_d (z − sg[e])²)` for the projected vectors `z` and
    /// their codewords `e` (rows `indices`): the per-vector terms of the codebook's loss.
    fn per_vector_loss(&self, z: &Tensor, indices: &Tensor) -> Result<Tensor> {
        let q = match &self.quantizer {
            Member::Vq(q) => q,
            // FSQ has no VQ loss; a pool with LFQ or RVQ refuses the `selected` loss (config).
            Member::Fsq(_) | Member::Lfq(_) | Member::Rvq(_) => {
                return Ok(Tensor::zeros(z.dim(0)?, z.dtype(), z.device())?)
            }
        };
        let cb = q.config().codebook();
        let z = &q.prepare(z)?;
        let e = q.codebook()?.index_select(indices, 0)?;
        let codebook_term = (z.detach() - &e)?.sqr()?.mean(1)?;
        let commitment = (z - e.detach())?.sqr()?.mean(1)?;
        Ok((codebook_term + commitment.affine(cb.commitment, 0.0)?)?.affine(cb.beta, 0.0)?)
    }

    /// `[T]` indices of positions `shape` → `[T, C]`.
    pub fn decode(&self, indices: &Tensor, shape: &[usize]) -> Result<Tensor> {
        self.project_out
            .forward(&self.quantizer.decode(indices)?, shape)
    }

    /// `[T, D]` codewords (straight-through or not) of positions `shape` → `[T, C]` through the
    /// back-projection, the codewords detached: gradients reach `project_out` only.
    pub fn back_project_detached(&self, quantized: &Tensor, shape: &[usize]) -> Result<Tensor> {
        self.project_out.forward(&quantized.detach(), shape)
    }

    /// The codebook's data-driven initialisation from `flat` `[T, C]` projected to its `D`
    /// (see [`VectorQuantizer::initialise`]).
    pub fn initialise(
        &self,
        flat: &Tensor,
        rows_per_step: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool> {
        match &self.quantizer {
            // No codebook to initialise.
            Member::Fsq(_) | Member::Lfq(_) => Ok(false),
            m => {
                let z = self.project(&flat.detach())?.detach();
                m.rows().initialise_rows(&z, rows_per_step, rng)
            }
        }
    }

    fn with_search(mut self, search: SearchMethod) -> Self {
        self.quantizer = match self.quantizer {
            Member::Vq(q) => Member::Vq(q.with_search(search)),
            Member::Rvq(q) => Member::Rvq(q.with_search(search)),
            other => other,
        };
        self
    }
}

/// Multi-head attention scores between query vectors and one learned key per codebook.
///
/// Variables: `keys` `[m, C]`, `q_proj`, `k_proj` (`C → C` with bias, PyTorch
/// `nn.MultiheadAttention`'s `in_proj` rows `0..C` and `C..2C`).
#[derive(Clone, Debug)]
struct Selector {
    keys: Tensor,
    q_proj: FusedLinear,
    k_proj: FusedLinear,
    heads: usize,
    mode: SelectionLogits,
}

impl Selector {
    fn new(
        m: usize,
        channels: usize,
        heads: usize,
        mode: SelectionLogits,
        vb: VarBuilder,
    ) -> Result<Self> {
        let keys = vb.get_with_hints(
            (m, channels),
            "keys",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(Self {
            keys,
            q_proj: FusedLinear::new(channels, channels, vb.pp("q_proj"))?,
            k_proj: FusedLinear::new(channels, channels, vb.pp("k_proj"))?,
            heads,
            mode,
        })
    }

    /// `[G, C]` queries → `[G, m]` logits.
    fn logits(&self, query: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("selector").entered();
        let (g, c) = query.dims2()?;
        let m = self.keys.dim(0)?;
        let (h, hd) = (self.heads, c / self.heads);
        let q = self
            .q_proj
            .forward(query)?
            .reshape((g, h, hd))?
            .transpose(0, 1)?
            .contiguous()?;
        let k = self
            .k_proj
            .forward(&self.keys)?
            .reshape((m, h, hd))?
            .permute((1, 2, 0))?
            .contiguous()?;
        let scores = q.matmul(&k)?.affine(1.0 / (hd as f64).sqrt(), 0.0)?; // [H, G, m]
        Ok(match self.mode {
            SelectionLogits::MeanScores => scores.mean(0)?,
            SelectionLogits::AttentionProbs => {
                candle_nn::ops::softmax(&scores, D::Minus1)?.mean(0)?
            }
            SelectionLogits::LogAttention => {
                let log_p = candle_nn::ops::log_softmax(&scores, D::Minus1)?;
                log_p.log_sum_exp(0)?.affine(1.0, -(h as f64).ln())?
            }
        })
    }
}

/// Pool of `m` projected codebooks; each data point uses the one picked by a hard
/// straight-through Gumbel-Softmax over attention logits (or, with [`Router::MinError`], the
/// one whose output is nearest to it). With `m = 1` there is no selector and this is the
/// fixed-codebook VQ of the paper's Table 1.
///
/// Variables: `books.{i}.*` ([`ProjectedQuantizer`]) and, for `m > 1` with the attention
/// router, `selector.{keys,q_proj,k_proj}`.
#[derive(Clone, Debug)]
pub struct AdaptiveQuantizer {
    config: ValidAdaptiveConfig,
    books: Vec<ProjectedQuantizer>,
    selector: Option<Selector>,
}

impl AdaptiveQuantizer {
    /// Builds the pool under `vb`.
    pub fn new(config: &ValidAdaptiveConfig, vb: VarBuilder) -> Result<Self> {
        let c = config.channels();
        let books = config
            .codebooks()
            .iter()
            .enumerate()
            .map(|(i, cb)| {
                ProjectedQuantizer::with_back_projection(
                    c,
                    cb,
                    config.back_projection(),
                    vb.pp("books").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let selector = if books.len() > 1 && config.router() == Router::Attention {
            Some(Selector::new(
                books.len(),
                c,
                config.heads(),
                config.logits(),
                vb.pp("selector"),
            )?)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            books,
            selector,
        })
    }

    /// Chooses the nearest-neighbour implementation of every codebook.
    pub fn with_search(mut self, search: SearchMethod) -> Self {
        self.books = self
            .books
            .into_iter()
            .map(|b| b.with_search(search))
            .collect();
        self
    }

    /// The validated configuration.
    pub fn config(&self) -> &ValidAdaptiveConfig {
        &self.config
    }

    /// The pool's codebooks.
    pub fn books(&self) -> &[ProjectedQuantizer] {
        &self.books
    }

    /// `[units, m]` selection logits of `z_e` (`None` for a single codebook).
    pub fn selection_logits(&self, z_e: &Tensor) -> Result<Option<Tensor>> {
        let flat = to_flat(z_e, self.channels())?;
        self.logits_of_flat(&flat, &crate::quantizer::code_shape(z_e.dims()))
    }

    fn logits_of_flat(&self, flat: &Tensor, shape: &[usize]) -> Result<Option<Tensor>> {
        let Some(selector) = &self.selector else {
            return Ok(None);
        };
        let batch = shape[0];
        let query = match self.config.granularity() {
            Granularity::PerVector => flat.clone(),
            Granularity::PerImage => {
                let (t, c) = flat.dims2()?;
                flat.reshape((batch, t / batch, c))?.mean(1)?
            }
            Granularity::RawView => raw_view(flat, batch)?,
        };
        Ok(Some(selector.logits(&query)?))
    }

    /// Selection units of a batch of `t` vectors from `batch` images: one per vector (or
    /// raw-view row, as many), or one per image.
    fn units(&self, t: usize, batch: usize) -> usize {
        match self.config.granularity() {
            Granularity::PerVector | Granularity::RawView => t,
            Granularity::PerImage => batch,
        }
    }

    /// The `selected` pool loss: each vector's VQ loss in its chosen codebook (the choice
    /// `sel_units` `[units, m]` detached: the selector learns from the reconstruction only),
    /// averaged over the `T` vectors, plus the mean of the min-error router's back-projection
    /// terms `back_terms` (none for the other routers).
    fn selected_loss(
        &self,
        projected: &[Tensor],
        vqs: &[VqOutput],
        back_terms: &[Tensor],
        sel_units: &Tensor,
        batch: usize,
    ) -> Result<Tensor> {
        let t = projected[0].dim(0)?;
        let m = self.books.len();
        let weights = match self.config.granularity() {
            Granularity::PerVector => sel_units.detach(),
            Granularity::PerImage => sel_units
                .detach()
                .unsqueeze(1)?
                .broadcast_as((batch, t / batch, m))?
                .reshape((t, m))?,
            Granularity::RawView => {
                return Err(VqError::input(
                    "vq_loss",
                    "the selected pool loss does not weigh raw-view rows",
                ))
            }
        };
        let mut total = Tensor::zeros((), projected[0].dtype(), projected[0].device())?;
        for (i, ((book, z), v)) in self.books.iter().zip(projected).zip(vqs).enumerate() {
            let per_vector = book.per_vector_loss(z, &v.indices)?;
            let w = weights.narrow(1, i, 1)?.squeeze(1)?;
            total = (total + (per_vector * w)?.sum_all()?.affine(1.0 / t as f64, 0.0)?)?;
        }
        if !back_terms.is_empty() {
            total = (total + Tensor::stack(back_terms, 0)?.mean_all()?)?;
        }
        Ok(total)
    }

    /// The pool's output `[T, C]` (channel-last rows) for the selection units `sel_units`
    /// `[units, m]`: per-image choices are repeated over the image's positions, raw-view
    /// choices mix the raw views of the outputs and are put back by the inverse view.
    fn mix(&self, outs: &[Tensor], sel_units: &Tensor, batch: usize) -> Result<Tensor> {
        let t = outs[0].dim(0)?;
        Ok(match self.config.granularity() {
            Granularity::PerVector => vq_ops::ops::weighted_sum(outs, sel_units)?,
            Granularity::PerImage => {
                let m = sel_units.dim(1)?;
                let sel = sel_units
                    .unsqueeze(1)?
                    .broadcast_as((batch, t / batch, m))?
                    .reshape((t, m))?;
                vq_ops::ops::weighted_sum(outs, &sel)?
            }
            Granularity::RawView => {
                let raw = outs
                    .iter()
                    .map(|o| raw_view(o, batch))
                    .collect::<Result<Vec<_>>>()?;
                raw_view_inverse(&vq_ops::ops::weighted_sum(&raw, sel_units)?, batch)?
            }
        })
    }

    /// Whether the codes (one codebook and row per position) determine the output: always for
    /// a single codebook; for a pool not with raw-view selection or a 3×3 back-projection.
    pub fn decodable(&self) -> bool {
        self.books.len() == 1
            || (self.config.granularity() != Granularity::RawView
                && self.books.iter().all(|b| b.project_out.is_pointwise()))
    }

    /// Per-position codes: the chosen codebook of each position and its row there. For
    /// raw-view selection (whose units are not positions) the codebook id at flat index `r`
    /// is the choice of raw row `r`.
    fn codes_of(
        &self,
        sel_units: &Tensor,
        vqs: &[VqOutput],
        shape: &[usize],
        batch: usize,
    ) -> Result<Codes> {
        let t: usize = shape.iter().product();
        let m = sel_units.dim(1)?;
        let choice = match self.config.granularity() {
            Granularity::PerImage => sel_units
                .detach()
                .argmax_keepdim(1)?
                .broadcast_as((batch, t / batch))?
                .reshape((t, 1))?,
            Granularity::PerVector | Granularity::RawView => {
                sel_units.detach().argmax_keepdim(1)?
            }
        };
        debug_assert_eq!(vqs.len(), m);
        let idx: Vec<&Tensor> = vqs.iter().map(|v| &v.indices).collect();
        let index = Tensor::stack(&idx, 1)?.gather(&choice.contiguous()?, 1)?;
        Ok(Codes {
            codebook: choice.reshape(shape)?,
            index: index.reshape(shape)?,
        })
    }
}

/// `[T, C]` channel-last rows of `batch` images → `[T, C]` rows of the authors'
/// `z.view(-1, C)` of the channel-first tensor: row `r` of image `b` holds its channel-major
/// elements `r·C .. (r+1)·C`.
fn raw_view(flat: &Tensor, batch: usize) -> Result<Tensor> {
    let (t, c) = flat.dims2()?;
    Ok(flat
        .reshape((batch, t / batch, c))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((t, c))?)
}

/// The inverse of [`raw_view`].
fn raw_view_inverse(raw: &Tensor, batch: usize) -> Result<Tensor> {
    let (t, c) = raw.dims2()?;
    Ok(raw
        .reshape((batch, c, t / batch))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((t, c))?)
}

fn select(logits: &Tensor, selection: &mut Selection<'_>) -> Result<Tensor> {
    match selection {
        Selection::Gumbel { tau, hard, rng } => gumbel_softmax(logits, *tau, *hard, &mut **rng),
        Selection::GumbelWithNoise { tau, hard, noise } => {
            if noise.dims() != logits.dims() {
                return Err(VqError::input(
                    "noise",
                    format!(
                        "shape {:?} differs from the logits' {:?}",
                        noise.dims(),
                        logits.dims()
                    ),
                ));
            }
            gumbel_softmax_with_noise(logits, noise, *tau, *hard)
        }
        Selection::Argmax => one_hot_argmax(logits),
    }
}

impl Quantizer for AdaptiveQuantizer {
    fn channels(&self) -> usize {
        self.config.channels()
    }

    fn num_codebooks(&self) -> usize {
        self.books.len()
    }

    fn forward_flat(
        &self,
        flat: &Tensor,
        shape: &[usize],
        step: &mut Step<'_>,
    ) -> Result<QuantizerOutput> {
        let _span = tracing::trace_span!("adaptive_quantizer", m = self.books.len()).entered();
        let (t, _) = flat.dims2()?;
        let batch = shape.first().copied().unwrap_or(0);
        if t == 0 || batch == 0 || t != shape.iter().product::<usize>() {
            return Err(VqError::input(
                "z_e",
                format!("has no vectors, or {t} vectors for positions {shape:?}"),
            ));
        }
        let m = self.books.len();
        let min_error = m > 1 && self.config.router() == Router::MinError;
        let mut outs = Vec::with_capacity(m);
        let mut vqs = Vec::with_capacity(m);
        let mut losses = Vec::with_capacity(m);
        let mut errors = Vec::with_capacity(if min_error { m } else { 0 });
        // Per codebook, the min-error router's back-projection term (zero otherwise) and, for
        // the `selected` pool loss, the projected vectors.
        let mut back_terms = Vec::with_capacity(m);
        let selected_loss = m > 1 && self.config.vq_loss() == PoolLoss::Selected;
        let mut projected = Vec::with_capacity(if selected_loss { m } else { 0 });
        let flat_sg = flat.detach();
        for book in &self.books {
            let (o, v, z) = book.forward_with_projection(flat, shape, step.update_codebooks)?;
            if min_error {
                // β‖project_out(sg[q]) − sg[z_e]‖²; its forward value is the routing distance.
                let back = book.back_project_detached(&v.quantized, shape)?;
                let diff = (&back - &flat_sg)?;
                errors.push(diff.detach().sqr()?.sum(1)?); // [T]
                let beta = book.member().beta();
                let term = diff.sqr()?.mean_all()?.affine(beta, 0.0)?;
                losses.push((&v.loss + &term)?);
                back_terms.push(term);
            } else {
                losses.push(v.loss.clone());
            }
            if selected_loss {
                projected.push(z);
            }
            outs.push(o);
            vqs.push(v);
        }
        let loss_vec = Tensor::stack(&losses, 0)?;
        let mut loss = loss_vec.mean_all()?;
        let ppl: Vec<&Tensor> = vqs.iter().map(|v| &v.perplexity).collect();
        let perplexity = Tensor::stack(&ppl, 0)?.detach();
        let code_counts: Vec<Tensor> = vqs.iter().map(|v| v.counts.clone()).collect();
        let logits = self.logits_of_flat(flat, shape)?;
        let sel_units = if m == 1 {
            None
        } else if let Router::Only(i) = self.config.router() {
            let units = self.units(t, batch);
            let mut hot = vec![0f32; units * m];
            for u in 0..units {
                hot[u * m + i] = 1.0;
            }
            Some(Tensor::from_vec(hot, (units, m), flat.device())?)
        } else if min_error {
            let err = Tensor::stack(&errors, 1)?; // [T, m]
            let err = match self.config.granularity() {
                Granularity::PerVector => err,
                Granularity::PerImage => err.reshape((batch, t / batch, m))?.sum(1)?,
                Granularity::RawView => {
                    return Err(VqError::input(
                        "granularity",
                        "the min-error router does not route raw-view rows",
                    ))
                }
            };
            Some(one_hot_argmax(&err.neg()?)?)
        } else {
            let l = logits
                .as_ref()
                .expect("the attention router has a selector");
            Some(select(l, &mut step.selection)?)
        };
        let (z, selection_counts, codes) = match sel_units {
            None => {
                let units = self.units(t, batch);
                let counts = Tensor::from_vec(vec![units as f32], 1, flat.device())?;
                let codes = Codes {
                    codebook: Tensor::zeros(shape, DType::U32, flat.device())?,
                    index: vqs[0].indices.reshape(shape)?,
                };
                (outs.swap_remove(0), counts, codes)
            }
            Some(sel_units) => {
                if selected_loss {
                    loss = self.selected_loss(&projected, &vqs, &back_terms, &sel_units, batch)?;
                }
                let counts = selection_counts(&sel_units)?;
                let z = self.mix(&outs, &sel_units, batch)?;
                let codes = self.codes_of(&sel_units, &vqs, shape, batch)?;
                (z, counts, codes)
            }
        };
        Ok(QuantizerOutput {
            z_q: z,
            loss,
            codebook_losses: loss_vec.detach(),
            perplexity,
            code_counts,
            selection_counts,
            codes,
            logits,
        })
    }

    fn initialise_codebooks(
        &self,
        flat: &Tensor,
        rows_per_step: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool> {
        let mut any = false;
        for book in &self.books {
            any |= book.initialise(flat, rows_per_step, rng)?;
        }
        Ok(any)
    }

    fn decode(&self, codes: &Codes) -> Result<Tensor> {
        let shape = codes.index.dims().to_vec();
        if shape.is_empty() || shape[0] == 0 {
            return Err(VqError::input(
                "codes",
                format!("expected [B, ...] with B ≥ 1, got {shape:?}"),
            ));
        }
        if codes.codebook.dims() != shape.as_slice() {
            return Err(VqError::input(
                "codes",
                "codebook ids and indices differ in shape",
            ));
        }
        let book_ids = codes.codebook.flatten_all()?.to_vec1::<u32>()?;
        let index = codes.index.flatten_all()?.to_vec1::<u32>()?;
        let m = self.books.len();
        if !self.decodable() {
            return Err(VqError::input(
                "codes",
                "this pool cannot be decoded from per-position codes: with raw-view selection or \
                 a 3×3 back-projection (the authors' variant) a position's latent depends on \
                 codes the chosen codebook alone does not hold",
            ));
        }
        if let Some(&bad) = book_ids.iter().find(|&&b| b as usize >= m) {
            return Err(VqError::input(
                "codes",
                format!("codebook id {bad} ≥ pool size {m}"),
            ));
        }
        let dev = codes.index.device();
        let mut z: Option<Tensor> = None;
        for (i, book) in self.books.iter().enumerate() {
            let n = book.member().num_codes() as u32;
            let mask: Vec<f32> = book_ids
                .iter()
                .map(|&b| (b as usize == i) as u32 as f32)
                .collect();
            if mask.iter().all(|&v| v == 0.0) {
                continue;
            }
            if let Some(bad) = book_ids
                .iter()
                .zip(&index)
                .find(|(&b, &j)| b as usize == i && j >= n)
            {
                return Err(VqError::input(
                    "codes",
                    format!("index {} out of range for codebook {i} with N = {n}", bad.1),
                ));
            }
            let rows: Vec<u32> = index.iter().map(|&j| j.min(n - 1)).collect();
            let rows = Tensor::from_vec(rows, index.len(), dev)?;
            let mask = Tensor::from_vec(mask, (index.len(), 1), dev)?;
            let term = book.decode(&rows, &shape)?.broadcast_mul(&mask)?;
            z = Some(match z {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
        let z = z.ok_or_else(|| VqError::input("codes", "no codes to decode"))?;
        let mut like = vec![shape[0], self.channels()];
        like.extend(&shape[1..]);
        from_flat(&z, &like)
    }
}

/// `RowQuantizer` for a codebook type whose inherent `forward`, `decode` and `initialise`
/// already have the trait's meaning; `$width` gives D from `$s`.
macro_rules! row_quantizer_of_codebooks {
    ($t:ty, |$s:ident| $width:expr) => {
        impl RowQuantizer for $t {
            fn width(&self) -> usize {
                let $s = self;
                $width
            }

            fn forward_rows(&self, z: &Tensor, update: bool) -> Result<VqOutput> {
                <$t>::forward(self, z, update)
            }

            fn indices_to_codes(&self, indices: &Tensor) -> Result<Tensor> {
                <$t>::decode(self, indices)
            }

            fn initialise_rows(
                &self,
                z: &Tensor,
                rows_per_step: usize,
                rng: &mut dyn rand::RngCore,
            ) -> Result<bool> {
                <$t>::initialise(self, z, rows_per_step, rng)
            }
        }
    };
}

row_quantizer_of_codebooks!(VectorQuantizer, |q| q.config().embedding_dim());
row_quantizer_of_codebooks!(ResidualVq, |q| q.config().stage().embedding_dim());

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdaptiveConfig, PoolConfig};
    use crate::init::SeededVarMap;
    use candle_core::{Device, Var};

    /// One image, positions p0, p1, channels a..d: channel-last rows `[a0 b0 c0 d0]`,
    /// `[a1 b1 c1 d1]`; the channel-first memory is `a0 a1 b0 b1 c0 c1 d0 d1`, so
    /// `view(-1, 4)` has rows `[a0 a1 b0 b1]`, `[c0 c1 d0 d1]`.
    #[test]
    fn raw_view_is_the_channel_first_memory_in_rows_of_c() {
        let flat = Tensor::new(&[[0f32, 1., 2., 3.], [10., 11., 12., 13.]], &Device::Cpu).unwrap();
        let raw = raw_view(&flat, 1).unwrap();
        assert_eq!(
            raw.to_vec2::<f32>().unwrap(),
            vec![vec![0., 10., 1., 11.], vec![2., 12., 3., 13.]]
        );
        let back = raw_view_inverse(&raw, 1).unwrap();
        assert_eq!(
            back.to_vec2::<f32>().unwrap(),
            flat.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn raw_view_needs_the_attention_router() {
        let c = AdaptiveConfig {
            pool: PoolConfig {
                granularity: Granularity::RawView,
                router: Router::MinError,
                ..AdaptiveConfig::adaptive(8, 32).pool
            },
            ..AdaptiveConfig::adaptive(8, 32)
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("granularity") && e.contains("raw-view"), "{e}");
    }

    /// The 3×3 back-projection, fused on the CPU and composed from candle ops elsewhere, gives
    /// candle's own `conv2d` (padding 1, bias added) on the channel-first view, with the same
    /// gradients for the input, the kernel and the bias, for D = 1 and D = 32 (the direct
    /// kernels' case when C is a multiple of 32 too).
    #[test]
    fn conv_back_projection_matches_candle_conv2d() {
        let dev = Device::Cpu;
        let max_diff = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
            d.max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        for d in [1, 32] {
            let (b, h, w, c) = (2, 5, 4, 32);
            let rows = crate::init::randn(1, "q", &[b * h * w, d], &dev).unwrap();
            let weight = crate::init::randn(2, "w", &[c, d, 3, 3], &dev).unwrap();
            let bias = crate::init::randn(3, "b", &[c], &dev).unwrap();
            let r = crate::init::randn(4, "r", &[b * h * w, c], &dev).unwrap();
            // Reference: candle's conv2d on [B, D, H, W], back to rows [B·H·W, C].
            let vars = [&rows, &weight, &bias].map(|t| Var::from_tensor(t).unwrap());
            let [q, k, bb] = vars.each_ref().map(|v| v.as_tensor().clone());
            let nchw = q
                .reshape((b, h, w, d))
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let want = nchw.conv2d(&k, 1, 1, 1, 1).unwrap();
            let want = want
                .broadcast_add(&bb.reshape((1, c, 1, 1)).unwrap())
                .unwrap();
            let want = want
                .permute((0, 2, 3, 1))
                .unwrap()
                .reshape((b * h * w, c))
                .unwrap();
            let want_g = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let fused = ProjectOut::Conv3x3 {
                weight: k.clone(),
                bias: bb.clone(),
            };
            let composed = |q: &Tensor| -> Result<Tensor> {
                let x = q.reshape((b, h, w, d))?;
                Ok(conv3x3_composed(&x, &k, &bb)?.reshape((b * h * w, c))?)
            };
            for (name, got) in [
                ("fused", fused.forward(&q, &[b, h, w]).unwrap()),
                ("composed", composed(&q).unwrap()),
            ] {
                assert!(
                    max_diff(&got, &want) < 1e-4,
                    "{name} D = {d}: values differ"
                );
                let g = (&got * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (v, what) in vars.iter().zip(["input", "kernel", "bias"]) {
                    let diff = max_diff(g.get(v.as_tensor()).unwrap(), want_g.get(v).unwrap());
                    assert!(
                        diff < 1e-3,
                        "{name} D = {d}: {what} gradient differs by {diff}"
                    );
                }
            }
        }
    }

    /// A 3×3 back-projection: one codebook decodes its codes (the convolution of its own
    /// codeword map); a pool refuses, since a position depends on neighbours' codes of every
    /// codebook.
    #[test]
    fn conv_back_projection_decodes_alone_and_refuses_in_a_pool() {
        let vm = SeededVarMap::new(3);
        let dev = Device::Cpu;
        let z = crate::init::randn(3, "z", &[2, 8, 3, 3], &dev).unwrap();
        for (config, decodes) in [
            (AdaptiveConfig::fixed(8, 16, 2), true),
            (AdaptiveConfig::adaptive(8, 32), false),
        ] {
            let config = AdaptiveConfig {
                pool: PoolConfig {
                    back_projection: BackProjection::Conv3x3,
                    ..config.pool
                },
                ..config
            }
            .validate()
            .unwrap();
            let q = AdaptiveQuantizer::new(
                &config,
                vm.var_builder(DType::F32, &dev).pp(decodes.to_string()),
            )
            .unwrap();
            assert_eq!(q.decodable(), decodes);
            let out = q.forward(&z, &mut Step::eval()).unwrap();
            let got = q.decode(&out.codes);
            if decodes {
                let diff = (got.unwrap() - &out.z_q).unwrap().abs().unwrap();
                let max = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(
                    max < 1e-5,
                    "decode differs from the forward output by {max}"
                );
            } else {
                let e = got.unwrap_err().to_string();
                assert!(e.contains("cannot be decoded"), "{e}");
            }
        }
    }

    /// `router = { only = i }`: the pool's output is codebook `i`'s own output for every
    /// vector, every unit is counted for `i`, and an index outside the pool is refused.
    #[test]
    fn only_router_routes_everything_to_one_codebook() {
        let bad = AdaptiveConfig {
            pool: PoolConfig {
                router: Router::Only(3),
                ..AdaptiveConfig::adaptive(8, 32).pool
            },
            ..AdaptiveConfig::adaptive(8, 32)
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("only = 3") && e.contains("pool of 3"), "{e}");
        let config = AdaptiveConfig {
            pool: PoolConfig {
                router: Router::Only(1),
                ..AdaptiveConfig::adaptive(8, 32).pool
            },
            ..AdaptiveConfig::adaptive(8, 32)
        }
        .validate()
        .unwrap();
        let dev = Device::Cpu;
        let vm = SeededVarMap::new(5);
        let q = AdaptiveQuantizer::new(&config, vm.var_builder(DType::F32, &dev)).unwrap();
        assert!(q.selector.is_none());
        let z = crate::init::randn(5, "z", &[2, 8, 3, 3], &dev).unwrap();
        let out = q.forward(&z, &mut Step::eval()).unwrap();
        let flat = to_flat(&z, 8).unwrap();
        let (want, _) = q.books()[1].forward(&flat, &[2, 3, 3], false).unwrap();
        let got = to_flat(&out.z_q, 8).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(
            out.selection_counts.to_vec1::<f32>().unwrap(),
            vec![0.0, 18.0, 0.0]
        );
        assert_eq!(out.codebook_losses.dims(), &[3]);
    }
}
