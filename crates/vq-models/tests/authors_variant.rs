//! The authors' variant (`ModelConfig::authors_variant()`: raw-view selection rows, attention
//! probabilities as Gumbel logits, per-codebook 3×3 back-projection, no decoder `conv1`) against
//! the model of the authors' published script, written in PyTorch 2.15 from `gumbel.py`
//! (caihongch/Adaptive-dynamic-quantization @19e25cf; the comments give its line numbers):
//! reconstruction, losses, choices and three parameter gradients of one forward pass with given
//! Gumbel noise. Script (`pip install torch numpy`; its printout is pasted below):
//!
//! ```python
//! # The authors' gumbel.py model (caihongch/Adaptive-dynamic-quantization @19e25cf), scaled down:
//! # 1 input channel, 8×8 images, hidden C = 8 = 2·H·W (as 128 = 2·8·8 for CIFAR), residual 4 × 2
//! # layers, pool [(8,4),(16,2),(32,1)] (W = 32), 2 heads, batch 2. Every parameter is named as in
//! # vq-models and set to scale·sin(0.37·i + salt), salt = 0.01·Σ bytes(name).
//! import math, torch, torch.nn as nn, torch.nn.functional as F
//! torch.set_printoptions(precision=8)
//! B, CIN, S, C, RH, L, POOL, TAU = 2, 1, 8, 8, 4, 2, [(8, 4), (16, 2), (32, 1)], 2.0
//! def f(shape, salt, scale):
//!     n = math.prod(shape)
//!     return torch.tensor([scale * math.sin(0.37 * i + salt) for i in range(n)], dtype=torch.float64).float().reshape(shape)
//! shapes = {"encoder.conv1.weight": (C // 2, CIN, 4, 4), "encoder.conv1.bias": (C // 2,),
//!           "encoder.conv2.weight": (C, C // 2, 4, 4), "encoder.conv2.bias": (C,),
//!           "encoder.conv3.weight": (C, C, 3, 3), "encoder.conv3.bias": (C,),
//!           "decoder.deconv1.weight": (C, C // 2, 4, 4), "decoder.deconv1.bias": (C // 2,),
//!           "decoder.deconv2.weight": (C // 2, CIN, 4, 4), "decoder.deconv2.bias": (CIN,),
//!           "quantizer.selector.keys": (3, C),
//!           "quantizer.selector.q_proj.weight": (C, C), "quantizer.selector.q_proj.bias": (C,),
//!           "quantizer.selector.k_proj.weight": (C, C), "quantizer.selector.k_proj.bias": (C,)}
//! for part in ("encoder", "decoder"):
//!     for i in range(L):
//!         shapes[f"{part}.residual.layers.{i}.conv3.weight"] = (RH, C, 3, 3)
//!         shapes[f"{part}.residual.layers.{i}.conv1.weight"] = (C, RH, 1, 1)
//! for b, (n, d) in enumerate(POOL):
//!     p = f"quantizer.books.{b}."
//!     shapes[p + "project_in.weight"], shapes[p + "project_in.bias"] = (d, C), (d,)
//!     shapes[p + "quantizer.embedding"] = (n, d)
//!     shapes[p + "project_out.weight"], shapes[p + "project_out.bias"] = (C, d, 3, 3), (C,)
//! def scale(name, shape):
//!     if name.endswith(".bias"): return 0.1
//!     if name.endswith("embedding") or name.endswith("keys"): return 1.0
//!     return 1.0 / math.sqrt(math.prod(shape) / shape[0])
//! P = {k: f(v, 0.01 * sum(k.encode()), scale(k, v)).requires_grad_(True) for k, v in shapes.items()}
//! x = f((B, CIN, S, S), 7.0, 0.5)                      # images in [-0.5, 0.5]
//! g = f((B * 2 * 2, 3), 3.0, 1.0) * 1.5                # Gumbel noise, one row per raw-view row
//!
//! def residual_stack(h, part):                          # gumbel.py lines 27-55
//!     for i in range(L):
//!         r = F.conv2d(F.relu(h), P[f"{part}.residual.layers.{i}.conv3.weight"], padding=1)
//!         h = h + F.conv2d(F.relu(r), P[f"{part}.residual.layers.{i}.conv1.weight"])
//!     return F.relu(h)
//! def encoder(x):                                       # lines 194-201
//!     h = F.relu(F.conv2d(x, P["encoder.conv1.weight"], P["encoder.conv1.bias"], stride=2, padding=1))
//!     h = F.relu(F.conv2d(h, P["encoder.conv2.weight"], P["encoder.conv2.bias"], stride=2, padding=1))
//!     h = F.conv2d(h, P["encoder.conv3.weight"], P["encoder.conv3.bias"], padding=1)
//!     return residual_stack(h, "encoder")
//! def decoder(z):                                       # lines 80-86: no conv_1
//!     h = residual_stack(z, "decoder")
//!     h = F.relu(F.conv_transpose2d(h, P["decoder.deconv1.weight"], P["decoder.deconv1.bias"], stride=2, padding=1))
//!     return F.conv_transpose2d(h, P["decoder.deconv2.weight"], P["decoder.deconv2.bias"], stride=2, padding=1)
//! def vq(h, b, d):                                      # VectorQuantizerEMA.forward, lines 114-170
//!     p = f"quantizer.books.{b}."
//!     inputs = F.conv2d(h, P[p + "project_in.weight"][:, :, None, None], P[p + "project_in.bias"])
//!     inp = inputs.permute(0, 2, 3, 1).contiguous()
//!     flat = inp.view(-1, d)
//!     e = P[p + "quantizer.embedding"]
//!     dist = (flat ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * flat @ e.t()
//!     idx = dist.argmin(1)
//!     q = e[idx].view(inp.shape)                        # (the EMA update after this changes no output)
//!     loss = 0.25 * F.mse_loss(q.detach(), inp) + F.mse_loss(q, inp.detach())
//!     q = inp + (q - inp).detach()
//!     q = q.permute(0, 3, 1, 2).contiguous()
//!     return loss, F.conv2d(q, P[p + "project_out.weight"], P[p + "project_out.bias"], padding=1), idx
//! mha = nn.MultiheadAttention(C, 2)
//! with torch.no_grad():
//!     mha.in_proj_weight.copy_(torch.cat([P["quantizer.selector.q_proj.weight"], P["quantizer.selector.k_proj.weight"], torch.zeros(C, C)]))
//!     mha.in_proj_bias.copy_(torch.cat([P["quantizer.selector.q_proj.bias"], P["quantizer.selector.k_proj.bias"], torch.zeros(C)]))
//! mha.in_proj_weight.requires_grad_(False)
//! keys = P["quantizer.selector.keys"]
//! # in_proj is a copy: route the q/k weights through a functional MHA to get their gradients too
//! def attention_probs(query, k):                        # nn.MultiheadAttention weights, averaged over heads
//!     q = F.linear(query, P["quantizer.selector.q_proj.weight"], P["quantizer.selector.q_proj.bias"]).view(-1, 2, C // 2).transpose(0, 1)
//!     kk = F.linear(k, P["quantizer.selector.k_proj.weight"], P["quantizer.selector.k_proj.bias"]).view(-1, 2, C // 2).transpose(0, 1)
//!     return F.softmax(q @ kk.transpose(1, 2) / math.sqrt(C // 2), -1).mean(0)
//! h = encoder(x)
//! query = h.view(-1, C)                                 # line 254: raw view, no permute
//! _, w = mha(query.unsqueeze(1), keys.unsqueeze(1), keys.unsqueeze(1))  # lines 260-261
//! att = attention_probs(query, keys)
//! assert torch.allclose(att, w[0], atol=1e-6)
//! y = F.softmax((att + g) / TAU, -1)                    # F.gumbel_softmax(att, hard=True, tau) with noise g
//! sel = F.one_hot(y.argmax(-1), 3).float() - y.detach() + y
//! vqloss, Zs, idxs = [], [], []
//! for b, (n, d) in enumerate(POOL):                     # lines 273-286
//!     l, new_vec, idx = vq(h, b, d)
//!     vqloss.append(l); Zs.append(new_vec.reshape(-1, C).unsqueeze(1)); idxs.append(idx)
//! state = torch.bmm(sel.unsqueeze(1), torch.cat(Zs, 1)).squeeze(1).reshape(B, C, 2, 2)  # lines 295-298
//! x_recon = decoder(state)
//! recon = F.mse_loss(x, x_recon)
//! loss = recon + sum(vqloss) / 3
//! gw, gk, gp = torch.autograd.grad(loss, (P["encoder.conv1.weight"], keys, P["quantizer.books.1.project_out.weight"]))
//! r = lambda t, k=6: [float("%.7g" % v) for v in t.flatten().tolist()]
//! print("choice", y.argmax(-1).tolist())
//! print("recon", r(x_recon))
//! print("recon_loss", round(recon.item(), 8), "loss", round(loss.item(), 8), "per_book", r(torch.stack(vqloss), 8))
//! print("grad_conv1", r(gw, 7))
//! print("grad_keys", r(gk, 7))
//! print("grad_project_out_1", r(gp, 7))
//! ```

