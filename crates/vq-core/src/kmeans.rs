//! k-means++ seeding and Lloyd iterations over `[T, D]` rows: the data-driven codebook
//! initialisation ([`CodebookInit::Kmeans`](crate::CodebookInit::Kmeans)).
//!
//! Seeding is the D²-sampling of Arthur & Vassilvitskii (2007): the first centre is a uniform
//! draw, each next one a row drawn with probability proportional to its squared distance to the
//! nearest centre so far. It costs `N·T·D` multiply-adds (`W·T` for a codebook of capacity `W`);
//! the distance updates run in parallel over fixed chunks of rows, and the draw scans per-chunk
//! sums, so the result depends only on the RNG, not on the thread count. Lloyd iterations use the
//! exact [`nearest`] search. With `N ≥ T` every row becomes a centre and the remaining centres
//! are rows again, jittered by 1e-3 of each dimension's spread (exact copies would tie, and ties
//! go to the lowest index, so they would never be used).

use candle_core::{Device, Tensor};
use rand::{Rng, RngCore};
use rayon::prelude::*;

use crate::error::{Result, VqError};
use crate::search::{nearest, SearchMethod};

/// Rows per chunk of the parallel distance update (and of the sampling's partial sums).
const CHUNK: usize = 1024;

/// Centres and how many rows of the sample each one received.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Kmeans {
    /// `N·D` row-major centres.
    pub centers: Vec<f32>,
    /// `N` rows assigned to each centre by the last assignment.
    pub counts: Vec<f32>,
}

/// k-means++ seeding of `n` centres over the rows of `x` (`T·D` values), then `iters` Lloyd
/// iterations (a centre that receives no row keeps its place). `rng` makes every choice.
pub(crate) fn kmeans(
    x: &[f32],
    d: usize,
    n: usize,
    iters: usize,
    rng: &mut dyn RngCore,
) -> Result<Kmeans> {
    let _span = tracing::debug_span!("kmeans", n, d, t = x.len() / d.max(1)).entered();
    if d == 0 || n == 0 || x.is_empty() || !x.len().is_multiple_of(d) {
        return Err(VqError::input(
            "x",
            format!(
                "k-means needs rows of D = {d} values and N = {n} ≥ 1 centres, got {} values",
                x.len()
            ),
        ));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(VqError::input(
            "x",
            "k-means sample holds NaN or infinite values",
        ));
    }
    let t = x.len() / d;
    if n >= t {
        return Ok(every_row(x, d, n, rng));
    }
    let mut centers = Vec::with_capacity(n * d);
    let first = rng.random_range(0..t);
    centers.extend_from_slice(&x[first * d..(first + 1) * d]);
    let mut dist = vec![f32::INFINITY; t];
    let mut sums = vec![0f64; t.div_ceil(CHUNK)];
    for k in 1..n {
        let c = &centers[(k - 1) * d..k * d];
        dist.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK * d))
            .zip(sums.par_iter_mut())
            .for_each(|((dc, xc), s)| {
                let mut acc = 0f64;
                for (dv, row) in dc.iter_mut().zip(xc.chunks_exact(d)) {
                    let e: f32 = row.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
                    if e < *dv {
                        *dv = e;
                    }
                    acc += *dv as f64;
                }
                *s = acc;
            });
        let total: f64 = sums.iter().sum();
        let pick = if total > 0.0 && total.is_finite() {
            let mut u = rng.random::<f64>() * total;
            let mut chosen = None;
            for (ci, &s) in sums.iter().enumerate() {
                if u < s {
                    let start = ci * CHUNK;
                    let end = (start + CHUNK).min(t);
                    let mut last_positive = None;
                    for (i, &dv) in dist[start..end].iter().enumerate() {
                        if dv > 0.0 {
                            last_positive = Some(start + i);
                        }
                        if u < dv as f64 {
                            chosen = Some(start + i);
                            break;
                        }
                        u -= dv as f64;
                    }
                    // Rounding can leave u just above the chunk's last weight.
                    chosen = chosen.or(last_positive);
                    break;
                }
                u -= s;
            }
            chosen.unwrap_or_else(|| {
                dist.iter()
                    .rposition(|&v| v > 0.0)
                    .expect("a positive total has a positive weight")
            })
        } else {
            // Every row sits on a centre already: any row will do.
            rng.random_range(0..t)
        };
        centers.extend_from_slice(&x[pick * d..(pick + 1) * d]);
    }
    let mut counts = vec![0f32; n];
    let xt = Tensor::from_slice(x, (t, d), &Device::Cpu)?;
    for it in 0..=iters {
        let cb = Tensor::from_slice(&centers, (n, d), &Device::Cpu)?;
        let idx = nearest(&xt, &cb, SearchMethod::Auto)?.to_vec1::<u32>()?;
        let mut sum = vec![0f64; n * d];
        counts.iter_mut().for_each(|c| *c = 0.0);
        for (row, &j) in x.chunks_exact(d).zip(&idx) {
            let j = j as usize;
            counts[j] += 1.0;
            for (s, &v) in sum[j * d..(j + 1) * d].iter_mut().zip(row) {
                *s += v as f64;
            }
        }
        if it == iters {
            break;
        }
        for j in 0..n {
            if counts[j] > 0.0 {
                for k in 0..d {
                    centers[j * d + k] = (sum[j * d + k] / counts[j] as f64) as f32;
                }
            }
        }
    }
    Ok(Kmeans { centers, counts })
}

