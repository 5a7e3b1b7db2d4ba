//! AVX2 kernels: the fused search's rows (the generic code inlined into a function compiled
//! with AVX2 enabled, so the compiler vectorises it with 8-lane registers) and the GEMM
//! search's argmin (intrinsics: the compiler leaves the generic one scalar).
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

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

/// [`super::search::argmin_rows`] with AVX2 intrinsics: four independent 8-lane running
/// minima (32 codewords an iteration), each lane keeping the first index of its minimum
/// (ordered `<`, so NaN never wins); [`super::search::argmin_finish`] reduces the lanes and
/// scans the tail. The distance is `e − (dot + dot)`, `dot + dot` being the
/// exact `2·dot` of the portable version.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn argmin_rows(dots: &[f32], enorm: &[f32], out: &mut [u32]) {
    const A: usize = 4;
    const STEP: usize = 8 * A;
    let n = enorm.len();
    if n == 0 {
        out.fill(0);
        return;
    }
    let whole = n / STEP * STEP;
    for (o, row) in out.iter_mut().zip(dots.chunks_exact(n)) {
        let mut bv = [_mm256_set1_ps(f32::INFINITY); A];
        let mut bi = [_mm256_setzero_si256(); A];
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut j = 0;
        while j < whole {
            for a in 0..A {
                let at = j + 8 * a;
                // SAFETY: `at + 8 ≤ whole ≤ n`, the length of `row` and of `enorm`.
                let (d, e) = unsafe {
                    (
                        _mm256_loadu_ps(row.as_ptr().add(at)),
                        _mm256_loadu_ps(enorm.as_ptr().add(at)),
                    )
                };
                let dist = _mm256_sub_ps(e, _mm256_add_ps(d, d));
                let better = _mm256_cmp_ps::<_CMP_LT_OQ>(dist, bv[a]);
                bv[a] = _mm256_blendv_ps(bv[a], dist, better);
                let idx = _mm256_add_epi32(lane, _mm256_set1_epi32(at as i32));
                bi[a] = _mm256_blendv_epi8(bi[a], idx, _mm256_castps_si256(better));
            }
            j += STEP;
        }
        let (mut v, mut i) = ([0f32; 8 * A], [0u32; 8 * A]);
        for a in 0..A {
            // SAFETY: each lane group of `v` and `i` holds 8 values of 4 bytes.
            unsafe {
                _mm256_storeu_ps(v.as_mut_ptr().add(8 * a), bv[a]);
                _mm256_storeu_si256(i.as_mut_ptr().add(8 * a).cast(), bi[a]);
            }
        }
        let arg = super::search::argmin_finish(&v, &i, row, enorm, whole);
        *o = arg;
    }
}
