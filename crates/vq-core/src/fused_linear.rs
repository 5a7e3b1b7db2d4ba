//! A fully connected layer `y = x·Wᵀ + b` over rows `[T, in]` (the quantizer's projections and
//! the selector's query/key maps), initialised and named as `candle_nn::linear`, its forward one fused op.
//!
//! On the CPU in f32 it is one autograd op ([`vq_ops::ops::linear`]).

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use vq_ops::ops::linear;

/// `y = x·Wᵀ + b`.
///
/// Variables: `weight` `[out, in]` (Kaiming normal, as candle's), `bias` `[out]`
/// (`U(−1/√in, 1/√in)`).
#[derive(Clone, Debug)]
pub(crate) struct FusedLinear {
    weight: Tensor,
    bias: Tensor,
}

impl FusedLinear {
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
    #[cfg(test)]
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `[out]`.
    #[cfg(test)]
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for FusedLinear {
    /// `x` `[T, in]` → `[T, out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        linear(x, &self.weight, &self.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

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
            let lin = FusedLinear::new(k, n, VarBuilder::from_varmap(&vm, DType::F32, &d)).unwrap();
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
