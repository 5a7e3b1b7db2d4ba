//! Seeded parameter initialisation: a candle `VarBuilder` backend that draws every new variable
//! from a ChaCha RNG seeded by `(seed, variable path)`.
//!
//! candle's CPU RNG cannot be seeded, so `VarMap`'s own initialisation differs from run to run.
//! [`SeededVarMap`] keeps the same `Init` hints (Kaiming, uniform, normal, constant) but owns the
//! randomness: the same seed gives the same weights, whatever order the layers are built in
//! (each path has its own stream), and every variable still lives in an ordinary [`VarMap`] for
//! optimisers and safetensors checkpoints.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A [`VarMap`] whose missing variables are created from a seeded RNG.
#[derive(Clone)]
pub struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SeededVarMap {
    /// An empty map drawing new variables from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            varmap: VarMap::new(),
            seed,
        }
    }

    /// The underlying map (all variables created so far), e.g. for `save`/`load`.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// A `VarBuilder` creating variables in this map.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// All variables with their paths, sorted by path (a stable order for checkpoints).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// FNV-1a: a hash that never changes between Rust versions, used to derive per-path streams.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The RNG stream of variable `path` under `seed`.
pub fn stream(seed: u64, path: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ stable_hash(path.as_bytes()))
}

/// A tensor of standard normal values drawn from the stream of `path` under `seed`: the same
/// numbers on every run (candle's CPU `randn` cannot be seeded). For inputs of tests and
/// benchmarks.
pub fn randn(
    seed: u64,
    path: &str,
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut rng = stream(seed, path);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| standard_normal(&mut rng) as f32).collect();
    Tensor::from_vec(v, shape, device)
}

/// One standard normal draw (Box–Muller on the RNG's uniform stream).
pub fn standard_normal(rng: &mut (impl Rng + ?Sized)) -> f64 {
    loop {
        let u: f64 = rng.random();
        if u > 0.0 {
            let v: f64 = rng.random();
            return (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        }
    }
}

/// Values of `init` for a tensor of `shape`, drawn from `rng` (fan-in/out as candle computes it).
pub fn init_values(init: &Init, shape: &Shape, rng: &mut impl Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let normal = |rng: &mut dyn FnMut() -> f64, mean: f64, std: f64| -> Vec<f32> {
        (0..n).map(|_| (mean + std * rng()) as f32).collect()
    };
    match *init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => (0..n)
            .map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32)
            .collect(),
        Init::Randn { mean, stdev } => normal(&mut || standard_normal(rng), mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| (-bound + 2.0 * bound * rng.random::<f64>()) as f32)
                        .collect()
                }
                candle_nn::init::NormalOrUniform::Normal => {
                    normal(&mut || standard_normal(rng), 0.0, std)
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "variable `{name}` has shape {:?}, requested {:?}",
                    v.shape(),
                    s
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = stream(self.seed, name);
        let values = init_values(&h, &s, &mut rng);
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.varmap.data().lock().expect("varmap lock");
        match data.get(name) {
            Some(v) => v.as_tensor().to_device(dev)?.to_dtype(dtype),
            None => {
                candle_core::bail!("variable `{name}` does not exist and has no shape to create it")
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_any_order() {
        let a = SeededVarMap::new(3);
        let b = SeededVarMap::new(3);
        let c = SeededVarMap::new(4);
        let (va, vb, vc) = (
            a.var_builder(DType::F32, &Device::Cpu),
            b.var_builder(DType::F32, &Device::Cpu),
            c.var_builder(DType::F32, &Device::Cpu),
        );
        let la = candle_nn::linear(8, 4, va.pp("l1")).unwrap();
        let _ = candle_nn::linear(8, 4, va.pp("l2")).unwrap();
        // Built in the other order.
        let _ = candle_nn::linear(8, 4, vb.pp("l2")).unwrap();
        let lb = candle_nn::linear(8, 4, vb.pp("l1")).unwrap();
        let lc = candle_nn::linear(8, 4, vc.pp("l1")).unwrap();
        let wa = la.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wb = lb.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wc = lc.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(wa, wb);
        assert_ne!(wa, wc);
    }

    #[test]
    fn init_statistics() {
        // Kaiming normal with ReLU gain: std = sqrt(2 / fan_in); fan_in = 64 → 0.1768.
        let mut rng = stream(0, "w");
        let shape = Shape::from((400, 64));
        let v = init_values(&candle_nn::init::DEFAULT_KAIMING_NORMAL, &shape, &mut rng);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        // 25,600 draws: std error of the mean ≈ 0.0011, of the std ≈ 0.0008.
        assert!(mean.abs() < 0.006, "mean {mean}");
        assert!(
            (var.sqrt() - (2.0f64 / 64.0).sqrt()).abs() < 0.004,
            "std {}",
            var.sqrt()
        );
        let u = init_values(&Init::Uniform { lo: -2.0, up: 1.0 }, &shape, &mut rng);
        assert!(u.iter().all(|&x| (-2.0..1.0).contains(&x)));
    }
}
