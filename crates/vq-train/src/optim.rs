//! Adam (Kingma & Ba) with bias correction and a state that can be checkpointed, over candle
//! variables; parameters that never receive a gradient (EMA buffers) get no state.
//!
//! On the CPU in f32 a step is two in-place passes per parameter (moments, then the parameter)
//! instead of a dozen element-wise tensor ops, each a fresh buffer on the calling thread.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use vq_core::linalg::cpu_f32;

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
                slot.mv.inplace_op2(
                    &g,
                    &Moments {
                        beta1: c.beta1 as f32,
                        beta2: c.beta2 as f32,
                        one_minus_beta1: (1.0 - c.beta1) as f32,
                        one_minus_beta2: (1.0 - c.beta2) as f32,
                    },
                )?;
                w.inplace_op2(
                    &slot.mv,
                    &Apply {
                        lr: c.lr as f32,
                        bc1: bc1 as f32,
                        bc2: bc2 as f32,
                        eps: c.eps as f32,
                    },
                )?;
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
