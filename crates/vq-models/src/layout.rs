//! Activation layouts: channel-first `[B, C, H, W]` (candle's convolutions, the public API) and
//! channel-last `[B, H, W, C]` (the CPU convolution ops), and the autograd ops between them.

use candle_core::{CpuStorage, CustomOp1, DType, Layout as Strides, Result, Shape, Tensor};
use rayon::prelude::*;

use vq_core::linalg::cpu_f32 as contiguous;

/// Memory layout of 4-D activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[B, C, H, W]`.
    ChannelsFirst,
    /// `[B, H, W, C]`.
    ChannelsLast,
}

impl Layout {
    /// The layout the layers run fastest in for `x`'s device and dtype: channel-last on the CPU
    /// in f32 (the convolution ops of [`crate::conv`]), channel-first elsewhere (candle's).
    pub fn for_tensor(x: &Tensor) -> Self {
        if cpu_f32(x) {
            Self::ChannelsLast
        } else {
            Self::ChannelsFirst
        }
    }

    /// The axis of the channels.
    pub fn channel_axis(self) -> usize {
        match self {
            Self::ChannelsFirst => 1,
            Self::ChannelsLast => 3,
        }
    }

    /// `x` `[B, C, H, W]` in this layout.
    pub fn from_nchw(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::ChannelsFirst => Ok(x.clone()),
            Self::ChannelsLast => to_nhwc(x),
        }
    }

    /// `x` in this layout as `[B, C, H, W]`.
    pub fn to_nchw(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::ChannelsFirst => Ok(x.clone()),
            Self::ChannelsLast => to_nchw(x),
        }
    }
}

/// Whether `x` is a CPU f32 tensor (what the channel-last convolution ops take).
pub(crate) fn cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Runs `f` on `x` `[B, C, H, W]` converted to [`Layout::for_tensor`] and returns its result
/// (in that layout) as `[B, C, H, W]`.
pub fn via_preferred(
    x: &Tensor,
    f: impl FnOnce(&Tensor, Layout) -> Result<Tensor>,
) -> Result<Tensor> {
    let l = Layout::for_tensor(x);
    l.to_nchw(&f(&l.from_nchw(x)?, l)?)
}

/// `n` zeros, written by the rayon workers: a plain `vec![0.0; n]` of an activation is a
/// single-threaded memset (and page faults) on the calling thread while the workers wait.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    let mut v: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit<f32>` needs no initialisation; the capacity is `n`.
    unsafe { v.set_len(n) };
    v.par_chunks_mut(1 << 14).for_each(|c| {
        for x in c {
            x.write(0.0);
        }
    });
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: every element was written above; `MaybeUninit<f32>` has the layout of `f32`, and
    // the pointer, length and capacity come from a live `Vec` that is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// `src` `[batch, rows, cols]` → `[batch, cols, rows]` (row-major), in 16 × 16 tiles.
pub(crate) fn transpose(src: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    const T: usize = 16;
    assert_eq!(src.len(), batch * rows * cols, "transpose: length");
    let mut out = zeros(src.len());
    if out.is_empty() {
        return out;
    }
    // One task per (matrix, band of up to 16 output rows).
    let bands = cols.div_ceil(T);
    out.par_chunks_mut(rows * cols)
        .enumerate()
        .flat_map(|(b, m)| {
            m.par_chunks_mut(T * rows)
                .enumerate()
                .map(move |(band, o)| (b, band, o))
        })
        .for_each(|(b, band, o)| {
            let s = &src[b * rows * cols..(b + 1) * rows * cols];
            let c0 = band * T;
            let nc = (cols - c0).min(T);
            debug_assert!(band < bands);
            for r0 in (0..rows).step_by(T) {
                let nr = (rows - r0).min(T);
                for c in 0..nc {
                    let dst = &mut o[c * rows + r0..c * rows + r0 + nr];
                    for (r, d) in dst.iter_mut().enumerate() {
                        *d = s[(r0 + r) * cols + c0 + c];
                    }
                }
            }
        });
    out
}

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

    fn cpu_fwd(&self, s: &CpuStorage, l: &Strides) -> Result<(CpuStorage, Shape)> {
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
    if cpu_f32(x) {
        x.contiguous()?.apply_op1(Relayout { to_last: true })
    } else {
        x.permute((0, 2, 3, 1))?.contiguous()
    }
}

/// `[B, H, W, C]` → `[B, C, H, W]` (the inverse of [`to_nhwc`]).
pub fn to_nchw(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(x) {
        x.contiguous()?.apply_op1(Relayout { to_last: false })
    } else {
        x.permute((0, 3, 1, 2))?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Empty, one value, and lengths around the 16 Ki-element chunks.
    #[test]
    fn zeros_are_zeros() {
        for n in [0usize, 1, (1 << 14) - 1, 1 << 14, (1 << 14) + 1, 100_000] {
            let z = zeros(n);
            assert_eq!(z.len(), n);
            assert!(z.iter().all(|v| *v == 0.0), "n = {n}");
        }
    }

    /// Tiles: sizes that are and are not multiples of 16, one and several matrices.
    #[test]
    fn transpose_matches_index_formula() {
        for &(b, r, c) in &[
            (1usize, 1usize, 1usize),
            (2, 3, 5),
            (1, 16, 16),
            (3, 17, 40),
            (2, 49, 128),
        ] {
            let src: Vec<f32> = (0..b * r * c).map(|i| i as f32).collect();
            let t = transpose(&src, b, r, c);
            for bi in 0..b {
                for i in 0..r {
                    for j in 0..c {
                        assert_eq!(t[(bi * c + j) * r + i], src[(bi * r + i) * c + j]);
                    }
                }
            }
        }
    }

    /// Values and gradients equal candle's permute (exactly: both only move numbers).
    #[test]
    fn relayout_ops_match_permute() {
        let d = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &d).unwrap()).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let ours = to_nhwc(x.as_tensor()).unwrap();
        assert_eq!(ours.dims(), &[2, 4, 5, 3]);
        let plain = x.as_tensor().permute((0, 2, 3, 1)).unwrap();
        assert_eq!(max_diff(&ours, &plain), 0.0);
        assert_eq!(max_diff(&to_nchw(&ours).unwrap(), x.as_tensor()), 0.0);
        // d/dx Σ r · to_nhwc(x) = permute⁻¹(r).
        let r = Tensor::randn(0f32, 1.0, (2, 4, 5, 3), &d).unwrap();
        let g = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let want = r.permute((0, 3, 1, 2)).unwrap();
        assert_eq!(max_diff(g.get(x.as_tensor()).unwrap(), &want), 0.0);
    }
}
