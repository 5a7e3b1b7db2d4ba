//! One codebook `[N, D]`: nearest-codeword quantization with a straight-through output, the
//! paper's eq. 3 loss, and an EMA or gradient-learned codebook.

use candle_core::{DType, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::config::{CodebookInit, Distance, ValidVqConfig, VqGradient};
use crate::error::{Result, VqError};
use crate::search::{nearest_with, SearchCache, SearchMethod};

/// EMA state of a codebook: `N_i` (cluster sizes) and `m_i` (running sums).
#[derive(Clone, Debug)]
struct EmaState {
    cluster_size: Var,
    ema_w: Var,
}

/// Vector quantizer over one codebook `[N, D]`.
///
/// Variables (relative to the builder's prefix):
/// - `embedding` `[N, D]`: the codebook. With EMA it is a buffer (never receives a gradient);
///   without EMA it is a trainable parameter.
/// - `ema_cluster_size` `[N]`, `ema_w` `[N, D]`: EMA buffers (EMA mode only).
///
/// - `updates` `[1]`: number of codebook updates so far, the data-driven initialisation counting
///   as one (only with data or k-means initialisation or dead-code restarts; it seeds their
///   random choices and says whether the initialisation is done, so runs resume exactly).
///
/// The variables are created as in the authors' code (zalando's `VectorQuantizerEMA`): codebook
/// and running sums drawn independently from N(0, 1), cluster sizes zero. With
/// [`CodebookInit::Kmeans`] or [`CodebookInit::Data`] they are replaced from data before the
/// first update: by [`VectorQuantizer::initialise`] on a sample the caller chooses (the trainer
/// encodes its first batches), or else from the first training batch.
#[derive(Clone, Debug)]
pub struct VectorQuantizer {
    config: ValidVqConfig,
    embedding: Var,
    ema: Option<EmaState>,
    /// SimVQ's learned map `W` `[D, D]` (the codebook is then `embedding·Wᵀ`).
    transform: Option<Var>,
    updates: Option<Var>,
    /// Stream key of this codebook's random choices (hash of its variable path).
    key: u64,
    search: SearchMethod,
    /// The search's state between steps (the k-d tree of a small-`D` codebook).
    search_cache: SearchCache,
}

/// What [`VectorQuantizer::forward`] returns.
#[derive(Clone, Debug)]
pub struct VqOutput {
    /// `[T, D]`: the selected codewords in the forward pass, identity gradient to the input
    /// (straight-through estimator).
    pub quantized: Tensor,
    /// `[T]` u32: index of the selected codeword of each vector.
    pub indices: Tensor,
    /// Scalar: `β·(‖sg[z_e] − z_q‖² + α‖z_e − sg[z_q]‖²)` (mean squared errors).
    pub loss: Tensor,
    /// `[N]` f32: how many vectors each codeword received.
    pub counts: Tensor,
    /// Scalar: `exp(−Σ p log p)` of the code usage in this batch.
    pub perplexity: Tensor,
}

/// Rows of `x` `[T, D]` divided by their norms, clamped at 1e-6 (PyTorch's `F.normalize`).
pub(crate) fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-6)?;
    Ok(x.broadcast_div(&norm)?)
}

/// The rotation trick's `sg[λR]·x` for rows `x` `[T, D]` and their codewords `e` `[T, D]`:
/// `λ·(x − 2(x·w)w + 2(x·û)ê)` with `û = x/‖x‖`, `ê = e/‖e‖`, `w = (û + ê)/‖û + ê‖` and
/// `λ = ‖e‖/‖x‖`, everything but the `x` of the products detached (norms clamped at 1e-6,
/// as `vector-quantize-pytorch`'s `rotate_to`). Its value is `e` up to rounding.
pub(crate) fn rotate_to(x: &Tensor, e: &Tensor) -> Result<Tensor> {
    const EPS: f64 = 1e-6;
    let x_sg = x.detach();
    let e = e.detach();
    let norm = |t: &Tensor| -> Result<Tensor> { Ok(t.sqr()?.sum_keepdim(1)?.sqrt()?) };
    let (nx, ne) = (norm(&x_sg)?, norm(&e)?);
    let u = l2_normalize(&x_sg)?;
    let q = l2_normalize(&e)?;
    let w = l2_normalize(&(&u + &q)?)?;
    let dot = |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok((a * b)?.sum_keepdim(1)?) };
    let reflected = (x - dot(x, &w)?.broadcast_mul(&w)?.affine(2.0, 0.0)?)?;
    let rotated = (reflected + dot(x, &u)?.broadcast_mul(&q)?.affine(2.0, 0.0)?)?;
    let scale = ne.broadcast_div(&nx.maximum(EPS)?)?;
    Ok(rotated.broadcast_mul(&scale)?)
}

/// Code usage of one batch: `[N]` f32 counts of the `[T]` u32 `indices` over a codebook of
/// `n` codes, and the scalar perplexity `exp(−Σ p log p)` of `p = counts / T`.
pub(crate) fn code_usage(indices: &Tensor, n: usize) -> Result<(Tensor, Tensor)> {
    let t = indices.dim(0)?;
    let dev = indices.device();
    let ones = Tensor::ones(t, DType::F32, dev)?;
    let counts = Tensor::zeros(n, DType::F32, dev)?.index_add(indices, &ones, 0)?;
    let p = counts.affine(1.0 / t.max(1) as f64, 0.0)?;
    let perplexity = (&p * p.affine(1.0, 1e-10)?.log()?)?
        .sum_all()?
        .neg()?
        .exp()?;
    Ok((counts, perplexity))
}

