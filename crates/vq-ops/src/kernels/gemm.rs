//! Row-major `f32` matrix products on the CPU through the `gemm` crate (which picks its own
//! micro-kernels per ISA at run time, AVX-512 where the CPU has them).

/// `a · b` for `a` `[m, k]` (or `[k, m]` when `a_transposed`) and `b` `[k, n]` (or `[n, k]`
/// when `b_transposed`), all row-major; returns the row-major `[m, n]` product, computed with
/// `threads` rayon threads (1: on the calling thread).
///
/// # Panics
/// If `a` or `b` is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_transposed: bool,
    b: &[f32],
    b_transposed: bool,
    threads: usize,
) -> Vec<f32> {
    assert!(
        a.len() >= m * k && b.len() >= k * n,
        "matmul: operands too short"
    );
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    let (a_rs, a_cs) = if a_transposed {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_transposed {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: `c` has room for m·n values and gemm (read_dst = false, beta ignored) writes every
    // one of them before `set_len` makes them visible; the asserted lengths cover every element
    // of `a` and `b` the strides address.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.spare_capacity_mut().as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        );
        c.set_len(m * n);
    }
    c
}

/// The rayon pool's thread count (at least 1).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×3 by 3×2 product by hand, in all four transposition combinations.
    #[test]
    fn products_by_hand() {
        let a = [1., 2., 3., 4., 5., 6.]; // [2, 3]
        let at = [1., 4., 2., 5., 3., 6.]; // its transpose, [3, 2]
        let b = [7., 8., 9., 10., 11., 12.]; // [3, 2]
        let bt = [7., 9., 11., 8., 10., 12.]; // its transpose, [2, 3]
        let want = vec![58., 64., 139., 154.];
        for threads in [1, 2] {
            assert_eq!(matmul(2, 2, 3, &a, false, &b, false, threads), want);
            assert_eq!(matmul(2, 2, 3, &at, true, &b, false, threads), want);
            assert_eq!(matmul(2, 2, 3, &a, false, &bt, true, threads), want);
            assert_eq!(matmul(2, 2, 3, &at, true, &bt, true, threads), want);
        }
    }
}
