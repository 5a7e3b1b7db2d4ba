//! CPU convolutions for training, each one custom op (bias included) that computes the input,
//! kernel and bias gradients in its backward pass, and only those that are needed.
//!
//! Two paths: when the CPU has AVX-512F and both channel counts are multiples of 32 (every
//! layer of the paper's model but the first and the last), the direct kernels of `kernels/direct.rs`
//! over channel-last padded activations; otherwise GEMM, `conv2d = W · im2col(x)` and
//! `conv_transpose2d = col2im(Wᵀ · x)`, whose backward pass takes two GEMMs and one
//! `im2col`/`col2im`.
//!
//! candle's CPU `conv2d` input-gradient and `conv_transpose2d` run through slow direct kernels,
//! and composing the GEMM from candle ops puts the large column matrix into the autograd graph
//! (a zero fill and an add per backward node). On other devices the layers use candle's own
//! convolutions.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32 as contiguous, host_f32 as host};
use crate::kernels::buffer::transpose;
use crate::kernels::gemm::{matmul, threads};
use crate::kernels::{direct, winograd, Isa};

/// Geometry of a square-kernel convolution over `[B, C, H, W]` inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Geometry {
    /// Output height of the convolution.
    pub fn out_h(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Output width of the convolution.
    pub fn out_w(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// `[C·k·k, B·H_out·W_out]`.
    pub fn cols_shape(&self) -> (usize, usize) {
        (
            self.channels * self.kernel * self.kernel,
            self.batch * self.out_h() * self.out_w(),
        )
    }
    fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }
}

/// The output positions `lo..hi` whose input position `o·s + kk − p` lies in `0..inp`.
fn valid_range(out: usize, inp: usize, s: usize, p: usize, kk: usize) -> (usize, usize) {
    let lo = if p > kk { (p - kk).div_ceil(s) } else { 0 };
    let hi = if inp + p > kk {
        ((inp - 1 + p - kk) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

fn im2col(g: &Geometry, x: &[f32]) -> Vec<f32> {
    let (rows, cols) = g.cols_shape();
    let (ho, wo, k, s, p) = (g.out_h(), g.out_w(), g.kernel, g.stride, g.padding);
    let (h, w) = (g.height, g.width);
    let mut out = crate::kernels::buffer::zeros(rows * cols);
    out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let (y_lo, y_hi) = valid_range(ho, h, s, p, ky);
        let (x_lo, x_hi) = valid_range(wo, w, s, p, kx);
        for b in 0..g.batch {
            let plane = &x[(b * g.channels + c) * h * w..(b * g.channels + c + 1) * h * w];
            for oy in y_lo..y_hi {
                let iy = oy * s + ky - p;
                let dst = &mut row[(b * ho + oy) * wo + x_lo..(b * ho + oy) * wo + x_hi];
                let src = &plane[iy * w..(iy + 1) * w];
                if s == 1 {
                    let ix0 = x_lo + kx - p;
                    dst.copy_from_slice(&src[ix0..ix0 + dst.len()]);
                } else {
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = src[(x_lo + i) * s + kx - p];
                    }
                }
            }
        }
    });
    out
}

fn col2im(g: &Geometry, cols_data: &[f32]) -> Vec<f32> {
    let (_, cols) = g.cols_shape();
    let (ho, wo, k, s, p) = (g.out_h(), g.out_w(), g.kernel, g.stride, g.padding);
    let (h, w, c_all) = (g.height, g.width, g.channels);
    let mut out = crate::kernels::buffer::zeros(g.input_len());
    // One task per (image, channel) plane: it gathers every tap that lands in it.
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane_idx, plane)| {
            let (b, c) = (plane_idx / c_all, plane_idx % c_all);
            for ky in 0..k {
                let (y_lo, y_hi) = valid_range(ho, h, s, p, ky);
                for kx in 0..k {
                    let (x_lo, x_hi) = valid_range(wo, w, s, p, kx);
                    let r = (c * k + ky) * k + kx;
                    let row = &cols_data[r * cols + b * ho * wo..r * cols + (b + 1) * ho * wo];
                    for oy in y_lo..y_hi {
                        let iy = oy * s + ky - p;
                        let src = &row[oy * wo + x_lo..oy * wo + x_hi];
                        let dst = &mut plane[iy * w..(iy + 1) * w];
                        if s == 1 {
                            let ix0 = x_lo + kx - p;
                            for (d, v) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                                *d += v;
                            }
                        } else {
                            for (i, v) in src.iter().enumerate() {
                                dst[(x_lo + i) * s + kx - p] += v;
                            }
                        }
                    }
                }
            }
        });
    out
}

/// GEMM threads for each of two equal-sized products run side by side (`both`), or for one.
fn split_threads(both: bool) -> usize {
    if both {
        (threads() / 2).max(1)
    } else {
        threads()
    }
}

/// `a · bᵀ` for `a` `[m, k]` and the large `b` `[n, k]` (a kernel gradient: output gradient
/// times the column matrix), row-major `[m, n]`. Computed as `(b · aᵀ)ᵀ`: gemm then reads the
/// large matrix along its rows instead of packing it from strided columns (docs/benchmarks.md
/// has what that packing cost), and only the small `[n, m]` result is transposed.
fn kernel_grad(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], threads: usize) -> Vec<f32> {
    let t = matmul(n, m, k, b, false, a, true, threads);
    let mut out = vec![0f32; m * n];
    for (j, row) in t.chunks_exact(m).enumerate() {
        for (i, v) in row.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    out
}

/// ReLUs fused into a convolution op: on its input (`conv(relu(x))`, the mask applied to the
/// input gradient) and on its output (`relu(conv(x))`, the mask applied to the output
/// gradient). Either way no separate ReLU node, buffer or gradient accumulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReluAt {
    pub input: bool,
    pub output: bool,
}

