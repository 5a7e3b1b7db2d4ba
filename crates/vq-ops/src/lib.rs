//! CPU kernels and candle custom ops for the adaptive-vq workspace: every hand-written kernel,
//! and every line of `unsafe`, lives here.
//!
//! - [`kernels`]: slice functions. The direct and Winograd convolutions, the nearest-codeword
//!   searches, GEMM, activation buffers; register tiles per instruction set (AVX-512, AVX2) with
//!   a portable version of each, chosen by [`kernels::Isa`]. `VQ_OPS_PORTABLE=1` forces the
//!   portable tiles (the results are bit-identical).
//! - [`ops`]: candle autograd ops over those kernels for the CPU in f32: convolution and
//!   transposed convolution with fused bias, residual and ReLUs, ReLU, the fused linear, the
//!   adaptive pool's weighted sum, Adam's in-place passes, channel-first ↔ channel-last copies.
//!   Each falls back to candle's ops on other devices and dtypes.
//! - [`runtime`]: process-wide CPU settings for training binaries.
//!
//! Layers (vq-core's quantizers, vq-models' autoencoders) call these ops and stay thin.

pub mod kernels;
pub mod ops;
pub mod runtime;

pub use kernels::Isa;

#[cfg(test)]
pub(crate) mod testing {
    //! Seeded test data (candle's CPU `randn` cannot be seeded).

    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    /// `shape` standard-normal values (Box–Muller) from the stream `seed`: the same numbers on
    /// every run.
    pub fn randn(seed: u64, shape: &[usize]) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
                let t: f64 = rng.random();
                ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * t).cos()) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape")
    }

    /// `max |a − b|` over all elements (same shapes).
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("same shapes")
    }
}
