//! The pool's output `z = Σ_i sel[:, i] ⊙ out_i` (`sel` `[T, m]` the straight-through selection,
//! `out_i` `[T, C]` codebook `i`'s output).
//!
//! On the CPU in f32 each term is one op `acc + sel[:, i] ⊙ out_i` run on the rayon workers,
//! with a backward pass that writes `sel[:, i] ⊙ dz` and the row dot products `⟨dz, out_i⟩`
//! directly. The candle formulation (a column view, a broadcast multiply, an add) costs several
//! single-threaded passes per codebook, and its broadcast's gradient is a reduction over `T·C`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, host_f32 as host};

/// Rows per parallel task.
const ROWS: usize = 256;

/// `Σ_i sel[:, i] ⊙ outs[i]` for `sel` `[T, m]` and `outs` `m` tensors `[T, C]`.
pub fn weighted_sum(outs: &[Tensor], sel: &Tensor) -> Result<Tensor> {
    let (t, m) = sel.dims2()?;
    if outs.len() != m || m == 0 {
        candle_core::bail!(
            "weighted sum: {} outputs for a selection of {m} columns",
            outs.len()
        );
    }
    let cpu = sel.device().is_cpu()
        && sel.dtype() == DType::F32
        && outs
            .iter()
            .all(|o| o.dtype() == DType::F32 && o.dims2().is_ok_and(|(r, _)| r == t));
    if !cpu {
        let mut z: Option<Tensor> = None;
        for (i, o) in outs.iter().enumerate() {
            let term = sel.narrow(1, i, 1)?.broadcast_mul(o)?;
            z = Some(match z {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
        return Ok(z.expect("m > 0"));
    }
    let sel = sel.contiguous()?;
    let mut z = outs[0].contiguous()?.apply_op2(&sel, FirstTerm)?;
    for (i, o) in outs.iter().enumerate().skip(1) {
        z = z.apply_op3(&o.contiguous()?, &sel, AddTerm { col: i })?;
    }
    Ok(z)
}

/// `acc + sel[:, col] ⊙ out` (`acc` absent for the first term), rows in parallel.
fn term(acc: Option<&[f32]>, out: &[f32], sel: &[f32], m: usize, col: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0f32; out.len()];
    if c == 0 {
        return y;
    }
    y.par_chunks_mut(ROWS * c)
        .enumerate()
        .for_each(|(blk, rows)| {
            for (r, row) in rows.chunks_exact_mut(c).enumerate() {
                let t = blk * ROWS + r;
                let s = sel[t * m + col];
                let o = &out[t * c..(t + 1) * c];
                match acc {
                    Some(a) => {
                        let a = &a[t * c..(t + 1) * c];
                        for ((y, a), o) in row.iter_mut().zip(a).zip(o) {
                            *y = a + s * o;
                        }
                    }
                    None => {
                        for (y, o) in row.iter_mut().zip(o) {
                            *y = s * o;
                        }
                    }
                }
            }
        });
    y
}

/// The gradients of `sel[:, col] ⊙ out` from `dz`: `(sel[:, col] ⊙ dz, dsel)` where `dsel`
/// `[T, m]` is zero but for column `col`, `⟨dz[t], out[t]⟩`.
fn term_grads(
    dz: &[f32],
    out: &[f32],
    sel: &[f32],
    m: usize,
    col: usize,
    c: usize,
) -> (Vec<f32>, Vec<f32>) {
    let t = dz.len() / c.max(1);
    let mut dout = vec![0f32; dz.len()];
    let mut dsel = vec![0f32; t * m];
    if c == 0 {
        return (dout, dsel);
    }
    dout.par_chunks_mut(ROWS * c)
        .zip(dsel.par_chunks_mut(ROWS * m))
        .enumerate()
        .for_each(|(blk, (drows, srows))| {
            for (r, (drow, srow)) in drows
                .chunks_exact_mut(c)
                .zip(srows.chunks_exact_mut(m))
                .enumerate()
            {
                let ti = blk * ROWS + r;
                let s = sel[ti * m + col];
                let (g, o) = (&dz[ti * c..(ti + 1) * c], &out[ti * c..(ti + 1) * c]);
                let mut dot = 0f32;
                for ((d, g), o) in drow.iter_mut().zip(g).zip(o) {
                    *d = s * g;
                    dot += g * o;
                }
                srow[col] = dot;
            }
        });
    (dout, dsel)
}

/// `sel[:, 0] ⊙ out`.
struct FirstTerm;

impl CustomOp2 for FirstTerm {
    fn name(&self) -> &'static str {
        "select-first"
    }
    fn cpu_fwd(
        &self,
        os: &CpuStorage,
        ol: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, sel) = (
            cpu_f32(os, ol, "weighted sum output")?,
            cpu_f32(ss, sl, "weighted sum selection")?,
        );
        let (_, c) = ol.shape().dims2()?;
        let (_, m) = sl.shape().dims2()?;
        Ok((
            CpuStorage::F32(term(None, out, sel, m, 0, c)),
            ol.shape().clone(),
        ))
    }
    fn bwd(
        &self,
        out: &Tensor,
        sel: &Tensor,
        _z: &Tensor,
        dz: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ((t, c), m) = (out.dims2()?, sel.dim(1)?);
        let (dout, dsel) = term_grads(&host(dz)?, &host(out)?, &host(sel)?, m, 0, c);
        let dev = out.device();
        Ok((
            Some(Tensor::from_vec(dout, (t, c), dev)?),
            Some(Tensor::from_vec(dsel, (t, m), dev)?),
        ))
    }
}

