//! Channel-first `[B, C, H, W]` ↔ channel-last `[B, H, W, C]` copies as autograd ops whose
//! backward is the opposite change (the CPU convolution ops work channel-last).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{cpu_f32 as contiguous, is_cpu_f32};
use crate::kernels::buffer::transpose;

/// `[B, C, H, W]` ↔ `[B, H, W, C]` as one op whose backward is the opposite change.
struct Relayout {
    to_last: bool,
}

impl CustomOp1 for Relayout {
    fn name(&self) -> &'static str {
        if self.to_last {
            "to-nhwc"
        } else {
            "to-nchw"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, self.name())?;
        let (b, d1, d2, d3) = l.shape().dims4()?;
        let (y, shape) = if self.to_last {
            // [B, C, H, W] → [B, H, W, C]
            (transpose(x, b, d1, d2 * d3), (b, d2, d3, d1))
        } else {
            // [B, H, W, C] → [B, C, H, W]
            (transpose(x, b, d1 * d2, d3), (b, d3, d1, d2))
        };
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let back = Relayout {
            to_last: !self.to_last,
        };
        Ok(Some(dy.contiguous()?.apply_op1(back)?))
    }
}

/// `[B, C, H, W]` → `[B, H, W, C]` (a copy; on the CPU in f32 one op with a transposing
/// backward, elsewhere `permute` + `contiguous`).
pub fn to_nhwc(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.contiguous()?.apply_op1(Relayout { to_last: true })
    } else {
        x.permute((0, 2, 3, 1))?.contiguous()
    }
}

/// `[B, H, W, C]` → `[B, C, H, W]` (the inverse of [`to_nhwc`]).
pub fn to_nchw(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.contiguous()?.apply_op1(Relayout { to_last: false })
    } else {
        x.permute((0, 3, 1, 2))?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, randn};
    use candle_core::Var;

    /// Values and gradients equal candle's permute (exactly: both only move numbers).
    #[test]
    fn relayout_ops_match_permute() {
        let x = Var::from_tensor(&randn(0, &[2, 3, 4, 5])).unwrap();
        let ours = to_nhwc(x.as_tensor()).unwrap();
        assert_eq!(ours.dims(), &[2, 4, 5, 3]);
        let plain = x.as_tensor().permute((0, 2, 3, 1)).unwrap();
        assert_eq!(max_abs_diff(&ours, &plain), 0.0);
        assert_eq!(max_abs_diff(&to_nchw(&ours).unwrap(), x.as_tensor()), 0.0);
        // d/dx Σ r · to_nhwc(x) = permute⁻¹(r).
        let r = randn(1, &[2, 4, 5, 3]);
        let g = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let want = r.permute((0, 3, 1, 2)).unwrap();
        assert_eq!(max_abs_diff(g.get(x.as_tensor()).unwrap(), &want), 0.0);
    }
}
