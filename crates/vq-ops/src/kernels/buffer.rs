//! Activation buffers filled by the rayon workers: zeros and tiled transposes (a plain
//! `vec![0.0; n]` of an activation is a single-threaded memset, with its page faults, on the
//! calling thread while the workers wait).

use rayon::prelude::*;

/// `n` zeros, written by the rayon workers: a plain `vec![0.0; n]` of an activation is a
/// single-threaded memset (and page faults) on the calling thread while the workers wait.
pub fn zeros(n: usize) -> Vec<f32> {
    let mut v: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit<f32>` needs no initialisation; the capacity is `n`.
    unsafe { v.set_len(n) };
    v.par_chunks_mut(1 << 14).for_each(|c| {
        for x in c {
            x.write(0.0);
        }
    });
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: every element was written above; `MaybeUninit<f32>` has the layout of `f32`, and
    // the pointer, length and capacity come from a live `Vec` that is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// `src` `[batch, rows, cols]` → `[batch, cols, rows]` (row-major), in 16 × 16 tiles.
pub fn transpose(src: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    const T: usize = 16;
    assert_eq!(src.len(), batch * rows * cols, "transpose: length");
    let mut out = zeros(src.len());
    if out.is_empty() {
        return out;
    }
    // One task per (matrix, band of up to 16 output rows).
    let bands = cols.div_ceil(T);
    out.par_chunks_mut(rows * cols)
        .enumerate()
        .flat_map(|(b, m)| {
            m.par_chunks_mut(T * rows)
                .enumerate()
                .map(move |(band, o)| (b, band, o))
        })
        .for_each(|(b, band, o)| {
            let s = &src[b * rows * cols..(b + 1) * rows * cols];
            let c0 = band * T;
            let nc = (cols - c0).min(T);
            debug_assert!(band < bands);
            for r0 in (0..rows).step_by(T) {
                let nr = (rows - r0).min(T);
                for c in 0..nc {
                    let dst = &mut o[c * rows + r0..c * rows + r0 + nr];
                    for (r, d) in dst.iter_mut().enumerate() {
                        *d = s[(r0 + r) * cols + c0 + c];
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty, one value, and lengths around the 16 Ki-element chunks.
    #[test]
    fn zeros_are_zeros() {
        for n in [0usize, 1, (1 << 14) - 1, 1 << 14, (1 << 14) + 1, 100_000] {
            let z = zeros(n);
            assert_eq!(z.len(), n);
            assert!(z.iter().all(|v| *v == 0.0), "n = {n}");
        }
    }

    /// Tiles: sizes that are and are not multiples of 16, one and several matrices.
    #[test]
    fn transpose_matches_index_formula() {
        for &(b, r, c) in &[
            (1usize, 1usize, 1usize),
            (2, 3, 5),
            (1, 16, 16),
            (3, 17, 40),
            (2, 49, 128),
        ] {
            let src: Vec<f32> = (0..b * r * c).map(|i| i as f32).collect();
            let t = transpose(&src, b, r, c);
            for bi in 0..b {
                for i in 0..r {
                    for j in 0..c {
                        assert_eq!(t[(bi * c + j) * r + i], src[(bi * r + i) * c + j]);
                    }
                }
            }
        }
    }
}
