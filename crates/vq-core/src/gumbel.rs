//! Differentiable Gumbel-Softmax (soft and hard straight-through) with noise from a caller-owned
//! seeded RNG, and the temperature schedules used to anneal it.
//!
//! candle-nn's `gumbel_softmax` samples indices only; here the relaxation is a tensor
//! expression, so the logits receive the soft gradient.

use candle_core::{DType, Device, Shape, Tensor, D};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result};

/// Gumbel(0, 1) noise `−ln(−ln u)`, `u ~ U(0, 1)` drawn from `rng` (f64 arithmetic, stored f32).
pub fn sample_gumbel(
    shape: impl Into<Shape>,
    rng: &mut dyn RngCore,
    device: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let v: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            // (0, 1): reject the (2^-53 probable) zero.
            let mut u: f64 = rng.random();
            while u <= 0.0 {
                u = rng.random();
            }
            (-(-u.ln()).ln()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// Exact one-hot of the argmax over the last dimension (first index on ties), as f32.
pub fn one_hot_argmax(x: &Tensor) -> Result<Tensor> {
    let m = x.dim(D::Minus1)?;
    let idx = x.argmax_keepdim(D::Minus1)?; // [..., 1] u32
    let range = Tensor::arange(0u32, m as u32, x.device())?;
    Ok(idx.broadcast_eq(&range)?.to_dtype(x.dtype())?)
}

/// Gumbel-Softmax over the last dimension with the given noise (same shape as `logits`).
///
/// * soft (`hard = false`): `softmax((logits + g) / τ)`.
/// * hard: the forward value is *exactly* the one-hot of the argmax of the soft sample; the
///   backward pass is the soft sample's gradient (straight-through). Written as
///   `one_hot + (y − sg[y])`, whose second term is exactly zero in the forward pass.
pub fn gumbel_softmax_with_noise(
    logits: &Tensor,
    noise: &Tensor,
    tau: f64,
    hard: bool,
) -> Result<Tensor> {
    check_tau("tau", tau)?;
    let y = candle_nn::ops::softmax(&(logits + noise)?.affine(1.0 / tau, 0.0)?, D::Minus1)?;
    if !hard {
        return Ok(y);
    }
    let hard = one_hot_argmax(&y.detach())?;
    Ok((hard + (&y - y.detach())?)?)
}

/// [`gumbel_softmax_with_noise`] drawing the noise from `rng`.
pub fn gumbel_softmax(
    logits: &Tensor,
    tau: f64,
    hard: bool,
    rng: &mut dyn RngCore,
) -> Result<Tensor> {
    let noise = sample_gumbel(logits.shape(), rng, logits.device())?.to_dtype(logits.dtype())?;
    gumbel_softmax_with_noise(logits, &noise, tau, hard)
}

fn check_tau(field: &'static str, value: f64) -> std::result::Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::NonPositiveTemperature { field, value })
    }
}

/// How the Gumbel-Softmax temperature moves during training (validation always uses τ = 1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TauSchedule {
    /// The paper's `τ_m = (iterations − m) + 1` for step `m = 0 … iterations−1`
    /// (from `iterations + 1` down to 2).
    #[default]
    Paper,
    /// `max(floor, start · rate^m)`.
    Exponential { start: f64, rate: f64, floor: f64 },
    /// A fixed τ.
    Constant { tau: f64 },
}

impl TauSchedule {
    /// Checks the schedule for a run of `iterations` steps.
    pub fn validate(&self, iterations: usize) -> std::result::Result<Temperature, ConfigError> {
        match *self {
            Self::Paper => {
                if iterations == 0 {
                    return Err(ConfigError::invalid(
                        "iterations",
                        "the paper's schedule needs the number of training steps (≥ 1)",
                    ));
                }
            }
            Self::Exponential { start, rate, floor } => {
                check_tau("tau.start", start)?;
                check_tau("tau.floor", floor)?;
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(ConfigError::invalid(
                        "tau.rate",
                        format!("must lie in (0, 1], got {rate}"),
                    ));
                }
            }
            Self::Constant { tau } => check_tau("tau.tau", tau)?,
        }
        Ok(Temperature {
            schedule: self.clone(),
            iterations,
        })
    }
}

/// A validated temperature schedule for a run of known length.
#[derive(Clone, Debug, PartialEq)]
pub struct Temperature {
    schedule: TauSchedule,
    iterations: usize,
}

impl Temperature {
    /// τ at training step `step` (0-based); always > 0.
    pub fn at(&self, step: usize) -> f64 {
        match self.schedule {
            TauSchedule::Paper => (self.iterations.saturating_sub(step) + 1) as f64,
            TauSchedule::Exponential { start, rate, floor } => {
                (start * rate.powf(step as f64)).max(floor)
            }
            TauSchedule::Constant { tau } => tau,
        }
    }

    /// The schedule.
    pub fn schedule(&self) -> &TauSchedule {
        &self.schedule
    }
}

/// Temperature used in validation passes (the paper: 1).
pub const VALIDATION_TAU: f64 = 1.0;