impl ReluAt {
    /// No ReLU.
    pub const NONE: ReluAt = ReluAt {
        input: false,
        output: false,
    };
    /// `relu(conv(x))`.
    pub const OUTPUT: ReluAt = ReluAt {
        input: false,
        output: true,
    };
    /// `conv(relu(x))`.
    pub const INPUT: ReluAt = ReluAt {
        input: true,
        output: false,
    };
    /// `relu(conv(relu(x)))`.
    pub const BOTH: ReluAt = ReluAt {
        input: true,
        output: true,
    };
}

impl ReluAt {
    /// How the direct kernels copy the op's input: through the input ReLU, if any.
    fn source(self) -> direct::Source<'static> {
        if self.input {
            direct::Source::Relu
        } else {
            direct::Source::Copy
        }
    }
}

/// `x`, or `max(x, 0)` when `relu`.
fn input_values(x: &[f32], relu: bool) -> std::borrow::Cow<'_, [f32]> {
    if relu {
        std::borrow::Cow::Owned(x.par_iter().map(|v| v.max(0.0)).collect())
    } else {
        std::borrow::Cow::Borrowed(x)
    }
}

/// Runs `f` with the op's input data as the mask of its input gradient when a ReLU precedes the
/// op (`relu_in`), or with no mask.
fn with_input_mask<R>(
    x: &Tensor,
    relu_in: bool,
    f: impl FnOnce(Option<&[f32]>) -> Result<R>,
) -> Result<R> {
    if relu_in {
        with_data(x, |xv| f(Some(xv)))
    } else {
        f(None)
    }
}

/// `dx · [x > 0]` (the backward pass of a ReLU on the op's input `x`).
fn mask_by_input(dx: &mut [f32], x: &Tensor) -> Result<()> {
    with_data(x, |xv| {
        dx.par_iter_mut().zip(xv.par_iter()).for_each(|(d, v)| {
            if *v <= 0.0 {
                *d = 0.0;
            }
        });
        Ok(())
    })
}

/// `y [rows, O] += bias` per column and `+= add` (a residual shaped like `y`), then `max(·, 0)`
/// when `relu`.
fn finish(y: &mut [f32], o: usize, bias: Option<&[f32]>, add: Option<&[f32]>, relu: bool) {
    let block = o * 64;
    y.par_chunks_mut(block).enumerate().for_each(|(i, rows)| {
        let extra = add.map(|a| &a[i * block..i * block + rows.len()]);
        for (r, row) in rows.chunks_exact_mut(o).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let b = bias.map_or(0.0, |b| b[j]);
                let e = extra.map_or(0.0, |a| a[r * o + j]);
                *v = activate(*v + b + e, relu);
            }
        }
    });
}

/// `max(v, 0)` when `relu`, else `v`.
#[inline(always)]
fn activate(v: f32, relu: bool) -> f32 {
    if relu {
        v.max(0.0)
    } else {
        v
    }
}

/// Runs `f` on the data of `t`, a CPU f32 tensor (made contiguous first when needed), without
/// copying it.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(cpu) => f(contiguous(cpu, l, "convolution gradient")?),
        _ => candle_core::bail!("the CPU convolution ops need CPU tensors"),
    }
}

/// The output gradient `dy` (channel-last) padded by `pad`, masked by `[y > 0]` (0 at 0, as
/// PyTorch) when the op applied a ReLU.
fn padded_output_grad(dy: &Tensor, y: &Tensor, relu: bool, pad: usize) -> Result<direct::Padded> {
    let dims = dy.dims4()?;
    with_data(dy, |d| {
        if relu {
            with_data(y, |m| {
                Ok(direct::Padded::from_nhwc(
                    d,
                    dims,
                    pad,
                    direct::Source::MaskedBy(m),
                ))
            })
        } else {
            Ok(direct::Padded::from_nhwc(
                d,
                dims,
                pad,
                direct::Source::Copy,
            ))
        }
    })
}

/// The output gradient on the host, times `[y > 0]` when the op applied a ReLU.
fn output_grad(dy: &Tensor, y: &Tensor, relu: bool) -> Result<Vec<f32>> {
    if !relu {
        return host(dy);
    }
    with_data(dy, |d| {
        with_data(y, |m| {
            Ok(d.par_iter()
                .zip(m.par_iter())
                .map(|(g, y)| if *y > 0.0 { *g } else { 0.0 })
                .collect())
        })
    })
}

/// Row sums of `[rows, n]`.
fn row_sums(src: &[f32], n: usize) -> Vec<f32> {
    src.par_chunks(n).map(|r| r.iter().sum()).collect()
}

fn tracked(t: &Tensor) -> bool {
    t.track_op()
}

/// The forward pass's input as the backward pass needs it.
enum Saved {
    /// The column matrix (GEMM convolution) or the input as `[Ci, B·H·W]` (GEMM transposed
    /// convolution).
    Matrix(Vec<f32>),
    /// The zero-padded channel-last input (direct path).
    Padded(direct::Padded),
}

/// Whether a convolution from `in_channels` to `out_channels` runs on the direct kernels: the
/// CPU has them, the output channels come in their 32-channel tiles, and so do the input
/// channels when an input gradient is needed (it is a convolution into them).
fn use_direct(in_channels: usize, out_channels: usize, input_grad: bool) -> bool {
    (!input_grad || in_channels.is_multiple_of(direct::OB))
        && out_channels.is_multiple_of(direct::OB)
        && direct::fast()
}

