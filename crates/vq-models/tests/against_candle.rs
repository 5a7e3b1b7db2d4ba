//! The CNN+ResNet, CNN and CNN+Inception encoders and decoders on the CPU (channel-last activations, direct and GEMM
//! convolution ops, fused ReLUs, layout changes) against the same network written with candle's
//! own channel-first convolutions: outputs and every parameter's gradient.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, Var};
use vq_core::SeededVarMap;
use vq_models::{Decoder, Encoder, EncoderKind, ModelConfig};

struct Reference {
    vars: HashMap<String, Var>,
}

impl Reference {
    fn w(&self, name: &str) -> &Tensor {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("no variable {name}"))
            .as_tensor()
    }

    fn conv(&self, x: &Tensor, name: &str, stride: usize, pad: usize, bias: bool) -> Tensor {
        let y = x
            .conv2d(self.w(&format!("{name}.weight")), pad, stride, 1, 1)
            .unwrap();
        if bias {
            let b = self
                .w(&format!("{name}.bias"))
                .reshape((1, (), 1, 1))
                .unwrap();
            y.broadcast_add(&b).unwrap()
        } else {
            y
        }
    }

    fn deconv(&self, x: &Tensor, name: &str) -> Tensor {
        let b = self
            .w(&format!("{name}.bias"))
            .reshape((1, (), 1, 1))
            .unwrap();
        x.conv_transpose2d(self.w(&format!("{name}.weight")), 1, 0, 2, 1)
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
    }

    fn residual_stack(&self, x: &Tensor, prefix: &str, layers: usize) -> Tensor {
        let mut h = x.clone();
        for i in 0..layers {
            let p = format!("{prefix}.residual.layers.{i}");
            let r = self.conv(&h.relu().unwrap(), &format!("{p}.conv3"), 1, 1, false);
            let r = self.conv(&r.relu().unwrap(), &format!("{p}.conv1"), 1, 0, false);
            h = (h + r).unwrap();
        }
        h.relu().unwrap()
    }

    /// The four branches, concatenated, then ReLU.
    fn inception(&self, x: &Tensor, prefix: &str) -> Tensor {
        let p = |n: &str| format!("{prefix}.inception.{n}");
        let a = self.conv(x, &p("b1"), 1, 0, true);
        let b = self.conv(x, &p("b3_reduce"), 1, 0, true).relu().unwrap();
        let b = self.conv(&b, &p("b3"), 1, 1, true);
        let c = self.conv(x, &p("b5_reduce"), 1, 0, true).relu().unwrap();
        let c = self.conv(&c, &p("b5"), 1, 2, true);
        // 3×3 max-pool, stride 1, padding 1 with −∞, written out: shifted to be positive (so a
        // zero-padded border never wins a window), the maximum over the nine offsets (candle's
        // max_pool2d has no gradient for stride 1), shifted back.
        let shift = (x.min_all().unwrap().detach() - 1.0).unwrap();
        let pos = x
            .broadcast_sub(&shift)
            .unwrap()
            .pad_with_zeros(2, 1, 1)
            .unwrap()
            .pad_with_zeros(3, 1, 1)
            .unwrap();
        let (h, w) = (x.dim(2).unwrap(), x.dim(3).unwrap());
        let mut m = pos.narrow(2, 0, h).unwrap().narrow(3, 0, w).unwrap();
        for (dy, dx) in (0..3).flat_map(|dy| (0..3).map(move |dx| (dy, dx))).skip(1) {
            let win = pos.narrow(2, dy, h).unwrap().narrow(3, dx, w).unwrap();
            m = m.maximum(&win).unwrap();
        }
        let pooled = m.broadcast_add(&shift).unwrap();
        let d = self.conv(&pooled, &p("pool_proj"), 1, 0, true);
        Tensor::cat(&[a, b, c, d], 1).unwrap().relu().unwrap()
    }

    /// The body's output with its final ReLU.
    fn body(&self, x: &Tensor, prefix: &str, kind: EncoderKind, layers: usize) -> Tensor {
        match kind {
            EncoderKind::Cnn => x.relu().unwrap(),
            EncoderKind::CnnResnet => self.residual_stack(x, prefix, layers),
            EncoderKind::CnnInception => self.inception(x, prefix),
        }
    }

    fn encoder(&self, x: &Tensor, kind: EncoderKind, layers: usize) -> Tensor {
        let h = self.conv(x, "encoder.conv1", 2, 1, true).relu().unwrap();
        let h = self.conv(&h, "encoder.conv2", 2, 1, true).relu().unwrap();
        let h = self.conv(&h, "encoder.conv3", 1, 1, true);
        // The plain CNN ends with conv3 (no ReLU).
        match kind {
            EncoderKind::Cnn => h,
            _ => self.body(&h, "encoder", kind, layers),
        }
    }

    fn decoder(&self, z: &Tensor, kind: EncoderKind, layers: usize) -> Tensor {
        let h = self.conv(z, "decoder.conv1", 1, 1, true);
        let h = self.body(&h, "decoder", kind, layers);
        let h = self.deconv(&h, "decoder.deconv1").relu().unwrap();
        self.deconv(&h, "decoder.deconv2")
    }
}

