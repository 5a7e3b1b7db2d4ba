//! The paper's adaptive dynamic quantizer (Algorithm 1, Fig. 1): a pool of projected codebooks,
//! an attention selector and a hard Gumbel-Softmax choice per data point.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::config::{Granularity, Router, SelectionLogits, ValidAdaptiveConfig, ValidVqConfig};
use crate::error::{Result, VqError};
use crate::gumbel::{gumbel_softmax, gumbel_softmax_with_noise, one_hot_argmax, selection_counts};
use crate::linear::Linear;
use crate::quantizer::{from_flat, to_flat, Codes, Quantizer, QuantizerOutput, Selection, Step};
use crate::search::SearchMethod;
use crate::vq::{VectorQuantizer, VqOutput};

/// One codebook of the pool with its own projections `C → D` (before) and `D → C` (after).
///
/// Variables: `project_in.{weight,bias}`, `quantizer.*`, `project_out.{weight,bias}`.
#[derive(Clone, Debug)]
pub struct ProjectedQuantizer {
    project_in: Linear,
    quantizer: VectorQuantizer,
    project_out: Linear,
}

impl ProjectedQuantizer {
    /// Builds the projections and the codebook for `channels` input channels.
    pub fn new(channels: usize, config: &ValidVqConfig, vb: VarBuilder) -> Result<Self> {
        let d = config.embedding_dim();
        Ok(Self {
            project_in: Linear::new(channels, d, vb.pp("project_in"))?,
            quantizer: VectorQuantizer::new(config, vb.pp("quantizer"))?,
            project_out: Linear::new(d, channels, vb.pp("project_out"))?,
        })
    }

    /// The codebook's quantizer.
    pub fn quantizer(&self) -> &VectorQuantizer {
        &self.quantizer
    }

    /// `[T, C]` → `[T, D]`: the vectors this codebook quantizes.
    pub fn project(&self, flat: &Tensor) -> Result<Tensor> {
        Ok(self.project_in.forward(flat)?)
    }

    /// `[T, C]` → (`[T, C]` projected back after quantization, the codebook's output).
    pub fn forward(&self, flat: &Tensor, update: bool) -> Result<(Tensor, VqOutput)> {
        let z = self.project_in.forward(flat)?;
        let out = self.quantizer.forward(&z, update)?;
        Ok((self.project_out.forward(&out.quantized)?, out))
    }

    /// `[T]` indices → `[T, C]`.
    pub fn decode(&self, indices: &Tensor) -> Result<Tensor> {
        Ok(self.project_out.forward(&self.quantizer.decode(indices)?)?)
    }

    /// `[T, D]` codewords (straight-through or not) → `[T, C]` through the back-projection, the
    /// codewords detached: gradients reach `project_out` only.
    pub fn back_project_detached(&self, quantized: &Tensor) -> Result<Tensor> {
        Ok(self.project_out.forward(&quantized.detach())?)
    }

