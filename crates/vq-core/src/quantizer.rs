//! The [`Quantizer`] trait shared by every quantizer of this crate, what a forward pass is told
//! ([`Step`]) and what it returns ([`QuantizerOutput`], [`Codes`]).

use candle_core::{DType, Tensor};
use rand::RngCore;

use crate::error::{Result, VqError};
use crate::vq::VqOutput;

/// How the codebook of each vector is selected in a forward pass.
pub enum Selection<'a> {
    /// Gumbel-Softmax at temperature `tau` with noise from `rng`; `hard` gives the exact one-hot
    /// with the straight-through gradient (the paper), otherwise the soft relaxation mixes the
    /// codebooks' outputs.
    Gumbel {
        tau: f64,
        hard: bool,
        rng: &'a mut dyn RngCore,
    },
    /// Gumbel-Softmax with caller-provided noise `[units, m]` (common random numbers across
    /// models, reference tests).
    GumbelWithNoise {
        tau: f64,
        hard: bool,
        noise: &'a Tensor,
    },
    /// Deterministic argmax of the selection logits (evaluation, encoding).
    Argmax,
}

/// What a forward pass should do besides quantizing.
pub struct Step<'a> {
    /// Move EMA codebooks towards their assigned vectors.
    pub update_codebooks: bool,
    /// Codebook selection.
    pub selection: Selection<'a>,
}

impl<'a> Step<'a> {
    /// A training step: EMA update, hard Gumbel-Softmax at `tau`.
    pub fn train(tau: f64, rng: &'a mut dyn RngCore) -> Self {
        Self {
            update_codebooks: true,
            selection: Selection::Gumbel {
                tau,
                hard: true,
                rng,
            },
        }
    }

    /// A validation pass as in the paper: no update, hard Gumbel-Softmax at τ = 1.
    pub fn validate(rng: &'a mut dyn RngCore) -> Self {
        Self {
            update_codebooks: false,
            selection: Selection::Gumbel {
                tau: crate::gumbel::VALIDATION_TAU,
                hard: true,
                rng,
            },
        }
    }

    /// Deterministic evaluation: no update, argmax selection.
    pub fn eval() -> Step<'static> {
        Step {
            update_codebooks: false,
            selection: Selection::Argmax,
        }
    }
}

/// The code of every latent position: which codebook, and which row of it.
#[derive(Clone, Debug)]
pub struct Codes {
    /// `[B, *S]` u32: codebook id in the pool (0 for a single codebook).
    pub codebook: Tensor,
    /// `[B, *S]` u32: row of that codebook.
    pub index: Tensor,
}

/// What [`Quantizer::forward`] returns. `m` is the number of codebooks.
#[derive(Clone, Debug)]
pub struct QuantizerOutput {
    /// `[B, C, *S]`: quantized latents; forward value is the selected codebook's output,
    /// gradient reaches the input through the straight-through estimator.
    pub z_q: Tensor,
    /// Scalar: mean of the pool's VQ losses (the paper's eq. 4 without the reconstruction).
    pub loss: Tensor,
    /// `[m]` (detached): each codebook's VQ loss.
    pub codebook_losses: Tensor,
    /// `[m]` (detached): each codebook's code-usage perplexity on this batch.
    pub perplexity: Tensor,
    /// `m` tensors `[N_i]` f32 (detached): how many vectors each codeword of codebook `i`
    /// received (every codebook quantizes every vector, whichever output is selected).
    pub code_counts: Vec<Tensor>,
    /// `[m]` f32: how many selection units (vectors, or images for per-image selection) chose
    /// each codebook.
    pub selection_counts: Tensor,
    /// Per-position codes.
    pub codes: Codes,
    /// `[units, m]` selection logits (`None` for a single codebook).
    pub logits: Option<Tensor>,
}

/// A vector quantizer of channel-first latents `[B, C, *S]` (images `[B, C, H, W]`, sequences
/// `[B, C, L]`, or plain vectors `[B, C]`).
///
/// Implemented by [`AdaptiveQuantizer`](crate::AdaptiveQuantizer) (a pool of one is the fixed
/// codebook model) and [`VectorQuantizer`](crate::VectorQuantizer) (no projection, `C = D`).
pub trait Quantizer {
    /// C: channels of the latents this quantizer accepts.
    fn channels(&self) -> usize;

    /// m: number of codebooks.
    fn num_codebooks(&self) -> usize;