/// Seeded standard-normal data (the same on every run: ReLU masks near 0 cannot flip between
/// runs).
fn randn(shape: &[usize], seed: u64) -> Tensor {
    vq_core::init::randn(seed, "against-candle", shape, &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `a` within `tol` of `b`, relative to the largest magnitude of `b` (at least 1).
fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let err = max_abs(&(a - b).unwrap());
    let scale = max_abs(b).max(1.0);
    assert!(
        err <= tol * scale,
        "{what}: max error {err} (scale {scale})"
    );
}

/// Hidden 64 with residual hidden 32: conv1 (1 or 3 → 32) and deconv2 (32 → 1 or 3) take the
/// GEMM path, the other layers the direct kernels where the CPU has them; the ReLUs around the
/// residual 3×3 convolutions and deconv1 are fused into them (the decoder's Inception block
/// leaves its ReLU to deconv1).
#[test]
fn every_encoder_and_decoder_matches_candle_channel_first() {
    let dev = Device::Cpu;
    for (kind, c) in [
        (EncoderKind::CnnResnet, 1usize),
        (EncoderKind::CnnResnet, 3),
        (EncoderKind::Cnn, 1),
        (EncoderKind::CnnInception, 3),
    ] {
        let layers = if kind == EncoderKind::CnnResnet { 2 } else { 0 };
        let cfg = ModelConfig {
            encoder: kind,
            hidden: 64,
            residual_hidden: 32,
            residual_layers: 2,
            ..Default::default()
        }
        .validate(c)
        .unwrap();
        let vm = SeededVarMap::new(3);
        let vb = vm.var_builder(DType::F32, &dev);
        let enc = Encoder::new(&cfg, vb.pp("encoder")).unwrap();
        let dec = Decoder::new(&cfg, vb.pp("decoder")).unwrap();
        let reference = Reference {
            vars: vm.named_vars().into_iter().collect(),
        };
        let x = randn(&[2, c, 16, 16], c as u64);

        let z = enc.forward(&x).unwrap();
        let z_ref = reference.encoder(&x, kind, layers);
        assert_close(&z, &z_ref, 1e-5, "encoder output");
        let y = dec.forward(&z).unwrap();
        let y_ref = reference.decoder(&z_ref, kind, layers);
        assert_close(&y, &y_ref, 1e-5, "decoder output");

        // Gradients of Σ r ⊙ y with respect to every parameter.
        let r = randn(y.dims(), 10 + c as u64);
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&y_ref * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            reference.vars.len(),
            12 + 4 * layers
                + if kind == EncoderKind::CnnInception {
                    24
                } else {
                    0
                },
            "variables: {:?}",
            reference.vars.keys()
        );
        for (name, v) in &reference.vars {
            let (a, b) = (
                g.get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}")),
                g_ref.get(v.as_tensor()).unwrap(),
            );
            assert_close(a, b, 1e-4, &format!("{kind:?}, C = {c}: d/d {name}"));
        }
    }
}
