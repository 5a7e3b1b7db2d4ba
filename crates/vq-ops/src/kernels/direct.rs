//! Direct (im2col-free) convolutions over channel-last (`[B, H, W, C]`) zero-padded
//! activations, on the register tiles of [`super::avx512`] or their portable versions in
//! [`super::scalar`]: the forward pass, the input gradient of a stride-1
//! convolution (a convolution of the padded output gradient with the flipped kernel) and the
//! kernel gradient.
//!
//! The GEMM path (`ops/conv.rs`) writes a column matrix nine times the size of the activations for a
//! 3×3 kernel and reads it back; on the paper's 7×7 latents that memory traffic cost more than
//! the arithmetic. Here each register tile (`R` output positions of one row × 32 output
//! channels, or `R` input channels × 32 output channels for the kernel gradient) reads the
//! activations where they are, so the only extra passes are one layout change in and out.
//! `ops::conv` uses them for convolutions whose input and output channel counts are multiples of
//! 32 when the CPU has AVX-512F ([`fast`]); everything else takes the GEMM path.

use rayon::prelude::*;

use super::buffer::zeros;
use super::scalar::{self, TileEpilogue};
use super::Isa;

/// Output channels per register tile (two 16-lane vectors).
pub const OB: usize = 32;
/// Largest number of positions (forward) or input channels (kernel gradient) per tile: `R·2`
/// accumulators, 2 kernel vectors and a broadcast fit the 32 vector registers.
const MAX_R: usize = 14;
/// Zero elements after each padded buffer: no tile reads past its end.
const SLACK: usize = 64;

/// Whether the direct kernels are the fast path on this CPU: it has AVX-512F. Elsewhere they
/// run on the portable tiles, correct but slower than GEMM.
pub fn fast() -> bool {
    Isa::detected() >= Isa::Avx512
}

/// How [`Padded::from_nhwc`] transforms each value.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// As it is.
    Copy,
    /// `max(v, 0)` (a ReLU before the convolution).
    Relu,
    /// `v · [m > 0]` for the value `m` at the same place (the output gradient of a
    /// convolution followed by a ReLU, masked by the ReLU's output `m`).
    MaskedBy(&'a [f32]),
}

/// A channel-last activation `[B, Hp, Wp, C]` zero-padded by `pad` on each side.
pub struct Padded {
    pub data: Vec<f32>,
    pub batch: usize,
    pub hp: usize,
    pub wp: usize,
    pub channels: usize,
    pub pad: usize,
}

impl Padded {
    /// `x` `[B, H, W, C]` (channel-last) padded by `pad`, each value transformed by `src`.
    pub fn from_nhwc(
        x: &[f32],
        (b, h, w, c): (usize, usize, usize, usize),
        pad: usize,
        src: Source,
    ) -> Self {
        assert_eq!(x.len(), b * h * w * c, "padded copy: input length");
        if let Source::MaskedBy(m) = src {
            assert_eq!(m.len(), x.len(), "padded copy: mask length");
        }
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let mut data = zeros(b * hp * wp * c + SLACK);
        data[..b * hp * wp * c]
            .par_chunks_mut(hp * wp * c)
            .enumerate()
            .for_each(|(bi, img)| {
                for y in 0..h {
                    let range = (bi * h + y) * w * c..(bi * h + y + 1) * w * c;
                    let row = &mut img[((y + pad) * wp + pad) * c..][..w * c];
                    let xs = &x[range.clone()];
                    match src {
                        Source::Copy => row.copy_from_slice(xs),
                        Source::Relu => {
                            for (d, v) in row.iter_mut().zip(xs) {
                                *d = v.max(0.0);
                            }
                        }
                        Source::MaskedBy(m) => {
                            for ((d, v), m) in row.iter_mut().zip(xs).zip(&m[range]) {
                                *d = if *m > 0.0 { *v } else { 0.0 };
                            }
                        }
                    }
                }
            });
        Self {
            data,
            batch: b,
            hp,
            wp,
            channels: c,
            pad,
        }
    }