/// `conv2d(x, w) + bias` with fused ReLUs over channel-last `x` `[B, H, W, C]` as one op.
struct Conv2dOp {
    g: Geometry,
    out_channels: usize,
    /// The direct kernels (`kernels/direct.rs`) instead of im2col + GEMM.
    direct: bool,
    /// ReLUs on the input and the output.
    relu: ReluAt,
    /// The third input is a residual added to the output (shaped like it), not a bias.
    skip: bool,
    saved: std::sync::Mutex<Option<Saved>>,
}

impl Conv2dOp {
    /// `(B, H, W, C)` of the input.
    fn input_dims(&self) -> (usize, usize, usize, usize) {
        let g = &self.g;
        (g.batch, g.height, g.width, g.channels)
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-nhwc"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (x, w, third) = (
            contiguous(xs, xl, "conv2d x")?,
            contiguous(ws, wl, "conv2d w")?,
            contiguous(bs, bl, "conv2d bias or residual")?,
        );
        let (o, b, c) = (self.out_channels, g.batch, g.channels);
        let (bias, add) = if self.skip {
            (None, Some(third))
        } else {
            (Some(third), None)
        };
        let (y, saved) = if self.direct {
            let xp = direct::Padded::from_nhwc(x, self.input_dims(), g.padding, self.relu.source());
            let ep = direct::Epilogue {
                bias,
                add,
                relu: self.relu.output,
                mask: None,
            };
            let y = if winograd::applies(g.kernel, g.stride, g.padding) {
                winograd::conv(
                    &xp,
                    &winograd::Transformed::forward(w, o, c),
                    ep,
                    Isa::current(),
                )
            } else {
                let packed = direct::Packed::forward(w, o, c, g.kernel);
                direct::conv(&xp, &packed, g.kernel, g.stride, ep, Isa::current()).0
            };
            (y, Saved::Padded(xp))
        } else {
            let (rows, n) = g.cols_shape();
            let xr = input_values(x, self.relu.input);
            let cols = im2col(g, &transpose(&xr, b, g.height * g.width, c));
            let y2 = matmul(o, n, rows, w, false, &cols, false, threads());
            let mut y = transpose(&y2, 1, o, n);
            finish(&mut y, o, bias, add, self.relu.output);
            (y, Saved::Matrix(cols))
        };
        *self.saved.lock().expect("saved lock") = Some(saved);
        Ok((
            CpuStorage::F32(y),
            Shape::from((b, g.out_h(), g.out_w(), o)),
        ))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.g;
        let (o, b, c) = (self.out_channels, g.batch, g.channels);
        let (hw, p) = (g.height * g.width, g.out_h() * g.out_w());
        let saved = self.saved.lock().expect("saved lock").take();
        let dev = x.device();
        let wv = tracked(x).then(|| host(w)).transpose()?;
        let (dw, dx, db) = if self.direct {
            let xp = match saved {
                Some(Saved::Padded(xp)) => xp,
                _ => direct::Padded::from_nhwc(
                    &host(x)?,
                    self.input_dims(),
                    g.padding,
                    self.relu.source(),
                ),
            };
            // Padded as the input gradient needs (k − 1 − p for stride 1).
            let q = direct::input_grad_pad(g.kernel, g.stride, g.padding, g.height, g.out_h()).max(
                direct::input_grad_pad(g.kernel, g.stride, g.padding, g.width, g.out_w()),
            );
            let dyp = padded_output_grad(dy, res, self.relu.output, q)?;
            let db = (tracked(bias) && !self.skip).then(|| dyp.channel_sums());
            let (dw, dx) = with_input_mask(x, self.relu.input, |mask| {
                // The input gradient's epilogue applies the input ReLU's mask.
                let ep = direct::Epilogue {
                    mask,
                    ..direct::Epilogue::NONE
                };
                Ok(rayon::join(
                    || {
                        tracked(w).then(|| {
                            direct::kernel_grad(&xp, &dyp, g.kernel, g.stride, Isa::current())
                        })
                    },
                    || {
                        wv.as_ref().map(|wv| {
                            let (k, s, pd) = (g.kernel, g.stride, g.padding);
                            if winograd::applies(k, s, pd) {
                                let wt = winograd::Transformed::input_grad(wv, o, c);
                                winograd::conv(&dyp, &wt, ep, Isa::current())
                            } else {
                                direct::input_grad(
                                    &dyp,
                                    wv,
                                    c,
                                    k,
                                    s,
                                    pd,
                                    g.height,
                                    g.width,
                                    ep,
                                    Isa::current(),
                                )
                            }
                        })
                    },
                ))
            })?;
            (dw, dx, db)
        } else {
            let (rows, n) = g.cols_shape();
            let gv = output_grad(dy, res, self.relu.output)?; // [B·P, O]
            let dy2 = transpose(&gv, 1, n, o); // [O, B·P]
            let cols = match saved {
                Some(Saved::Matrix(c)) => c,
                _ => im2col(
                    g,
                    &transpose(&input_values(&host(x)?, self.relu.input), b, hw, c),
                ),
            };
            let db = (tracked(bias) && !self.skip).then(|| row_sums(&dy2, n));
            // The kernel and input gradients cost the same GEMM work: run them side by side
            // with one thread each rather than one after the other with every thread.
            let each = split_threads(tracked(w) && wv.is_some());
            let (dw, dx) = rayon::join(
                || tracked(w).then(|| kernel_grad(o, rows, n, &dy2, &cols, each)),
                || {
                    wv.as_ref().map(|wv| {
                        let dx = if g.stride == 1 && g.padding < g.kernel && o < c {
                            input_grad_as_conv(g, o, wv, &transpose(&gv, b, p, o), each)
                        } else {
                            col2im(g, &matmul(rows, n, o, wv, true, &dy2, false, each))
                        };
                        transpose(&dx, b, c, hw)
                    })
                },
            );
            (dw, dx, db)
        };
        let db = if self.skip {
            // The residual's gradient is the (ReLU-masked) output gradient itself.
            match (tracked(bias), self.relu.output) {
                (false, _) => None,
                (true, false) => Some(dy.clone()),
                (true, true) => Some(Tensor::from_vec(
                    output_grad(dy, res, true)?,
                    dy.shape(),
                    dev,
                )?),
            }
        } else {
            db.map(|v| Tensor::from_vec(v, o, dev)).transpose()?
        };
        let (dx, dw) = input_and_kernel_grads(x, w, dx, dw, self.relu.input && !self.direct)?;
        Ok((dx, dw, db))
    }
}

