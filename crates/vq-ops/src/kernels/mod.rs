//! Slice-level CPU kernels, and all of the workspace's `unsafe` code: one module per instruction
//! set ([`avx512`], [`avx2`]) plus a portable [`scalar`] version of every tile kernel with the
//! same contract, chosen at run time by [`Isa`].
//!
//! The algorithms ([`direct`], [`winograd`], [`search`]) are written once over the tiles; only
//! the innermost register tiles differ per ISA. The portable tiles use `f32::mul_add` in the
//! order of the vector lanes, so they give bit-identical results (tested on every run where the
//! CPU has AVX-512).

pub(crate) mod avx2;
pub(crate) mod avx512;
pub mod buffer;
pub mod direct;
pub mod gemm;
pub(crate) mod scalar;
pub mod search;
pub mod winograd;

#[cfg(test)]
mod tests;

use std::sync::OnceLock;

/// The environment variable that forces the portable kernels: `VQ_OPS_PORTABLE=1` (any value
/// but empty or `0`). Read once per process.
pub const PORTABLE_ENV: &str = "VQ_OPS_PORTABLE";

/// An instruction set the tile kernels are written for, from the most portable up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust: every target.
    Scalar,
    /// x86-64 with AVX2.
    Avx2,
    /// x86-64 with AVX2 and AVX-512F.
    Avx512,
}

impl Isa {
    /// The best the running CPU has, whatever [`PORTABLE_ENV`] says.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = std::is_x86_feature_detected!("avx2");
                if avx2 && std::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if avx2 {
                    return Isa::Avx2;
                }
            }
            Isa::Scalar
        })
    }

    /// The kernels to run: [`Isa::detected`], or [`Isa::Scalar`] when [`PORTABLE_ENV`] is set.
    pub fn current() -> Isa {
        static CURRENT: OnceLock<Isa> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let forced = std::env::var_os(PORTABLE_ENV).is_some_and(|v| !v.is_empty() && v != "0");
            if forced {
                Isa::Scalar
            } else {
                Isa::detected()
            }
        })
    }

    /// Whether the running CPU can execute this ISA's kernels.
    pub fn runs_here(self) -> bool {
        self <= Isa::detected()
    }

    /// Every ISA the running CPU can execute, the portable one first (for tests that compare
    /// them).
    pub fn all_here() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.runs_here())
            .collect()
    }
}