    /// Offset of position `(b, y, x)` of the padded grid.
    fn at(&self, b: usize, y: usize, x: usize) -> usize {
        ((b * self.hp + y) * self.wp + x) * self.channels
    }

    /// Per-channel sums over the unpadded positions (a bias gradient).
    pub fn channel_sums(&self) -> Vec<f32> {
        let (c, pad) = (self.channels, self.pad);
        let (h, w) = (self.hp - 2 * pad, self.wp - 2 * pad);
        let img = self.hp * self.wp * c;
        let partial: Vec<Vec<f64>> = self.data[..self.batch * img]
            .par_chunks(img)
            .map(|im| {
                let mut acc = vec![0f64; c];
                for y in 0..h {
                    let row = &im[((y + pad) * self.wp + pad) * c..][..w * c];
                    for px in row.chunks_exact(c) {
                        for (a, v) in acc.iter_mut().zip(px) {
                            *a += f64::from(*v);
                        }
                    }
                }
                acc
            })
            .collect();
        (0..c)
            .map(|ci| partial.iter().map(|p| p[ci]).sum::<f64>() as f32)
            .collect()
    }
}

/// What a forward tile does to its sums before storing them: `+ bias`, `+ add` (a residual
/// laid out like the output), then `max(·, 0)`, then `· [mask > 0]` (the backward pass of a
/// ReLU on the input whose gradient this is; `mask` is laid out like the output).
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub add: Option<&'a [f32]>,
    pub relu: bool,
    pub mask: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    /// Plain sums.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        add: None,
        relu: false,
        mask: None,
    };

    /// This epilogue for the part of the output that starts at `start` and has `len` values.
    pub fn part(self, start: usize, len: usize) -> Epilogue<'a> {
        Epilogue {
            add: self.add.map(|a| &a[start..start + len]),
            mask: self.mask.map(|m| &m[start..start + len]),
            ..self
        }
    }

    /// `v` (an output value at `i`, bias included) after the residual, the ReLU and the mask.
    fn scalar(&self, v: f32, i: usize) -> f32 {
        let v = v + self.add.map_or(0.0, |a| a[i]);
        let v = if self.relu { v.max(0.0) } else { v };
        match self.mask {
            Some(m) if m[i] <= 0.0 => 0.0,
            _ => v,
        }
    }
}

/// A kernel packed for the tiles: `[O/32][taps][C][32]`, as a convolution with `C` inputs,
/// `O` outputs and a list of taps.
pub struct Packed {
    data: Vec<f32>,
    taps: usize,
    c: usize,
    o: usize,
}

impl Packed {
    /// From a convolution kernel `w` `[O, C, k, k]` (taps in row-major `(ky, kx)` order).
    pub fn forward(w: &[f32], o: usize, c: usize, k: usize) -> Self {
        Self::pack(o, c, k * k, |oi, ci, t| w[(oi * c + ci) * k * k + t])
    }

    /// Packs `get(out, in, tap)` for `o` outputs (a multiple of 32) and `c` inputs.
    pub fn pack(o: usize, c: usize, taps: usize, get: impl Fn(usize, usize, usize) -> f32) -> Self {
        assert_eq!(o % OB, 0, "packed kernels need a multiple of {OB} outputs");
        let mut data = vec![0f32; o * c * taps];
        if data.is_empty() {
            return Self { data, taps, c, o };
        }
        for (ob, block) in data.chunks_exact_mut(taps * c * OB).enumerate() {
            for (tap, per_tap) in block.chunks_exact_mut(c * OB).enumerate() {
                for (ci, lanes) in per_tap.chunks_exact_mut(OB).enumerate() {
                    for (lane, v) in lanes.iter_mut().enumerate() {
                        *v = get(ob * OB + lane, ci, tap);
                    }
                }
            }
        }
        Self { data, taps, c, o }
    }

