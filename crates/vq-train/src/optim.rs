//! Adam (Kingma & Ba) with bias correction and a state that can be checkpointed, over candle
//! variables; parameters that never receive a gradient (EMA buffers) get no state.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};

/// Adam hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

struct Slot {
    m: Tensor,
    v: Tensor,
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
            let slot = match self.slots.get_mut(name) {
                Some(s) => s,
                None => {
                    let z = var.as_tensor().zeros_like()?;
                    self.slots.insert(
                        name.clone(),
                        Slot {
                            m: z.clone(),
                            v: z,
                            t: 0,
                        },
                    );
                    self.slots.get_mut(name).expect("inserted")
                }
            };
            slot.t += 1;
            slot.m = (slot.m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?;
            slot.v = (slot.v.affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
            let bc1 = 1.0 - c.beta1.powi(slot.t as i32);
            let bc2 = 1.0 - c.beta2.powi(slot.t as i32);
            let m_hat = slot.m.affine(1.0 / bc1, 0.0)?;
            let v_hat = slot.v.affine(1.0 / bc2, 0.0)?;
            let update = (m_hat / v_hat.sqrt()?.affine(1.0, c.eps)?)?;
            var.set(&(var.as_tensor() - update.affine(c.lr, 0.0)?)?)?;
        }
        Ok(())
    }

    /// Moment tensors (`m.<name>`, `v.<name>`) and per-parameter step counts.
    pub fn state(&self) -> (HashMap<String, Tensor>, BTreeMap<String, u64>) {
        let mut tensors = HashMap::new();
        let mut steps = BTreeMap::new();
        for (name, s) in &self.slots {
            tensors.insert(format!("m.{name}"), s.m.clone());
            tensors.insert(format!("v.{name}"), s.v.clone());
            steps.insert(name.clone(), s.t);
        }
        (tensors, steps)
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
            let m = take(format!("m.{name}"))?;
            let v = take(format!("v.{name}"))?;
            self.slots.insert(name.clone(), Slot { m, v, t });
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

    /// Two Adam steps on f(θ) = Σ θ², by hand: g = 2θ.
    #[test]
    fn matches_hand_computation() {
        let var = Var::from_slice(&[1.0f32, -2.0], 2, &Device::Cpu).unwrap();
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
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - theta[i]).abs() < 1e-6,
                "{got:?} vs {theta:?}"
            );
        }
        let (tensors, steps) = adam.state();
        assert_eq!(steps["w"], 2);
        let mut other = Adam::new(vec![("w".into(), var.clone())], cfg);
        other
            .load_state(tensors, &steps, std::path::Path::new("x"))
            .unwrap();
        let mut bad = Adam::new(vec![("z".into(), var)], cfg);
        let (tensors, steps) = adam.state();
        assert!(bad
            .load_state(tensors, &steps, std::path::Path::new("ck"))
            .unwrap_err()
            .to_string()
            .contains("unknown parameter `w`"));
    }
}
