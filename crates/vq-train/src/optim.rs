//! Adam (Kingma & Ba) with bias correction and a state that can be checkpointed, over candle
//! variables; parameters that never receive a gradient (EMA buffers) get no state.
//!
//! On the CPU in f32 a step is vq-ops' two in-place passes per parameter (moments, then the
//! parameter); elsewhere candle's element-wise ops.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use vq_ops::ops::{adam_apply, adam_moments};

use crate::error::{Result, TrainError};

/// Adam hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// The moments of one parameter, `[2, n]`: row 0 `m`, row 1 `v` (flattened parameter order).
struct Slot {
    mv: Tensor,
    t: u64,
}

/// Adam over named variables.
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Var)>,
    slots: BTreeMap<String, Slot>,
}

impl Adam {
    /// Optimises `params` (name, variable).
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Self {
        Self {
            config,
            params,
            slots: BTreeMap::new(),
        }
    }

    /// `θ ← θ − lr·m̂/(√v̂ + ε)` for every parameter with a gradient.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let _span = tracing::trace_span!("adam").entered();
        let c = self.config;
        for (name, var) in &self.params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let w = var.as_tensor();
            let slot = match self.slots.get_mut(name) {
                Some(s) => s,
                None => {
                    let mv = Tensor::zeros((2, w.elem_count()), w.dtype(), w.device())?;
                    self.slots.insert(name.clone(), Slot { mv, t: 0 });
                    self.slots.get_mut(name).expect("inserted")
                }
            };
            slot.t += 1;
            let bc1 = 1.0 - c.beta1.powi(slot.t as i32);
            let bc2 = 1.0 - c.beta2.powi(slot.t as i32);
            let fused = w.device().is_cpu()
                && w.dtype() == DType::F32
                && g.dtype() == DType::F32
                && w.is_contiguous();
            if fused {
                let g = g.contiguous()?;
                adam_moments(&slot.mv, &g, c.beta1, c.beta2)?;
                adam_apply(w, &slot.mv, c.lr, (bc1, bc2), c.eps)?;
            } else {
                let g = g.flatten_all()?;
                let m = (slot.mv.get(0)?.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?;
                let v = (slot.mv.get(1)?.affine(c.beta2, 0.0)?
                    + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
                let m_hat = m.affine(1.0 / bc1, 0.0)?;
                let v_hat = v.affine(1.0 / bc2, 0.0)?;
                let update = (m_hat / v_hat.sqrt()?.affine(1.0, c.eps)?)?;
                var.set(&(w - update.affine(c.lr, 0.0)?.reshape(w.shape())?)?)?;
                slot.mv = Tensor::stack(&[m, v], 0)?;
            }
        }
        Ok(())
    }

    /// Moment tensors (`m.<name>`, `v.<name>`) and per-parameter step counts.
    pub fn state(&self) -> Result<(HashMap<String, Tensor>, BTreeMap<String, u64>)> {
        let mut tensors = HashMap::new();
        let mut steps = BTreeMap::new();
        for (name, s) in &self.slots {
            let shape = self
                .params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_tensor().shape().clone())
                .expect("a slot belongs to a parameter");
            let row = |i: usize| -> Result<Tensor> { Ok(s.mv.get(i)?.reshape(&shape)?) };
            tensors.insert(format!("m.{name}"), row(0)?);
            tensors.insert(format!("v.{name}"), row(1)?);
            steps.insert(name.clone(), s.t);
        }
        Ok((tensors, steps))
    }

    /// Restores a state saved by [`Adam::state`]; `origin` names the file in errors.
    pub fn load_state(
        &mut self,
        mut tensors: HashMap<String, Tensor>,
        steps: &BTreeMap<String, u64>,
        origin: &std::path::Path,
    ) -> Result<()> {
        self.slots.clear();
        for (name, &t) in steps {
            let Some((_, var)) = self.params.iter().find(|(n, _)| n == name) else {
                return Err(TrainError::checkpoint(
                    origin,
                    format!("optimizer state for unknown parameter `{name}`"),
                ));
            };
            let mut take = |k: String| -> Result<Tensor> {
                let x = tensors.remove(&k).ok_or_else(|| {
                    TrainError::checkpoint(origin, format!("missing optimizer tensor `{k}`"))
                })?;
                if x.dims() != var.as_tensor().dims() {
                    return Err(TrainError::checkpoint(
                        origin,
                        format!(
                            "optimizer tensor `{k}` has shape {:?}, parameter has {:?}",
                            x.dims(),
                            var.as_tensor().dims()
                        ),
                    ));
                }
                Ok(x.to_device(var.as_tensor().device())?)
            };
            let m = take(format!("m.{name}"))?.flatten_all()?;
            let v = take(format!("v.{name}"))?.flatten_all()?;
            let mv = Tensor::stack(&[m, v], 0)?.contiguous()?;
            self.slots.insert(name.clone(), Slot { mv, t });
        }
        if let Some(k) = tensors.keys().next() {
            return Err(TrainError::checkpoint(
                origin,
                format!("unexpected optimizer tensor `{k}`"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two Adam steps on f(θ) = Σ θ², by hand: g = 2θ; in f32 (the fused in-place CPU path)
    /// and in f64 (the tensor-op path other devices take), each checked by hand, then the
    /// state saved and restored.
    #[test]
    fn matches_hand_computation() {
        for dtype in [DType::F32, DType::F64] {
            two_steps(dtype);
        }
    }

    fn two_steps(dtype: DType) {
        let var = Var::from_tensor(
            &Tensor::from_slice(&[1.0f32, -2.0], 2, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let cfg = AdamConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let mut adam = Adam::new(vec![("w".into(), var.clone())], cfg);
        let mut theta = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for t in 1..=2 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
            for i in 0..2 {
                let g = 2.0 * theta[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                theta[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = var
            .as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for i in 0..2 {
            assert!(
                (got[i] - theta[i]).abs() < 1e-6,
                "{dtype:?}: {got:?} vs {theta:?}"
            );
        }
        let (tensors, steps) = adam.state().unwrap();
        assert_eq!(steps["w"], 2);
        let mut other = Adam::new(vec![("w".into(), var.clone())], cfg);
        other
            .load_state(tensors, &steps, std::path::Path::new("x"))
            .unwrap();
        let mut bad = Adam::new(vec![("z".into(), var)], cfg);
        let (tensors, steps) = adam.state().unwrap();
        assert!(bad
            .load_state(tensors, &steps, std::path::Path::new("ck"))
            .unwrap_err()
            .to_string()
            .contains("unknown parameter `w`"));
    }
}