    /// From data already laid out as `[O/32][taps][C][32]`.
    pub fn from_raw(data: Vec<f32>, taps: usize, c: usize, o: usize) -> Self {
        assert_eq!(data.len(), o * c * taps, "packed kernel: length");
        assert_eq!(o % OB, 0, "packed kernels need a multiple of {OB} outputs");
        Self { data, taps, c, o }
    }

    /// The weights of output block `ob`: `[taps][C][32]`.
    fn block(&self, ob: usize) -> &[f32] {
        let n = self.taps * self.c * OB;
        &self.data[ob * n..(ob + 1) * n]
    }
}

/// Fills `n` output positions of one output row with every 32-channel block of `w`: position
/// `j` reads the input at `x[base + j·xps + taps[t] + ci]` and is written at
/// `out[first + j·yps + ob·32 + 0..32]`.
///
/// # Panics
/// If any of those reads or writes would leave `x` or `out`.
#[allow(clippy::too_many_arguments)]
pub fn row_tiles(
    x: &[f32],
    base: usize,
    xps: usize,
    taps: &[usize],
    w: &Packed,
    out: &mut [f32],
    first: usize,
    yps: usize,
    n: usize,
    ep: Epilogue,
    isa: Isa,
) {
    assert_eq!(taps.len(), w.taps, "direct conv: taps");
    if n == 0 {
        return;
    }
    assert!(
        first + (n - 1) * yps + w.o <= out.len(),
        "direct conv: output write out of range"
    );
    if let Some(b) = ep.bias {
        assert_eq!(b.len(), w.o, "direct conv: bias length");
    }
    for m in [ep.mask, ep.add].into_iter().flatten() {
        assert_eq!(m.len(), out.len(), "direct conv: mask/residual length");
    }
    if taps.is_empty() {
        // No kernel tap reaches these positions: the sum is 0.
        for j in 0..n {
            let at = first + j * yps;
            for (o, d) in out[at..at + w.o].iter_mut().enumerate() {
                *d = ep.scalar(ep.bias.map_or(0.0, |b| b[o]), at + o);
            }
        }
        return;
    }
    let max_tap = taps.iter().copied().max().unwrap_or(0);
    assert!(
        base + (n - 1) * xps + max_tap + w.c <= x.len(),
        "direct conv: input read out of range"
    );
    for ob in 0..w.o / OB {
        let wb = w.block(ob);
        for (j0, r) in chunks(n, MAX_R) {
            let at = first + j0 * yps + ob * OB;
            #[cfg(target_arch = "x86_64")]
            if isa >= Isa::Avx512 {
                assert!(
                    Isa::Avx512.runs_here(),
                    "direct conv: the CPU lacks AVX-512F"
                );
                let bias = ep.bias.map_or(std::ptr::null(), |b| b[ob * OB..].as_ptr());
                let [mask, add] =
                    [ep.mask, ep.add].map(|m| m.map_or(std::ptr::null(), |m| m[at..].as_ptr()));
                // SAFETY: AVX-512F is present; the tile reads x[base + (j0 + j)·xps + taps[t] +
                // ci] for j < r, ci < c (inside `x` by the assertion above), wb[(t·c + ci)·32 +
                // 0..32] (inside the block), bias[0..32] when not null (inside the asserted
                // bias), the mask and the residual at the offsets it writes (both as long as
                // `out`), and writes out[at + j·yps + 0..32] (inside `out`, asserted).
                unsafe {
                    super::avx512::fwd_tile(
                        r,
                        x.as_ptr().add(base + j0 * xps),
                        xps,
                        taps,
                        w.c,
                        wb.as_ptr(),
                        out.as_mut_ptr().add(at),
                        yps,
                        bias,
                        ep.relu,
                        [mask, add],
                    );
                }
                continue;
            }
            scalar::fwd_tile(
                r,
                &x[base + j0 * xps..],
                xps,
                taps,
                w.c,
                wb,
                &mut out[at..],
                yps,
                TileEpilogue {
                    bias: ep.bias.map(|b| &b[ob * OB..]),
                    relu: ep.relu,
                    mask: ep.mask.map(|m| &m[at..]),
                    add: ep.add.map(|a| &a[at..]),
                },
            );
        }
    }
}

