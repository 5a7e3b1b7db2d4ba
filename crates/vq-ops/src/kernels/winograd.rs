//! Winograd F(2×2, 3×3) for the 3×3, stride-1, padding-1 convolutions of the direct path (the
//! paper's model has six of them per pass, and their input gradients are the same kind).
//!
//! Each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4×4 input tile `d`: 16
//! products per channel pair instead of 36, so the sums over input channels become 16
//! independent `[tiles, C] · [C, O]` products. Tiles are processed in blocks of ~12: the block's
//! transformed inputs and products stay in L2, the products run on the direct path's register
//! tiles (`direct::row_tiles`), and the output transform adds the bias and applies the ReLU.
//! On 7×7 latents (4 × 4 tiles, 64 computed outputs for 49) the multiplications fall 1.7×, on
//! 8×8 ones 2.25×. With the transforms' ±1 and ½ coefficients the rounding stays within a few
//! ulps of the direct sums.

use rayon::prelude::*;

use crate::direct::{self, Epilogue, Packed, Padded};

/// Whether the convolution is one Winograd F(2×2, 3×3) computes: 3×3, stride 1, padding 1.
pub(crate) fn applies(k: usize, stride: usize, padding: usize) -> bool {
    k == 3 && stride == 1 && padding == 1
}

/// A 3×3 kernel transformed to the 16 products: `U[ξ·4+ν] = (G g Gᵀ)[ξ][ν]`, each packed as
/// a one-tap `[O/32][C][32]` kernel.
pub(crate) struct Transformed {
    u: Vec<Packed>,
    c: usize,
    o: usize,
}

impl Transformed {
    /// From `w` `[O, C, 3, 3]` (a convolution from `C` to `O` channels).
    pub fn forward(w: &[f32], o: usize, c: usize) -> Self {
        Self::new(o, c, |oi, ci, a, b| w[((oi * c + ci) * 3 + a) * 3 + b])
    }

    /// The kernel of the input gradient of a 3×3 stride-1 padding-1 convolution with `w`
    /// `[O, C, 3, 3]`: from `O` to `C` channels, `w'[c, o, a, b] = w[o, c, 2 − a, 2 − b]`.
    pub fn input_grad(w: &[f32], o: usize, c: usize) -> Self {
        Self::new(c, o, |ci, oi, a, b| {
            w[((oi * c + ci) * 3 + (2 - a)) * 3 + (2 - b)]
        })
    }

    /// `get(out, in, a, b)` for `o` outputs (a multiple of 32) and `c` inputs.
    fn new(o: usize, c: usize, get: impl Fn(usize, usize, usize, usize) -> f32 + Sync) -> Self {
        const OB: usize = direct::OB;
        assert_eq!(o % OB, 0, "Winograd: outputs in 32s");
        // One task per input channel: the 9 taps as vectors over the outputs, G g Gᵀ on those
        // vectors, then each of the 16 results scattered to its [O/32][C][32] packing.
        let per_channel: Vec<[Vec<f32>; 16]> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let g: [Vec<f32>; 9] =
                    std::array::from_fn(|t| (0..o).map(|oi| get(oi, ci, t / 3, t % 3)).collect());
                let lin = |p: f32, q: f32, r: f32, x: &[f32], y: &[f32], z: &[f32]| -> Vec<f32> {
                    x.iter()
                        .zip(y)
                        .zip(z)
                        .map(|((x, y), z)| p * x + q * y + r * z)
                        .collect()
                };
                // Rows of G g: 4 × 3 vectors.
                let gg: [[Vec<f32>; 3]; 4] = [
                    std::array::from_fn(|j| g[j].clone()),
                    std::array::from_fn(|j| lin(0.5, 0.5, 0.5, &g[j], &g[3 + j], &g[6 + j])),
                    std::array::from_fn(|j| lin(0.5, -0.5, 0.5, &g[j], &g[3 + j], &g[6 + j])),
                    std::array::from_fn(|j| g[6 + j].clone()),
                ];
                std::array::from_fn(|e| {
                    let r = &gg[e / 4];
                    match e % 4 {
                        0 => r[0].clone(),
                        1 => lin(0.5, 0.5, 0.5, &r[0], &r[1], &r[2]),
                        2 => lin(0.5, -0.5, 0.5, &r[0], &r[1], &r[2]),
                        _ => r[2].clone(),
                    }
                })
            })
            .collect();
        let u = (0..16)
            .map(|e| {
                let mut data = vec![0f32; o * c];
                for (ob, block) in data.chunks_exact_mut(c * OB).enumerate() {
                    for (ci, lanes) in block.chunks_exact_mut(OB).enumerate() {
                        lanes.copy_from_slice(&per_channel[ci][e][ob * OB..(ob + 1) * OB]);
                    }
                }
                Packed::from_raw(data, 1, c, o)
            })
            .collect();
        Self { u, c, o }
    }
}