/// The input and kernel gradients as tensors shaped like `x` and `w`; with `mask_input` (a
/// ReLU before the op, on the GEMM path: the direct kernels mask in their epilogue) the input
/// gradient is masked by `[x > 0]` first.
fn input_and_kernel_grads(
    x: &Tensor,
    w: &Tensor,
    mut dx: Option<Vec<f32>>,
    dw: Option<Vec<f32>>,
    mask_input: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if let (true, Some(dx)) = (mask_input, dx.as_mut()) {
        mask_by_input(dx, x)?;
    }
    let dev = x.device();
    Ok((
        dx.map(|v| Tensor::from_vec(v, x.shape(), dev))
            .transpose()?,
        dw.map(|v| Tensor::from_vec(v, w.shape(), dev))
            .transpose()?,
    ))
}

/// Per-channel sums of `[B, O, P]`.
fn channel_sums(src: &[f32], b: usize, o: usize, p: usize) -> Vec<f32> {
    let mut out = vec![0f32; o];
    for img in src.chunks_exact(o * p).take(b) {
        for (acc, plane) in out.iter_mut().zip(img.chunks_exact(p)) {
            *acc += plane.iter().sum::<f32>();
        }
    }
    out
}

/// The input gradient `[B, C, H, W]` of a stride-1 convolution as a convolution of the output
/// gradient `dy` `[B, O, Ho, Wo]` with the flipped, transposed kernel and padding `k − 1 − p`
/// (GEMM path): its column matrix has `O·k²` rows instead of the `C·k²` that
/// `col2im(Wᵀ · dY)` writes and scatters back, and the result is written once.
fn input_grad_as_conv(g: &Geometry, o: usize, w: &[f32], dy: &[f32], threads: usize) -> Vec<f32> {
    let (c, k) = (g.channels, g.kernel);
    // w' [C, O, k, k]: w'[ci, oi, a, b] = w[oi, ci, k−1−a, k−1−b].
    let mut wt = vec![0f32; c * o * k * k];
    for oi in 0..o {
        for ci in 0..c {
            for a in 0..k {
                for b in 0..k {
                    wt[((ci * o + oi) * k + a) * k + b] =
                        w[((oi * c + ci) * k + (k - 1 - a)) * k + (k - 1 - b)];
                }
            }
        }
    }
    let gy = Geometry {
        batch: g.batch,
        channels: o,
        height: g.out_h(),
        width: g.out_w(),
        kernel: k,
        stride: 1,
        padding: k - 1 - g.padding,
    };
    debug_assert_eq!((gy.out_h(), gy.out_w()), (g.height, g.width));
    let (rows, n) = gy.cols_shape();
    let dx2 = matmul(c, n, rows, &wt, false, &im2col(&gy, dy), false, threads);
    // [C, B·H·W] → [B, C, H·W]
    transpose(&transpose(&dx2, 1, c, n), g.batch, g.height * g.width, c)
}

/// `conv_transpose2d(x, w) + bias` with fused ReLUs over channel-last `x` `[B, H, W, Ci]` as
/// one op.
struct ConvTranspose2dOp {
    /// Geometry of the (adjoint) convolution over the output.
    g: Geometry,
    in_channels: usize,
    /// The direct kernels (`kernels/direct.rs`) instead of GEMM + col2im.
    direct: bool,
    /// ReLUs on the input and the output.
    relu: ReluAt,
    saved: std::sync::Mutex<Option<Saved>>,
}

impl ConvTranspose2dOp {
    /// `(B, H, W, Ci)` of the input and the padding its direct forward pass needs.
    fn input_dims(&self) -> ((usize, usize, usize, usize), usize) {
        let g = &self.g;
        let (hi, wi) = (g.out_h(), g.out_w());
        let pad = direct::input_grad_pad(g.kernel, g.stride, g.padding, g.height, hi).max(
            direct::input_grad_pad(g.kernel, g.stride, g.padding, g.width, wi),
        );
        ((g.batch, hi, wi, self.in_channels), pad)
    }
}

