//! Image-quality and rate metrics of validation reconstructions: PSNR, SSIM (Wang et al. 2004,
//! Gaussian window as scikit-image computes it) and bits per image of a code map.

/// Peak signal-to-noise ratio in dB of a mean squared error over pixels in `[0, 1]`
/// (`10·log10(1 / mse)`; an exact reconstruction is capped at 120 dB).
pub fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

/// Radius of the Gaussian window: scipy's `int(truncate·σ + 0.5)` with σ = 1.5, truncate = 3.5.
const RADIUS: usize = 5;
const SIGMA: f64 = 1.5;
/// Stabilisers `(K1·L)²`, `(K2·L)²` for the data range L = 1.
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

fn window() -> [f64; 2 * RADIUS + 1] {
    let mut w = [0f64; 2 * RADIUS + 1];
    for (i, v) in w.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *v = (-0.5 * x * x / (SIGMA * SIGMA)).exp();
    }
    let s: f64 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= s);
    w
}

/// scipy.ndimage's `reflect` index (`d c b a | a b c d | d c b a`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - 1 - i;
    }
    i as usize
}

/// Separable Gaussian filter of an `h × w` plane with reflected borders.
fn blur(x: &[f64], h: usize, w: usize, win: &[f64]) -> Vec<f64> {
    let r = RADIUS as isize;
    let mut tmp = vec![0f64; h * w];
    for i in 0..h {
        for j in 0..w {
            tmp[i * w + j] = (-r..=r)
                .map(|k| win[(k + r) as usize] * x[i * w + reflect(j as isize + k, w)])
                .sum();
        }
    }
    let mut out = vec![0f64; h * w];
    for i in 0..h {
        for j in 0..w {
            out[i * w + j] = (-r..=r)
                .map(|k| win[(k + r) as usize] * tmp[reflect(i as isize + k, h) * w + j])
                .sum();
        }
    }
    out
}

/// Mean SSIM of two `h × w` planes with values in `[0, 1]`: Gaussian-weighted local statistics
/// (σ = 1.5, 11 × 11 window, reflected borders), `K1 = 0.01`, `K2 = 0.03`, averaged over the
/// positions at least 5 pixels from the border, as `skimage.metrics.structural_similarity(a, b,
/// data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`. Planes smaller
/// than the window (h or w < 11) average over every position.
pub fn ssim_plane(a: &[f32], b: &[f32], h: usize, w: usize) -> f64 {
    assert_eq!(a.len(), h * w, "plane a is not {h}×{w}");
    assert_eq!(b.len(), h * w, "plane b is not {h}×{w}");
    let win = window();
    let a: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    let sq = |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p * q).collect() };
    let (ma, mb) = (blur(&a, h, w, &win), blur(&b, h, w, &win));
    let (maa, mbb, mab) = (
        blur(&sq(&a, &a), h, w, &win),
        blur(&sq(&b, &b), h, w, &win),
        blur(&sq(&a, &b), h, w, &win),
    );
    let (lo_i, hi_i) = if h > 2 * RADIUS {
        (RADIUS, h - RADIUS)
    } else {
        (0, h)
    };
    let (lo_j, hi_j) = if w > 2 * RADIUS {
        (RADIUS, w - RADIUS)
    } else {
        (0, w)
    };
    let mut total = 0f64;
    for i in lo_i..hi_i {
        for j in lo_j..hi_j {
            let k = i * w + j;
            let (ux, uy) = (ma[k], mb[k]);
            let (vx, vy, cxy) = (maa[k] - ux * ux, mbb[k] - uy * uy, mab[k] - ux * uy);
            total += ((2.0 * ux * uy + C1) * (2.0 * cxy + C2))
                / ((ux * ux + uy * uy + C1) * (vx + vy + C2));
        }
    }
    total / ((hi_i - lo_i) * (hi_j - lo_j)) as f64
}