use candle_core::{DType, Device, Tensor};
use vq_core::{SeededVarMap, Selection, Step};
use vq_models::{ModelConfig, VqVae};

/// `scale·sin(0.37·i + salt)` over `shape`, as the script's `f`.
fn f(shape: &[usize], salt: f64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (scale * (0.37 * i as f64 + salt).sin()) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The script's `scale(name, shape)`.
fn scale(name: &str, shape: &[usize]) -> f64 {
    if name.ends_with(".bias") {
        0.1
    } else if name.ends_with("embedding") || name.ends_with("keys") {
        1.0
    } else {
        let n: usize = shape.iter().product();
        1.0 / ((n / shape[0]) as f64).sqrt()
    }
}

fn close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * peak.max(1e-30),
            "{name}[{i}]: {g} vs PyTorch {w} (tolerance {tol} × peak {peak})"
        );
    }
}

const CHOICE: &[u32] = &[0, 0, 2, 2, 1, 0, 0, 2];

const RECON: &[f32] = &[
    -0.02776287,
    -0.09461641,
    -0.1463299,
    -0.1070289,
    -0.1553652,
    -0.08801134,
    -0.1331571,
    -0.05150821,
    -0.03144772,
    -0.1275195,
    -0.0796497,
    -0.1322429,
    -0.07582924,
    -0.09859267,
    -0.05194459,
    -0.004866816,
    0.07797351,
    0.1226775,
    0.1791221,
    0.1448985,
    0.202286,
    0.1273269,
    0.1731062,
    0.09513159,
    0.05745692,
    0.07149562,
    0.03897206,
    0.1013494,
    0.06271506,
    0.07677829,
    0.03433251,
    0.035339,
    -0.008363679,
    -0.04358875,
    -0.05363126,
    -0.05214685,
    -0.0727322,
    -0.06945077,
    -0.08051278,
    -0.005034167,
    0.05684673,
    0.1112886,
    0.08680204,
    0.08621669,
    0.06034093,
    0.07818064,
    0.06482411,
    0.04599935,
    0.01611173,
    -0.01043079,
    -0.03607477,
    -0.02120247,
    -0.03736826,
    0.01104888,
    -0.003319617,
    0.007547403,
    -0.04096739,
    -0.1296315,
    -0.07925966,
    -0.1243344,
    -0.07069023,
    -0.1111163,
    -0.06412448,
    -0.01448403,
    -0.03918851,
    -0.1241142,
    -0.1714027,
    -0.1577023,
    -0.2096585,
    -0.1515746,
    -0.1971048,
    -0.07174368,
    -3.236905e-05,
    -0.03264377,
    -0.01036282,
    -0.04959114,
    -0.02404165,
    -0.03015061,
    -0.004770767,
    0.01575849,
    0.05834361,
    0.07849087,
    0.1020204,
    0.08279724,
    0.1123309,
    0.08771585,
    0.1100195,
    0.05939144,
    0.02974063,
    -0.004597217,
    -0.003805604,
    -0.0171619,
    -0.003536038,
    -0.02733986,
    -0.01099942,
    0.01031439,
    0.02326043,
    0.02707972,
    0.04221174,
    0.05894403,
    0.07753117,
    0.06360024,
    0.08572131,
    0.06733371,
    0.05562081,
    0.0793118,
    0.04960806,
    0.07265277,
    0.04397291,
    0.06678605,
    0.0427907,
    0.03752509,
    0.001354013,
    -0.03365761,
    -0.04688336,
    -0.0326827,
    -0.04352435,
    -0.02140697,
    -0.03051017,
    0.003244534,
    -0.04658021,
    -0.1237849,
    -0.07237422,
    -0.1112811,
    -0.06341827,
    -0.0879887,
    -0.04846759,
    -0.004932489,
];