/// Balanced chunks of at most `max` covering `0..n`: `(start, len)`.
fn chunks(n: usize, max: usize) -> Vec<(usize, usize)> {
    let count = n.div_ceil(max).max(1);
    (0..count)
        .map(|i| (i * n / count, (i + 1) * n / count - i * n / count))
        .filter(|&(_, len)| len > 0)
        .collect()
}

/// Convolution of the padded channel-last `x` with `w` (`k × k`) at `stride`, output
/// `[B, Ho, Wo, O]` channel-last, where `Ho = (Hp − k)/stride + 1` (the padding is already in
/// `x`).
pub fn conv(
    x: &Padded,
    w: &Packed,
    k: usize,
    stride: usize,
    ep: Epilogue,
    isa: Isa,
) -> (Vec<f32>, usize, usize) {
    assert_eq!(
        (x.channels, w.taps),
        (w.c, k * k),
        "direct conv: kernel shape"
    );
    let ho = (x.hp - k) / stride + 1;
    let wo = (x.wp - k) / stride + 1;
    let taps: Vec<usize> = (0..k * k).map(|t| x.at(0, t / k, t % k)).collect();
    let o = w.o;
    let mut y = zeros(x.batch * ho * wo * o);
    y.par_chunks_mut(wo * o).enumerate().for_each(|(row, out)| {
        let (b, oy) = (row / ho, row % ho);
        let base = x.at(b, oy * stride, 0);
        row_tiles(
            &x.data,
            base,
            stride * x.channels,
            &taps,
            w,
            out,
            0,
            o,
            wo,
            ep.part(row * wo * o, wo * o),
            isa,
        );
    });
    (y, ho, wo)
}

/// Taps of kernel row/column class `r` of the input gradient at `stride`: kernel indices
/// `r, r + s, r + 2s, …` below `k`.
fn class_taps(r: usize, k: usize, s: usize) -> usize {
    if r < k {
        (k - r).div_ceil(s)
    } else {
        0
    }
}

/// The smallest padding of the output gradient `[B, Ho, Wo, O]` that [`input_grad`] needs for an
/// input of side `h` (conv kernel `k`, stride `s`, padding `p`).
pub fn input_grad_pad(k: usize, s: usize, p: usize, h: usize, ho: usize) -> usize {
    let top = (0..s.min(h))
        .map(|iy| (class_taps((iy + p) % s, k, s).saturating_sub(1)).saturating_sub((iy + p) / s))
        .max()
        .unwrap_or(0);
    let bottom = ((h - 1 + p) / s + 1).saturating_sub(ho);
    top.max(bottom)
}

