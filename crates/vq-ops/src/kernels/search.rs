//! The exhaustive nearest-codeword searches over row-major `f32` slices (CPU): GEMM-based (a
//! bounded block of inner products at a time) and fused (distances and the running argmin in
//! registers, never materialised). vq-core's search dispatch chooses between them; lowest index on ties.

use rayon::prelude::*;

use super::gemm::matmul;
use super::Isa;

/// Rows per GEMM block: the `rows × N` block of inner products stays within ~2 MiB.
fn gemm_rows(n: usize) -> usize {
    ((2 << 20) / (4 * n)).clamp(1, 512)
}

/// GEMM search (CPU): `x` `[T, D]`, `codebook` `[N, D]`, row-major; lowest index on ties.
/// Row blocks run in parallel, each with a single-threaded GEMM into its own bounded buffer.
pub fn nearest_gemm(x: &[f32], codebook: &[f32], d: usize) -> Vec<u32> {
    assert!(d > 0 && x.len().is_multiple_of(d) && codebook.len().is_multiple_of(d));
    let t = x.len() / d;
    let n = codebook.len() / d;
    assert!(n > 0);
    let enorm: Vec<f32> = codebook
        .chunks_exact(d)
        .map(|e| e.iter().map(|v| v * v).sum())
        .collect();
    let rows = gemm_rows(n);
    let mut out = vec![0u32; t];
    out.par_chunks_mut(rows)
        .enumerate()
        .for_each(|(bi, out_b)| {
            let r0 = bi * rows;
            let m = out_b.len();
            // dots[i, j] = Σ_k x[r0 + i, k] · e[j, k]  (row-major m × n), on this thread.
            let dots = matmul(m, n, d, &x[r0 * d..], false, codebook, true, 1);
            argmin_rows(&dots, &enorm, out_b, Isa::current());
        });
    out
}

/// `out[i] = argmin_j (enorm[j] − 2·dots[i·N + j])` over each row of the `[out.len(), N]` inner
/// products, `N = enorm.len()`: the first index of the smallest distance, NaN never chosen, 0
/// when no distance is below +∞. Every ISA gives the same indices (the distance is one
/// rounding, `2·dot` being exact).
pub fn argmin_rows(dots: &[f32], enorm: &[f32], out: &mut [u32], isa: Isa) {
    assert_eq!(dots.len(), out.len() * enorm.len());
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && Isa::detected() >= Isa::Avx2 {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { super::avx2::argmin_rows(dots, enorm, out) };
        return;
    }
    let _ = isa;
    argmin_rows_generic(dots, enorm, out)
}

/// [`argmin_rows`] in plain Rust (the portable version): a first-minimum scan of each row.
pub(crate) fn argmin_rows_generic(dots: &[f32], enorm: &[f32], out: &mut [u32]) {
    let n = enorm.len();
    if n == 0 {
        out.fill(0);
        return;
    }
    for (o, row) in out.iter_mut().zip(dots.chunks_exact(n)) {
        *o = argmin_finish(&[], &[], row, enorm, 0);
    }
}

/// The first index of the row's smallest distance `enorm[j] − 2·row[j]`, given running minima
/// `vals` at indices `idxs` (lanes, each the first index of its own minimum) over `row[..from]`:
/// the lanes reduce to the smallest value, ties to the lowest index, then the scan continues
/// over `row[from..]` with strict `<` (0 when nothing is below +∞, NaN never chosen).
#[inline]
pub(crate) fn argmin_finish(
    vals: &[f32],
    idxs: &[u32],
    row: &[f32],
    enorm: &[f32],
    from: usize,
) -> u32 {
    let (mut best, mut arg) = (f32::INFINITY, 0u32);
    for (&v, &i) in vals.iter().zip(idxs) {
        let tie = v == best && v < f32::INFINITY && i < arg;
        if v < best || tie {
            (best, arg) = (v, i);
        }
    }
    for j in from..row.len() {
        let dist = enorm[j] - 2.0 * row[j];
        if dist < best {
            (best, arg) = (dist, j as u32);
        }
    }
    arg
}

const ROWS: usize = 4;
const COLS: usize = 16;
/// Rows of `x` a rayon task handles (their running minima live on the stack of the task).
const ROW_CHUNK: usize = 32;
/// Codeword panel size in floats of `D × panel` (kept in L1/L2 while a row chunk sweeps it).
const PANEL_FLOATS: usize = 16 * 1024;

