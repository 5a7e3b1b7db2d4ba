//! AVX-512F register tiles (x86-64): the direct convolution's forward and kernel-gradient tiles
//! and the Winograd F(2×2, 3×3) input and output transforms. [`super::scalar`] has the same
//! contracts in plain Rust.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::direct::{Padded, OB};

/// One forward tile of `r` (≤ `MAX_R`) output positions × 32 output channels: dispatches to the
/// register-resident kernel for that `r`.
///
/// # Safety
/// AVX-512F must be available and every address described at the call sites valid.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn fwd_tile(
    r: usize,
    x: *const f32,
    xps: usize,
    taps: &[usize],
    c: usize,
    w: *const f32,
    y: *mut f32,
    yps: usize,
    bias: *const f32,
    relu: bool,
    [mask, add]: [*const f32; 2],
) {
    macro_rules! go {
        ($($n:literal)*) => {
            match r {
                $($n => unsafe { fwd::<$n>(x, xps, taps, c, w, y, yps, bias, relu, [mask, add]) },)*
                _ => unreachable!("tile of {r} positions"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
}

/// One kernel-gradient tile of `r` input channels × `width` (32 with `r` ≤ 14, or 64 with
/// `r` ≤ 6) output channels summed over the output positions of rows `n[0]..n[1]` (row =
/// `b·n[2] + y`, `n[3]` positions each; strides `xs` and `dys` per `b`, `y`, `x`), added to
/// `acc` `[r][width]`.
///
/// # Safety
/// AVX-512F must be available and every address described at the call site valid.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn grad_tile(
    width: usize,
    r: usize,
    x: *const f32,
    xs: [usize; 3],
    dy: *const f32,
    dys: [usize; 3],
    n: [usize; 4],
    acc: *mut f32,
) {
    macro_rules! go {
        ($v:literal: $($n:literal)*) => {
            match r {
                $($n => unsafe { grad::<$n, $v>(x, xs, dy, dys, n, acc) },)*
                _ => unreachable!("tile of {r} channels"),
            }
        };
    }
    if width == 2 * OB {
        go!(4: 1 2 3 4 5 6)
    } else {
        go!(2: 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    }
}

/// `y[j·yps + 0..32] = Σ_t Σ_ci x[j·xps + taps[t] + ci] · w[(t·c + ci)·32 + 0..32]` for
/// `j < R`, with the `R × 2` accumulators in registers; then `+ bias[0..32]` (unless null),
/// `+ add[j·yps + 0..32]` (unless null), `max(·, 0)` when `relu`, and
/// `· [mask[j·yps + 0..32] > 0]` (unless null).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fwd<const R: usize>(
    x: *const f32,
    xps: usize,
    taps: &[usize],
    c: usize,
    w: *const f32,
    y: *mut f32,
    yps: usize,
    bias: *const f32,
    relu: bool,
    [mask, add]: [*const f32; 2],
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if !bias.is_null() {
        // SAFETY: 32 bias values, as documented by the caller.
        let b = unsafe { [_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16))] };
        acc = [b; R];
    }
    for (t, &off) in taps.iter().enumerate() {
        // SAFETY (this block): addresses as documented by the caller.
        unsafe {
            let xt = x.add(off);
            let wt = w.add(t * c * 32);
            for ci in 0..c {
                let w0 = _mm512_loadu_ps(wt.add(ci * 32));
                let w1 = _mm512_loadu_ps(wt.add(ci * 32 + 16));
                for (j, a) in acc.iter_mut().enumerate() {
                    let v = _mm512_set1_ps(*xt.add(j * xps + ci));
                    a[0] = _mm512_fmadd_ps(v, w0, a[0]);
                    a[1] = _mm512_fmadd_ps(v, w1, a[1]);
                }
            }
        }
    }
    if !add.is_null() {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: the residual is laid out like `y`, as documented by the caller.
            unsafe {
                a[0] = _mm512_add_ps(a[0], _mm512_loadu_ps(add.add(j * yps)));
                a[1] = _mm512_add_ps(a[1], _mm512_loadu_ps(add.add(j * yps + 16)));
            }
        }
    }
    if relu {
        let z = _mm512_setzero_ps();
        for a in acc.iter_mut() {
            a[0] = _mm512_max_ps(a[0], z);
            a[1] = _mm512_max_ps(a[1], z);
        }
    }
    if !mask.is_null() {
        let z = _mm512_setzero_ps();
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: the mask is laid out like `y`, as documented by the caller.
            let (m0, m1) = unsafe {
                (
                    _mm512_loadu_ps(mask.add(j * yps)),
                    _mm512_loadu_ps(mask.add(j * yps + 16)),
                )
            };
            a[0] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(m0, z), a[0]);
            a[1] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(m1, z), a[1]);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: as documented by the caller.
        unsafe {
            _mm512_storeu_ps(y.add(j * yps), a[0]);
            _mm512_storeu_ps(y.add(j * yps + 16), a[1]);
        }
    }
}