/// The input gradient `dX [B, H, W, C]` (channel-last) of `y = conv(x, w, stride s, padding p)`
/// with `w` `[O, C, k, k]` and `x` of side `H × W`, from the output gradient `dy` padded by at
/// least [`input_grad_pad`] — equally the transposed convolution of `dy` with `w`
/// `[C_in = O, C_out = C, k, k]`:
/// `dX[b, iy, ix, c] = Σ dy[b, oy, ox, o] · w[o, c, ky, kx]` over `oy·s + ky − p = iy`,
/// `ox·s + kx − p = ix`. Split by the residues of `iy + p` and `ix + p` modulo `s`, each class of
/// input positions is a small dense convolution of `dy` (a 2 × 2 one for k = 4, s = 2).
#[allow(clippy::too_many_arguments)]
pub fn input_grad(
    dy: &Padded,
    w: &[f32],
    c: usize,
    k: usize,
    s: usize,
    p: usize,
    h: usize,
    wd: usize,
    ep: Epilogue,
    isa: Isa,
) -> Vec<f32> {
    let o = dy.channels;
    let pad = dy.pad;
    assert!(
        pad >= input_grad_pad(k, s, p, h, dy.hp - 2 * pad)
            && pad >= input_grad_pad(k, s, p, wd, dy.wp - 2 * pad),
        "input gradient: output gradient padded by {pad}, too little"
    );
    // Per class (ry, rx): the tap offsets (input position (iy, ix) reads dy at
    // (qy − ty, qx − tx) with (qy, qx) = ((iy+p)/s, (ix+p)/s)) and the packed kernel
    // w[o, c, ry + s·ty, rx + s·tx].
    let classes: Vec<(Vec<usize>, Packed)> = (0..s * s)
        .map(|cls| {
            let (ry, rx) = (cls / s, cls % s);
            let tl: Vec<(usize, usize)> = (0..class_taps(ry, k, s))
                .flat_map(|ty| (0..class_taps(rx, k, s)).map(move |tx| (ty, tx)))
                .collect();
            // Relative to the window's top-left corner (qy + pad + 1 − Ty, qx + pad + 1 − Tx).
            let (ty_n, tx_n) = (class_taps(ry, k, s), class_taps(rx, k, s));
            let offsets = tl
                .iter()
                .map(|&(ty, tx)| dy.at(0, ty_n - 1 - ty, tx_n - 1 - tx))
                .collect();
            let packed = Packed::pack(c, o, tl.len(), |ci, oi, t| {
                let (ty, tx) = tl[t];
                w[((oi * c + ci) * k + ry + s * ty) * k + rx + s * tx]
            });
            (offsets, packed)
        })
        .collect();
    let mut dx = zeros(dy.batch * h * wd * c);
    dx.par_chunks_mut(wd * c)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, iy) = (row / h, row % h);
            let (ry, qy) = ((iy + p) % s, (iy + p) / s);
            for rx in 0..s {
                let ix0 = (rx + s - p % s) % s;
                if ix0 >= wd {
                    continue;
                }
                let n = (wd - 1 - ix0) / s + 1;
                let (offsets, packed) = &classes[ry * s + rx];
                let (ty_n, tx_n) = (class_taps(ry, k, s), class_taps(rx, k, s));
                // In range: the padding covers the `Ty − 1 − qy` rows above (input_grad_pad);
                // with no taps nothing is read.
                let base = if ty_n == 0 || tx_n == 0 {
                    0
                } else {
                    dy.at(b, qy + pad + 1 - ty_n, (ix0 + p) / s + pad + 1 - tx_n)
                };
                row_tiles(
                    &dy.data,
                    base,
                    o,
                    offsets,
                    packed,
                    out,
                    ix0 * c,
                    s * c,
                    n,
                    ep.part(row * wd * c, wd * c),
                    isa,
                );
            }
        });
    dx
}