fn as_var(t: Tensor) -> Result<Var> {
    Ok(Var::from_tensor(&t)?)
}

impl VectorQuantizer {
    /// Builds the codebook (and EMA buffers) under `vb`.
    pub fn new(config: &ValidVqConfig, vb: VarBuilder) -> Result<Self> {
        let (n, d) = (config.num_embeddings(), config.embedding_dim());
        let cb = config.codebook();
        let (embedding, ema) = if cb.ema {
            let normal = Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            };
            let embedding = as_var(vb.get_with_hints((n, d), "embedding", normal)?)?;
            let ema_w = as_var(vb.get_with_hints((n, d), "ema_w", normal)?)?;
            let cluster_size =
                as_var(vb.get_with_hints(n, "ema_cluster_size", Init::Const(0.0))?)?;
            (
                embedding,
                Some(EmaState {
                    cluster_size,
                    ema_w,
                }),
            )
        } else if cb.sim_vq {
            // The frozen draw (a variable, so it is seeded and checkpointed, but only ever read
            // detached, so no optimizer moves it), as the package's `randn · D^−½`.
            let frozen = Init::Randn {
                mean: 0.0,
                stdev: (d as f64).powf(-0.5),
            };
            (
                as_var(vb.get_with_hints((n, d), "embedding", frozen)?)?,
                None,
            )
        } else {
            let bound = 1.0 / n as f64;
            let init = Init::Uniform {
                lo: -bound,
                up: bound,
            };
            (as_var(vb.get_with_hints((n, d), "embedding", init)?)?, None)
        };
        // SimVQ's map W [D, D], PyTorch's `nn.Linear(D, D, bias=False)` initialisation.
        let transform = if cb.sim_vq {
            let bound = 1.0 / (d as f64).sqrt();
            let init = Init::Uniform {
                lo: -bound,
                up: bound,
            };
            Some(as_var(vb.get_with_hints((d, d), "transform", init)?)?)
        } else {
            None
        };
        // The update counter drives the data-driven init and the restarts' random streams;
        // SimVQ has neither.
        let updates = ((cb.init != CodebookInit::Normal || cb.restart_below > 0.0) && !cb.sim_vq)
            .then(|| {
                vb.get_with_hints_dtype(1, "updates", Init::Const(0.0), candle_core::DType::U32)
                    .map_err(VqError::from)
                    .and_then(as_var)
            })
            .transpose()?;
        Ok(Self {
            config: config.clone(),
            embedding,
            ema,
            transform,
            updates,
            key: crate::init::stable_hash(vb.prefix().as_bytes()),
            search: SearchMethod::Auto,
            search_cache: SearchCache::default(),
        })
    }

    /// Chooses the nearest-neighbour implementation (default: [`SearchMethod::Auto`]).
    pub fn with_search(mut self, search: SearchMethod) -> Self {
        self.search = search;
        self
    }

    /// The validated configuration.
    pub fn config(&self) -> &ValidVqConfig {
        &self.config
    }

    /// `[N, D]`: the current codebook (detached in EMA mode; `C·Wᵀ` for SimVQ, with the
    /// gradient reaching `W` only; unit rows for the cosine distance).
    pub fn codebook(&self) -> Result<Tensor> {
        self.prepare(&match (&self.ema, &self.transform) {
            (Some(_), _) => self.embedding.as_detached_tensor(),
            (None, Some(w)) => self
                .embedding
                .as_detached_tensor()
                .matmul(&w.as_tensor().t()?)?,
            (None, None) => self.embedding.as_tensor().clone(),
        })
    }

    /// Rows `x` `[T, D]` as this codebook compares them: l2-normalised for the cosine
    /// distance, unchanged for L2.
    pub fn prepare(&self, x: &Tensor) -> Result<Tensor> {
        match self.config.codebook().distance {
            Distance::L2 => Ok(x.clone()),
            Distance::Cosine => l2_normalize(x),
        }
    }

    /// `[N]` EMA cluster sizes, when the codebook is EMA-updated.
    pub fn ema_cluster_size(&self) -> Option<Tensor> {
        self.ema
            .as_ref()
            .map(|e| e.cluster_size.as_detached_tensor())
    }

    /// Nearest codeword index of each row of `x` (`[T, D]` → `[T]` u32), no gradient, no update.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        nearest_with(
            &self.prepare(&x.detach())?,
            &self.codebook()?.detach(),
            self.search,
            Some(&self.search_cache),
        )
    }

    /// Codewords of `indices` (`[T]` u32 → `[T, D]`); an index ≥ N is an error.
    pub fn decode(&self, indices: &Tensor) -> Result<Tensor> {
        let n = self.config.num_embeddings();
        if indices.elem_count() > 0
            && indices
                .flatten_all()?
                .max(0)?
                .to_dtype(candle_core::DType::U32)?
                .to_scalar::<u32>()? as usize
                >= n
        {
            return Err(VqError::input(
                "indices",
                format!("an index is ≥ the codebook size N = {n}"),
            ));
        }
        Ok(self.codebook()?.index_select(indices, 0)?)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = self.config.embedding_dim();
        match x.dims() {
            [0, _] => Err(VqError::input("x", "has no vectors (T = 0)")),
            [_, dd] if *dd == d => Ok(()),
            dims => Err(VqError::input(
                "x",
                format!("expected [T, {d}] for codebook dimension D = {d}, got {dims:?}"),
            )),
        }
    }

    /// Quantizes `x` (`[T, D]`). With `update` and an EMA codebook, the codebook then moves
    /// towards the vectors assigned to it (the output uses the codebook *before* the update).
    pub fn forward(&self, x: &Tensor, update: bool) -> Result<VqOutput> {
        let _span = tracing::trace_span!(
            "vq",
            n = self.config.num_embeddings(),
            d = self.config.embedding_dim()
        )
        .entered();
        self.check_input(x)?;
        let x = &self.prepare(x)?;
        let cb = self.config.codebook();
        let x_sg = x.detach();
        let updates = match &self.updates {
            Some(u) => u.as_tensor().to_vec1::<u32>()?[0] as u64,
            None => 0,
        };
        // A non-finite batch (a diverging encoder) must not reach the codebook statistics.
        let finite = !update || x_sg.sum_all()?.to_scalar::<f32>()?.is_finite();
        // No counter (SimVQ, the authors' init without restarts): nothing to initialise.
        let updates = if update
            && finite
            && self.updates.is_some()
            && cb.init != CodebookInit::Normal
            && updates == 0
        {
            let mut rng = self.rng(0);
            self.initialise(&x_sg, x_sg.dim(0)?, &mut rng)?;
            1
        } else {
            updates
        };
        let codebook = self.codebook()?;
        let indices = nearest_with(
            &x_sg,
            &codebook.detach(),
            self.search,
            Some(&self.search_cache),
        )?;
        let z_q = codebook.index_select(&indices, 0)?;
        let z_q_sg = z_q.detach();
        // ‖sg[z_e] − z_q‖²: moves a learned codebook; a constant with EMA.
        let codebook_loss = (&x_sg - &z_q)?.sqr()?.mean_all()?;
        // α‖z_e − sg[z_q]‖²: commits the encoder to its codes.
        let commitment = (x - &z_q_sg)?.sqr()?.mean_all()?;
        let loss =
            (codebook_loss + commitment.affine(cb.commitment, 0.0)?)?.affine(cb.beta, 0.0)?;
        // Forward value exactly z_q; the gradient w.r.t. x is the identity (straight-through)
        // or that of the rotation trick's `sg[λR]·x`.
        let through = match cb.gradient {
            VqGradient::StraightThrough => x.clone(),
            VqGradient::Rotation => rotate_to(x, &z_q_sg)?,
        };
        let quantized = (&z_q_sg + (&through - through.detach())?)?;
        let (counts, perplexity) = code_usage(&indices, self.config.num_embeddings())?;
        if update {
            if let Some(ema) = &self.ema {
                // A non-finite input would poison the running sums for good; leave the codebook
                // as it is (the loss is non-finite too, so the trainer stops or skips the batch).
                if finite {
                    self.ema_update(ema, &x_sg, &indices, &counts)?;
                    if cb.restart_below > 0.0 {
                        self.restart_dead(ema, &x_sg, updates)?;
                    }
                }
            }
            if let Some(u) = &self.updates {
                u.set(&Tensor::new(&[(updates + 1) as u32], x.device())?)?;
            }
        }
        Ok(VqOutput {
            quantized,
            indices,
            loss,
            counts,
            perplexity,
        })
    }

    /// The random stream of this codebook's choices at update `updates`.
    fn rng(&self, updates: u64) -> rand_chacha::ChaCha8Rng {
        crate::init::stream(
            self.key ^ updates.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            "codebook",
        )
    }

    /// Whether the data-driven initialisation is still to be done (k-means or data init, and no
    /// update or initialisation has happened yet).
    pub fn needs_init(&self) -> Result<bool> {
        Ok(match &self.updates {
            Some(u) if self.config.codebook().init != CodebookInit::Normal => {
                u.as_tensor().to_vec1::<u32>()?[0] == 0
            }
            _ => false,
        })
    }

    /// The configured data-driven initialisation from the vectors `x` `[T, D]`:
    /// - [`CodebookInit::Kmeans`]: k-means++ and `kmeans_iters` Lloyd iterations
    ///   ([`crate::kmeans`]); EMA cluster sizes are the final assignment counts scaled to a batch
    ///   of `rows_per_step` vectors (`count · rows_per_step / T`; a codeword with no vector gets
    ///   the mean `rows_per_step / N`), running sums the codewords times them;
    /// - [`CodebookInit::Data`]: random rows of `x` (distinct when `T ≥ N`), cluster sizes 1;
    /// - [`CodebookInit::Normal`]: nothing (returns `false`).
    ///
    /// Counts as the first update (`updates = 1`), so a later training step does not initialise
    /// again. All choices come from `rng`.
    pub fn initialise(
        &self,
        x: &Tensor,
        rows_per_step: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool> {
        use rand::Rng;
        self.check_input(x)?;
        let x = &self.prepare(x)?;
        let cb = self.config.codebook();
        let (t, d) = x.dims2()?;
        let n = self.config.num_embeddings();
        let dev = x.device().clone();
        let (emb, cs): (Vec<f32>, Vec<f32>) = match cb.init {
            _ if cb.sim_vq => return Ok(false),
            CodebookInit::Normal => return Ok(false),
            CodebookInit::Data => {
                let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let rows: Vec<usize> = if t >= n {
                    rand::seq::index::sample(rng, t, n).into_iter().collect()
                } else {
                    (0..n).map(|_| rng.random_range(0..t)).collect()
                };
                let emb = rows
                    .iter()
                    .flat_map(|&r| xs[r * d..(r + 1) * d].iter().copied())
                    .collect();
                (emb, vec![1.0; n])
            }
            CodebookInit::Kmeans => {
                let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let k = crate::kmeans::kmeans(&xs, d, n, cb.kmeans_iters, rng)?;
                let scale = rows_per_step as f32 / t as f32;
                let mean = rows_per_step as f32 / n as f32;
                let cs = k
                    .counts
                    .iter()
                    .map(|&c| if c > 0.0 { c * scale } else { mean })
                    .collect();
                (k.centers, cs)
            }
        };
        let emb_t = self.prepare(&Tensor::from_vec(emb, (n, d), &dev)?)?;
        self.embedding.set(&emb_t)?;
        if let Some(ema) = &self.ema {
            let cs_t = Tensor::from_vec(cs, n, &dev)?;
            ema.ema_w.set(&emb_t.broadcast_mul(&cs_t.unsqueeze(1)?)?)?;
            ema.cluster_size.set(&cs_t)?;
        }
        if let Some(u) = &self.updates {
            u.set(&Tensor::new(&[1u32], &dev)?)?;
        }
        Ok(true)
    }

    /// Codewords whose EMA cluster size is below `restart_below` times the mean cluster size
    /// move to random rows of `x`, their statistics reset: cluster size = the mean, running sum =
    /// the row times it.
    fn restart_dead(&self, ema: &EmaState, x: &Tensor, updates: u64) -> Result<()> {
        use rand::Rng;
        let _span = tracing::trace_span!("restart_dead").entered();
        let cs = ema.cluster_size.as_tensor().to_vec1::<f32>()?;
        let mean = cs.iter().map(|&c| c as f64).sum::<f64>() / cs.len() as f64;
        let thr = (self.config.codebook().restart_below * mean) as f32;
        let dead: Vec<usize> = cs
            .iter()
            .enumerate()
            .filter(|(_, &c)| c < thr)
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        let (t, d) = x.dims2()?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut emb = self.embedding.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let mut w = ema.ema_w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let mut cs = cs;
        let mut rng = self.rng(updates ^ 0x5EED);
        let mean = mean as f32;
        for i in dead {
            let r = rng.random_range(0..t);
            let row = &xs[r * d..(r + 1) * d];
            emb[i * d..(i + 1) * d].copy_from_slice(row);
            for (wv, &xv) in w[i * d..(i + 1) * d].iter_mut().zip(row) {
                *wv = xv * mean;
            }
            cs[i] = mean;
        }
        let n = cs.len();
        let dev = x.device();
        self.embedding.set(&Tensor::from_vec(emb, (n, d), dev)?)?;
        ema.ema_w.set(&Tensor::from_vec(w, (n, d), dev)?)?;
        ema.cluster_size.set(&Tensor::from_vec(cs, n, dev)?)?;
        Ok(())
    }

    /// `N ← γN + (1−γ)n`, Laplace smoothing, `m ← γm + (1−γ)Σx`, `e = m / N`.
    fn ema_update(
        &self,
        ema: &EmaState,
        x: &Tensor,
        indices: &Tensor,
        counts: &Tensor,
    ) -> Result<()> {
        let _span = tracing::trace_span!("ema_update").entered();
        let cb = self.config.codebook();
        let (g, eps) = (cb.decay, cb.epsilon);
        let n_codes = self.config.num_embeddings() as f64;
        let cs = (ema.cluster_size.as_detached_tensor().affine(g, 0.0)?
            + counts.affine(1.0 - g, 0.0)?)?;
        let total = cs.sum_all()?;
        let denom = total.affine(1.0, n_codes * eps)?;
        let cs = cs
            .affine(1.0, eps)?
            .broadcast_div(&denom)?
            .broadcast_mul(&total)?;
        let dw = ema.ema_w.zeros_like()?.index_add(indices, x, 0)?;
        let ema_w = (ema.ema_w.as_detached_tensor().affine(g, 0.0)? + dw.affine(1.0 - g, 0.0)?)?;
        let embedding = self.prepare(&ema_w.broadcast_div(&cs.unsqueeze(1)?)?)?;
        ema.cluster_size.set(&cs)?;
        ema.ema_w.set(&ema_w)?;
        self.embedding.set(&embedding)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CodebookConfig, VqConfig};
    use candle_core::Device;
    use std::collections::HashMap;

    fn vq_from(embedding: &[f32], n: usize, d: usize, ema: bool) -> VectorQuantizer {
        let cb = CodebookConfig {
            ema,
            ..CodebookConfig::authors()
        };
        vq_with_codebook(embedding, n, d, cb)
    }

    /// A codebook of these codewords (EMA sums equal to them, cluster sizes 1).
    fn vq_with_codebook(
        embedding: &[f32],
        n: usize,
        d: usize,
        codebook: CodebookConfig,
    ) -> VectorQuantizer {
        let cfg = VqConfig {
            num_embeddings: n,
            embedding_dim: d,
            codebook,
        }
        .validate()
        .unwrap();
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        ts.insert(
            "embedding".to_string(),
            Tensor::from_slice(embedding, (n, d), &dev).unwrap(),
        );
        ts.insert(
            "ema_w".to_string(),
            Tensor::from_slice(embedding, (n, d), &dev).unwrap(),
        );
        ts.insert(
            "ema_cluster_size".to_string(),
            Tensor::ones(n, DType::F32, &dev).unwrap(),
        );
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        VectorQuantizer::new(&cfg, vb).unwrap()
    }

    /// EMA update on a 3-codeword, 2-dim example, computed by hand:
    /// codebook e0 = (0,0), e1 = (1,1), e2 = (5,5); ema_w = codebook; cluster sizes 1.
    /// x = (0.2,0), (0,0.4), (1.2,1.0) → indices 0, 0, 1; counts (2, 1, 0).
    /// γ = 0.99: N = (0.99+0.02, 0.99+0.01, 0.99) = (1.01, 1.00, 0.99), ΣN = 3.0
    /// Laplace (ε = 1e-5): N_i ← (N_i + ε)/(3 + 3ε)·3
    /// Σx per code: (0.2, 0.4), (1.2, 1.0), (0, 0)
    /// m = 0.99·e + 0.01·Σx: (0.002, 0.004), (1.002, 1.0), (4.95, 4.95)
    /// e_new = m / N.
    #[test]
    fn ema_update_matches_hand_computation() {
        let vq = vq_from(&[0., 0., 1., 1., 5., 5.], 3, 2, true);
        let x = Tensor::from_slice(&[0.2f32, 0., 0., 0.4, 1.2, 1.0], (3, 2), &Device::Cpu).unwrap();
        let out = vq.forward(&x, true).unwrap();
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), vec![0, 0, 1]);
        assert_eq!(out.counts.to_vec1::<f32>().unwrap(), vec![2.0, 1.0, 0.0]);
        let eps = 1e-5f64;
        let n_raw = [1.01f64, 1.00, 0.99];
        let total: f64 = n_raw.iter().sum();
        let n_s: Vec<f64> = n_raw
            .iter()
            .map(|v| (v + eps) / (total + 3.0 * eps) * total)
            .collect();
        let m = [[0.002f64, 0.004], [1.002, 1.0], [4.95, 4.95]];
        let want: Vec<f64> = (0..3)
            .flat_map(|i| [m[i][0] / n_s[i], m[i][1] / n_s[i]])
            .collect();
        let got = vq
            .codebook()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let cs = vq.ema_cluster_size().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in cs.iter().zip(&n_s) {
            assert!((*g as f64 - w).abs() < 1e-6);
        }
        // Output used the codebook before the update.
        assert_eq!(
            out.quantized.to_vec2::<f32>().unwrap(),
            vec![vec![0., 0.], vec![0., 0.], vec![1., 1.]]
        );
        // Loss by hand: MSE(x, z_q) = (0.04 + 0.16 + 0.04 + 0)/6 = 0.04; β(1 + α)·0.04 = 0.05.
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!((loss - 0.05).abs() < 1e-6, "{loss}");
        // Perplexity of usage (2/3, 1/3, 0): exp(-(2/3 ln 2/3 + 1/3 ln 1/3)) = 1.8899.
        let ppl = out.perplexity.to_scalar::<f32>().unwrap();
        assert!((ppl - 1.889_882_5).abs() < 1e-4, "{ppl}");
    }

    /// Every quantized vector is exactly a codebook row, the row of the brute-force argmin.
    #[test]
    fn quantized_rows_are_codewords_of_the_argmin() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for &(n, d) in &[(64usize, 8usize), (300, 3), (1000, 1)] {
            let e: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..257 * d).map(|_| rng.random_range(-1.2..1.2)).collect();
            let vq = vq_from(&e, n, d, true);
            let xt = Tensor::from_slice(&x, (257, d), &Device::Cpu).unwrap();
            let out = vq.forward(&xt, false).unwrap();
            let idx = out.indices.to_vec1::<u32>().unwrap();
            let q = out.quantized.to_vec2::<f32>().unwrap();
            let brute = crate::search::nearest_brute_force(&x, &e, d);
            let mut same = 0;
            for (r, row) in q.iter().enumerate() {
                let j = idx[r] as usize;
                assert_eq!(
                    row.as_slice(),
                    &e[j * d..(j + 1) * d],
                    "row {r} is codeword {j}"
                );
                same += (idx[r] == brute[r]) as usize;
            }
            // f32 expansion vs exact f64 distances may only flip rare near-ties.
            assert!(
                same >= 255,
                "{same}/257 agree with brute force (n={n}, d={d})"
            );
            assert!(out.loss.to_scalar::<f32>().unwrap() >= 0.0);
        }
    }

    fn vq_with(cb: CodebookConfig, n: usize, d: usize) -> VectorQuantizer {
        let cfg = VqConfig {
            num_embeddings: n,
            embedding_dim: d,
            codebook: cb,
        }
        .validate()
        .unwrap();
        let vm = crate::SeededVarMap::new(3);
        VectorQuantizer::new(&cfg, vm.var_builder(DType::F32, &Device::Cpu).pp("q")).unwrap()
    }

    /// Small inputs against N(0, 1) codewords of dimension 32: the authors' initialisation sends
    /// every vector to the same codeword (perplexity 1); data initialisation uses many.
    #[test]
    fn data_init_avoids_the_single_codeword_collapse() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let x: Vec<f32> = (0..256 * 32)
            .map(|_| rng.random_range(-0.05..0.05))
            .collect();
        let x = Tensor::from_vec(x, (256, 32), &Device::Cpu).unwrap();
        let normal = vq_with(CodebookConfig::authors(), 64, 32);
        let p = normal
            .forward(&x, true)
            .unwrap()
            .perplexity
            .to_scalar::<f32>()
            .unwrap();
        assert!(p < 1.01, "authors' init: perplexity {p}");
        let data = vq_with(
            CodebookConfig {
                init: CodebookInit::Data,
                ..CodebookConfig::authors()
            },
            64,
            32,
        );
        let out = data.forward(&x, true).unwrap();
        let p = out.perplexity.to_scalar::<f32>().unwrap();
        assert!(p > 20.0, "data init: perplexity {p}");
        // Same seed, same choice; the counter advanced and is a checkpointed variable.
        let again = vq_with(
            CodebookConfig {
                init: CodebookInit::Data,
                ..CodebookConfig::authors()
            },
            64,
            32,
        );
        again.forward(&x, true).unwrap();
        assert_eq!(
            data.codebook().unwrap().to_vec2::<f32>().unwrap(),
            again.codebook().unwrap().to_vec2::<f32>().unwrap()
        );
        // The initialisation and the step's EMA update each count.
        assert_eq!(
            data.updates
                .as_ref()
                .unwrap()
                .as_tensor()
                .to_vec1::<u32>()
                .unwrap(),
            vec![2]
        );
    }

    /// The rotation trick, by hand: codewords (0, 2) and (−5, −5), inputs x₁ = (1, 0) and
    /// x₂ = (0, 3), both nearest (0, 2). Row 1: û = (1, 0), ê = (0, 1), w = (1, 1)/√2, λ = 2,
    /// R = I − 2wwᵀ + 2êûᵀ = [[0, −1], [1, 0]] (a quarter turn), so the gradient of `g·q` is
    /// λRᵀg: for g = (1, 0), (0, −2). Row 2: û = ê = w, R = I, λ = 2/3: (2/3, 0). The output is
    /// the codeword exactly, and straight-through gives g itself.
    #[test]
    fn rotation_trick_by_hand() {
        let dev = Device::Cpu;
        let build = |gradient: VqGradient| {
            let cb = CodebookConfig {
                gradient,
                ..CodebookConfig::authors()
            };
            vq_with_codebook(&[0., 2., -5., -5.], 2, 2, cb)
        };
        let x = candle_core::Var::new(&[[1f32, 0.], [0., 3.]], &dev).unwrap();
        let g = Tensor::new(&[[1f32, 0.], [1., 0.]], &dev).unwrap();
        let grad_of = |vq: &VectorQuantizer| {
            let out = vq.forward(x.as_tensor(), false).unwrap();
            assert_eq!(
                out.quantized.to_vec2::<f32>().unwrap(),
                vec![vec![0., 2.], vec![0., 2.]]
            );
            let grads = (&out.quantized * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap()
        };
        let rot = grad_of(&build(VqGradient::Rotation));
        let want = [[0f32, -2.], [2. / 3., 0.]];
        for (r, w) in rot.iter().zip(want) {
            for (a, b) in r.iter().zip(w) {
                assert!((a - b).abs() < 1e-6, "{rot:?}");
            }
        }
        let st = grad_of(&build(VqGradient::StraightThrough));
        assert_eq!(st, vec![vec![1., 0.], vec![1., 0.]]);
    }

    /// SimVQ by hand: frozen C = I₂, W = diag(2, 1), so the codebook C·Wᵀ is (2, 0), (0, 1).
    /// x₁ = (1.8, 0.1) → code 0, x₂ = (0.2, 0.7) → code 1. Residuals x − Wc: (−0.2, 0.1) and
    /// (0.2, −0.3); loss (1 + α)·mean of their squares = 1.25·0.18/4 = 0.05625. The codebook
    /// term's gradient, −(2/(T·D))·Σ (x − Wc)cᵀ = −0.5·[[−0.2, 0.2], [0.1, −0.3]], reaches W
    /// only: [[0.1, −0.1], [−0.05, 0.15]]; the frozen draw gets none.
    #[test]
    fn sim_vq_by_hand() {
        let dev = Device::Cpu;
        let cfg = VqConfig {
            num_embeddings: 2,
            embedding_dim: 2,
            codebook: CodebookConfig {
                ema: false,
                restart_below: 0.0,
                sim_vq: true,
                ..CodebookConfig::default()
            },
        }
        .validate()
        .unwrap();
        let mut ts = HashMap::new();
        ts.insert(
            "embedding".to_string(),
            Tensor::from_slice(&[1f32, 0., 0., 1.], (2, 2), &dev).unwrap(),
        );
        ts.insert(
            "transform".to_string(),
            Tensor::from_slice(&[2f32, 0., 0., 1.], (2, 2), &dev).unwrap(),
        );
        let vq =
            VectorQuantizer::new(&cfg, VarBuilder::from_tensors(ts, DType::F32, &dev)).unwrap();
        assert_eq!(
            vq.codebook().unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![2., 0.], vec![0., 1.]]
        );
        let x = Tensor::from_slice(&[1.8f32, 0.1, 0.2, 0.7], (2, 2), &dev).unwrap();
        let out = vq.forward(&x, true).unwrap();
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), vec![0, 1]);
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!((loss - 0.05625).abs() < 1e-6, "{loss}");
        let grads = out.loss.backward().unwrap();
        let w = vq.transform.as_ref().unwrap();
        let g = grads.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let want = [[0.1f32, -0.1], [-0.05, 0.15]];
        for (r, wr) in g.iter().zip(want) {
            for (a, b) in r.iter().zip(wr) {
                assert!((a - b).abs() < 1e-6, "{g:?}");
            }
        }
        assert!(grads.get(vq.embedding.as_tensor()).is_none());
        // An update does not move the frozen draw, and no data-driven init replaces it.
        assert_eq!(
            vq.embedding.as_tensor().to_vec2::<f32>().unwrap(),
            vec![vec![1., 0.], vec![0., 1.]]
        );
        let e = VqConfig {
            num_embeddings: 2,
            embedding_dim: 2,
            codebook: CodebookConfig {
                sim_vq: true,
                ..CodebookConfig::default()
            },
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("sim_vq") && e.contains("ema = false"), "{e}");
    }

    /// Cosine codebooks by hand: codewords (3, 0) and (0, −2) compare as (1, 0) and (0, −1);
    /// x₁ = (2, 1) → (0.894427, 0.447214), nearest code 0; x₂ = (0.1, −5) → (0.019996,
    /// −0.999800), code 1. Output: the unit codewords. Loss 1.25·mean of the squared
    /// differences of the unit vectors = 0.0661080. The EMA update (decay 0.99, sums starting at
    /// the raw codewords) then renormalises: code 0 = unit(0.99·(3, 0) + 0.01·x̂₁) = (0.999999,
    /// 0.001501), code 1 = (0.000100, −1.0) (Python `math`).
    #[test]
    fn cosine_codebook_by_hand() {
        let cb = CodebookConfig {
            distance: Distance::Cosine,
            ..CodebookConfig::authors()
        };
        let vq = vq_with_codebook(&[3., 0., 0., -2.], 2, 2, cb);
        let x = Tensor::from_slice(&[2f32, 1., 0.1, -5.], (2, 2), &Device::Cpu).unwrap();
        let out = vq.forward(&x, true).unwrap();
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), vec![0, 1]);
        assert_eq!(
            out.quantized.to_vec2::<f32>().unwrap(),
            vec![vec![1., 0.], vec![0., -1.]]
        );
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!((loss - 0.066_108).abs() < 1e-6, "{loss}");
        let got = vq.codebook().unwrap().to_vec2::<f32>().unwrap();
        let want = [[0.999_998_9f32, 0.001_501_2], [0.000_100_5, -1.0]];
        for (r, w) in got.iter().zip(want) {
            for (a, b) in r.iter().zip(w) {
                assert!((a - b).abs() < 1e-6, "{got:?}");
            }
        }
        assert_eq!(vq.encode(&x).unwrap().to_vec1::<u32>().unwrap(), vec![0, 1]);
    }

    /// A codeword whose EMA cluster size is below the threshold moves onto a batch vector.
    #[test]
    fn dead_codes_restart_on_batch_vectors() {
        let cb = CodebookConfig {
            restart_below: 0.5,
            ..CodebookConfig::authors()
        };
        let cfg = VqConfig {
            num_embeddings: 3,
            embedding_dim: 2,
            codebook: cb,
        }
        .validate()
        .unwrap();
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        let e = Tensor::from_slice(&[0f32, 0., 1., 1., 50., 50.], (3, 2), &dev).unwrap();
        ts.insert("embedding".to_string(), e.clone());
        ts.insert("ema_w".to_string(), e);
        ts.insert(
            "ema_cluster_size".to_string(),
            Tensor::from_slice(&[1f32, 1., 1e-3], 3, &dev).unwrap(),
        );
        ts.insert(
            "updates".to_string(),
            Tensor::zeros(1, DType::U32, &dev).unwrap(),
        );
        let vq =
            VectorQuantizer::new(&cfg, VarBuilder::from_tensors(ts, DType::F32, &dev)).unwrap();
        let x = Tensor::from_slice(&[0.1f32, 0.0, 0.9, 1.1, 0.2, 0.1], (3, 2), &dev).unwrap();
        vq.forward(&x, true).unwrap();
        let cb = vq.codebook().unwrap().to_vec2::<f32>().unwrap();
        let rows = x.to_vec2::<f32>().unwrap();
        assert!(
            rows.contains(&cb[2]),
            "code 2 restarted on a batch vector: {cb:?}"
        );
        // Mean cluster size (1 + 1 + 0.001) / 3, decayed by the step's EMA update first:
        // the raw sizes become 0.99·(1, 1, 0.001) + 0.01·counts, counts = (2, 1, 0)
        // (rows 0 and 2 go to code 0, row 1 to code 1), Laplace smoothing keeps their sum.
        let raw = [0.99f64 + 0.02, 0.99 + 0.01, 0.99e-3];
        let mean = raw.iter().sum::<f64>() / 3.0;
        let cs = vq.ema_cluster_size().unwrap().to_vec1::<f32>().unwrap();
        assert!((cs[2] as f64 - mean).abs() < 1e-6, "{cs:?} vs {mean}");
        // Running sum = the row times the cluster size, so the codeword is exactly the row.
        let w = vq
            .ema
            .as_ref()
            .unwrap()
            .ema_w
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        assert!((w[2][0] as f64 - cb[2][0] as f64 * mean).abs() < 1e-6);
        let e = VqConfig {
            codebook: CodebookConfig {
                restart_below: 0.5,
                ema: false,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(e
            .validate()
            .unwrap_err()
            .to_string()
            .contains("restart_below"));
    }

    #[test]
    fn bad_indices_and_empty_input_are_errors() {
        let vq = vq_from(&[0., 0., 1., 1., 5., 5.], 3, 2, true);
        let e = vq
            .decode(&Tensor::new(&[0u32, 3], &Device::Cpu).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("N = 3"), "{e}");
        let empty = Tensor::zeros((0, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(vq
            .forward(&empty, true)
            .unwrap_err()
            .to_string()
            .contains("T = 0"));
    }

    /// A NaN or infinite input leaves the EMA codebook untouched.
    #[test]
    fn non_finite_input_does_not_update_the_codebook() {
        let vq = vq_from(&[0., 0., 1., 1., 5., 5.], 3, 2, true);
        for bad in [f32::NAN, f32::INFINITY] {
            let x = Tensor::from_slice(&[0.2f32, bad, 1.2, 1.0], (2, 2), &Device::Cpu).unwrap();
            let out = vq.forward(&x, true).unwrap();
            assert!(!out.loss.to_scalar::<f32>().unwrap().is_finite());
            assert_eq!(
                vq.codebook().unwrap().to_vec2::<f32>().unwrap(),
                vec![vec![0., 0.], vec![1., 1.], vec![5., 5.]]
            );
        }
    }

    /// Laplace smoothing keeps every cluster size positive, even for codes never used while the
    /// raw EMA decays them towards zero.
    #[test]
    fn laplace_keeps_counts_positive() {
        let vq = vq_from(&[0., 0., 1., 1., 50., 50.], 3, 2, true);
        let x = Tensor::from_slice(&[0.1f32, 0.1, 0.9, 0.9], (2, 2), &Device::Cpu).unwrap();
        for _ in 0..3000 {
            vq.forward(&x, true).unwrap();
        }
        let cs = vq.ema_cluster_size().unwrap().to_vec1::<f32>().unwrap();
        assert!(cs.iter().all(|&c| c > 0.0), "{cs:?}");
        assert!(cs[2] < 1e-3, "unused code decays: {cs:?}");
        assert!(vq
            .codebook()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
    }

    #[test]
    fn straight_through_gradient_is_identity() {
        let vq = vq_from(&[0., 0., 1., 1., 5., 5.], 3, 2, true);
        let x = Var::from_slice(&[0.2f32, 0., 0., 0.4, 1.2, 1.0], (3, 2), &Device::Cpu).unwrap();
        let w = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.], (3, 2), &Device::Cpu).unwrap();
        let out = vq.forward(x.as_tensor(), false).unwrap();
        // L = Σ w ⊙ quantized  ⇒ ∂L/∂x = w exactly.
        let g = (out.quantized * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        assert_eq!(gx.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        // Codebook of an EMA quantizer never receives a gradient.
        assert!(g.get(vq.embedding.as_tensor()).is_none());
    }

    /// Learned codebook: the loss gradient w.r.t. the selected codeword is
    /// β·2(z_q − z_e)/(T·D) from the codebook term (hand derivative of the MSE).
    #[test]
    fn learned_codebook_gets_gradient() {
        let vq = vq_from(&[0., 0., 1., 1., 5., 5.], 3, 2, false);
        let x = Tensor::from_slice(&[0.2f32, 0., 1.2, 1.0], (2, 2), &Device::Cpu).unwrap();
        let out = vq.forward(&x, true).unwrap();
        let g = out.loss.backward().unwrap();
        let ge = g
            .get(vq.embedding.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let want = [
            [2.0 * (0.0 - 0.2) / 4.0, 0.0],
            [2.0 * (1.0 - 1.2) / 4.0, 2.0 * (1.0 - 1.0) / 4.0],
            [0.0, 0.0],
        ];
        for i in 0..3 {
            for k in 0..2 {
                assert!((ge[i][k] - want[i][k] as f32).abs() < 1e-6, "{ge:?}");
            }
        }
        // No EMA update in learned mode: codebook unchanged by forward.
        assert_eq!(
            vq.codebook().unwrap().to_vec2::<f32>().unwrap()[2],
            vec![5.0, 5.0]
        );
    }
}