impl CustomOp3 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "conv-transpose2d-nhwc"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (x, w, bias) = (
            contiguous(xs, xl, "conv_transpose2d x")?,
            contiguous(ws, wl, "conv_transpose2d w")?,
            contiguous(bs, bl, "conv_transpose2d bias")?,
        );
        let (rows, n) = g.cols_shape(); // [Co·k·k, B·H_in·W_in]
        let (ci, co, hw) = (self.in_channels, g.channels, g.height * g.width);
        let y = if self.direct {
            // The transposed convolution is the input gradient of its adjoint convolution.
            let (dims, pad) = self.input_dims();
            let xp = direct::Padded::from_nhwc(x, dims, pad, self.relu.source());
            let ep = direct::Epilogue {
                bias: Some(bias),
                add: None,
                relu: self.relu.output,
                mask: None,
            };
            let (k, s, p) = (g.kernel, g.stride, g.padding);
            let y = direct::input_grad(&xp, w, co, k, s, p, g.height, g.width, ep, Isa::current());
            *self.saved.lock().expect("saved lock") = Some(Saved::Padded(xp));
            y
        } else {
            let x2 = transpose(&input_values(x, self.relu.input), 1, n, ci); // [Ci, B·H_in·W_in]
            let cols = matmul(rows, n, ci, w, true, &x2, false, threads());
            let mut y = col2im(g, &cols); // [B, Co, H, W]
            y.par_chunks_mut(hw).enumerate().for_each(|(i, plane)| {
                let b = bias[i % co];
                plane
                    .iter_mut()
                    .for_each(|v| *v = activate(*v + b, self.relu.output));
            });
            *self.saved.lock().expect("saved lock") = Some(Saved::Matrix(x2));
            transpose(&y, g.batch, co, hw)
        };
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.batch, g.height, g.width, co)),
        ))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.g;
        let (rows, n) = g.cols_shape();
        let (ci, co, hw) = (self.in_channels, g.channels, g.height * g.width);
        let dev = x.device();
        let saved = self.saved.lock().expect("saved lock").take();
        let wv = tracked(x).then(|| host(w)).transpose()?;
        let (dw, dx, db) = if self.direct {
            let xp = match saved {
                Some(Saved::Padded(xp)) => xp,
                _ => {
                    let (dims, pad) = self.input_dims();
                    direct::Padded::from_nhwc(&host(x)?, dims, pad, self.relu.source())
                }
            };
            // The adjoint convolution's input: dY padded by p.
            let dyp = padded_output_grad(dy, res, self.relu.output, g.padding)?;
            let db = tracked(bias).then(|| dyp.channel_sums());
            let (dw, dx) = with_input_mask(x, self.relu.input, |mask| {
                let ep = direct::Epilogue {
                    mask,
                    ..direct::Epilogue::NONE
                };
                Ok(rayon::join(
                    || {
                        tracked(w).then(|| {
                            direct::kernel_grad(&dyp, &xp, g.kernel, g.stride, Isa::current())
                        })
                    },
                    || {
                        wv.as_ref().map(|wv| {
                            let packed = direct::Packed::forward(wv, ci, co, g.kernel);
                            direct::conv(&dyp, &packed, g.kernel, g.stride, ep, Isa::current()).0
                        })
                    },
                ))
            })?;
            (dw, dx, db)
        } else {
            let gv = output_grad(dy, res, self.relu.output)?; // [B·H·W, Co]
            let dyn_ = transpose(&gv, g.batch, hw, co); // [B, Co, H, W]
            let db = tracked(bias).then(|| channel_sums(&dyn_, g.batch, co, hw));
            let dcols = im2col(g, &dyn_); // [Co·k·k, B·H_in·W_in]
            let x2 = match saved {
                Some(Saved::Matrix(v)) => v,
                _ => transpose(&input_values(&host(x)?, self.relu.input), 1, n, ci),
            };
            let each = split_threads(tracked(w) && wv.is_some());
            let (dw, dx2) = rayon::join(
                || tracked(w).then(|| kernel_grad(ci, rows, n, &x2, &dcols, each)),
                || {
                    wv.as_ref()
                        .map(|wv| matmul(ci, n, rows, wv, false, &dcols, false, each))
                },
            );
            (dw, dx2.map(|v| transpose(&v, 1, ci, n)), db)
        };
        let db = db.map(|v| Tensor::from_vec(v, co, dev)).transpose()?;
        let (dx, dw) = input_and_kernel_grads(x, w, dx, dw, self.relu.input && !self.direct)?;
        Ok((dx, dw, db))
    }
}

fn bias_or_zeros(bias: Option<&Tensor>, n: usize, like: &Tensor) -> Result<Tensor> {
    match bias {
        Some(b) if b.dims() != [n] => {
            candle_core::bail!("bias of shape {:?} for {n} output channels", b.dims())
        }
        Some(b) => b.contiguous(),
        None => Tensor::zeros(n, like.dtype(), like.device()),
    }
}

/// `conv2d(x, w) + bias` (with the ReLUs of `relu` around it) for channel-last `x` `[B, H, W, C]` and `w` `[O, C, k, k]`,
/// with stride and zero padding; output `[B, H', W', O]` channel-last (CPU, f32). On the
/// direct AVX-512 kernels when the CPU has them and both channel counts are multiples of 32,
/// otherwise through im2col and GEMM.
pub fn conv2d_nhwc(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: ReluAt,
) -> Result<Tensor> {
    conv2d_with(x, w, bias, None, stride, padding, relu, true)
}

/// `skip + conv2d(x, w)` (then the output ReLU of `relu`, if any) as one op: the residual
/// connection of a residual block, added in the convolution's output instead of by a separate
/// node. `skip` is shaped like the output, `[B, H', W', O]`; no bias.
pub fn conv2d_nhwc_add(
    x: &Tensor,
    w: &Tensor,
    skip: &Tensor,
    stride: usize,
    padding: usize,
    relu: ReluAt,
) -> Result<Tensor> {
    conv2d_with(x, w, None, Some(skip), stride, padding, relu, true)
}