/// The kernel gradient `dW [O, C, k, k]` of `y = conv(x, w, stride)`, from the padded input `x`
/// and the output gradient `dy` (channel-last, padded by `dy.pad` which is skipped):
/// `dW[o, c, ky, kx] = Σ_{b,oy,ox} x[b, oy·s+ky, ox·s+kx, c] · dy[b, oy, ox, o]`.
///
/// Tiles of up to 6 input channels × 64 output channels (14 × 32 when `O` is not a multiple of
/// 64) keep their accumulators in registers over all output positions.
pub fn kernel_grad(x: &Padded, dy: &Padded, k: usize, stride: usize, isa: Isa) -> Vec<f32> {
    assert!(isa.runs_here(), "direct conv: the CPU lacks {isa:?}");
    let (c, o) = (x.channels, dy.channels);
    assert_eq!(o % OB, 0, "kernel gradient: outputs");
    let (ho, wo) = (dy.hp - 2 * dy.pad, dy.wp - 2 * dy.pad);
    assert_eq!(
        ho,
        (x.hp - k) / stride + 1,
        "kernel gradient: output height"
    );
    assert_eq!(wo, (x.wp - k) / stride + 1, "kernel gradient: output width");
    assert!(
        x.at(
            x.batch - 1,
            (ho - 1) * stride + k - 1,
            (wo - 1) * stride + k - 1
        ) + c
            <= x.data.len()
            && dy.at(dy.batch - 1, dy.pad + ho - 1, dy.pad + wo - 1) + o <= dy.data.len()
    );
    // Output channels per tile and the largest input-channel count per tile.
    let (width, max_r) = if o % (2 * OB) == 0 {
        (2 * OB, 6)
    } else {
        (OB, MAX_R)
    };
    let cchunks = chunks(c, max_r);
    // Tasks of (tap, output block, group of input-channel tiles); at least ~8 per thread.
    let units = k * k * (o / width) * cchunks.len();
    let per_group = (units / (8 * rayon::current_num_threads().max(1))).clamp(1, cchunks.len());
    let groups: Vec<&[(usize, usize)]> = cchunks.chunks(per_group).collect();
    let n_groups = groups.len();
    let tasks: Vec<(usize, usize, usize)> = (0..k * k)
        .flat_map(|t| (0..o / width).flat_map(move |ob| (0..n_groups).map(move |g| (t, ob, g))))
        .collect();
    // Output rows per block (~512 positions): the block's input and output-gradient rows stay
    // in L2 while every channel tile of the group passes over them (a whole batch of output
    // gradients, 64 × 7 × 7 × 64 floats, does not).
    let rows = x.batch * ho;
    let block_rows = (512 / wo).clamp(1, rows);
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(t, ob, g)| {
            let group = groups[g];
            let mut acc = vec![0f32; group.len() * max_r * width];
            let (ky, kx) = (t / k, t % k);
            for r0 in (0..rows).step_by(block_rows) {
                let r1 = (r0 + block_rows).min(rows);
                for (i, &(c0, r)) in group.iter().enumerate() {
                    let tile = &mut acc[i * max_r * width..(i + 1) * max_r * width];
                    let xo = x.at(0, ky, kx) + c0;
                    let xs = [x.at(1, 0, 0), stride * x.wp * c, stride * c];
                    let go = dy.at(0, dy.pad, dy.pad) + ob * width;
                    let dys = [dy.at(1, 0, 0), dy.wp * o, o];
                    #[cfg(target_arch = "x86_64")]
                    if isa >= Isa::Avx512 {
                        // SAFETY: AVX-512F is present (asserted above); for every output
                        // position (b, oy, ox) of rows r0..r1 the tile reads x[at(b, oy·s+ky,
                        // ox·s+kx) + c0 + j] (j < r ≤ c − c0) and dy[at(b, pad+oy, pad+ox) +
                        // ob·width + 0..width], inside the buffers by the assertion above; it
                        // reads and writes tile[j·width + 0..width], r·width ≤ tile.len().
                        unsafe {
                            super::avx512::grad_tile(
                                width,
                                r,
                                x.data.as_ptr().add(xo),
                                xs,
                                dy.data.as_ptr().add(go),
                                dys,
                                [r0, r1, ho, wo],
                                tile.as_mut_ptr(),
                            );
                        }
                        continue;
                    }
                    scalar::grad_tile(
                        width,
                        r,
                        &x.data[xo..],
                        xs,
                        &dy.data[go..],
                        dys,
                        [r0, r1, ho, wo],
                        tile,
                    );
                }
            }
            acc
        })
        .collect();
    let mut dw = vec![0f32; o * c * k * k];
    for (&(t, ob, g), acc) in tasks.iter().zip(&results) {
        for (i, &(c0, r)) in groups[g].iter().enumerate() {
            let tile = &acc[i * max_r * width..];
            for j in 0..r {
                for lane in 0..width {
                    dw[((ob * width + lane) * c + c0 + j) * k * k + t] = tile[j * width + lane];
                }
            }
        }
    }
    dw
}
