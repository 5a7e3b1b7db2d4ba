//! Criterion benchmark of the quantizers: forward + EMA update for single codebooks
//! ([512,128], [65536,1]) and the full W = 65536 pool, T ∈ {3136, 4096} vectors of C = 128.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use vq_core::{AdaptiveConfig, AdaptiveQuantizer, Quantizer, SeededVarMap, Step};

fn latents(t: usize) -> Tensor {
    // [64, 128, s, s] with 64·s² = T.
    let side = ((t / 64) as f64).sqrt() as usize;
    assert_eq!(64 * side * side, t);
    let mut rng = vq_core::init::stream(0, "bench");
    let v: Vec<f32> = (0..t * 128)
        .map(|_| vq_core::init::standard_normal(&mut rng) as f32)
        .collect();
    Tensor::from_vec(v, (64, 128, side, side), &Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("quantizer_forward_ema");
    group.sample_size(10);
    let cases: Vec<(&str, AdaptiveConfig)> = vec![
        ("fixed_512x128", AdaptiveConfig::fixed(128, 512, 128)),
        ("fixed_65536x1", AdaptiveConfig::fixed(128, 65536, 1)),
        ("adaptive_w65536", AdaptiveConfig::adaptive(128, 65536)),
    ];
    for t in [3136usize, 4096] {
        let z = latents(t);
        for (name, cfg) in &cases {
            let cfg = cfg.validate().unwrap();
            let vm = SeededVarMap::new(0);
            let q = AdaptiveQuantizer::new(&cfg, vm.var_builder(DType::F32, &Device::Cpu)).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            group.bench_with_input(BenchmarkId::new(*name, t), &z, |b, z| {
                b.iter(|| {
                    let out = q.forward(z, &mut Step::train(1.0, &mut rng)).unwrap();
                    criterion::black_box(out.z_q);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
