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

use super::buffer::zeros;
use super::direct::{self, Epilogue, Packed, Padded};
use super::scalar::{self, TileEpilogue};
use super::Isa;

/// Whether the convolution is one Winograd F(2×2, 3×3) computes: 3×3, stride 1, padding 1.
pub fn applies(k: usize, stride: usize, padding: usize) -> bool {
    k == 3 && stride == 1 && padding == 1
}

/// A 3×3 kernel transformed to the 16 products: `U[ξ·4+ν] = (G g Gᵀ)[ξ][ν]`, each packed as
/// a one-tap `[O/32][C][32]` kernel.
pub struct Transformed {
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
pub fn conv(x: &Padded, w: &Transformed, ep: Epilogue, isa: Isa) -> Vec<f32> {
    assert!(isa.runs_here(), "Winograd: the CPU lacks {isa:?}");
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
    let mut y = zeros(x.batch * h * wd * o);
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
            #[cfg(target_arch = "x86_64")]
            if isa >= Isa::Avx512 {
                // SAFETY: AVX-512F is present (asserted above); every read of `x` is inside the
                // padded image (checked per pixel), `v` has 16·nt·c values and c is a multiple
                // of 16.
                unsafe {
                    for (t, &(b, i, j)) in tiles.iter().enumerate() {
                        super::avx512::input_tile(x, b, 2 * i, 2 * j, v.as_mut_ptr(), nt * c, t);
                    }
                }
            }
            if isa < Isa::Avx512 {
                for (t, &(b, i, j)) in tiles.iter().enumerate() {
                    scalar::winograd_input_tile(x, b, 2 * i, 2 * j, v, nt * c, t);
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
                    isa,
                );
            }
            // This block's output starts at output row 2·i0 of image b0.
            let first_row = tiles[0].0 * h + 2 * tiles[0].1;
            for (t, &(b, i, j)) in tiles.iter().enumerate() {
                let rows = (h - 2 * i).min(2);
                let cols = (wd - 2 * j).min(2);
                let at = ((b * h + 2 * i - first_row) * wd + 2 * j) * o;
                assert!(at + ((rows - 1) * wd + cols - 1) * o + o <= out.len());
                #[cfg(target_arch = "x86_64")]
                if isa >= Isa::Avx512 {
                    let bias = ep.bias.map_or(std::ptr::null(), |b| b.as_ptr());
                    let [mask, add] =
                        [ep.mask, ep.add].map(|m| m.map_or(std::ptr::null(), |m| m[at..].as_ptr()));
                    // SAFETY: AVX-512F is present; `m` holds 16·nt·o values; the tile writes
                    // out[at + (r·wd + q)·o + 0..o] for r < rows, q < cols (asserted above) and
                    // reads the mask and the residual (as long as `out`) at the same offsets;
                    // `bias` (when not null) has `o` values.
                    unsafe {
                        super::avx512::output_tile(
                            m.as_ptr(),
                            nt * o,
                            t,
                            o,
                            out.as_mut_ptr().add(at),
                            wd * o,
                            (rows, cols),
                            bias,
                            ep.relu,
                            [mask, add],
                        );
                    }
                    continue;
                }
                scalar::winograd_output_tile(
                    m,
                    nt * o,
                    t,
                    o,
                    &mut out[at..],
                    wd * o,
                    (rows, cols),
                    TileEpilogue {
                        bias: ep.bias,
                        relu: ep.relu,
                        mask: ep.mask.map(|m| &m[at..]),
                        add: ep.add.map(|a| &a[at..]),
                    },
                );
            }
        });
    y
}
