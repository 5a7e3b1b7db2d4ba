//! A fully connected layer `y = x·Wᵀ + b` over rows `[T, in]` (the quantizer's projections and
//! the selector's query/key maps), initialised and named as `candle_nn::linear`.
//!
//! On the CPU in f32 it is one autograd op: the product by GEMM with the bias added in the same
//! op, and a backward pass of two GEMMs and a parallel column sum for the bias. candle's
//! `Linear` adds the bias by a broadcast whose gradient is a single-threaded reduction over all
//! `T` rows, plus a node (a zero-filled buffer and an addition) per intermediate.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::linalg::{cpu_f32, host_f32 as host, matmul, threads};

/// `y = x·Wᵀ + b`.
///
/// Variables: `weight` `[out, in]` (Kaiming normal, as candle's), `bias` `[out]`
/// (`U(−1/√in, 1/√in)`).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// A layer from `in_dim` to `out_dim` features.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bound = 1.0 / (in_dim as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let bias = vb.get_with_hints(out_dim, "bias", init)?;
        Ok(Self { weight, bias })
    }

    /// `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `[out]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for Linear {
    /// `x` `[T, in]` → `[T, out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        linear(x, &self.weight, &self.bias)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The op against candle's `matmul` + `broadcast_add`: values within 1e-5 and the gradients
    /// of x, W and b within 1e-4 (relative to the largest magnitude), for sizes above and below
    /// the bias chunking; the same variables as `candle_nn::linear` (names, shapes).
    #[test]
    fn matches_candle_matmul_and_broadcast() {
        let d = Device::Cpu;
        for &(t, k, n) in &[
            (1usize, 1usize, 1usize),
            (7, 5, 3),
            (300, 16, 33),
            (1000, 8, 4),
        ] {
            let vm = candle_nn::VarMap::new();
            let lin = Linear::new(k, n, VarBuilder::from_varmap(&vm, DType::F32, &d)).unwrap();
            let names: Vec<String> = {
                let mut v: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
                v.sort();
                v
            };
            assert_eq!(names, ["bias", "weight"]);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (t, k), &d).unwrap()).unwrap();
            let fast = lin.forward(x.as_tensor()).unwrap();
            let plain = x
                .as_tensor()
                .matmul(&lin.weight().t().unwrap())
                .unwrap()
                .broadcast_add(lin.bias())
                .unwrap();
            let close = |a: &Tensor, b: &Tensor, tol: f32, what: &str| {
                let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= tol * scale,
                        "{what}[{i}] ({t},{k},{n}): {x} vs {y}"
                    );
                }
            };
            close(&fast, &plain, 1e-5, "y");
            let r = Tensor::randn(0f32, 1.0, (t, n), &d).unwrap();
            let gf = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, what) in [
                (x.as_tensor(), "dx"),
                (lin.weight(), "dw"),
                (lin.bias(), "db"),
            ] {
                close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-4, what);
            }
        }
    }
}
