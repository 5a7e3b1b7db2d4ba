//! ReLU for CPU training as one custom op whose backward is one pass: `dx = dy · [y > 0]`.
//!
//! candle's `relu` backward builds the mask from several full-size tensors (zeros, a
//! comparison, a cast, a product) before adding to the gradient; on the paper's model, with a
//! ReLU around every convolution, those passes cost more than the ReLUs themselves. The
//! gradient at exactly 0 is 0, as in PyTorch (`threshold_backward`). Other devices and dtypes
//! use candle's `relu`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_f32 as contiguous;
use crate::kernels::buffer::zeros;

/// Elements per parallel task (small maps stay on one thread).
const CHUNK: usize = 1 << 15;

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, "relu x")?;
        let mut y = zeros(x.len());
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (y, x) in y.iter_mut().zip(x) {
                    *y = x.max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            dy.contiguous()?
                .apply_op2_no_bwd(&y.contiguous()?, &ReluGrad)?,
        ))
    }
}

/// `dy · [y > 0]` in one pass.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad-cpu"
    }

    fn cpu_fwd(
        &self,
        ds: &CpuStorage,
        dl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, y) = (
            contiguous(ds, dl, "relu grad")?,
            contiguous(ys, yl, "relu output")?,
        );
        if dy.len() != y.len() {
            candle_core::bail!("relu grad: {} gradients for {} outputs", dy.len(), y.len());
        }
        let mut dx = zeros(y.len());
        dx.par_chunks_mut(CHUNK)
            .zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(dx, (dy, y))| {
                for ((dx, dy), y) in dx.iter_mut().zip(dy).zip(y) {
                    *dx = if *y > 0.0 { *dy } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(dx), dl.shape().clone()))
    }
}

/// `max(x, 0)`; on the CPU in f32 one op with a one-pass backward, elsewhere candle's `relu`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward and gradient by hand: y = max(x, 0); for L = Σ w·y, dL/dx = w·[x > 0] (0 at x = 0,
    /// as PyTorch).
    #[test]
    fn forward_and_gradient_by_hand() -> anyhow::Result<()> {
        let x = Var::new(&[[-1.5f32, 0.0, 2.0], [0.25, -0.0, -3.0]], &Device::Cpu)?;
        let w = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu)?;
        let y = relu(x.as_tensor())?;
        assert_eq!(y.to_vec2::<f32>()?, [[0.0, 0.0, 2.0], [0.25, 0.0, 0.0]]);
        let g = (y * &w)?.sum_all()?.backward()?;
        assert_eq!(
            g.get(&x).unwrap().to_vec2::<f32>()?,
            [[0.0, 0.0, 3.0], [4.0, 0.0, 0.0]]
        );
        Ok(())
    }

    /// Same values and gradients as candle's `relu` on a large non-contiguous input without
    /// exact zeros (several parallel chunks).
    #[test]
    fn matches_candle_relu() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let n = 17 * 6000; // > 3 chunks
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 499.5) / 100.0)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, (n / 17, 17), &dev)?.t()?)?;
        let w = Tensor::arange(0f32, n as f32, &dev)?.reshape((17, n / 17))?;
        let ours = relu(x.as_tensor())?;
        let theirs = x.as_tensor().relu()?;
        assert_eq!(ours.to_vec2::<f32>()?, theirs.to_vec2::<f32>()?);
        let g1 = (ours * &w)?.sum_all()?.backward()?;
        let g2 = (theirs * &w)?.sum_all()?.backward()?;
        assert_eq!(
            g1.get(&x).unwrap().to_vec2::<f32>()?,
            g2.get(&x).unwrap().to_vec2::<f32>()?
        );
        Ok(())
    }
}