/// `acc + sel[:, col] ⊙ out`.
struct AddTerm {
    col: usize,
}

impl CustomOp3 for AddTerm {
    fn name(&self) -> &'static str {
        "select-add"
    }
    fn cpu_fwd(
        &self,
        as_: &CpuStorage,
        al: &Layout,
        os: &CpuStorage,
        ol: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let acc = cpu_f32(as_, al, "weighted sum partial sum")?;
        let (out, sel) = (
            cpu_f32(os, ol, "weighted sum output")?,
            cpu_f32(ss, sl, "weighted sum selection")?,
        );
        let (_, c) = ol.shape().dims2()?;
        let (_, m) = sl.shape().dims2()?;
        if al.shape() != ol.shape() {
            candle_core::bail!(
                "weighted sum: partial sum {:?}, output {:?}",
                al.shape(),
                ol.shape()
            );
        }
        let y = term(Some(acc), out, sel, m, self.col, c);
        Ok((CpuStorage::F32(y), ol.shape().clone()))
    }
    fn bwd(
        &self,
        _acc: &Tensor,
        out: &Tensor,
        sel: &Tensor,
        _z: &Tensor,
        dz: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((t, c), m) = (out.dims2()?, sel.dim(1)?);
        let (dout, dsel) = term_grads(&host(dz)?, &host(out)?, &host(sel)?, m, self.col, c);
        let dev = out.device();
        Ok((
            Some(dz.clone()),
            Some(Tensor::from_vec(dout, (t, c), dev)?),
            Some(Tensor::from_vec(dsel, (t, m), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff;
    use candle_core::Var;

    fn seeded(shape: (usize, usize), seed: u64) -> Var {
        let t = crate::testing::randn(seed, &[shape.0, shape.1]);
        Var::from_tensor(&t).unwrap()
    }

    /// Values and the gradients of every output and of the selection against the candle
    /// formulation (column view, broadcast multiply, add), for 1, 2 and 8 codebooks and a row
    /// count that is not a multiple of the task size.
    #[test]
    fn matches_candle_formulation() {
        for &(t, c, m) in &[(3usize, 4usize, 1usize), (300, 5, 2), (517, 16, 8)] {
            let outs: Vec<Var> = (0..m).map(|i| seeded((t, c), i as u64)).collect();
            let sel = seeded((t, m), 99);
            let ot: Vec<Tensor> = outs.iter().map(|v| v.as_tensor().clone()).collect();
            let fast = weighted_sum(&ot, sel.as_tensor()).unwrap();
            let mut plain: Option<Tensor> = None;
            for (i, o) in ot.iter().enumerate() {
                let term = sel
                    .as_tensor()
                    .narrow(1, i, 1)
                    .unwrap()
                    .broadcast_mul(o)
                    .unwrap();
                plain = Some(match plain {
                    None => term,
                    Some(a) => (a + term).unwrap(),
                });
            }
            let plain = plain.unwrap();
            assert!(max_abs_diff(&fast, &plain) <= 1e-5, "values t={t} m={m}");
            let r = seeded((t, c), 7).as_tensor().clone();
            let gf = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (&plain * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in outs.iter().chain(std::iter::once(&sel)) {
                let (a, b) = (
                    gf.get(v.as_tensor()).unwrap(),
                    gp.get(v.as_tensor()).unwrap(),
                );
                assert!(max_abs_diff(a, b) <= 1e-4, "gradient t={t} m={m}");
            }
        }
        assert!(weighted_sum(&[], &seeded((2, 1), 1)).is_err());
    }
}
