//! Peak memory of a quantizer with a large implicit codebook: FSQ with 2^20 codes quantizes a
//! batch of latents (forward, code usage, backward, decode) without materialising a codebook or
//! a distance matrix, so the process stays far below 512 MiB. Linux only (reads the peak
//! resident set size, `VmHWM`, from `/proc/self/status`); its own test binary, so no other
//! test's allocations count.

use candle_core::{Device, Tensor, Var};
use vq_core::{Fsq, FsqConfig, Quantizer, Step};

/// Peak resident set size of this process in MiB, where the OS reports it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[test]
fn fsq_with_2_pow_20_codes_stays_under_512_mib() {
    if peak_rss_mib().is_none() {
        eprintln!("NOTICE: no /proc/self/status here; peak memory is not measured");
        return;
    }
    let levels = [16u32, 16, 16, 16, 16];
    let q = Fsq::new(&FsqConfig::new(&levels).validate().unwrap());
    assert_eq!(q.config().codebook_size(), 1 << 20);
    // The paper's latent grid for a batch of 64 MNIST images: 64 × 7 × 7 vectors.
    let dev = Device::Cpu;
    let z = Var::from_tensor(&Tensor::randn(0f32, 1.5, (64, 5, 7, 7), &dev).unwrap()).unwrap();
    for _ in 0..3 {
        let out = q.forward(z.as_tensor(), &mut Step::eval()).unwrap();
        let grads = out
            .z_q
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(z.as_tensor()).is_some());
        assert_eq!(out.code_counts[0].dims(), &[1 << 20]);
        let back = q.decode(&out.codes).unwrap();
        assert_eq!(back.dims(), &[64, 5, 7, 7]);
    }
    let peak = peak_rss_mib().unwrap();
    // The per-batch code counts are 4 MiB; a materialised codebook would be 20 MiB, a distance
    // matrix to it 3136 × 2^20 × 4 B = 12 GiB.
    assert!(peak < 512.0, "peak resident memory {peak:.0} MiB");
    eprintln!("peak resident memory: {peak:.0} MiB");
}