/// [`conv2d_nhwc`], on the direct kernels only when `allow_direct` (tests compare both paths).
#[allow(clippy::too_many_arguments)]
fn conv2d_with(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    skip: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: ReluAt,
    allow_direct: bool,
) -> Result<Tensor> {
    let (b, h, wd, c) = x.dims4()?;
    let (o, c2, k, k2) = w.dims4()?;
    if c != c2 || k != k2 {
        candle_core::bail!(
            "conv2d_nhwc: input {:?} ([B, H, W, C]) and kernel {:?} ([O, C, k, k]) do not fit",
            x.dims(),
            w.dims()
        );
    }
    if b == 0 || stride == 0 || k == 0 || k > h + 2 * padding || k > wd + 2 * padding {
        candle_core::bail!(
            "conv2d_nhwc: kernel {k}, stride {stride}, padding {padding} do not fit input {:?}",
            x.dims()
        );
    }
    let g = Geometry {
        batch: b,
        channels: c,
        height: h,
        width: wd,
        kernel: k,
        stride,
        padding,
    };
    let third = match skip {
        Some(r) if r.dims() != [b, g.out_h(), g.out_w(), o] => candle_core::bail!(
            "conv2d_nhwc: residual of shape {:?} for an output [{b}, {}, {}, {o}]",
            r.dims(),
            g.out_h(),
            g.out_w()
        ),
        Some(r) if bias.is_some() => {
            candle_core::bail!("conv2d_nhwc: a residual {:?} and a bias", r.dims())
        }
        Some(r) => r.contiguous()?,
        None => bias_or_zeros(bias, o, x)?,
    };
    let op = Conv2dOp {
        g,
        out_channels: o,
        direct: allow_direct && use_direct(c, o, x.track_op()),
        relu,
        skip: skip.is_some(),
        saved: std::sync::Mutex::new(None),
    };
    x.contiguous()?.apply_op3(&w.contiguous()?, &third, op)
}

/// `conv_transpose2d(x, w) + bias` (with the ReLUs of `relu` around it) for channel-last `x`
/// `[B, H, W, Ci]` and `w`
/// `[Ci, Co, k, k]`, with stride and padding (no output padding); output
/// `[B, (H−1)s − 2p + k, …, Co]` channel-last (CPU, f32). Direct kernels or GEMM as
/// [`conv2d_nhwc`].
pub fn conv_transpose2d_nhwc(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: ReluAt,
) -> Result<Tensor> {
    conv_transpose2d_with(x, w, bias, stride, padding, relu, true)
}