/// `acc[j·16V + 0..16V] += Σ_p x[p·xs + j] · dy[p·dys + 0..16V]` for `j < R` over the
/// positions `p = (b, y, x)` of rows `n[0]..n[1]` (row = `b·n[2] + y`, `x < n[3]`;
/// `p·s` = `b·s[0] + y·s[1] + x·s[2]`).
#[target_feature(enable = "avx512f")]
pub unsafe fn grad<const R: usize, const V: usize>(
    x: *const f32,
    xs: [usize; 3],
    dy: *const f32,
    dys: [usize; 3],
    n: [usize; 4],
    acc: *mut f32,
) {
    // SAFETY (this function): addresses as documented by the caller.
    unsafe {
        let mut a = [[_mm512_setzero_ps(); V]; R];
        for (j, aj) in a.iter_mut().enumerate() {
            for (v, av) in aj.iter_mut().enumerate() {
                *av = _mm512_loadu_ps(acc.add(j * 16 * V + 16 * v));
            }
        }
        for row in n[0]..n[1] {
            let (b, y) = (row / n[2], row % n[2]);
            let xr = x.add(b * xs[0] + y * xs[1]);
            let gr = dy.add(b * dys[0] + y * dys[1]);
            for i in 0..n[3] {
                let gi = gr.add(i * dys[2]);
                let mut g = [_mm512_setzero_ps(); V];
                for (v, gv) in g.iter_mut().enumerate() {
                    *gv = _mm512_loadu_ps(gi.add(16 * v));
                }
                let xi = xr.add(i * xs[2]);
                for (j, aj) in a.iter_mut().enumerate() {
                    let e = _mm512_set1_ps(*xi.add(j));
                    for (av, gv) in aj.iter_mut().zip(&g) {
                        *av = _mm512_fmadd_ps(e, *gv, *av);
                    }
                }
            }
        }
        for (j, aj) in a.iter().enumerate() {
            for (v, av) in aj.iter().enumerate() {
                _mm512_storeu_ps(acc.add(j * 16 * V + 16 * v), *av);
            }
        }
    }
}

/// `Bᵀ d B` of the 4×4 tile at padded `(y0, x0)` of image `b` (pixels outside the padded
/// image are 0), for every channel: `v[e·stride + t·C + c]`, `e = ξ·4 + ν`.
#[target_feature(enable = "avx512f")]
pub unsafe fn input_tile(
    x: &Padded,
    b: usize,
    y0: usize,
    x0: usize,
    v: *mut f32,
    stride: usize,
    t: usize,
) {
    let c = x.channels;
    let z = _mm512_setzero_ps();
    for c0 in (0..c).step_by(16) {
        let mut d = [[z; 4]; 4];
        for (r, row) in d.iter_mut().enumerate() {
            if y0 + r >= x.hp {
                continue;
            }
            for (s, px) in row.iter_mut().enumerate() {
                if x0 + s < x.wp {
                    let at = ((b * x.hp + y0 + r) * x.wp + x0 + s) * c + c0;
                    // SAFETY: inside the padded image, 16 channels from c0 < c.
                    *px = unsafe { _mm512_loadu_ps(x.data.as_ptr().add(at)) };
                }
            }
        }
        // Bᵀ d (rows), then · B (columns).
        let rows = [
            sub4(&d[0], &d[2]),
            add4(&d[1], &d[2]),
            sub4(&d[2], &d[1]),
            sub4(&d[1], &d[3]),
        ];
        for (xi, r) in rows.iter().enumerate() {
            let out = [
                _mm512_sub_ps(r[0], r[2]),
                _mm512_add_ps(r[1], r[2]),
                _mm512_sub_ps(r[2], r[1]),
                _mm512_sub_ps(r[1], r[3]),
            ];
            for (nu, val) in out.iter().enumerate() {
                // SAFETY: the caller's `v` holds 16 strides of nt·C values.
                unsafe { _mm512_storeu_ps(v.add((xi * 4 + nu) * stride + t * c + c0), *val) };
            }
        }
    }
}

