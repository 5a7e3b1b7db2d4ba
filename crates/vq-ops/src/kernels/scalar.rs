//! Portable register tiles: the contracts of [`super::avx512`] in plain Rust over slices, for
//! every target and for `VQ_OPS_PORTABLE=1`. Each multiply-add is an `f32::mul_add` (one
//! rounding, as the vector FMA) in the order of the vector code, so the results are bit-identical
//! to the AVX-512 tiles; on a CPU without FMA `mul_add` is a library call, so these are for
//! correctness, not speed.

use super::direct::{Padded, OB};

/// Where a tile's epilogue reads: the bias of its 32 (or `o`) channels, and the residual and the
/// mask laid out like the tile's output (both sliced from the tile's first output value).
#[derive(Clone, Copy)]
pub(crate) struct TileEpilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
    pub mask: Option<&'a [f32]>,
    pub add: Option<&'a [f32]>,
}

impl TileEpilogue<'_> {
    /// The value written at output offset `at` (relative to the tile) for the sum `v` (bias
    /// included): `+ add`, `max(·, 0)` when `relu`, `· [mask > 0]`.
    #[inline]
    fn finish(&self, v: f32, at: usize) -> f32 {
        let v = match self.add {
            Some(a) => v + a[at],
            None => v,
        };
        // `v > 0 ? v : 0`, as the vector max (NaN and −0 give +0).
        let v = if self.relu && !positive(v) { 0.0 } else { v };
        match self.mask {
            // `!(m > 0)`: a NaN mask zeroes, as the vector compare (_CMP_GT_OQ) does.
            Some(m) if !positive(m[at]) => 0.0,
            _ => v,
        }
    }
}

/// `v > 0`, false for NaN (the ordered compare of the vector kernels).
#[inline]
fn positive(v: f32) -> bool {
    v > 0.0
}

/// `y[j·yps + 0..32] = Σ_t Σ_ci x[j·xps + taps[t] + ci] · w[(t·c + ci)·32 + 0..32]` for `j < r`,
/// starting from the bias (or 0), then the epilogue (see `avx512::fwd`).
///
/// # Panics
/// If a read or write leaves its slice.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fwd_tile(
    r: usize,
    x: &[f32],
    xps: usize,
    taps: &[usize],
    c: usize,
    w: &[f32],
    y: &mut [f32],
    yps: usize,
    ep: TileEpilogue,
) {
    let init: [f32; OB] = match ep.bias {
        Some(b) => b[..OB].try_into().expect("32 bias values"),
        None => [0.0; OB],
    };
    let mut acc = vec![init; r];
    for (t, &off) in taps.iter().enumerate() {
        let wt = &w[t * c * OB..(t + 1) * c * OB];
        for ci in 0..c {
            let wv = &wt[ci * OB..(ci + 1) * OB];
            for (j, a) in acc.iter_mut().enumerate() {
                let v = x[j * xps + off + ci];
                for (a, w) in a.iter_mut().zip(wv) {
                    *a = v.mul_add(*w, *a);
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        for (lane, v) in a.iter().enumerate() {
            let at = j * yps + lane;
            y[at] = ep.finish(*v, at);
        }
    }
}

/// `acc[j·width + 0..width] += Σ_p x[p·xs + j] · dy[p·dys + 0..width]` for `j < r` over the
/// positions `p = (b, y, x)` of rows `n[0]..n[1]` (row = `b·n[2] + y`, `x < n[3]`; `p·s` =
/// `b·s[0] + y·s[1] + x·s[2]`), as `avx512::grad`.
///
/// # Panics
/// If a read or write leaves its slice.
#[allow(clippy::too_many_arguments)]
pub(crate) fn grad_tile(
    width: usize,
    r: usize,
    x: &[f32],
    xs: [usize; 3],
    dy: &[f32],
    dys: [usize; 3],
    n: [usize; 4],
    acc: &mut [f32],
) {
    let acc = &mut acc[..r * width];
    for row in n[0]..n[1] {
        let (b, y) = (row / n[2], row % n[2]);
        let (xr, gr) = (b * xs[0] + y * xs[1], b * dys[0] + y * dys[1]);
        for i in 0..n[3] {
            let g = &dy[gr + i * dys[2]..gr + i * dys[2] + width];
            let xi = xr + i * xs[2];
            for (j, aj) in acc.chunks_exact_mut(width).enumerate() {
                let e = x[xi + j];
                for (a, g) in aj.iter_mut().zip(g) {
                    *a = e.mul_add(*g, *a);
                }
            }
        }
    }
}

/// `Bᵀ d B` of the 4×4 tile at padded `(y0, x0)` of image `b` (pixels outside the padded image
/// are 0), for every channel: `v[e·stride + t·C + c]`, `e = ξ·4 + ν`, as `avx512::input_tile`.
pub(crate) fn winograd_input_tile(
    x: &Padded,
    b: usize,
    y0: usize,
    x0: usize,
    v: &mut [f32],
    stride: usize,
    t: usize,
) {
    let c = x.channels;
    for ci in 0..c {
        let mut d = [[0f32; 4]; 4];
        for (r, row) in d.iter_mut().enumerate() {
            if y0 + r >= x.hp {
                continue;
            }
            for (s, px) in row.iter_mut().enumerate() {
                if x0 + s < x.wp {
                    *px = x.data[((b * x.hp + y0 + r) * x.wp + x0 + s) * c + ci];
                }
            }
        }
        let sub = |a: [f32; 4], b: [f32; 4]| std::array::from_fn::<f32, 4, _>(|i| a[i] - b[i]);
        let add = |a: [f32; 4], b: [f32; 4]| std::array::from_fn::<f32, 4, _>(|i| a[i] + b[i]);
        let rows = [
            sub(d[0], d[2]),
            add(d[1], d[2]),
            sub(d[2], d[1]),
            sub(d[1], d[3]),
        ];
        for (xi, r) in rows.iter().enumerate() {
            let out = [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]];
            for (nu, val) in out.iter().enumerate() {
                v[(xi * 4 + nu) * stride + t * c + ci] = *val;
            }
        }
    }
}

/// `Aᵀ M A` of tile `t` (`m[e·stride + t·O + o]`), + bias, then the epilogue, written at
/// `y[r·row + q·O + o]` for `r < rows.0`, `q < rows.1` (the residual and the mask laid out like
/// `y`), as `avx512::output_tile`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn winograd_output_tile(
    m: &[f32],
    stride: usize,
    t: usize,
    o: usize,
    y: &mut [f32],
    row: usize,
    rows: (usize, usize),
    ep: TileEpilogue,
) {
    for oi in 0..o {
        let mm: [[f32; 4]; 4] = std::array::from_fn(|xi| {
            std::array::from_fn(|nu| m[(xi * 4 + nu) * stride + t * o + oi])
        });
        let s = [
            std::array::from_fn::<f32, 4, _>(|i| (mm[0][i] + mm[1][i]) + mm[2][i]),
            std::array::from_fn::<f32, 4, _>(|i| (mm[1][i] - mm[2][i]) - mm[3][i]),
        ];
        // The vector code adds a zero vector when there is no bias: so does this.
        let b = ep.bias.map_or(0.0, |b| b[oi]);
        for (r, sr) in s.iter().enumerate().take(rows.0) {
            let out = [(sr[0] + sr[1]) + sr[2], (sr[1] - sr[2]) - sr[3]];
            for (q, val) in out.iter().enumerate().take(rows.1) {
                let at = r * row + q * o + oi;
                y[at] = ep.finish(*val + b, at);
            }
        }
    }
}