    /// Quantizes `z_e` `[B, C, *S]`.
    fn forward(&self, z_e: &Tensor, step: &mut Step<'_>) -> Result<QuantizerOutput> {
        let dims = z_e.dims().to_vec();
        let flat = to_flat(z_e, self.channels())?;
        let mut out = self.forward_flat(&flat, &code_shape(&dims), step)?;
        out.z_q = from_flat(&out.z_q, &dims)?;
        Ok(out)
    }

    /// Quantizes channel-last latents `z` `[B, *S, C]` (what a model keeping its activations
    /// channel-last has); the output's `z_q` is channel-last too. No layout change: the
    /// vectors are `z`'s rows.
    fn forward_channels_last(&self, z: &Tensor, step: &mut Step<'_>) -> Result<QuantizerOutput> {
        let dims = z.dims().to_vec();
        let c = self.channels();
        if dims.len() < 2 || dims[dims.len() - 1] != c {
            return Err(VqError::input(
                "z",
                format!("expected [B, ..., {c}] (channels last), got {dims:?}"),
            ));
        }
        let flat = z.reshape((z.elem_count() / c, c))?;
        let mut out = self.forward_flat(&flat, &dims[..dims.len() - 1], step)?;
        out.z_q = out.z_q.reshape(dims.as_slice())?;
        Ok(out)
    }

    /// Quantizes the vectors `flat` `[T, C]` of a batch whose positions have the shape
    /// `code_shape` (`[B, *S]`, `T = B·|S|`; per-image selection groups the rows by `B`).
    /// `z_q` is `[T, C]`.
    fn forward_flat(
        &self,
        flat: &Tensor,
        code_shape: &[usize],
        step: &mut Step<'_>,
    ) -> Result<QuantizerOutput>;

    /// The data-driven initialisation of every codebook (k-means or data init; see
    /// [`VectorQuantizer::initialise`](crate::VectorQuantizer::initialise)) from `flat`
    /// `[T, C]`, latents of one or more training batches of `rows_per_step` vectors each.
    /// Returns whether any codebook was initialised (`false` for the authors' N(0, 1) init).
    /// Call it once, before the first training step.
    fn initialise_codebooks(
        &self,
        flat: &Tensor,
        rows_per_step: usize,
        rng: &mut dyn RngCore,
    ) -> Result<bool>;

    /// Codes of `z_e` with deterministic (argmax) selection and no update.
    fn encode(&self, z_e: &Tensor) -> Result<Codes> {
        Ok(self.forward(z_e, &mut Step::eval())?.codes)
    }

    /// Latents `[B, C, *S]` of the given codes.
    fn decode(&self, codes: &Codes) -> Result<Tensor>;
}

/// `[B, C, *S]` → `[B·S, C]` (channels last, positions row-major).
pub(crate) fn to_flat(z: &Tensor, channels: usize) -> Result<Tensor> {
    let dims = z.dims();
    if dims.len() < 2 || dims[1] != channels {
        return Err(VqError::input(
            "z_e",
            format!("expected [B, {channels}, ...] (channels first), got {dims:?}"),
        ));
    }
    let rank = dims.len();
    let mut perm: Vec<usize> = vec![0];
    perm.extend(2..rank);
    perm.push(1);
    let t = z.elem_count() / channels;
    Ok(z.permute(perm)?.contiguous()?.reshape((t, channels))?)
}

/// `[B·S, C]` → `[B, C, *S]` for the spatial shape of `like` (`[B, *, *S]`).
pub(crate) fn from_flat(flat: &Tensor, like_dims: &[usize]) -> Result<Tensor> {
    let c = flat.dim(1)?;
    let rank = like_dims.len();
    let mut cl: Vec<usize> = vec![like_dims[0]];
    cl.extend(&like_dims[2..]);
    cl.push(c);
    let mut perm: Vec<usize> = vec![0, rank - 1];
    perm.extend(1..rank - 1);
    Ok(flat.reshape(cl)?.permute(perm)?.contiguous()?)
}

/// `[B, *S]` shape of the codes of latents `[B, C, *S]`.
pub(crate) fn code_shape(like_dims: &[usize]) -> Vec<usize> {
    let mut s = vec![like_dims[0]];
    s.extend(&like_dims[2..]);
    s
}

/// The [`QuantizerOutput`] of a single codebook (`m = 1`) that quantized the `T` rows of
/// positions `shape` (`[B, *S]`, checked beforehand by [`check_rows`]) into `out`.
pub(crate) fn single_codebook_output(out: VqOutput, shape: &[usize]) -> Result<QuantizerOutput> {
    let t = out.indices.dim(0)?;
    let dev = out.indices.device().clone();
    Ok(QuantizerOutput {
        z_q: out.quantized,
        codebook_losses: out.loss.detach().reshape(1)?,
        loss: out.loss,
        perplexity: out.perplexity.detach().reshape(1)?,
        code_counts: vec![out.counts],
        selection_counts: Tensor::from_vec(vec![t as f32], 1, &dev)?,
        codes: Codes {
            codebook: Tensor::zeros(shape, DType::U32, &dev)?,
            index: out.indices.reshape(shape)?,
        },
        logits: None,
    })
}