    /// The codebook's data-driven initialisation from `flat` `[T, C]` projected to its `D`
    /// (see [`VectorQuantizer::initialise`]).
    pub fn initialise(
        &self,
        flat: &Tensor,
        rows_per_step: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool> {
        let z = self.project(&flat.detach())?.detach();
        self.quantizer.initialise(&z, rows_per_step, rng)
    }

    fn with_search(mut self, search: SearchMethod) -> Self {
        self.quantizer = self.quantizer.with_search(search);
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
    q_proj: Linear,
    k_proj: Linear,
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
            q_proj: Linear::new(channels, channels, vb.pp("q_proj"))?,
            k_proj: Linear::new(channels, channels, vb.pp("k_proj"))?,
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
            .map(|(i, cb)| ProjectedQuantizer::new(c, cb, vb.pp("books").pp(i)))
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
        self.logits_of_flat(&flat, z_e.dim(0)?)
    }

    fn logits_of_flat(&self, flat: &Tensor, batch: usize) -> Result<Option<Tensor>> {
        let Some(selector) = &self.selector else {
            return Ok(None);
        };
        let query = match self.config.granularity() {
            Granularity::PerVector => flat.clone(),
            Granularity::PerImage => {
                let (t, c) = flat.dims2()?;
                flat.reshape((batch, t / batch, c))?.mean(1)?
            }
        };
        Ok(Some(selector.logits(&query)?))
    }

    /// `[units, m]` selection → `[T, m]` (per-image choices repeated over positions).
    fn expand_selection(&self, sel: &Tensor, t: usize, batch: usize) -> Result<Tensor> {
        Ok(match self.config.granularity() {
            Granularity::PerVector => sel.clone(),
            Granularity::PerImage => {
                let m = sel.dim(1)?;
                sel.unsqueeze(1)?
                    .broadcast_as((batch, t / batch, m))?
                    .reshape((t, m))?
            }
        })
    }
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
        let flat_sg = flat.detach();
        for book in &self.books {
            let (o, v) = book.forward(flat, step.update_codebooks)?;
            if min_error {
                // β‖project_out(sg[q]) − sg[z_e]‖²; its forward value is the routing distance.
                let back = book.back_project_detached(&v.quantized)?;
                let diff = (&back - &flat_sg)?;
                errors.push(diff.detach().sqr()?.sum(1)?); // [T]
                let beta = book.quantizer().config().codebook().beta;
                losses.push((&v.loss + diff.sqr()?.mean_all()?.affine(beta, 0.0)?)?);
            } else {
                losses.push(v.loss.clone());
            }
            outs.push(o);
            vqs.push(v);
        }
        let loss_vec = Tensor::stack(&losses, 0)?;
        let loss = loss_vec.mean_all()?;
        let ppl: Vec<&Tensor> = vqs.iter().map(|v| &v.perplexity).collect();
        let perplexity = Tensor::stack(&ppl, 0)?.detach();
        let code_counts: Vec<Tensor> = vqs.iter().map(|v| v.counts.clone()).collect();
        let logits = self.logits_of_flat(flat, batch)?;
        let sel_units = if m == 1 {
            None
        } else if min_error {
            let err = Tensor::stack(&errors, 1)?; // [T, m]
            let err = match self.config.granularity() {
                Granularity::PerVector => err,
                Granularity::PerImage => err.reshape((batch, t / batch, m))?.sum(1)?,
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
                let units = match self.config.granularity() {
                    Granularity::PerVector => t,
                    Granularity::PerImage => batch,
                };
                let counts = Tensor::from_vec(vec![units as f32], 1, flat.device())?;
                let codes = Codes {
                    codebook: Tensor::zeros(shape, DType::U32, flat.device())?,
                    index: vqs[0].indices.reshape(shape)?,
                };
                (outs.swap_remove(0), counts, codes)
            }
            Some(sel_units) => {
                let counts = selection_counts(&sel_units)?;
                let sel = self.expand_selection(&sel_units, t, batch)?; // [T, m]
                let z = crate::mix::weighted_sum(&outs, &sel)?;
                let choice = sel.detach().argmax_keepdim(1)?; // [T, 1]
                let idx: Vec<&Tensor> = vqs.iter().map(|v| &v.indices).collect();
                let index = Tensor::stack(&idx, 1)?.gather(&choice, 1)?;
                let codes = Codes {
                    codebook: choice.reshape(shape)?,
                    index: index.reshape(shape)?,
                };
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
        if let Some(&bad) = book_ids.iter().find(|&&b| b as usize >= m) {
            return Err(VqError::input(
                "codes",
                format!("codebook id {bad} ≥ pool size {m}"),
            ));
        }
        let dev = codes.index.device();
        let mut z: Option<Tensor> = None;
        for (i, book) in self.books.iter().enumerate() {
            let n = book.quantizer().config().num_embeddings() as u32;
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
            let term = book.decode(&rows)?.broadcast_mul(&mask)?;
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

impl Quantizer for VectorQuantizer {
    fn channels(&self) -> usize {
        self.config().embedding_dim()
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
        let t = flat.dim(0)?;
        if t != shape.iter().product::<usize>() {
            return Err(VqError::input(
                "z_e",
                format!("{t} vectors for positions {shape:?}"),
            ));
        }
        let out = VectorQuantizer::forward(self, flat, step.update_codebooks)?;
        let dev: &Device = flat.device();
        Ok(QuantizerOutput {
            z_q: out.quantized,
            codebook_losses: out.loss.detach().reshape(1)?,
            loss: out.loss,
            perplexity: out.perplexity.detach().reshape(1)?,
            code_counts: vec![out.counts.clone()],
            selection_counts: Tensor::from_vec(vec![t as f32], 1, dev)?,
            codes: Codes {
                codebook: Tensor::zeros(shape, DType::U32, dev)?,
                index: out.indices.reshape(shape)?,
            },
            logits: None,
        })
    }

    fn initialise_codebooks(
        &self,
        flat: &Tensor,
        rows_per_step: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool> {
        self.initialise(&flat.detach(), rows_per_step, rng)
    }

    fn decode(&self, codes: &Codes) -> Result<Tensor> {
        let shape = codes.index.dims().to_vec();
        if shape.is_empty() || shape[0] == 0 {
            return Err(VqError::input(
                "codes",
                format!("expected [B, ...] with B ≥ 1, got {shape:?}"),
            ));
        }
        let z = VectorQuantizer::decode(self, &codes.index.flatten_all()?)?;
        let mut like = vec![shape[0], self.channels()];
        like.extend(&shape[1..]);
        from_flat(&z, &like)
    }
}
