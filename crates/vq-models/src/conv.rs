//! Convolutions as GEMM for CPU training: `im2col` / `col2im` custom ops that are each other's
//! backward pass, so `conv2d = W · im2col(x)` and `conv_transpose2d = col2im(Wᵀ · x)` get every
//! gradient from candle's matmul backward (itself a GEMM).
//!
//! candle's CPU `conv2d` input-gradient and `conv_transpose2d` run through direct kernels; this
//! path keeps all the work in the `gemm` crate. On other devices the layers use candle's own
//! convolutions.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

/// `[B, C, H, W]` → `[C·k·k, B·H_out·W_out]` (zero padding).
#[derive(Clone, Copy, Debug)]
pub struct Im2Col(pub Geometry);

/// `[C·k·k, B·H_out·W_out]` → `[B, C, H, W]`, summing overlapping taps (the adjoint of
/// [`Im2Col`]).
#[derive(Clone, Copy, Debug)]
pub struct Col2Im(pub Geometry);

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

fn im2col(g: &Geometry, x: &[f32]) -> Vec<f32> {
    let (rows, cols) = g.cols_shape();
    let (ho, wo, k, s, p) = (g.out_h(), g.out_w(), g.kernel, g.stride, g.padding);
    let (h, w) = (g.height, g.width);
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        for b in 0..g.batch {
            let plane = &x[(b * g.channels + c) * h * w..(b * g.channels + c + 1) * h * w];
            for oy in 0..ho {
                let iy = (oy * s + ky) as isize - p as isize;
                let dst = &mut row[(b * ho + oy) * wo..(b * ho + oy + 1) * wo];
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                for (ox, d) in dst.iter_mut().enumerate() {
                    let ix = (ox * s + kx) as isize - p as isize;
                    if ix >= 0 && ix < w as isize {
                        *d = src[ix as usize];
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
    let (h, w) = (g.height, g.width);
    // Accumulate channel-major ([C, B, H, W]) so each task owns one channel, then reorder.
    let mut cm = vec![0f32; g.input_len()];
    cm.par_chunks_mut(g.batch * h * w)
        .enumerate()
        .for_each(|(c, acc)| {
            for ky in 0..k {
                for kx in 0..k {
                    let row = &cols_data
                        [((c * k + ky) * k + kx) * cols..((c * k + ky) * k + kx + 1) * cols];
                    for b in 0..g.batch {
                        let plane = &mut acc[b * h * w..(b + 1) * h * w];
                        for oy in 0..ho {
                            let iy = (oy * s + ky) as isize - p as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let src = &row[(b * ho + oy) * wo..(b * ho + oy + 1) * wo];
                            let dst = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                            for (ox, v) in src.iter().enumerate() {
                                let ix = (ox * s + kx) as isize - p as isize;
                                if ix >= 0 && ix < w as isize {
                                    dst[ix as usize] += v;
                                }
                            }
                        }
                    }
                }
            }
        });
    if g.channels == 1 || g.batch == 1 {
        return cm;
    }
    let mut out = vec![0f32; g.input_len()];
    let hw = h * w;
    out.par_chunks_mut(g.channels * hw)
        .enumerate()
        .for_each(|(b, img)| {
            for c in 0..g.channels {
                img[c * hw..(c + 1) * hw]
                    .copy_from_slice(&cm[(c * g.batch + b) * hw..(c * g.batch + b + 1) * hw]);
            }
        });
    out
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        if l.shape().dims() != [g.batch, g.channels, g.height, g.width] {
            candle_core::bail!("im2col: input {:?} does not match {g:?}", l.shape());
        }
        let x = contiguous(s, l, "im2col")?;
        Ok((CpuStorage::F32(im2col(g, x)), Shape::from(g.cols_shape())))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (r, c) = g.cols_shape();
        if l.shape().dims() != [r, c] {
            candle_core::bail!("col2im: input {:?} does not match {g:?}", l.shape());
        }
        let cols = contiguous(s, l, "col2im")?;
        Ok((
            CpuStorage::F32(col2im(g, cols)),
            Shape::from((g.batch, g.channels, g.height, g.width)),
        ))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// `conv2d(x [B,C,H,W], w [O,C,k,k])` with stride and zero padding, as `W · im2col(x)`.
pub fn conv2d_gemm(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, c2, k, k2) = w.dims4()?;
    if c != c2 || k != k2 {
        candle_core::bail!(
            "conv2d_gemm: input {:?} and kernel {:?} do not fit",
            x.dims(),
            w.dims()
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
    let (ho, wo) = (g.out_h(), g.out_w());
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?;
    let y = w.reshape((o, c * k * k))?.matmul(&cols)?; // [O, B·Ho·Wo]
    y.reshape((o, b, ho, wo))?
        .permute((1, 0, 2, 3))?
        .contiguous()
}

/// `conv_transpose2d(x [B,Ci,H,W], w [Ci,Co,k,k])` with stride and padding (no output padding),
/// as `col2im(Wᵀ · x)`; output `[B, Co, (H−1)s − 2p + k, …]`.
pub fn conv_transpose2d_gemm(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (b, ci, h, wd) = x.dims4()?;
    let (ci2, co, k, k2) = w.dims4()?;
    if ci != ci2 || k != k2 {
        candle_core::bail!(
            "conv_transpose2d_gemm: input {:?} and kernel {:?} do not fit",
            x.dims(),
            w.dims()
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
    let x2 = x.permute((1, 0, 2, 3))?.reshape((ci, b * h * wd))?; // [Ci, B·H·W]
    let cols = w.reshape((ci, co * k * k))?.t()?.matmul(&x2)?; // [Co·k·k, B·H·W]
    cols.contiguous()?.apply_op1(Col2Im(g))
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// The GEMM path against candle's own convolutions: outputs within 1e-5 and gradients
    /// (input and kernel) within 1e-4, relative to the largest magnitude.
    #[test]
    fn matches_candle_convolutions() {
        let d = Device::Cpu;
        for &(b, c, o, h, k, s, p) in &[
            (2usize, 3usize, 5usize, 8usize, 4usize, 2usize, 1usize),
            (3, 4, 6, 7, 3, 1, 1),
            (2, 5, 3, 6, 1, 1, 0),
            (1, 2, 4, 9, 5, 1, 2),
            (2, 2, 3, 5, 3, 2, 0),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, h, h), &d).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (o, c, k, k), &d).unwrap()).unwrap();
            let r = Tensor::randn(
                0f32,
                1.0,
                candle_core::Shape::from(
                    x.as_tensor()
                        .conv2d(w.as_tensor(), p, s, 1, 1)
                        .unwrap()
                        .dims(),
                ),
                &d,
            )
            .unwrap();
            let plain = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1).unwrap();
            let fast = conv2d_gemm(x.as_tensor(), w.as_tensor(), s, p).unwrap();
            close(&fast, &plain, 1e-5, "conv2d forward");
            let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gf = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
            close(
                gf.get(x.as_tensor()).unwrap(),
                gp.get(x.as_tensor()).unwrap(),
                1e-4,
                "conv2d dx",
            );
            close(
                gf.get(w.as_tensor()).unwrap(),
                gp.get(w.as_tensor()).unwrap(),
                1e-4,
                "conv2d dw",
            );

            // Transposed: kernel [Ci = c, Co = o, k, k].
            let wt =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (c, o, k, k), &d).unwrap()).unwrap();
            if (h - 1) * s + k < 2 * p + 1 {
                continue;
            }
            let plain = x
                .as_tensor()
                .conv_transpose2d(wt.as_tensor(), p, 0, s, 1)
                .unwrap();
            let fast = conv_transpose2d_gemm(x.as_tensor(), wt.as_tensor(), s, p).unwrap();
            close(&fast, &plain, 1e-5, "conv_transpose2d forward");
            let r = Tensor::randn(0f32, 1.0, plain.dims(), &d).unwrap();
            let gp = (plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gf = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
            close(
                gf.get(x.as_tensor()).unwrap(),
                gp.get(x.as_tensor()).unwrap(),
                1e-4,
                "conv_transpose2d dx",
            );
            close(
                gf.get(wt.as_tensor()).unwrap(),
                gp.get(wt.as_tensor()).unwrap(),
                1e-4,
                "conv_transpose2d dw",
            );
        }
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
