//! The fully connected op `y = x·Wᵀ + b` over rows `[T, in]` as one autograd op on the CPU in
//! f32: the product by GEMM with the bias added in the same op, and a backward pass of two
//! GEMMs and a parallel column sum for the bias. candle's `Linear` adds the bias by a broadcast
//! whose gradient is a single-threaded reduction over all `T` rows, plus a node (a zero-filled
//! buffer and an addition) per intermediate.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, host_f32 as host};
use crate::kernels::gemm::{matmul, threads};

/// `x` `[T, in]`, `weight` `[out, in]`, `bias` `[out]` → `x·Wᵀ + b` `[T, out]`: one op on the
/// CPU in f32 (for weights that are views of another variable, e.g. a convolution kernel
/// reshaped for im2col), candle's matmul elsewhere.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let cpu = x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.rank() == 2;
    if cpu {
        let x = x.contiguous()?;
        return x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp);
    }
    x.broadcast_matmul(&weight.t()?)?.broadcast_add(bias)
}

/// `x·Wᵀ + b` as one op.
struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-cpu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            cpu_f32(xs, xl, "linear x")?,
            cpu_f32(ws, wl, "linear weight")?,
            cpu_f32(bs, bl, "linear bias")?,
        );
        let (t, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 || b.len() != n {
            candle_core::bail!(
                "linear: input {:?}, weight {:?} and bias {:?} do not fit",
                xl.shape(),
                wl.shape(),
                bl.shape()
            );
        }
        let mut y = matmul(t, n, k, x, false, w, true, threads());
        if n > 0 {
            y.par_chunks_mut(n * 256).for_each(|rows| {
                for row in rows.chunks_exact_mut(n) {
                    for (v, bias) in row.iter_mut().zip(b) {
                        *v += bias;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((t, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (t, k) = x.dims2()?;
        let n = w.dim(0)?;
        let dev = x.device();
        let g = host(dy)?; // [T, n]
        let dx = x
            .track_op()
            .then(|| -> candle_core::Result<Tensor> {
                // dX = dY · W: [T, n] · [n, k].
                Tensor::from_vec(
                    matmul(t, k, n, &g, false, &host(w)?, false, threads()),
                    (t, k),
                    dev,
                )
            })
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| -> candle_core::Result<Tensor> {
                // dW = dYᵀ · X: [n, T] · [T, k].
                Tensor::from_vec(
                    matmul(n, k, t, &g, true, &host(x)?, false, threads()),
                    (n, k),
                    dev,
                )
            })
            .transpose()?;
        let db = b
            .track_op()
            .then(|| -> candle_core::Result<Tensor> {
                let sums = if n == 0 {
                    Vec::new()
                } else {
                    g.par_chunks(n * 256)
                        .map(|rows| {
                            let mut s = vec![0f64; n];
                            for row in rows.chunks_exact(n) {
                                for (a, v) in s.iter_mut().zip(row) {
                                    *a += f64::from(*v);
                                }
                            }
                            s
                        })
                        .reduce(
                            || vec![0f64; n],
                            |mut a, b| {
                                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                                a
                            },
                        )
                };
                Tensor::from_vec(sums.into_iter().map(|v| v as f32).collect(), n, dev)
            })
            .transpose()?;
        Ok((dx, dw, db))
    }
}