/// [`conv_transpose2d_nhwc`], on the direct kernels only when `allow_direct`.
#[allow(clippy::too_many_arguments)]
fn conv_transpose2d_with(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: ReluAt,
    allow_direct: bool,
) -> Result<Tensor> {
    let (b, h, wd, ci) = x.dims4()?;
    let (ci2, co, k, k2) = w.dims4()?;
    if ci != ci2 || k != k2 {
        candle_core::bail!(
            "conv_transpose2d_nhwc: input {:?} ([B, H, W, Ci]) and kernel {:?} ([Ci, Co, k, k]) do not fit",
            x.dims(),
            w.dims()
        );
    }
    if b == 0
        || h == 0
        || wd == 0
        || stride == 0
        || k == 0
        || (h.min(wd) - 1) * stride + k < 2 * padding + 1
    {
        candle_core::bail!(
            "conv_transpose2d_nhwc: kernel {k}, stride {stride}, padding {padding} do not fit input {:?}",
            x.dims()
        );
    }
    let (ho, wo) = (
        (h - 1) * stride + k - 2 * padding,
        (wd - 1) * stride + k - 2 * padding,
    );
    let g = Geometry {
        batch: b,
        channels: co,
        height: ho,
        width: wo,
        kernel: k,
        stride,
        padding,
    };
    debug_assert_eq!((g.out_h(), g.out_w()), (h, wd));
    let op = ConvTranspose2dOp {
        g,
        in_channels: ci,
        // Forward and input gradient both run the output-channel tiles over Co and Ci.
        direct: allow_direct && use_direct(co, ci, true),
        relu,
        saved: std::sync::Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias_or_zeros(bias, co, x)?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{to_nchw, to_nhwc};
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// `fast` against `plain`: values within 1e-5 and the gradients of a random projection with
    /// respect to each of `vars` within 1e-4, relative to the largest magnitude.
    fn compare(fast: &Tensor, plain: &Tensor, vars: [(&Var, &str); 3], what: &str) {
        close(fast, plain, 1e-5, &format!("{what} forward"));
        let r = randn(plain.dims());
        let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, name) in vars {
            close(
                gf.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap(),
                1e-4,
                &format!("{what} {name}"),
            );
        }
    }

    /// Checks `conv2d_with` (or `conv_transpose2d_with` when `transposed`; with the fused
    /// ReLUs of `relu`; direct kernels allowed or not) against candle's convolution (+ bias,
    /// with candle's `relu` before and after): output within 1e-5 and the input, kernel and
    /// bias gradients within 1e-4, relative to the largest magnitude.
    #[allow(clippy::too_many_arguments)]
    fn check(
        x: &Var,
        w: &Var,
        bias: &Var,
        s: usize,
        p: usize,
        transposed: bool,
        relu: ReluAt,
        direct: bool,
    ) {
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), bias.as_tensor());
        let xin = if relu.input {
            xt.relu().unwrap()
        } else {
            xt.clone()
        };
        let (plain, fast) = if transposed {
            (
                xin.conv_transpose2d(wt, p, 0, s, 1).unwrap(),
                to_nchw(
                    &conv_transpose2d_with(&to_nhwc(xt).unwrap(), wt, Some(bt), s, p, relu, direct)
                        .unwrap(),
                )
                .unwrap(),
            )
        } else {
            (
                xin.conv2d(wt, p, s, 1, 1).unwrap(),
                to_nchw(
                    &conv2d_with(
                        &to_nhwc(xt).unwrap(),
                        wt,
                        Some(bt),
                        None,
                        s,
                        p,
                        relu,
                        direct,
                    )
                    .unwrap(),
                )
                .unwrap(),
            )
        };
        let mut plain = plain
            .broadcast_add(&bt.reshape((1, bt.dims()[0], 1, 1)).unwrap())
            .unwrap();
        if relu.output {
            plain = plain.relu().unwrap();
        }
        let what = format!(
            "{} {:?} * {:?} s{s} p{p} {relu:?} direct {direct}",
            if transposed {
                "conv_transpose2d"
            } else {
                "conv2d"
            },
            x.dims(),
            w.dims()
        );
        compare(&fast, &plain, [(x, "dx"), (w, "dw"), (bias, "db")], &what);
    }

    /// Standard-normal test data from a seeded stream: each test thread draws the same numbers
    /// on every run (candle's CPU `randn` cannot be seeded), so a tolerance that holds, holds.
    fn randn(shape: &[usize]) -> Tensor {
        thread_local! {
            static DRAWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        let k = DRAWS.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        crate::testing::randn(k, shape)
    }

    fn var(shape: &[usize]) -> Var {
        Var::from_tensor(&randn(shape)).unwrap()
    }

    /// Both CPU paths, with and without the fused ReLU, against candle's own convolutions and
    /// transposed convolutions (+ bias, then ReLU):
    /// outputs within 1e-5 and the input, kernel and bias gradients within 1e-4, relative to
    /// the largest magnitude. Channel counts that are multiples of 32 take the direct kernels
    /// when allowed (and the CPU has them); the others always take the GEMM path.
    #[test]
    fn matches_candle_convolutions() {
        assert_eq!(use_direct(32, 64, true), direct::fast());
        assert_eq!(use_direct(3, 64, false), direct::fast());
        assert!(!use_direct(16, 64, true) && !use_direct(32, 48, true));
        for &(b, c, o, h, k, s, p) in &[
            // GEMM path: strides 1 and 2, 1×1, valid and over-padded.
            (2usize, 3usize, 5usize, 8usize, 4usize, 2usize, 1usize),
            (3, 4, 6, 7, 3, 1, 1),
            (2, 5, 3, 6, 1, 1, 0),
            (1, 2, 4, 9, 5, 1, 2),
            (2, 2, 3, 5, 3, 2, 0),
            // Stride 1 with O < C: the input gradient as a convolution of dY (same, valid and
            // over-padded geometries).
            (2, 6, 3, 7, 3, 1, 1),
            (2, 4, 2, 8, 3, 1, 0),
            (1, 4, 3, 6, 5, 1, 4),
            // Direct kernels: same, valid and over-padded stride 1, strides 2 and 3 (the input
            // gradient split into s² classes, some with fewer taps, or none when k < s), 1×1,
            // rows wider than one register tile (20 and 30 positions: 2 and 3 tiles), and more
            // than 32 channels.
            (2, 32, 64, 7, 3, 1, 1),
            (2, 64, 32, 8, 3, 1, 0),
            (2, 32, 32, 8, 4, 2, 1),
            (1, 32, 96, 5, 1, 1, 0),
            (1, 32, 32, 6, 5, 1, 4),
            (1, 32, 32, 20, 3, 1, 1),
            (1, 32, 32, 30, 3, 1, 1),
            (1, 64, 32, 9, 3, 2, 1),
            (1, 32, 32, 11, 5, 3, 2),
            (1, 32, 32, 9, 2, 3, 0),
            // Winograd (3×3, stride 1, padding 1): odd sizes (partial tiles), 1×1 and 2×2
            // images, and rows of more than one register tile are all among the above and here.
            (2, 32, 32, 1, 3, 1, 1),
            (1, 64, 32, 2, 3, 1, 1),
            (1, 32, 32, 5, 3, 1, 1),
        ] {
            let (x, w, bias) = (var(&[b, c, h, h]), var(&[o, c, k, k]), var(&[o]));
            // Transposed: kernel [Ci = c, Co = o, k, k], when the output is not empty.
            let wt = ((h - 1) * s + k > 2 * p).then(|| var(&[c, o, k, k]));
            let relus = [ReluAt::NONE, ReluAt::OUTPUT, ReluAt::INPUT, ReluAt::BOTH];
            for (direct, relu) in [true, false]
                .into_iter()
                .flat_map(|d| relus.map(|r| (d, r)))
            {
                check(&x, &w, &bias, s, p, false, relu, direct);
                if let Some(wt) = &wt {
                    check(&x, wt, &bias, s, p, true, relu, direct);
                }
            }
        }
    }

    /// `skip + conv(x)` in one op (the residual connection) against candle's convolution plus
    /// an add, on both paths (1×1 and Winograd 3×3 direct, GEMM), with and without a ReLU after:
    /// values and the gradients of `x`, `w` and `skip`.
    #[test]
    fn residual_add_matches_candle() {
        for &(b, c, o, h, k, p) in &[
            (2usize, 32usize, 64usize, 7usize, 1usize, 0usize),
            (2, 32, 32, 7, 3, 1),
            (2, 3, 5, 6, 3, 1),
        ] {
            let (x, w, skip) = (var(&[b, c, h, h]), var(&[o, c, k, k]), var(&[b, o, h, h]));
            for (direct, relu) in [
                (true, ReluAt::NONE),
                (false, ReluAt::NONE),
                (true, ReluAt::OUTPUT),
            ] {
                let (xt, wt, st) = (x.as_tensor(), w.as_tensor(), skip.as_tensor());
                let mut plain = (xt.conv2d(wt, p, 1, 1, 1).unwrap() + st).unwrap();
                if relu.output {
                    plain = plain.relu().unwrap();
                }
                let fast = conv2d_with(
                    &to_nhwc(xt).unwrap(),
                    wt,
                    None,
                    Some(&to_nhwc(st).unwrap()),
                    1,
                    p,
                    relu,
                    direct,
                )
                .unwrap();
                let what = format!(
                    "skip + conv {:?} * {:?} {relu:?} direct {direct}",
                    xt.dims(),
                    wt.dims()
                );
                let vars = [(&x, "dx"), (&w, "dw"), (&skip, "dskip")];
                compare(&to_nchw(&fast).unwrap(), &plain, vars, &what);
            }
        }
        // A residual of the wrong shape, or with a bias, is an error.
        let d = Device::Cpu;
        let x = Tensor::zeros((1, 4, 4, 2), candle_core::DType::F32, &d).unwrap();
        let w = Tensor::zeros((3, 2, 1, 1), candle_core::DType::F32, &d).unwrap();
        let bad = Tensor::zeros((1, 4, 4, 2), candle_core::DType::F32, &d).unwrap();
        let err = conv2d_nhwc_add(&x, &w, &bad, 1, 0, ReluAt::NONE).unwrap_err();
        assert!(err.to_string().contains("residual"), "{err}");
    }

    /// Geometries that do not fit are errors, not panics or huge allocations.
    #[test]
    fn bad_geometry_is_an_error() {
        let d = Device::Cpu;
        // [B, H, W, C] = [1, 3, 3, 2]
        let x = Tensor::zeros((1, 3, 3, 2), candle_core::DType::F32, &d).unwrap();
        let w = Tensor::zeros((4, 2, 7, 7), candle_core::DType::F32, &d).unwrap();
        assert!(conv2d_nhwc(&x, &w, None, 1, 1, ReluAt::NONE).is_err());
        let w3 = Tensor::zeros((4, 2, 3, 3), candle_core::DType::F32, &d).unwrap();
        assert!(conv2d_nhwc(&x, &w3, None, 0, 1, ReluAt::NONE).is_err());
        let b = Tensor::zeros(5, candle_core::DType::F32, &d).unwrap();
        assert!(conv2d_nhwc(&x, &w3, Some(&b), 1, 1, ReluAt::NONE)
            .unwrap_err()
            .to_string()
            .contains("bias"));
        let wt = Tensor::zeros((2, 4, 1, 1), candle_core::DType::F32, &d).unwrap();
        assert!(conv_transpose2d_nhwc(
            &Tensor::zeros((1, 2, 1, 1), candle_core::DType::F32, &d).unwrap(),
            &wt,
            None,
            1,
            1,
            ReluAt::NONE
        )
        .is_err());
    }

    /// The first layer: an untracked image with few channels (1 or 3) into a multiple of 32
    /// takes the direct kernels (no input gradient is needed), checked against candle for both
    /// paths: values within 1e-5, kernel and bias gradients within 1e-4.
    #[test]
    fn untracked_image_layer_matches_candle() {
        for &(c, o, h) in &[(1usize, 64usize, 12usize), (3, 32, 10)] {
            let x = randn(&[2, c, h, h]);
            let (w, bias) = (var(&[o, c, 4, 4]), var(&[o]));
            for (direct, relu) in [
                (true, ReluAt::OUTPUT),
                (false, ReluAt::OUTPUT),
                (true, ReluAt::NONE),
            ] {
                let mut plain = x
                    .conv2d(w.as_tensor(), 1, 2, 1, 1)
                    .unwrap()
                    .broadcast_add(&bias.as_tensor().reshape((1, o, 1, 1)).unwrap())
                    .unwrap();
                if relu.output {
                    plain = plain.relu().unwrap();
                }
                let xl = to_nhwc(&x).unwrap();
                let fast = conv2d_with(
                    &xl,
                    w.as_tensor(),
                    Some(bias.as_tensor()),
                    None,
                    2,
                    1,
                    relu,
                    direct,
                )
                .unwrap();
                let fast = to_nchw(&fast).unwrap();
                let what = format!("image C = {c} → {o}, {relu:?}, direct {direct}");
                close(&fast, &plain, 1e-5, &what);
                let r = randn(plain.dims());
                let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gf = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (v, name) in [(&w, "dw"), (&bias, "db")] {
                    let (a, b) = (
                        gf.get(v.as_tensor()).unwrap(),
                        gp.get(v.as_tensor()).unwrap(),
                    );
                    close(a, b, 1e-4, &format!("{what} {name}"));
                }
            }
        }
    }

    /// An untracked input gets no gradient computed (the first layer's image).
    #[test]
    fn untracked_inputs_get_no_gradient() {
        let x = randn(&[2, 6, 6, 3]);
        let w = var(&[4, 3, 3, 3]);
        let g = conv2d_nhwc(&x, w.as_tensor(), None, 1, 1, ReluAt::NONE)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&x).is_none());
        assert!(g.get(w.as_tensor()).is_some());
    }

    /// im2col of a hand-checkable 1×1×3×3 input, k = 2, stride 1, no padding.
    #[test]
    fn im2col_by_hand() {
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let g = Geometry {
            batch: 1,
            channels: 1,
            height: 3,
            width: 3,
            kernel: 2,
            stride: 1,
            padding: 0,
        };
        // Rows (ky,kx) = (0,0),(0,1),(1,0),(1,1); columns = output positions (0,0),(0,1),(1,0),(1,1).
        assert_eq!(
            im2col(&g, &x),
            vec![1., 2., 4., 5., 2., 3., 5., 6., 4., 5., 7., 8., 5., 6., 8., 9.]
        );
        // col2im of all-ones counts how many windows cover each pixel.
        assert_eq!(
            col2im(&g, &[1.0; 16]),
            vec![1., 2., 1., 2., 4., 2., 1., 2., 1.]
        );
    }
}
