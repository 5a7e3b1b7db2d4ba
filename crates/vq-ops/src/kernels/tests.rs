//! The tile kernels of every ISA the CPU runs against each other (bit for bit) and against
//! plain f64 sums from the definitions, through the direct and Winograd algorithms and the
//! fused search. On a CPU without AVX-512 the portable tiles are still checked against the
//! definitions, so the index logic is tested everywhere.

use super::direct::{self, Epilogue, Packed, Padded, Source};
use super::{search, winograd, Isa};

/// Deterministic values in about [-1, 1) (an LCG: no RNG state to share between tests).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `relu(conv(x, w) + bias + add) · [mask > 0]` by definition, in f64: `x` `[B, H, W, C]`
/// channel-last, `w` `[O, C, k, k]`, padding `p`, stride `s`; output `[B, Ho, Wo, O]`.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    (b, h, wd, c): (usize, usize, usize, usize),
    w: &[f32],
    o: usize,
    k: usize,
    s: usize,
    p: usize,
    bias: &[f32],
    add: Option<&[f32]>,
    relu: bool,
    mask: Option<&[f32]>,
) -> Vec<f32> {
    let ho = (h + 2 * p - k) / s + 1;
    let wo = (wd + 2 * p - k) / s + 1;
    let mut y = vec![0f32; b * ho * wo * o];
    for bi in 0..b {
        for oy in 0..ho {
            for ox in 0..wo {
                for oi in 0..o {
                    let mut acc = f64::from(bias[oi]);
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * s + ky) as isize - p as isize,
                                (ox * s + kx) as isize - p as isize,
                            );
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            for ci in 0..c {
                                let xv = x[((bi * h + iy as usize) * wd + ix as usize) * c + ci];
                                acc +=
                                    f64::from(xv) * f64::from(w[((oi * c + ci) * k + ky) * k + kx]);
                            }
                        }
                    }
                    let at = ((bi * ho + oy) * wo + ox) * o + oi;
                    let mut v = acc as f32 + add.map_or(0.0, |a| a[at]);
                    if relu {
                        v = v.max(0.0);
                    }
                    if mask.is_some_and(|m| m[at] <= 0.0) {
                        v = 0.0;
                    }
                    y[at] = v;
                }
            }
        }
    }
    y
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}: [{i}] {g} vs {w}");
    }
}

/// Results of the ISAs of this CPU, each against the first (the portable one) bit for bit.
fn same_everywhere(results: &[(Isa, Vec<f32>)], what: &str) {
    let (_, first) = &results[0];
    for (isa, r) in &results[1..] {
        assert!(
            r.iter().zip(first).all(|(a, b)| a.to_bits() == b.to_bits()) && r.len() == first.len(),
            "{what}: {isa:?} differs from the portable tiles"
        );
    }
}

/// Forward: strides 1 and 2, kernels 3 and 4, row lengths that split into uneven tiles (up to
/// 14 positions), 32 and 64 outputs, with every epilogue.
#[test]
fn direct_forward_matches_definition_on_every_isa() {
    for &(b, h, c, o, k, s, p) in &[
        (2usize, 7usize, 5usize, 32usize, 3usize, 1usize, 1usize),
        (1, 16, 3, 64, 4, 2, 1),
        (2, 15, 8, 32, 3, 2, 0),
    ] {
        let x = values(b * h * h * c, 1);
        let w = values(o * c * k * k, 2);
        let bias = values(o, 3);
        let ho = (h + 2 * p - k) / s + 1;
        let n_out = b * ho * ho * o;
        let add = values(n_out, 4);
        let mask = values(n_out, 5);
        for (relu, with_add, with_mask) in [
            (false, false, false),
            (true, true, false),
            (true, false, true),
        ] {
            let want = reference(
                &x,
                (b, h, h, c),
                &w,
                o,
                k,
                s,
                p,
                &bias,
                with_add.then_some(&add[..]),
                relu,
                with_mask.then_some(&mask[..]),
            );
            let results: Vec<(Isa, Vec<f32>)> = Isa::all_here()
                .into_iter()
                .map(|isa| {
                    let xp = Padded::from_nhwc(&x, (b, h, h, c), p, Source::Copy);
                    let ep = Epilogue {
                        bias: Some(&bias),
                        add: with_add.then_some(&add[..]),
                        relu,
                        mask: with_mask.then_some(&mask[..]),
                    };
                    let (y, ho2, _) =
                        direct::conv(&xp, &Packed::forward(&w, o, c, k), k, s, ep, isa);
                    assert_eq!(ho2, ho);
                    (isa, y)
                })
                .collect();
            let what = format!("direct forward b{b} h{h} c{c} o{o} k{k} s{s} relu {relu} add {with_add} mask {with_mask}");
            for (isa, y) in &results {
                assert_close(y, &want, 1e-5, &format!("{what} {isa:?}"));
            }
            same_everywhere(&results, &what);
        }
    }
}