const RECON_LOSS: f32 = 0.1349047;
const LOSS: f32 = 0.2381096;
const PER_BOOK: &[f32] = &[0.2789386, 0.02398781, 0.006688326];

const GRAD_CONV1: &[f32] = &[
    -8.750073e-06,
    -7.878589e-06,
    -5.940776e-06,
    0.0,
    -0.0001151274,
    -0.0001569482,
    -0.0001639465,
    -0.0001209178,
    0.0001015667,
    0.0001455682,
    0.0001632966,
    0.0001284055,
    -9.25496e-05,
    -0.0001381522,
    -0.0001657106,
    -0.0001316706,
    5.155407e-06,
    5.907793e-06,
    5.860586e-06,
    4.63826e-06,
    -0.0001085688,
    -0.0001651373,
    -0.0001876786,
    -0.0001553258,
    8.613469e-05,
    0.0001455835,
    0.0001796781,
    0.0001562852,
    -5.803713e-05,
    -0.0001166947,
    -0.0001601206,
    -0.0001469531,
    2.849275e-05,
    3.909412e-05,
    4.440429e-05,
    3.979163e-05,
    -7.394954e-05,
    -0.0001374735,
    -0.0001741413,
    -0.0001599399,
    4.6473e-05,
    0.0001122544,
    0.0001588509,
    0.0001524548,
    -1.105598e-05,
    -6.131025e-05,
    -0.0001036638,
    -0.0001058693,
    7.054249e-05,
    0.0001066191,
    9.410912e-05,
    5.667885e-05,
    -8.570071e-05,
    -0.0001311769,
    -0.0001595882,
    -0.0001519896,
    6.635187e-05,
    0.0001103976,
    0.0001481687,
    0.0001497219,
    -3.418307e-05,
    -4.898455e-05,
    -7.351626e-05,
    -9.531295e-05,
];