/// `N ≥ T`: every row once (in random order), then jittered copies of random rows.
fn every_row(x: &[f32], d: usize, n: usize, rng: &mut dyn RngCore) -> Kmeans {
    use rand::seq::SliceRandom;
    let t = x.len() / d;
    let mut order: Vec<usize> = (0..t).collect();
    order.shuffle(rng);
    let mut spread = vec![0f64; d];
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for k in 0..d {
            mean[k] += row[k] as f64 / t as f64;
        }
    }
    for row in x.chunks_exact(d) {
        for k in 0..d {
            spread[k] += (row[k] as f64 - mean[k]).powi(2) / t as f64;
        }
    }
    let scale: Vec<f64> = spread.iter().map(|v| 1e-3 * v.sqrt().max(1e-6)).collect();
    let mut centers = Vec::with_capacity(n * d);
    let mut counts = vec![0f32; n];
    for (j, &r) in order.iter().enumerate() {
        centers.extend_from_slice(&x[r * d..(r + 1) * d]);
        counts[j] = 1.0;
    }
    for _ in t..n {
        let r = rng.random_range(0..t);
        for k in 0..d {
            let z = crate::init::standard_normal(rng);
            centers.push((x[r * d + k] as f64 + scale[k] * z) as f32);
        }
    }
    Kmeans { centers, counts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Four tight clusters at the corners of a square: seeding by D² draws one centre in each
    /// (a second centre in an occupied cluster has probability ~ (0.01² / 4²) per draw), and
    /// Lloyd moves each centre to its cluster's mean, computed here by hand: the points are the
    /// corner ± 0.01 on each axis, so every mean is exactly the corner.
    #[test]
    fn finds_four_clusters_and_their_means() {
        let corners = [[0f32, 0.], [4., 0.], [0., 4.], [4., 4.]];
        let mut x = Vec::new();
        for c in corners {
            for (dx, dy) in [(0.01f32, 0.), (-0.01, 0.), (0., 0.01), (0., -0.01)] {
                x.extend_from_slice(&[c[0] + dx, c[1] + dy]);
            }
        }
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let k = kmeans(&x, 2, 4, 3, &mut rng).unwrap();
            assert_eq!(k.counts, vec![4.0; 4], "seed {seed}");
            let mut got: Vec<[f32; 2]> = k.centers.chunks(2).map(|c| [c[0], c[1]]).collect();
            got.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mut want = corners.to_vec();
            want.sort_by(|a, b| a.partial_cmp(b).unwrap());
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g[0] - w[0]).abs() < 1e-6 && (g[1] - w[1]).abs() < 1e-6,
                    "{got:?}"
                );
            }
        }
    }

    /// The D² draw: with one centre at 0 and rows at distances 1 and 3 (weights 1 and 9), the
    /// second centre is the far row with probability 0.9. 4,000 seeds: std error 0.0047.
    #[test]
    fn second_centre_follows_squared_distance() {
        let x = [0f32, 0., 0., 1., 3.];
        let (mut far, mut runs) = (0, 0);
        for seed in 0..4000 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // Force the first centre onto a row at 0 by checking which was drawn.
            let k = kmeans(&x, 1, 2, 0, &mut rng).unwrap();
            if k.centers[0] == 0.0 {
                runs += 1;
                far += (k.centers[1] == 3.0) as usize;
            }
        }
        let p = far as f64 / runs as f64;
        let se = (0.9f64 * 0.1 / runs as f64).sqrt();
        assert!((p - 0.9).abs() < 4.5 * se, "{p} over {runs} runs");
    }

    /// More centres than rows: every row is a centre, the rest are jittered copies that differ
    /// from every row; seeded.
    #[test]
    fn more_centres_than_rows() {
        let x: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let k = kmeans(&x, 1, 25, 5, &mut rng).unwrap();
        assert_eq!(k.centers.len(), 25);
        let mut first: Vec<f32> = k.centers[..10].to_vec();
        first.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(first, x);
        for &c in &k.centers[10..] {
            assert!(!x.contains(&c), "{c} is an exact copy");
            assert!(
                x.iter().any(|&r| (r - c).abs() < 0.02),
                "{c} is far from every row"
            );
        }
        assert_eq!(k.counts.iter().sum::<f32>(), 10.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(kmeans(&x, 1, 25, 5, &mut rng).unwrap(), k);
        assert!(kmeans(&[1.0, f32::NAN], 1, 1, 1, &mut rng).is_err());
        assert!(kmeans(&[1.0, 2.0, 3.0], 2, 1, 1, &mut rng).is_err());
    }
}
