//! Peak memory of quantizers with large implicit codebooks: FSQ with 2^20 codes and LFQ with
//! 2^16 quantize a batch of latents (forward, code usage, loss, backward, decode) without
//! materialising a codebook or a distance matrix, so the process stays far below 512 MiB. Linux
//! only (reads the peak resident set size, `VmHWM`, from `/proc/self/status`); its own test
//! binary, so no other test's allocations count (the two tests here may run at once: the peak
//! each asserts then covers both).

use candle_core::{Device, Tensor, Var};
use vq_core::{Fsq, FsqConfig, Lfq, LfqConfig, Quantizer, Step};

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

#[test]
fn lfq_with_2_pow_16_codes_stays_under_512_mib() {
    if peak_rss_mib().is_none() {
        eprintln!("NOTICE: no /proc/self/status here; peak memory is not measured");
        return;
    }
    let q = Lfq::new(&LfqConfig::new(16).validate().unwrap());
    let dev = Device::Cpu;
    let z = Var::from_tensor(&Tensor::randn(0f32, 0.05, (64, 16, 7, 7), &dev).unwrap()).unwrap();
    for _ in 0..3 {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let mut step = Step::train(1.0, &mut rng);
        let out = q.forward(z.as_tensor(), &mut step).unwrap();
        // The loss includes the codebook entropy over all 2^16 codes.
        let total = (out.z_q.sqr().unwrap().mean_all().unwrap() + &out.loss).unwrap();
        let grads = total.backward().unwrap();
        assert!(grads.get(z.as_tensor()).is_some());
        assert_eq!(out.code_counts[0].dims(), &[1 << 16]);
        assert_eq!(q.decode(&out.codes).unwrap().dims(), &[64, 16, 7, 7]);
    }
    let peak = peak_rss_mib().unwrap();
    // The batch's mean distribution is 2^16 floats, its two factors 3136 × 256 each; a direct
    // softmax over the codes would be 3136 × 2^16 × 4 B = 784 MiB, twice that with its gradient.
    assert!(peak < 512.0, "peak resident memory {peak:.0} MiB");
    eprintln!("peak resident memory: {peak:.0} MiB");
}
