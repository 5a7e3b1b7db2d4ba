//! The paper's gradient gap (eq. 5): how far the straight-through gradient that reaches the
//! encoder is from the gradient the encoder would get without quantization.

use candle_core::{Tensor, Var};

use crate::error::{Result, VqError};

/// `∂L(G(z_e))/∂z_e − ∂L(G(z_q))/∂z_e`, summarised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientGap {
    /// `‖·‖₂` over all elements (the paper's definition).
    pub l2: f64,
    /// Mean absolute difference (the figure the authors' code logs).
    pub mean_abs: f64,
}

/// Gradient gap of a quantizer in front of a decoder.
///
/// * `z_e`: encoder output (any shape; it is detached and made a leaf here).
/// * `quantize`: `z_e ↦ z_q` with a straight-through gradient (run it without codebook updates).
/// * `loss_of`: `z ↦ L(G(z))`, the decoder followed by the loss (a scalar).
///
/// Two backward passes; parameters of the decoder accumulate nothing that is kept.
pub fn gradient_gap<Q, L>(z_e: &Tensor, quantize: Q, loss_of: L) -> Result<GradientGap>
where
    Q: FnOnce(&Tensor) -> Result<Tensor>,
    L: Fn(&Tensor) -> Result<Tensor>,
{
    let _span = tracing::debug_span!("gradient_gap").entered();
    let leaf = Var::from_tensor(&z_e.detach())?;
    let direct = loss_of(leaf.as_tensor())?.backward()?;
    let g_direct = direct
        .get(leaf.as_tensor())
        .ok_or_else(|| VqError::input("loss_of", "the loss does not depend on its input"))?
        .clone();
    let z_q = quantize(leaf.as_tensor())?;
    let through = loss_of(&z_q)?.backward()?;
    let g_quant = match through.get(leaf.as_tensor()) {
        Some(g) => g.clone(),
        // No straight-through path: the encoder receives nothing, the gap is the whole gradient.
        None => g_direct.zeros_like()?,
    };
    let diff = (g_direct - g_quant)?.flatten_all()?;
    let l2 = diff.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    let mean_abs = diff.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok(GradientGap { l2, mean_abs })
}