/// `y [B, H, W, O]` (channel-last) = the 3×3 convolution of `x` (padded by 1, `H = Hp − 2`)
/// with `w`, then the epilogue.
pub(crate) fn conv(x: &Padded, w: &Transformed, ep: Epilogue) -> Vec<f32> {
    assert!(direct::available(), "Winograd: the CPU lacks AVX-512F");
    assert_eq!(x.pad, 1, "Winograd: the input must be padded by 1");
    let (c, o) = (w.c, w.o);
    assert_eq!(x.channels, c, "Winograd: input channels");
    assert!(c % 16 == 0 && o % 16 == 0, "Winograd: channels in 16s");
    if let Some(b) = ep.bias {
        assert_eq!(b.len(), o, "Winograd: bias length");
    }
    let (h, wd) = (x.hp - 2, x.wp - 2);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let tile_rows = x.batch * th;
    // Tile rows per block: about 12 tiles, as many as one register tile takes.
    let per_block = (12 / tw).max(1);
    // Output rows of tile row r: 2 (1 for the last of an odd height).
    let out_rows = |r: usize| if 2 * (r % th) + 1 < h { 2 } else { 1 };
    let mut y = crate::layout::zeros(x.batch * h * wd * o);
    for m in [ep.mask, ep.add].into_iter().flatten() {
        assert_eq!(m.len(), y.len(), "Winograd: mask/residual length");
    }
    let mut blocks: Vec<(usize, Epilogue, &mut [f32])> = Vec::new();
    let (mut rest, mut start): (&mut [f32], usize) = (&mut y, 0);
    for r0 in (0..tile_rows).step_by(per_block) {
        let r1 = (r0 + per_block).min(tile_rows);
        let n: usize = (r0..r1).map(out_rows).sum::<usize>() * wd * o;
        let (head, tail) = rest.split_at_mut(n);
        blocks.push((r0, ep.part(start, n), head));
        (rest, start) = (tail, start + n);
    }
    // Scratch for the transformed inputs and the products, one pair per worker: every value a
    // block uses is written before it is read.
    let scratch = || (Vec::<f32>::new(), Vec::<f32>::new());
    blocks
        .into_par_iter()
        .for_each_init(scratch, |(v, m), (r0, ep, out)| {
            let r1 = (r0 + per_block).min(tile_rows);
            let nt = (r1 - r0) * tw;
            v.resize(16 * nt * c, 0.0);
            m.resize(16 * nt * o, 0.0);
            let tiles: Vec<(usize, usize, usize)> = (r0..r1)
                .flat_map(|r| (0..tw).map(move |j| (r / th, r % th, j)))
                .collect();
            // SAFETY: AVX-512F is present (asserted above); every read of `x` is inside the padded
            // image (checked per pixel), `v` has 16·nt·c values and c is a multiple of 16.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                for (t, &(b, i, j)) in tiles.iter().enumerate() {
                    kernels::input_tile(x, b, 2 * i, 2 * j, v.as_mut_ptr(), nt * c, t);
                }
            }
            for e in 0..16 {
                direct::row_tiles(
                    &v[e * nt * c..(e + 1) * nt * c],
                    0,
                    c,
                    &[0],
                    &w.u[e],
                    &mut m[e * nt * o..(e + 1) * nt * o],
                    0,
                    o,
                    nt,
                    Epilogue::NONE,
                );
            }
            // This block's output starts at output row 2·i0 of image b0.
            let first_row = tiles[0].0 * h + 2 * tiles[0].1;
            let bias = ep.bias.map_or(std::ptr::null(), |b| b.as_ptr());
            let mask = ep.mask.map_or(std::ptr::null(), |m| m.as_ptr());
            let add = ep.add.map_or(std::ptr::null(), |m| m.as_ptr());
            for (t, &(b, i, j)) in tiles.iter().enumerate() {
                let rows = (h - 2 * i).min(2);
                let cols = (wd - 2 * j).min(2);
                let at = ((b * h + 2 * i - first_row) * wd + 2 * j) * o;
                assert!(at + ((rows - 1) * wd + cols - 1) * o + o <= out.len());
                // SAFETY: AVX-512F is present; `m` holds 16·nt·o values; the tile writes
                // out[at + (r·wd + q)·o + 0..o] for r < rows, q < cols (asserted above) and reads the
                // mask (as long as `out`) at the same offsets; `bias` (when not null) has `o` values.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    kernels::output_tile(
                        m.as_ptr(),
                        nt * o,
                        t,
                        o,
                        out.as_mut_ptr().add(at),
                        wd * o,
                        (rows, cols),
                        bias,
                        ep.relu,
                        [mask, add].map(|p| if p.is_null() { p } else { p.add(at) }),
                    );
                }
            }
        });
    y
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;

    use crate::direct::Padded;

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
}