/// Fused distance + running argmin kernel for any `D` (CPU). `x`: `[T, D]`, `codebook`:
/// `[N, D]`, both row-major; returns `[T]` indices, lowest index on ties.
pub fn nearest_fused(x: &[f32], codebook: &[f32], d: usize) -> Vec<u32> {
    assert!(d > 0 && x.len().is_multiple_of(d) && codebook.len().is_multiple_of(d));
    let t = x.len() / d;
    let n = codebook.len() / d;
    assert!(n > 0);
    let n_pad = n.div_ceil(COLS) * COLS;
    // Transposed, padded codebook [D, n_pad] and norms; padding columns have norm +inf so they
    // never win.
    let mut et = vec![0f32; d * n_pad];
    let mut enorm = vec![f32::INFINITY; n_pad];
    for (j, row) in codebook.chunks_exact(d).enumerate() {
        let mut s = 0f32;
        for (k, &v) in row.iter().enumerate() {
            et[k * n_pad + j] = v;
            s += v * v;
        }
        enorm[j] = s;
    }
    let panel = ((PANEL_FLOATS / d) / COLS * COLS).clamp(COLS, n_pad);
    let mut out = vec![0u32; t];
    out.par_chunks_mut(ROW_CHUNK)
        .enumerate()
        .for_each(|(ci, out_chunk)| {
            let r0 = ci * ROW_CHUNK;
            let rows = out_chunk.len();
            fused_rows(
                &x[r0 * d..(r0 + rows) * d],
                d,
                &et,
                &enorm,
                n_pad,
                panel,
                out_chunk,
            );
        });
    out
}

fn fused_rows(
    x: &[f32],
    d: usize,
    et: &[f32],
    enorm: &[f32],
    n_pad: usize,
    panel: usize,
    out: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    if Isa::current() >= Isa::Avx2 {
        // SAFETY: the CPU supports AVX2 (Isa::current never exceeds what was detected).
        unsafe { super::avx2::fused_rows(x, d, et, enorm, n_pad, panel, out) };
        return;
    }
    fused_rows_generic(x, d, et, enorm, n_pad, panel, out)
}

/// [`nearest_fused`] for rows `x` (`out.len()` of them), over the transposed padded codebook
/// `et` `[D, n_pad]` and its norms, in panels of `panel` codewords (inlined into each ISA's
/// wrapper, so the compiler vectorises it for that ISA).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_rows_generic(
    x: &[f32],
    d: usize,
    et: &[f32],
    enorm: &[f32],
    n_pad: usize,
    panel: usize,
    out: &mut [u32],
) {
    let rows = out.len();
    let groups = rows.div_ceil(ROWS);
    // −2·x, padded to whole row groups.
    let mut xs = vec![0f32; groups * ROWS * d];
    for (dst, &src) in xs.iter_mut().zip(x) {
        *dst = -2.0 * src;
    }
    let mut best_v = vec![[[f32::INFINITY; COLS]; ROWS]; groups];
    let mut best_i = vec![[[0u32; COLS]; ROWS]; groups];
    let mut p0 = 0;
    while p0 < n_pad {
        let p1 = (p0 + panel).min(n_pad);
        for g in 0..groups {
            let xg = &xs[g * ROWS * d..(g + 1) * ROWS * d];
            tile_sweep(
                xg,
                d,
                et,
                enorm,
                n_pad,
                p0,
                p1,
                &mut best_v[g],
                &mut best_i[g],
            );
        }
        p0 = p1;
    }
    for (r, o) in out.iter_mut().enumerate() {
        let (g, rr) = (r / ROWS, r % ROWS);
        let (vals, idxs) = (&best_v[g][rr], &best_i[g][rr]);
        let mut bv = vals[0];
        let mut bi = idxs[0];
        for c in 1..COLS {
            if vals[c] < bv || (vals[c] == bv && idxs[c] < bi) {
                bv = vals[c];
                bi = idxs[c];
            }
        }
        *o = bi;
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_sweep(
    xg: &[f32],
    d: usize,
    et: &[f32],
    enorm: &[f32],
    n_pad: usize,
    p0: usize,
    p1: usize,
    best_v: &mut [[f32; COLS]; ROWS],
    best_i: &mut [[u32; COLS]; ROWS],
) {
    let mut j = p0;
    while j < p1 {
        let en: &[f32; COLS] = enorm[j..j + COLS].try_into().expect("padded");
        let mut acc = [*en; ROWS];
        for k in 0..d {
            let e: &[f32; COLS] = et[k * n_pad + j..k * n_pad + j + COLS]
                .try_into()
                .expect("padded");
            for r in 0..ROWS {
                let xv = xg[r * d + k];
                for c in 0..COLS {
                    acc[r][c] += xv * e[c];
                }
            }
        }
        for r in 0..ROWS {
            for c in 0..COLS {
                let better = acc[r][c] < best_v[r][c];
                best_v[r][c] = if better { acc[r][c] } else { best_v[r][c] };
                best_i[r][c] = if better { (j + c) as u32 } else { best_i[r][c] };
            }
        }
        j += COLS;
    }
}
