//! Shapes of all three autoencoders at every input size, variable names, config errors.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use vq_core::{SeededVarMap, Step};
use vq_models::{EncoderKind, ModelConfig, QuantizerSpec, VqVae};

fn build(cfg: &ModelConfig, c: usize) -> (VqVae, SeededVarMap) {
    let vm = SeededVarMap::new(0);
    let m = VqVae::new(
        &cfg.validate(c).unwrap(),
        vm.var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    (m, vm)
}

#[test]
fn every_encoder_at_every_size() {
    for encoder in [
        EncoderKind::Cnn,
        EncoderKind::CnnResnet,
        EncoderKind::CnnInception,
    ] {
        for (size, c, latent) in [
            (28usize, 1usize, 7usize),
            (32, 3, 8),
            (64, 3, 16),
            (256, 3, 64),
        ] {
            let cfg = ModelConfig {
                encoder,
                quantizer: QuantizerSpec::Fixed { n: 512, d: 128 },
                ..Default::default()
            };
            let (model, _) = build(&cfg, c);
            let x = Tensor::zeros((1, c, size, size), DType::F32, &Device::Cpu).unwrap();
            let out = model.forward(&x, &mut Step::eval()).unwrap();
            assert_eq!(
                out.z_e.dims(),
                &[1, 128, latent, latent],
                "{encoder:?} {size}"
            );
            assert_eq!(
                out.reconstruction.dims(),
                &[1, c, size, size],
                "{encoder:?} {size}"
            );
            assert_eq!(out.quant.codes.index.dims(), &[1, latent, latent]);
        }
    }
}

#[test]
fn adaptive_model_trains_one_step_through_every_part() {
    let cfg = ModelConfig::default();
    let (model, vm) = build(&cfg, 1);
    let x = Tensor::rand(-0.5f32, 0.5, (4, 1, 28, 28), &Device::Cpu).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let out = model.forward(&x, &mut Step::train(1.0, &mut rng)).unwrap();
    assert_eq!(out.quant.selection_counts.dims(), &[8]);
    let loss = out.loss.to_scalar::<f32>().unwrap();
    let parts =
        out.recon_loss.to_scalar::<f32>().unwrap() + out.quant.loss.to_scalar::<f32>().unwrap();
    assert!((loss - parts).abs() < 1e-6);
    let grads = out.loss.backward().unwrap();
    let names: Vec<String> = vm.named_vars().into_iter().map(|(n, _)| n).collect();
    for must in [
        "encoder.conv1.weight",
        "encoder.residual.layers.1.conv3.weight",
        "decoder.deconv2.bias",
        "quantizer.books.7.quantizer.embedding",
        "quantizer.books.0.project_in.weight",
        "quantizer.selector.keys",
    ] {
        assert!(names.iter().any(|n| n == must), "missing {must}");
    }
    // Every trainable tensor receives a gradient; EMA buffers do not.
    for (name, var) in vm.named_vars() {
        let has = grads.get(var.as_tensor()).is_some();
        let buffer = name.contains("ema_")
            || name.ends_with("quantizer.embedding")
            || name.ends_with("quantizer.updates");
        assert_eq!(has, !buffer, "{name}");
    }
}

#[test]
fn config_errors_name_the_field() {
    let e = ModelConfig {
        hidden: 7,
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("hidden"), "{e}");
    let e = ModelConfig {
        quantizer: QuantizerSpec::Fixed { n: 512, d: 64 },
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("[512, 64]") && e.contains("65536"), "{e}");
    let e = ModelConfig {
        pool: vq_core::PoolConfig {
            heads: 3,
            ..Default::default()
        },
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("heads"), "{e}");
    // A chosen pool: each member at capacity W, and only for the adaptive quantizer.
    let ok = ModelConfig {
        pool: vq_core::PoolConfig {
            structures: vec![[8192, 8].into(), [16384, 4].into(), [32768, 2].into()],
            ..Default::default()
        },
        ..Default::default()
    }
    .validate(1)
    .unwrap();
    assert_eq!(
        ok.quantizer().pool(),
        vec![[8192, 8], [16384, 4], [32768, 2]]
    );
    let e = ModelConfig {
        pool: vq_core::PoolConfig {
            structures: vec![[8192, 8].into(), [4096, 4].into()],
            ..Default::default()
        },
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("[4096, 4]") && e.contains("65536"), "{e}");
    let e = ModelConfig {
        pool: vq_core::PoolConfig {
            structures: vec![[8192, 8].into(), [16384, 4].into(), [8192, 8].into()],
            ..Default::default()
        },
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("pool") && e.contains("[8192, 8] twice"), "{e}");
    let e = ModelConfig {
        quantizer: QuantizerSpec::Fixed { n: 512, d: 128 },
        pool: vq_core::PoolConfig {
            structures: vec![[8192, 8].into()],
            ..Default::default()
        },
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("pool") && e.contains("adaptive"), "{e}");
    // FSQ members: a pool that mixes kinds needs equal rate (the same number of codes).
    let mixed = |fsq: &str| ModelConfig {
        pool: vq_core::PoolConfig {
            structures: vec![
                [16384, 4].into(),
                fsq.parse::<QuantizerSpec>()
                    .map(|q| match q {
                        QuantizerSpec::Fsq(l) => vq_core::PoolMember::Fsq(l),
                        other => panic!("{other}"),
                    })
                    .unwrap(),
            ],
            ..Default::default()
        },
        ..Default::default()
    };
    // 8·8·8·8·4 = 16384 codes over 5 channels, as many as [16384, 4].
    let ok = mixed("fsq:8,8,8,8,4").validate(1).unwrap();
    assert_eq!(ok.quantizer().pool(), vec![[16384, 4], [16384, 5]]);
    let e = mixed("fsq:8,8,8,5,5,5")
        .validate(1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("equal rate") && e.contains("[16384, 4] has 16384") && e.contains("64000"),
        "{e}"
    );
    let fsq = ModelConfig {
        quantizer: "fsq:8,5,5,5".parse().unwrap(),
        ..Default::default()
    }
    .validate(1)
    .unwrap();
    assert_eq!(fsq.quantizer().pool(), vec![[1000, 4]]);
    let e = "fsq:8,x".parse::<QuantizerSpec>().unwrap_err();
    assert!(e.contains("whole numbers"), "{e}");
    let e = ModelConfig {
        quantizer: "fsq:8,1".parse().unwrap(),
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("levels") && e.contains("channel 1 has 1 level"),
        "{e}"
    );
    // LFQ members: 2^14 codes match [16384, 4]; 2^12 do not; the bits are checked; and an LFQ
    // member's batch-level entropy refuses the per-vector `selected` pool loss.
    let with_lfq = |bits: u32, vq_loss: vq_core::PoolLoss| ModelConfig {
        pool: vq_core::PoolConfig {
            structures: vec![[16384, 4].into(), vq_core::PoolMember::lfq(bits)],
            vq_loss,
            ..Default::default()
        },
        ..Default::default()
    };
    let ok = with_lfq(14, vq_core::PoolLoss::Mean).validate(1).unwrap();
    assert_eq!(ok.quantizer().pool(), vec![[16384, 4], [16384, 14]]);
    let e = with_lfq(12, vq_core::PoolLoss::Mean)
        .validate(1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("equal rate") && e.contains("lfq:12 has 4096"),
        "{e}"
    );
    let e = with_lfq(14, vq_core::PoolLoss::Selected)
        .validate(1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("vq_loss") && e.contains("LFQ"), "{e}");
    let e = ModelConfig {
        quantizer: "lfq:40".parse().unwrap(),
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("bits") && e.contains("40"), "{e}");
    let lfq = ModelConfig {
        quantizer: "lfq:10".parse().unwrap(),
        ..Default::default()
    }
    .validate(1)
    .unwrap();
    assert_eq!(lfq.quantizer().pool(), vec![[1024, 10]]);
    // Residual members: 2 stages of 256 codewords make 65536 codes, as [65536, 1]; the shape
    // parses and prints back; a stack is refused the per-vector `selected` pool loss.
    let with_rvq = |other: [usize; 2], vq_loss: vq_core::PoolLoss| ModelConfig {
        pool: vq_core::PoolConfig {
            structures: vec![other.into(), vq_core::PoolMember::rvq(2, 256, 8)],
            vq_loss,
            ..Default::default()
        },
        ..Default::default()
    };
    let ok = with_rvq([65536, 1], vq_core::PoolLoss::Mean)
        .validate(1)
        .unwrap();
    assert_eq!(ok.quantizer().pool(), vec![[65536, 1], [65536, 8]]);
    assert_eq!(ok.quantizer().labels()[1], "rvq:2x256,8");
    let e = with_rvq([16384, 4], vq_core::PoolLoss::Mean)
        .validate(1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("equal rate") && e.contains("rvq:2x256,8 has 65536"),
        "{e}"
    );
    let e = with_rvq([65536, 1], vq_core::PoolLoss::Selected)
        .validate(1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("vq_loss") && e.contains("rvq:2x256,8"), "{e}");
    let e = ModelConfig {
        quantizer: "rvq:2x256,8".parse().unwrap(),
        pool: vq_core::PoolConfig {
            rvq_min_stages: Some(3),
            ..Default::default()
        },
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("rvq_min_stages") && e.contains("got 3"), "{e}");
    let e = "rvq:2,256,8".parse::<QuantizerSpec>().unwrap_err();
    assert!(e.contains("rvq:KxN,D"), "{e}");
    let e = ModelConfig {
        quantizer: "rvq:4x1024,8".parse().unwrap(),
        ..Default::default()
    }
    .validate(1)
    .unwrap_err()
    .to_string();
    assert!(e.contains("stages") && e.contains("2^24"), "{e}");
    let e = "lfq:ten".parse::<QuantizerSpec>().unwrap_err();
    assert!(e.contains("whole number"), "{e}");
    assert_eq!(
        "fixed:[512,128]".parse::<QuantizerSpec>().unwrap(),
        QuantizerSpec::Fixed { n: 512, d: 128 }
    );
    assert_eq!(
        "fixed:16384x4".parse::<QuantizerSpec>().unwrap(),
        QuantizerSpec::Fixed { n: 16384, d: 4 }
    );
    assert!("fixed:0,4".parse::<QuantizerSpec>().is_err());
    assert!("adaptve".parse::<QuantizerSpec>().is_err());
    let x = Tensor::zeros((1, 1, 30, 30), DType::F32, &Device::Cpu).unwrap();
    let (model, _) = build(
        &ModelConfig {
            quantizer: QuantizerSpec::Fixed { n: 512, d: 128 },
            ..Default::default()
        },
        1,
    );
    let e = model
        .forward(&x, &mut Step::eval())
        .unwrap_err()
        .to_string();
    assert!(e.contains("divisible by 4"), "{e}");
}