/// Sum over images of the mean SSIM over their channels; `a`, `b` are `[B, C, H, W]` row-major
/// in `[0, 1]`.
pub fn ssim_sum(a: &[f32], b: &[f32], dims: [usize; 4]) -> f64 {
    use rayon::prelude::*;
    let [n, c, h, w] = dims;
    let plane = h * w;
    (0..n)
        .into_par_iter()
        .map(|i| {
            (0..c)
                .map(|ch| {
                    let o = (i * c + ch) * plane;
                    ssim_plane(&a[o..o + plane], &b[o..o + plane], h, w)
                })
                .sum::<f64>()
                / c as f64
        })
        .sum()
}

/// Bits of one image's codes: for each latent position, `log2 N` of the codebook it uses, plus
/// `log2 m` for naming that codebook when the pool has `m > 1` codebooks.
pub fn bits_per_image(codebooks: &[u32], pool: &[[usize; 2]]) -> f64 {
    let choice = if pool.len() > 1 {
        (pool.len() as f64).log2()
    } else {
        0.0
    };
    codebooks
        .iter()
        .map(|&b| (pool[b as usize][0] as f64).log2() + choice)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from scikit-image 0.26.0 (numpy 2.4.6), by this script:
    /// ```python
    /// import numpy as np
    /// from skimage.metrics import structural_similarity as ssim
    /// h, w = 16, 13
    /// i, j = np.mgrid[0:h, 0:w]
    /// a = (0.5 + 0.4 * np.sin(0.7 * i) * np.cos(0.45 * j)).astype(np.float32)
    /// b = np.clip(a + 0.08 * np.cos(1.3 * i + 0.2 * j * j), 0, 1).astype(np.float32)
    /// c = (0.3 + 0.02 * ((i * 7 + j * 3) % 5)).astype(np.float32)
    /// kw = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    /// print(repr(ssim(a, b, **kw)), repr(ssim(a, c, **kw)))
    /// # 0.9565016395515866 0.017901324018667866
    /// ```
    #[test]
    fn ssim_matches_scikit_image() {
        let (h, w) = (16usize, 13usize);
        let mut a = vec![0f32; h * w];
        let mut b = vec![0f32; h * w];
        let mut c = vec![0f32; h * w];
        for i in 0..h {
            for j in 0..w {
                let (fi, fj) = (i as f64, j as f64);
                let av = (0.5 + 0.4 * (0.7 * fi).sin() * (0.45 * fj).cos()) as f32;
                a[i * w + j] = av;
                b[i * w + j] =
                    (av as f64 + 0.08 * (1.3 * fi + 0.2 * fj * fj).cos()).clamp(0.0, 1.0) as f32;
                c[i * w + j] = (0.3 + 0.02 * ((i * 7 + j * 3) % 5) as f64) as f32;
            }
        }
        let (want_ab, want_ac) = (0.956_501_639_551_586_6, 0.017_901_324_018_667_866);
        assert!((ssim_plane(&a, &b, h, w) - want_ab).abs() < 1e-6);
        assert!((ssim_plane(&a, &c, h, w) - want_ac).abs() < 1e-6);
        assert!((ssim_plane(&a, &a, h, w) - 1.0).abs() < 1e-12);
        let two: Vec<f32> = a.iter().chain(&a).copied().collect();
        let other: Vec<f32> = b.iter().chain(&a).copied().collect();
        let s = ssim_sum(&two, &other, [1, 2, h, w]);
        assert!((s - (want_ab + 1.0) / 2.0).abs() < 1e-6);
    }

    /// PSNR of MSE 0.01 over [0, 1] pixels is 20 dB; bits of a pool of 8 codebooks:
    /// a [512,128] position costs 9 + 3 bits, a [65536,1] one 16 + 3.
    #[test]
    fn psnr_and_bits_by_hand() {
        assert!((psnr(0.01) - 20.0).abs() < 1e-12);
        assert!((psnr(1e-4) - 40.0).abs() < 1e-9);
        let pool = vq_core::structures(65536).unwrap();
        assert_eq!(bits_per_image(&[0, 7, 7], &pool), 12.0 + 19.0 + 19.0);
        assert_eq!(bits_per_image(&[0; 49], &[[32768, 2]]), 49.0 * 15.0);
    }
}