/// The input gradient (a transposed convolution by residue classes) and the kernel gradient
/// against the definitions: `dX[b,iy,ix,c] = Σ dy[b,oy,ox,o]·w[o,c,ky,kx]` over
/// `oy·s + ky − p = iy`, and `dW[o,c,ky,kx] = Σ x_pad[b, oy·s+ky, ox·s+kx, c]·dy[b,oy,ox,o]`.
#[test]
fn direct_gradients_match_definition_on_every_isa() {
    for &(b, h, c, o, k, s, p) in &[
        (2usize, 7usize, 32usize, 32usize, 3usize, 1usize, 1usize),
        (1, 8, 32, 64, 4, 2, 1),
    ] {
        let x = values(b * h * h * c, 11);
        let w = values(o * c * k * k, 12);
        let ho = (h + 2 * p - k) / s + 1;
        let dy = values(b * ho * ho * o, 13);
        // Reference dX and dW in f64.
        let mut dx = vec![0f64; b * h * h * c];
        let mut dw = vec![0f64; o * c * k * k];
        for bi in 0..b {
            for oy in 0..ho {
                for ox in 0..ho {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * s + ky) as isize - p as isize,
                                (ox * s + kx) as isize - p as isize,
                            );
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= h as isize {
                                continue;
                            }
                            for oi in 0..o {
                                let g = f64::from(dy[((bi * ho + oy) * ho + ox) * o + oi]);
                                for ci in 0..c {
                                    let xi = ((bi * h + iy as usize) * h + ix as usize) * c + ci;
                                    let wi = ((oi * c + ci) * k + ky) * k + kx;
                                    dx[xi] += g * f64::from(w[wi]);
                                    dw[wi] += g * f64::from(x[xi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        let dx: Vec<f32> = dx.into_iter().map(|v| v as f32).collect();
        let dw: Vec<f32> = dw.into_iter().map(|v| v as f32).collect();
        let mut grads_x = Vec::new();
        let mut grads_w = Vec::new();
        for isa in Isa::all_here() {
            let pad = direct::input_grad_pad(k, s, p, h, ho);
            let dyp = Padded::from_nhwc(&dy, (b, ho, ho, o), pad, Source::Copy);
            let got = direct::input_grad(&dyp, &w, c, k, s, p, h, h, Epilogue::NONE, isa);
            assert_close(
                &got,
                &dx,
                1e-5,
                &format!("input gradient k{k} s{s} {isa:?}"),
            );
            grads_x.push((isa, got));
            let xp = Padded::from_nhwc(&x, (b, h, h, c), p, Source::Copy);
            let dy0 = Padded::from_nhwc(&dy, (b, ho, ho, o), 0, Source::Copy);
            let got = direct::kernel_grad(&xp, &dy0, k, s, isa);
            assert_close(
                &got,
                &dw,
                1e-5,
                &format!("kernel gradient k{k} s{s} {isa:?}"),
            );
            grads_w.push((isa, got));
        }
        same_everywhere(&grads_x, &format!("input gradient k{k} s{s}"));
        same_everywhere(&grads_w, &format!("kernel gradient k{k} s{s}"));
    }
}

/// Winograd F(2×2, 3×3) against the definition (odd and even sides, so partial output tiles
/// are written), with bias, residual, ReLU and mask.
#[test]
fn winograd_matches_definition_on_every_isa() {
    for &(b, h, c, o) in &[(2usize, 7usize, 32usize, 32usize), (1, 8, 16, 64)] {
        let x = values(b * h * h * c, 21);
        let w = values(o * c * 9, 22);
        let bias = values(o, 23);
        let add = values(b * h * h * o, 24);
        let mask = values(b * h * h * o, 25);
        let want = reference(
            &x,
            (b, h, h, c),
            &w,
            o,
            3,
            1,
            1,
            &bias,
            Some(&add),
            true,
            Some(&mask),
        );
        let results: Vec<(Isa, Vec<f32>)> = Isa::all_here()
            .into_iter()
            .map(|isa| {
                let xp = Padded::from_nhwc(&x, (b, h, h, c), 1, Source::Copy);
                let ep = Epilogue {
                    bias: Some(&bias),
                    add: Some(&add),
                    relu: true,
                    mask: Some(&mask),
                };
                (
                    isa,
                    winograd::conv(&xp, &winograd::Transformed::forward(&w, o, c), ep, isa),
                )
            })
            .collect();
        for (isa, y) in &results {
            // The transforms round differently from the direct sums: a few ulps of the largest.
            assert_close(y, &want, 1e-5, &format!("Winograd h{h} {isa:?}"));
        }
        same_everywhere(&results, &format!("Winograd h{h}"));
    }
}

/// The fused search against brute force (ties to the lowest index), whatever ISA runs it.
#[test]
fn fused_search_matches_brute_force() {
    for &(t, n, d) in &[(37usize, 100usize, 3usize), (64, 17, 8), (5, 1000, 1)] {
        let x = values(t * d, 31);
        let mut e = values(n * d, 32);
        // A duplicate codeword: the lower index must win.
        e.copy_within(0..d, (n - 1) * d);
        let want: Vec<u32> = x
            .chunks_exact(d)
            .map(|xv| {
                let mut best = (f64::INFINITY, 0u32);
                for (j, ev) in e.chunks_exact(d).enumerate() {
                    let dist: f64 = xv
                        .iter()
                        .zip(ev)
                        .map(|(a, b)| f64::from(a - b).powi(2))
                        .sum();
                    if dist < best.0 {
                        best = (dist, j as u32);
                    }
                }
                best.1
            })
            .collect();
        assert_eq!(
            search::nearest_fused(&x, &e, d),
            want,
            "fused t{t} n{n} d{d}"
        );
        assert_eq!(search::nearest_gemm(&x, &e, d), want, "gemm t{t} n{n} d{d}");
    }
}

/// The GEMM search's argmin on every ISA against a plain first-minimum scan, on rows full of
/// ties (values from a handful of integers), with NaN and ±∞ among them and row lengths that
/// leave a tail past the last whole group of lanes.
#[test]
fn argmin_rows_finds_the_first_minimum_on_every_isa() {
    let mut state = 7u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for &n in &[1usize, 5, 16, 33, 100, 1000] {
        let rows = 40;
        let enorm: Vec<f32> = (0..n).map(|_| (next() % 4) as f32).collect();
        let dots: Vec<f32> = (0..rows * n)
            .map(|_| match next() % 40 {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY, // distance +∞: never below the start
                2 => f32::INFINITY,     // distance −∞: the minimum
                v => (v % 5) as f32,
            })
            .collect();
        let want: Vec<u32> = dots
            .chunks_exact(n)
            .map(|row| {
                let (mut best, mut arg) = (f32::INFINITY, 0u32);
                for (j, (&dot, &en)) in row.iter().zip(&enorm).enumerate() {
                    let dist = en - 2.0 * dot;
                    if dist < best {
                        (best, arg) = (dist, j as u32);
                    }
                }
                arg
            })
            .collect();
        for isa in Isa::all_here() {
            let mut got = vec![u32::MAX; rows];
            search::argmin_rows(&dots, &enorm, &mut got, isa);
            assert_eq!(got, want, "n{n} {isa:?}");
        }
    }
    // A row of NaN only: index 0.
    let mut got = [9u32];
    search::argmin_rows(&[f32::NAN; 20], &[0.0; 20], &mut got, Isa::current());
    assert_eq!(got, [0]);
}

#[test]
fn the_portable_kernels_run_everywhere() {
    assert!(Isa::Scalar.runs_here());
    assert_eq!(Isa::all_here()[0], Isa::Scalar);
    assert!(Isa::current() <= Isa::detected());
}
