//! Capacity structures: every codebook shape `[N, D]` with a constant product `N·D = W`.

use crate::error::ConfigError;

/// All `[N, D]` with `N·D = W`, both powers of two and `N > D`, ordered by increasing `N`.
///
/// For `W = 65536` this is the paper's pool of eight: `[512, 128], [1024, 64], …, [65536, 1]`.
///
/// ```
/// let s = vq_core::structures(65536).unwrap();
/// assert_eq!(s.len(), 8);
/// assert_eq!(s[0], [512, 128]);
/// assert_eq!(s[7], [65536, 1]);
/// ```
pub fn structures(capacity: usize) -> Result<Vec<[usize; 2]>, ConfigError> {
    if capacity < 2 || !capacity.is_power_of_two() {
        return Err(ConfigError::CapacityNotPowerOfTwo(capacity));
    }
    let log_w = capacity.trailing_zeros();
    // D = 2^k, N = 2^(log_w − k), N > D  ⇔  k < log_w / 2 (strictly).
    let mut out: Vec<[usize; 2]> = (0..log_w)
        .filter(|&k| log_w - k > k)
        .map(|k| [1usize << (log_w - k), 1usize << k])
        .collect();
    out.sort_by_key(|s| s[0]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_pool_for_65536() {
        // Hand-enumerated: 2^16 = 2^(16-k) · 2^k with 16-k > k  ⇒  k = 0..7.
        let expected = vec![
            [512, 128],
            [1024, 64],
            [2048, 32],
            [4096, 16],
            [8192, 8],
            [16384, 4],
            [32768, 2],
            [65536, 1],
        ];
        assert_eq!(structures(65536).unwrap(), expected);
    }

    #[test]
    fn odd_exponent_and_small_capacities() {
        // 2^13 = 8192: k = 0..6 (13-k > k ⇔ k ≤ 6) → 7 structures, smallest [128, 64].
        let s = structures(8192).unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(s[0], [128, 64]);
        assert_eq!(structures(2).unwrap(), vec![[2, 1]]);
        // 4 = 4·1 only (2·2 has N = D).
        assert_eq!(structures(4).unwrap(), vec![[4, 1]]);
        for w in [4096usize, 16384, 32768] {
            for [n, d] in structures(w).unwrap() {
                assert_eq!(n * d, w);
                assert!(n > d);
            }
        }
    }

    #[test]
    fn rejects_non_powers_of_two() {
        assert_eq!(
            structures(1000),
            Err(ConfigError::CapacityNotPowerOfTwo(1000))
        );
        assert!(structures(0).is_err());
        assert!(structures(1).is_err());
    }
}
