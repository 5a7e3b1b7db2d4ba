//! Adam's two in-place passes on the CPU in f32: the moments `[m; v]` from the gradient, then
//! the parameter from the moments (the optimizer itself, with its state, is vq-train's `Adam`).
//! A step is two passes per parameter instead of a dozen element-wise tensor ops, each a fresh
//! buffer on the calling thread.

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use super::cpu_f32;

/// `mv ← [β₁m + (1−β₁)g; β₂v + (1−β₂)g²]` in place, for `mv` `[2, n]` (contiguous f32 CPU) and
/// the contiguous gradient `g` of `n` values; `1 − β` is computed in f64 (`1 − 0.999f32` is
/// 1.3e-5 off).
pub fn adam_moments(mv: &Tensor, g: &Tensor, beta1: f64, beta2: f64) -> candle_core::Result<()> {
    mv.inplace_op2(
        g,
        &Moments {
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
        },
    )
}

/// `w ← w − lr·(m/bc₁)/(√(v/bc₂) + ε)` in place, reading `mv` `[2, n]` from [`adam_moments`].
pub fn adam_apply(
    w: &Tensor,
    mv: &Tensor,
    lr: f64,
    bias_corrections: (f64, f64),
    eps: f64,
) -> candle_core::Result<()> {
    w.inplace_op2(
        mv,
        &Apply {
            lr: lr as f32,
            bc1: bias_corrections.0 as f32,
            bc2: bias_corrections.1 as f32,
            eps: eps as f32,
        },
    )
}

/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²` in place on `[m; v]`, reading the gradient
/// (`1 − β` computed in f64: `1 − 0.999f32` is 1.3e-5 off).
struct Moments {
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
}

impl InplaceOp2 for Moments {
    fn name(&self) -> &'static str {
        "adam-moments"
    }
    fn cpu_fwd(
        &self,
        mv: &mut CpuStorage,
        ml: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let g = cpu_f32(g, gl, "adam gradient")?;
        let (a, b) = ml
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("adam: moments not contiguous".into()))?;
        let CpuStorage::F32(mv) = mv else {
            candle_core::bail!("adam: moments must be f32");
        };
        let (m, v) = mv[a..b].split_at_mut(g.len());
        if v.len() != g.len() {
            candle_core::bail!(
                "adam: {} moments for {} gradients",
                m.len() + v.len(),
                g.len()
            );
        }
        let (b1, b2) = (self.beta1, self.beta2);
        let (c1, c2) = (self.one_minus_beta1, self.one_minus_beta2);
        m.par_chunks_mut(1 << 14)
            .zip(v.par_chunks_mut(1 << 14))
            .zip(g.par_chunks(1 << 14))
            .for_each(|((m, v), g)| {
                for ((m, v), g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
                    *m = b1 * *m + c1 * g;
                    *v = b2 * *v + c2 * g * g;
                }
            });
        Ok(())
    }
}

/// `θ ← θ − lr·(m/c₁)/(√(v/c₂) + ε)` in place on the parameter, reading `[m; v]`.
struct Apply {
    lr: f32,
    bc1: f32,
    bc2: f32,
    eps: f32,
}

impl InplaceOp2 for Apply {
    fn name(&self) -> &'static str {
        "adam-apply"
    }
    fn cpu_fwd(
        &self,
        w: &mut CpuStorage,
        wl: &Layout,
        mv: &CpuStorage,
        mvl: &Layout,
    ) -> candle_core::Result<()> {
        let mv = cpu_f32(mv, mvl, "adam moments")?;
        let (a, b) = wl
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("adam: parameter not contiguous".into()))?;
        let CpuStorage::F32(w) = w else {
            candle_core::bail!("adam: parameter must be f32");
        };
        let w = &mut w[a..b];
        if mv.len() != 2 * w.len() {
            candle_core::bail!("adam: {} moments for {} parameters", mv.len(), w.len());
        }
        let (m, v) = mv.split_at(w.len());
        let (lr, bc1, bc2, eps) = (self.lr, self.bc1, self.bc2, self.eps);
        w.par_chunks_mut(1 << 14)
            .zip(m.par_chunks(1 << 14))
            .zip(v.par_chunks(1 << 14))
            .for_each(|((w, m), v)| {
                for ((w, m), v) in w.iter_mut().zip(m).zip(v) {
                    *w -= lr * (m / bc1) / ((v / bc2).sqrt() + eps);
                }
            });
        Ok(())
    }
}