const GRAD_KEYS: &[f32] = &[
    -4.799624e-06,
    -6.269098e-06,
    -6.89008e-06,
    -6.578522e-06,
    -5.376592e-06,
    -3.446965e-06,
    -1.050808e-06,
    1.487572e-06,
    2.403864e-06,
    3.126281e-06,
    3.425571e-06,
    3.261226e-06,
    2.65549e-06,
    1.690345e-06,
    4.964198e-07,
    -7.646933e-07,
    2.395761e-06,
    3.142819e-06,
    3.464511e-06,
    3.317297e-06,
    2.721103e-06,
    1.756621e-06,
    5.543879e-07,
    -7.22879e-07,
];

const GRAD_PROJECT_OUT_1: &[f32] = &[
    -7.684345e-05,
    -0.0002102434,
    -0.0001334,
    -7.684344e-05,
    -0.0002102434,
    -0.0001334,
    0.0,
    0.0,
    0.0,
    0.000638464,
    0.001746835,
    0.001108371,
    0.000638464,
    0.001746835,
    0.001108371,
    0.0,
    0.0,
    0.0,
    4.721831e-05,
    5.076842e-05,
    3.550122e-06,
    4.721831e-05,
    5.076842e-05,
    3.550122e-06,
    0.0,
    0.0,
    0.0,
    -0.0003923196,
    -0.0004218163,
    -2.949666e-05,
    -0.0003923196,
    -0.0004218163,
    -2.949666e-05,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
];

