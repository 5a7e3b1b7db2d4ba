//! AVX2 builds of portable kernels: the generic code inlined into a function compiled with
//! AVX2 enabled, so the compiler vectorises it with 8-lane registers.
#![cfg(target_arch = "x86_64")]

/// [`super::search`]'s fused rows, compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn fused_rows(
    x: &[f32],
    d: usize,
    et: &[f32],
    enorm: &[f32],
    n_pad: usize,
    panel: usize,
    out: &mut [u32],
) {
    super::search::fused_rows_generic(x, d, et, enorm, n_pad, panel, out)
}