/// `Aᵀ M A` of tile `t` (`m[e·stride + t·O + o]`), + bias (unless null), + the residual
/// `add` (unless null), ReLU when `relu`, `· [mask > 0]` (unless null; `add` and `mask` laid
/// out like `y`), written at `y[r·row + q·O + o]` for `r < rows.0`, `q < rows.1`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn output_tile(
    m: *const f32,
    stride: usize,
    t: usize,
    o: usize,
    y: *mut f32,
    row: usize,
    rows: (usize, usize),
    bias: *const f32,
    relu: bool,
    [mask, add]: [*const f32; 2],
) {
    let z = _mm512_setzero_ps();
    for o0 in (0..o).step_by(16) {
        let mut mm = [[z; 4]; 4];
        for (xi, r) in mm.iter_mut().enumerate() {
            for (nu, val) in r.iter_mut().enumerate() {
                // SAFETY: as documented by the caller.
                *val = unsafe { _mm512_loadu_ps(m.add((xi * 4 + nu) * stride + t * o + o0)) };
            }
        }
        // Aᵀ M (2 rows of 4), then · A (2 columns).
        let s = [
            add4(&add4(&mm[0], &mm[1]), &mm[2]),
            sub4(&sub4(&mm[1], &mm[2]), &mm[3]),
        ];
        let b = if bias.is_null() {
            z
        } else {
            // SAFETY: `bias` has `o` values.
            unsafe { _mm512_loadu_ps(bias.add(o0)) }
        };
        for (r, sr) in s.iter().enumerate().take(rows.0) {
            let out = [
                _mm512_add_ps(_mm512_add_ps(sr[0], sr[1]), sr[2]),
                _mm512_sub_ps(_mm512_sub_ps(sr[1], sr[2]), sr[3]),
            ];
            for (q, val) in out.iter().enumerate().take(rows.1) {
                let mut val = _mm512_add_ps(*val, b);
                if !add.is_null() {
                    // SAFETY: the residual is laid out like `y`.
                    let av = unsafe { _mm512_loadu_ps(add.add(r * row + q * o + o0)) };
                    val = _mm512_add_ps(val, av);
                }
                if relu {
                    val = _mm512_max_ps(val, z);
                }
                if !mask.is_null() {
                    // SAFETY: the mask is laid out like `y`.
                    let mv = unsafe { _mm512_loadu_ps(mask.add(r * row + q * o + o0)) };
                    val = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(mv, z), val);
                }
                // SAFETY: as documented by the caller.
                unsafe { _mm512_storeu_ps(y.add(r * row + q * o + o0), val) };
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn add4(a: &[__m512; 4], b: &[__m512; 4]) -> [__m512; 4] {
    [
        _mm512_add_ps(a[0], b[0]),
        _mm512_add_ps(a[1], b[1]),
        _mm512_add_ps(a[2], b[2]),
        _mm512_add_ps(a[3], b[3]),
    ]
}

#[inline]
#[target_feature(enable = "avx512f")]
fn sub4(a: &[__m512; 4], b: &[__m512; 4]) -> [__m512; 4] {
    [
        _mm512_sub_ps(a[0], b[0]),
        _mm512_sub_ps(a[1], b[1]),
        _mm512_sub_ps(a[2], b[2]),
        _mm512_sub_ps(a[3], b[3]),
    ]
}