#[test]
fn authors_variant_matches_the_published_script() {
    let cfg = ModelConfig {
        hidden: 8,
        residual_hidden: 4,
        residual_layers: 2,
        pool: vq_core::PoolConfig {
            capacity: Some(32),
            ..ModelConfig::authors_variant().pool
        },
        ..ModelConfig::authors_variant()
    };
    let valid = cfg.validate(1).unwrap();
    assert_eq!(valid.quantizer().pool(), vec![[8, 4], [16, 2], [32, 1]]);
    let vm = SeededVarMap::new(0);
    let model = VqVae::new(&valid, vm.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let vars = vm.named_vars();
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        !names.contains(&"decoder.conv1.weight"),
        "the decoder has no conv1"
    );
    assert!(names.contains(&"quantizer.books.2.project_out.weight"));
    for (name, var) in &vars {
        if var.dtype() != DType::F32 {
            continue;
        }
        let shape = var.dims().to_vec();
        let salt = 0.01 * name.bytes().map(f64::from).sum::<f64>();
        var.set(&f(&shape, salt, scale(name, &shape))).unwrap();
    }
    let var = |n: &str| vars.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(
        var("quantizer.books.0.project_out.weight").dims(),
        &[8, 4, 3, 3]
    );

    let x = f(&[2, 1, 8, 8], 7.0, 0.5);
    let noise = f(&[8, 3], 3.0, 1.0).affine(1.5, 0.0).unwrap();
    let mut step = Step {
        update_codebooks: false,
        selection: Selection::GumbelWithNoise {
            tau: 2.0,
            hard: true,
            noise: &noise,
        },
    };
    let out = model.forward(&x, &mut step).unwrap();
    let choice = out
        .quant
        .codes
        .codebook
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    assert_eq!(choice, CHOICE, "raw-view rows' codebooks");
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    close("reconstruction", &v(&out.reconstruction), RECON, 1e-5);
    close(
        "recon_loss",
        &[out.recon_loss.to_scalar::<f32>().unwrap()],
        &[RECON_LOSS],
        1e-5,
    );
    close(
        "loss",
        &[out.loss.to_scalar::<f32>().unwrap()],
        &[LOSS],
        1e-5,
    );
    close(
        "per-codebook VQ loss",
        &v(&out.quant.codebook_losses),
        PER_BOOK,
        1e-5,
    );
    let grads = out.loss.backward().unwrap();
    let g = |n: &str| v(grads.get(var(n).as_tensor()).unwrap());
    close(
        "∂loss/∂encoder.conv1.weight",
        &g("encoder.conv1.weight"),
        GRAD_CONV1,
        1e-3,
    );
    close(
        "∂loss/∂keys",
        &g("quantizer.selector.keys"),
        GRAD_KEYS,
        1e-3,
    );
    // The 3×3 back-projection's kernel (codebook [16,2], chosen for one raw row).
    close(
        "∂loss/∂books.1.project_out.weight",
        &g("quantizer.books.1.project_out.weight"),
        GRAD_PROJECT_OUT_1,
        1e-3,
    );
}