/// `[rows, m]` f32 counts of the argmax of each row of a (hard or soft) selection.
pub(crate) fn selection_counts(selection: &Tensor) -> Result<Tensor> {
    let m = selection.dim(D::Minus1)?;
    let choice = selection.argmax(D::Minus1)?.flatten_all()?;
    let ones = Tensor::ones(choice.dim(0)?, DType::F32, selection.device())?;
    Ok(Tensor::zeros(m, DType::F32, selection.device())?.index_add(&choice, &ones, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn hard_forward_is_exactly_one_hot_and_seeded() {
        let logits = Tensor::from_slice(
            &[0.3f32, -1.0, 2.0, 0.1, 0.0, 0.5, 0.2, -0.2],
            (2, 4),
            &Device::Cpu,
        )
        .unwrap();
        let mut a = ChaCha8Rng::seed_from_u64(5);
        let mut b = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            let ya = gumbel_softmax(&logits, 0.7, true, &mut a)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let yb = gumbel_softmax(&logits, 0.7, true, &mut b)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(ya, yb);
            for row in &ya {
                assert_eq!(row.iter().filter(|&&v| v == 1.0).count(), 1, "{row:?}");
                assert_eq!(row.iter().filter(|&&v| v == 0.0).count(), 3, "{row:?}");
            }
        }
    }

    /// P(argmax(logits + g) = i) = softmax(logits)_i. 20,000 draws: the standard error of each
    /// frequency is ≤ sqrt(0.25/20000) = 0.0035; allow 4.5σ.
    #[test]
    fn frequencies_match_softmax() {
        let l = [1.0f32, 0.0, -0.5, 2.0, 0.3];
        let n = 20_000;
        let logits = Tensor::from_slice(&l, (1, 5), &Device::Cpu)
            .unwrap()
            .broadcast_as((n, 5))
            .unwrap()
            .contiguous()
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let y = gumbel_softmax(&logits, 1.0, true, &mut rng).unwrap();
        let freq = y.sum(0).unwrap().to_vec1::<f32>().unwrap();
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        for (i, &f) in freq.iter().enumerate() {
            let p = (l[i] as f64).exp() / z;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            let obs = f as f64 / n as f64;
            assert!((obs - p).abs() < 4.5 * se, "code {i}: {obs} vs {p}");
        }
        // Temperature does not change which index is the argmax: same law at τ = 5.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let y5 = gumbel_softmax(&logits, 5.0, true, &mut rng)
            .unwrap()
            .sum(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let p3 = (2.0f64).exp() / z;
        assert!((y5[3] as f64 / n as f64 - p3).abs() < 4.5 * (p3 * (1.0 - p3) / n as f64).sqrt());
    }

    /// The hard sample's gradient equals the soft sample's; the soft one is checked against
    /// central finite differences of L = Σ w ⊙ softmax((l + g)/τ).
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let l0 = vec![0.2f32, -0.4, 0.9, 0.1];
        let g = Tensor::from_slice(&[0.3f32, 1.1, -0.2, 0.05], (1, 4), &dev).unwrap();
        let w = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0], (1, 4), &dev).unwrap();
        let tau = 0.8;
        let loss = |l: &Tensor, hard: bool| -> Tensor {
            (gumbel_softmax_with_noise(l, &g, tau, hard).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let v = Var::from_slice(&l0, (1, 4), &dev).unwrap();
        let soft = loss(v.as_tensor(), false)
            .backward()
            .unwrap()
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let hard = loss(v.as_tensor(), true)
            .backward()
            .unwrap()
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(soft, hard);
        let h = 1e-3f32;
        for i in 0..4 {
            let mut p = l0.clone();
            p[i] += h;
            let mut m = l0.clone();
            m[i] -= h;
            let f = |x: &[f32]| {
                loss(&Tensor::from_slice(x, (1, 4), &dev).unwrap(), false)
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let fd = (f(&p) - f(&m)) / (2.0 * h);
            assert!((fd - soft[i]).abs() < 2e-3, "{i}: fd {fd} vs {}", soft[i]);
        }
    }

    #[test]
    fn schedules() {
        let t = TauSchedule::Paper.validate(100).unwrap();
        assert_eq!(t.at(0), 101.0);
        assert_eq!(t.at(99), 2.0);
        let e = TauSchedule::Exponential {
            start: 2.0,
            rate: 0.5,
            floor: 0.3,
        }
        .validate(10)
        .unwrap();
        assert_eq!(e.at(0), 2.0);
        assert_eq!(e.at(2), 0.5);
        assert_eq!(e.at(10), 0.3);
        assert_eq!(
            TauSchedule::Constant { tau: 0.7 }
                .validate(1)
                .unwrap()
                .at(55),
            0.7
        );
        assert!(matches!(
            TauSchedule::Constant { tau: 0.0 }.validate(1),
            Err(ConfigError::NonPositiveTemperature { .. })
        ));
        assert!(TauSchedule::Constant { tau: -1.0 }.validate(1).is_err());
        assert!(TauSchedule::Paper.validate(0).is_err());
        let logits = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(gumbel_softmax(&logits, 0.0, true, &mut rng).is_err());
    }

    #[test]
    fn one_hot_argmax_first_on_ties() {
        let x = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 0.0], (1, 4), &Device::Cpu).unwrap();
        assert_eq!(
            one_hot_argmax(&x).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![0., 1., 0., 0.]]
        );
    }
}