/// One quantizer of `[T, D]` rows with one index per row ([`crate::VectorQuantizer`],
/// [`crate::ResidualVq`], [`crate::Fsq`], [`crate::Lfq`]): implementing it gives the
/// [`Quantizer`] trait over channel-first latents (a "pool" of one, no projection, `C = D`).
pub trait RowQuantizer {
    /// D: the channels of the rows it quantizes.
    fn width(&self) -> usize;

    /// Quantizes `z` `[T, D]` like
    /// [`VectorQuantizer::forward`](crate::VectorQuantizer::forward): codes (straight
    /// through), `[T]` u32 indices, code usage and the loss (zero where there is none); with
    /// `update`, learned codebooks take their training update.
    fn forward_rows(&self, z: &Tensor, update: bool) -> Result<VqOutput>;

    /// Indices `[T]` u32 → `[T, D]` codes.
    fn indices_to_codes(&self, indices: &Tensor) -> Result<Tensor>;

    /// The data-driven initialisation from `z` `[T, D]` (see
    /// [`Quantizer::initialise_codebooks`]); nothing by default.
    fn initialise_rows(
        &self,
        _z: &Tensor,
        _rows_per_step: usize,
        _rng: &mut dyn RngCore,
    ) -> Result<bool> {
        Ok(false)
    }
}

impl<Q: RowQuantizer> Quantizer for Q {
    fn channels(&self) -> usize {
        self.width()
    }

    fn num_codebooks(&self) -> usize {
        1
    }

    fn forward_flat(
        &self,
        flat: &Tensor,
        shape: &[usize],
        step: &mut Step<'_>,
    ) -> Result<QuantizerOutput> {
        check_rows(flat, shape)?;
        let mut out =
            single_codebook_output(self.forward_rows(flat, step.update_codebooks)?, shape)?;
        out.z_q = out.z_q.to_dtype(flat.dtype())?;
        Ok(out)
    }

    fn initialise_codebooks(
        &self,
        flat: &Tensor,
        rows_per_step: usize,
        rng: &mut dyn RngCore,
    ) -> Result<bool> {
        self.initialise_rows(&flat.detach(), rows_per_step, rng)
    }

    fn decode(&self, codes: &Codes) -> Result<Tensor> {
        decode_single(codes, self.width(), |i| self.indices_to_codes(i))
    }
}

/// Checks that `indices` is `[T]` u32 with every index below `codes`.
pub(crate) fn check_indices(indices: &Tensor, codes: u64) -> Result<()> {
    if indices.rank() != 1 || indices.dtype() != DType::U32 {
        return Err(VqError::input(
            "indices",
            format!(
                "expected [T] u32, got {:?} {:?}",
                indices.dims(),
                indices.dtype()
            ),
        ));
    }
    if indices.elem_count() > 0 {
        let max = indices.max(0)?.to_scalar::<u32>()?;
        if u64::from(max) >= codes {
            return Err(VqError::input(
                "indices",
                format!("index {max} is out of range for {codes} codes"),
            ));
        }
    }
    Ok(())
}

/// `T`, the rows of `flat` `[T, C]`, when it equals the number of positions `shape`.
pub(crate) fn check_rows(flat: &Tensor, shape: &[usize]) -> Result<usize> {
    let t = flat.dim(0)?;
    if t != shape.iter().product::<usize>() {
        return Err(VqError::input(
            "z_e",
            format!("{t} vectors for positions {shape:?}"),
        ));
    }
    Ok(t)
}

/// Latents `[B, C, *S]` of a single codebook's `codes` (index `[B, *S]`), `rows` turning the
/// `[T]` indices into `[T, C]` rows.
pub(crate) fn decode_single(
    codes: &Codes,
    channels: usize,
    rows: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let shape = codes.index.dims().to_vec();
    if shape.is_empty() || shape[0] == 0 {
        return Err(VqError::input(
            "codes",
            format!("expected [B, ...] with B ≥ 1, got {shape:?}"),
        ));
    }
    let z = rows(&codes.index.flatten_all()?)?;
    let mut like = vec![shape[0], channels];
    like.extend(&shape[1..]);
    from_flat(&z, &like)
}
