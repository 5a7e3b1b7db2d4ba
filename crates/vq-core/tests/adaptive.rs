//! Adaptive quantizer against PyTorch reference numbers, invariants, finite differences.
//!
//! The reference numbers below were printed by this PyTorch 2.15 script (CPU, float32):
//!
//! ```python
//! import torch, torch.nn as nn, torch.nn.functional as F, math
//! torch.set_printoptions(precision=8)
//! C, H, POOL, B, S, TAU = 8, 2, [(8, 4), (16, 2), (32, 1)], 2, 2, 0.5
//! def f(shape, salt, scale=1.0, fn=math.sin):
//!     n = math.prod(shape)
//!     return torch.tensor([scale * fn(0.37 * i + salt) for i in range(n)], dtype=torch.float64).float().reshape(shape)
//! keys = f((3, C), 1.0).requires_grad_(True)
//! wq, bq = f((C, C), 2.0, 0.3), f((C,), 3.0, 0.1)
//! wk, bk = f((C, C), 4.0, 0.3), f((C,), 5.0, 0.1)
//! books = []
//! for b, (n, d) in enumerate(POOL):
//!     books.append(dict(n=n, d=d,
//!         w_in=f((d, C), 6.0 + b, 0.4), b_in=f((d,), 7.0 + b, 0.1),
//!         w_out=f((C, d), 8.0 + b, 0.4), b_out=f((C,), 9.0 + b, 0.1),
//!         emb=f((n, d), 10.0 + b), ema_w=f((n, d), 10.0 + b, 0.5, math.cos),
//!         cs=f((n,), 20.0 + b, 0.25) + 0.75))
//! z_e = f((B, C, S, S), 30.0, 1.5).requires_grad_(True)
//! u = 0.05 + 0.9 * (0.5 + 0.5 * f((B * S * S, 3), 40.0))
//! g = -torch.log(-torch.log(u))
//! R = f((B, C, S, S), 50.0)
//! mha = nn.MultiheadAttention(C, H)
//! with torch.no_grad():
//!     mha.in_proj_weight.copy_(torch.cat([wq, wk, torch.zeros(C, C)]))
//!     mha.in_proj_bias.copy_(torch.cat([bq, bk, torch.zeros(C)]))
//! flat = z_e.permute(0, 2, 3, 1).reshape(-1, C)
//! outs, losses, idxs = [], [], []
//! for bk_ in books:
//!     p = F.linear(flat, bk_["w_in"], bk_["b_in"])
//!     e = bk_["emb"]
//!     dist = ((p.detach()[:, None, :] - e[None]) ** 2).sum(-1)
//!     idx = dist.argmin(1)
//!     zq = e[idx]
//!     loss = 1.0 * (F.mse_loss(zq, p.detach()) + 0.25 * F.mse_loss(p, zq.detach()))
//!     st = p + (zq - p).detach()
//!     outs.append(F.linear(st, bk_["w_out"], bk_["b_out"])); losses.append(loss); idxs.append(idx)
//!     # EMA update (decay 0.99, eps 1e-5)
//!     with torch.no_grad():
//!         counts = torch.bincount(idx, minlength=bk_["n"]).float()
//!         cs = 0.99 * bk_["cs"] + 0.01 * counts
//!         tot = cs.sum(); cs = (cs + 1e-5) / (tot + bk_["n"] * 1e-5) * tot
//!         dw = torch.zeros_like(e).index_add_(0, idx, p.detach())
//!         bk_["new_emb"] = (0.99 * bk_["ema_w"] + 0.01 * dw) / cs[:, None]
//! _, w = mha(flat.unsqueeze(1), keys.unsqueeze(1), keys.unsqueeze(1), need_weights=True)
//! w = w[0]  # [T, m], head-averaged softmax
//! def run(logits):
//!     y = F.softmax((logits + g) / TAU, -1)
//!     hard = F.one_hot(y.argmax(-1), 3).float()
//!     sel = hard - y.detach() + y
//!     zq = sum(sel[:, i:i + 1] * outs[i] for i in range(3))
//!     return zq.reshape(B, S, S, C).permute(0, 3, 1, 2), y.argmax(-1)
//! for name, logits in (("log_attention", torch.log(w)), ("attention_probs", w)):
//!     zq, choice = run(logits)
//!     loss = torch.stack(losses).mean()
//!     J = (zq * R).sum() + loss
//!     gz, gk = torch.autograd.grad(J, (z_e, keys), retain_graph=True)
//!     print(name)
//!     print(" choice", choice.tolist())
//!     print(" index", torch.stack(idxs, 1).gather(1, choice[:, None])[:, 0].tolist())
//!     print(" z_q", [round(v, 6) for v in zq.flatten().tolist()])
//!     print(" loss", round(loss.item(), 7), "per_book", [round(l.item(), 7) for l in losses])
//!     print(" grad_z_e", [round(v, 6) for v in gz.flatten().tolist()])
//!     print(" grad_keys", [round(v, 7) for v in gk.flatten().tolist()])
//! print("new_emb_book1", [round(v, 6) for v in books[1]["new_emb"].flatten().tolist()])
//! ```
const LOG_CHOICE: &[u32] = &[0, 0, 2, 1, 2, 0, 0, 0];
const LOG_INDEX: &[u32] = &[3, 3, 18, 6, 16, 3, 3, 3];
const LOG_ZQ: &[f32] = &[
    0.837975, 0.837975, -0.058997, -0.012987, -0.346345, -0.346345, -0.031976, -0.088112,
    -0.891566, -0.891566, -0.000627, -0.148579, 0.132478, 0.132478, 0.030807, -0.168842, 0.809062,
    0.809062, 0.058071, -0.139308, -0.13221, -0.13221, 0.077475, -0.071218, -0.999589, -0.999588,
    0.086394, 0.008664, -0.213168, -0.213168, 0.083619, 0.070852, 0.074382, 0.837975, 0.837975,
    0.837975, 0.166768, -0.346345, -0.346345, -0.346345, 0.236582, -0.891566, -0.891566, -0.891566,
    0.274376, 0.132478, 0.132478, 0.132478, 0.275035, 0.809062, 0.809062, 0.809062, 0.238468,
    -0.13221, -0.13221, -0.13221, 0.169627, -0.999589, -0.999589, -0.999588, 0.077827, -0.213168,
    -0.213168, -0.213168,
];
const LOG_LOSS: f32 = 0.2202334;
const LOG_PER_BOOK: &[f32] = &[0.6398734, 0.0187508, 0.0020761];
const LOG_GRAD_Z: &[f32] = &[
    -0.240609, -0.219472, -0.099354, 0.082088, -0.181657, -0.113262, -0.086667, 0.081612,
    -0.098118, 0.008277, -0.062249, 0.07009, -0.0013, 0.128696, -0.029406, 0.049082, 0.095695,
    0.231697, 0.007417, 0.021431, 0.179737, 0.303338, 0.043236, -0.009121, 0.239453, 0.333925,
    0.073203, -0.038439, 0.26676, 0.319315, 0.093263, -0.062553, -0.043577, -0.205703, -0.250839,
    -0.225259, -0.044049, -0.201688, -0.191325, -0.117963, -0.038559, -0.170375, -0.105916,
    0.005299, -0.027851, -0.116003, -0.006171, 0.127843, -0.013373, -0.04593, 0.094408, 0.233084,
    0.002915, 0.030359, 0.18221, 0.306779, 0.018809, 0.102539, 0.24535, 0.338953, 0.032156,
    0.160841, 0.275284, 0.32525,
];
const LOG_GRAD_KEYS: &[f32] = &[
    -0.2139216, -0.3971543, -0.5266341, -0.5848363, -0.5638837, -0.4666121, -0.3061868, -0.1043205,
    0.0103321, 0.0258018, 0.0377794, 0.0446438, 0.0454658, 0.0401342, 0.0293707, 0.014632,
    0.2035896, 0.3713525, 0.4888546, 0.5401925, 0.5184179, 0.4264779, 0.2768161, 0.0896885,
];
const PROBS_CHOICE: &[u32] = &[0, 0, 2, 2, 2, 0, 0, 0];
const PROBS_INDEX: &[u32] = &[3, 3, 18, 19, 16, 3, 3, 3];
const PROBS_ZQ: &[f32] = &[
    0.837975, 0.837975, -0.058997, -0.139052, -0.346345, -0.346345, -0.031976, -0.151264,
    -0.891566, -0.891566, -0.000627, -0.143003, 0.132478, 0.132478, 0.030807, -0.115386, 0.809062,
    0.809062, 0.058071, -0.072153, -0.13221, -0.13221, 0.077475, -0.019155, -0.999589, -0.999588,
    0.086394, 0.036437, -0.213168, -0.213168, 0.083619, 0.087096, 0.074382, 0.837975, 0.837975,
    0.837975, 0.166768, -0.346345, -0.346345, -0.346345, 0.236582, -0.891566, -0.891566, -0.891566,
    0.274376, 0.132478, 0.132478, 0.132478, 0.275035, 0.809062, 0.809062, 0.809062, 0.238468,
    -0.13221, -0.13221, -0.13221, 0.169627, -0.999589, -0.999589, -0.999588, 0.077827, -0.213168,
    -0.213168, -0.213168,
];
const PROBS_LOSS: f32 = 0.2202334;
const PROBS_PER_BOOK: &[f32] = &[0.6398734, 0.0187508, 0.0020761];
const PROBS_GRAD_Z: &[f32] = &[
    -0.216214, -0.230515, -0.092361, -0.055418, -0.154668, -0.122527, -0.080989, -0.045971,
    -0.072189, 0.002044, -0.058655, -0.030301, 0.020061, 0.126338, -0.028382, -0.01053, 0.109595,
    0.233534, 0.005732, 0.010665, 0.184296, 0.309121, 0.03907, 0.030418, 0.234054, 0.342871,
    0.067121, 0.046053, 0.252134, 0.330214, 0.086086, 0.055455, -0.030772, -0.163305, -0.218414,
    -0.233659, -0.029886, -0.155368, -0.155326, -0.124313, -0.024955, -0.126404, -0.071216,
    0.001859, -0.016646, -0.080331, 0.022533, 0.127778, -0.006085, -0.023386, 0.113232, 0.236404,
    0.0053, 0.036725, 0.188606, 0.313033, 0.015968, 0.091865, 0.238453, 0.347295, 0.024474,
    0.134571, 0.256027, 0.334552,
];
const PROBS_GRAD_KEYS: &[f32] = &[
    -0.1054097, -0.198077, -0.2639354, -0.2940715, -0.2844064, -0.2362481, -0.1561148, -0.0548521,
    0.0083951, 0.0231812, 0.0348299, 0.0417645, 0.0430464, 0.0385023, 0.028747, 0.015101,
    0.0970146, 0.1748957, 0.2291056, 0.2523071, 0.2413599, 0.1977459, 0.1273678, 0.0397512,
];
const NEW_EMB_BOOK1: &[f32] = &[
    0.002307, 0.190655, 0.378312, 0.50121, 0.575985, 0.573583, 0.551034, 0.361119, 0.1393,
    -0.151471, -0.475795, -0.716309, -0.856842, -0.898934, -0.890463, -0.665809, -0.337902,
    0.010817, 0.326272, 0.598529, 0.697996, 0.772549, 0.652379, 0.537718, 0.31155, 0.102669,
    -0.10937, -0.297429, -0.417662, -0.499784, -0.498509, -0.445073,
];

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use vq_core::{
    gradient_gap, AdaptiveConfig, AdaptiveQuantizer, ConfigError, Granularity, PoolConfig,
    PoolLoss, Quantizer, SeededVarMap, Selection, SelectionLogits, Step,
};

/// The nearest row of `codebook` `[N, d]` to `x` `[d]` by f64 squared distance, lowest index on
/// ties.
fn nearest_row(x: &[f32], codebook: &[f32], d: usize) -> u32 {
    let dist = |e: &[f32]| -> f64 {
        x.iter()
            .zip(e)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum()
    };
    let mut best = (f64::INFINITY, 0u32);
    for (j, e) in codebook.chunks_exact(d).enumerate() {
        let v = dist(e);
        if v < best.0 {
            best = (v, j as u32);
        }
    }
    best.1
}

const C: usize = 8;
const POOL: [[usize; 2]; 3] = [[8, 4], [16, 2], [32, 1]];

/// `scale · fn(0.37 i + salt)` for i = 0..n, the script's `f`.
fn f(n: usize, salt: f64, scale: f64, cos: bool) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let a = 0.37 * i as f64 + salt;
            (scale * if cos { a.cos() } else { a.sin() }) as f32
        })
        .collect()
}

fn set(vm: &SeededVarMap, name: &str, values: Vec<f32>, shape: &[usize]) {
    let data = vm.varmap().data().lock().unwrap();
    let var = data
        .get(name)
        .unwrap_or_else(|| panic!("no variable {name}"));
    var.set(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
        .unwrap();
}

/// The script's quantizer: weights by formula, keys a variable.
fn reference_quantizer(logits: SelectionLogits) -> (AdaptiveQuantizer, SeededVarMap) {
    let cfg = AdaptiveConfig {
        channels: C,
        pool: PoolConfig {
            capacity: Some(32),
            structures: POOL.iter().map(|&nd| nd.into()).collect(),
            heads: 2,
            selection_logits: logits,
            codebook: vq_core::CodebookConfig::authors(),
            ..PoolConfig::default()
        },
    }
    .validate()
    .unwrap();
    let vm = SeededVarMap::new(0);
    let q = AdaptiveQuantizer::new(&cfg, vm.var_builder(DType::F32, &Device::Cpu)).unwrap();
    set(&vm, "selector.keys", f(3 * C, 1.0, 1.0, false), &[3, C]);
    set(
        &vm,
        "selector.q_proj.weight",
        f(C * C, 2.0, 0.3, false),
        &[C, C],
    );
    set(&vm, "selector.q_proj.bias", f(C, 3.0, 0.1, false), &[C]);
    set(
        &vm,
        "selector.k_proj.weight",
        f(C * C, 4.0, 0.3, false),
        &[C, C],
    );
    set(&vm, "selector.k_proj.bias", f(C, 5.0, 0.1, false), &[C]);
    for (b, [n, d]) in POOL.iter().copied().enumerate() {
        let s = b as f64;
        let p = format!("books.{b}");
        set(
            &vm,
            &format!("{p}.project_in.weight"),
            f(d * C, 6.0 + s, 0.4, false),
            &[d, C],
        );
        set(
            &vm,
            &format!("{p}.project_in.bias"),
            f(d, 7.0 + s, 0.1, false),
            &[d],
        );
        set(
            &vm,
            &format!("{p}.project_out.weight"),
            f(C * d, 8.0 + s, 0.4, false),
            &[C, d],
        );
        set(
            &vm,
            &format!("{p}.project_out.bias"),
            f(C, 9.0 + s, 0.1, false),
            &[C],
        );
        set(
            &vm,
            &format!("{p}.quantizer.embedding"),
            f(n * d, 10.0 + s, 1.0, false),
            &[n, d],
        );
        set(
            &vm,
            &format!("{p}.quantizer.ema_w"),
            f(n * d, 10.0 + s, 0.5, true),
            &[n, d],
        );
        let cs: Vec<f32> = f(n, 20.0 + s, 0.25, false)
            .iter()
            .map(|v| v + 0.75)
            .collect();
        set(&vm, &format!("{p}.quantizer.ema_cluster_size"), cs, &[n]);
    }
    (q, vm)
}

fn z_e_var() -> Var {
    Var::from_vec(f(2 * C * 4, 30.0, 1.5, false), (2, C, 2, 2), &Device::Cpu).unwrap()
}

fn noise() -> Tensor {
    let u: Vec<f32> = f(8 * 3, 40.0, 1.0, false)
        .iter()
        .map(|&s| 0.05 + 0.9 * (0.5 + 0.5 * s))
        .collect();
    let g: Vec<f32> = u.iter().map(|&u| -(-u.ln()).ln()).collect();
    Tensor::from_vec(g, (8, 3), &Device::Cpu).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Numbers printed by the PyTorch script for one logit mode.
struct Reference {
    choice: &'static [u32],
    index: &'static [u32],
    zq: &'static [f32],
    loss: f32,
    per_book: &'static [f32],
    grad_z: &'static [f32],
    grad_keys: &'static [f32],
}

fn check_reference(mode: SelectionLogits, want: Reference) {
    let (q, vm) = reference_quantizer(mode);
    let z = z_e_var();
    let g = noise();
    let mut step = Step {
        update_codebooks: true,
        selection: Selection::GumbelWithNoise {
            tau: 0.5,
            hard: true,
            noise: &g,
        },
    };
    let out = q.forward(z.as_tensor(), &mut step).unwrap();
    assert_eq!(
        out.codes
            .codebook
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap(),
        want.choice
    );
    assert_eq!(
        out.codes
            .index
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap(),
        want.index
    );
    // Tolerance 2e-6·(1 + |v|): the script prints 6 decimals.
    assert_close(&flat(&out.z_q), want.zq, 2e-6, "z_q");
    assert_close(
        &[out.loss.to_scalar::<f32>().unwrap()],
        &[want.loss],
        1e-6,
        "loss",
    );
    assert_close(
        &flat(&out.codebook_losses),
        want.per_book,
        1e-6,
        "per-book loss",
    );
    let r = Tensor::from_vec(f(2 * C * 4, 50.0, 1.0, false), (2, C, 2, 2), &Device::Cpu).unwrap();
    let j = ((&out.z_q * &r).unwrap().sum_all().unwrap() + &out.loss).unwrap();
    let grads = j.backward().unwrap();
    assert_close(
        &flat(grads.get(z.as_tensor()).unwrap()),
        want.grad_z,
        1e-5,
        "dJ/dz_e",
    );
    let keys = vm
        .varmap()
        .data()
        .lock()
        .unwrap()
        .get("selector.keys")
        .unwrap()
        .clone();
    assert_close(
        &flat(grads.get(keys.as_tensor()).unwrap()),
        want.grad_keys,
        1e-5,
        "dJ/dkeys",
    );
    // EMA update of book 1 ([16, 2]) after the forward pass.
    let emb = q.books()[1].quantizer().unwrap().codebook().unwrap();
    assert_close(&flat(&emb), NEW_EMB_BOOK1, 2e-6, "EMA codebook");
}

#[test]
fn matches_pytorch_with_log_attention_logits() {
    check_reference(
        SelectionLogits::LogAttention,
        Reference {
            choice: LOG_CHOICE,
            index: LOG_INDEX,
            zq: LOG_ZQ,
            loss: LOG_LOSS,
            per_book: LOG_PER_BOOK,
            grad_z: LOG_GRAD_Z,
            grad_keys: LOG_GRAD_KEYS,
        },
    );
}

#[test]
fn matches_pytorch_with_authors_probability_logits() {
    check_reference(
        SelectionLogits::AttentionProbs,
        Reference {
            choice: PROBS_CHOICE,
            index: PROBS_INDEX,
            zq: PROBS_ZQ,
            loss: PROBS_LOSS,
            per_book: PROBS_PER_BOOK,
            grad_z: PROBS_GRAD_Z,
            grad_keys: PROBS_GRAD_KEYS,
        },
    );
}

fn random_quantizer(granularity: Granularity, seed: u64) -> AdaptiveQuantizer {
    let cfg = AdaptiveConfig {
        channels: 16,
        pool: PoolConfig {
            capacity: Some(256),
            granularity,
            ..PoolConfig::default()
        },
    }
    .validate()
    .unwrap();
    let vm = SeededVarMap::new(seed);
    AdaptiveQuantizer::new(&cfg, vm.var_builder(DType::F32, &Device::Cpu)).unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    vq_core::init::randn(seed, "input", shape, &Device::Cpu).unwrap()
}

/// Channel-last input (`forward_channels_last`) gives exactly what channel-first input gives
/// (the same rows in the same order, so the same Gumbel noise too): `z_q` (permuted), codes,
/// losses and the input gradient, per vector and per image.
#[test]
fn channels_last_equals_channels_first() {
    let max_diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    for gran in [Granularity::PerVector, Granularity::PerImage] {
        let q = random_quantizer(gran, 7);
        let z = Var::from_tensor(&randn(&[3, 16, 4, 5], 8)).unwrap();
        let zl = Var::from_tensor(&z.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()).unwrap();
        let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
        let mut s1 = Step {
            update_codebooks: false,
            ..Step::train(0.7, &mut r1)
        };
        let mut s2 = Step {
            update_codebooks: false,
            ..Step::train(0.7, &mut r2)
        };
        let a = q.forward(z.as_tensor(), &mut s1).unwrap();
        let b = q.forward_channels_last(zl.as_tensor(), &mut s2).unwrap();
        assert_eq!(b.z_q.dims(), &[3, 4, 5, 16]);
        let bq = b.z_q.permute((0, 3, 1, 2)).unwrap();
        assert_eq!(max_diff(&a.z_q, &bq), 0.0, "{gran:?} z_q");
        assert_eq!(max_diff(&a.loss, &b.loss), 0.0, "{gran:?} loss");
        for (x, y) in [
            (&a.codes.codebook, &b.codes.codebook),
            (&a.codes.index, &b.codes.index),
        ] {
            assert_eq!(x.dims(), &[3, 4, 5]);
            assert_eq!(
                x.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
                "{gran:?} codes"
            );
        }
        let r = randn(&[3, 16, 4, 5], 9);
        let ga = ((&a.z_q * &r).unwrap().sum_all().unwrap() + &a.loss)
            .unwrap()
            .backward()
            .unwrap();
        let rl = r.permute((0, 2, 3, 1)).unwrap();
        let gb = ((&b.z_q * &rl).unwrap().sum_all().unwrap() + &b.loss)
            .unwrap()
            .backward()
            .unwrap();
        let dz = ga.get(z.as_tensor()).unwrap();
        let dzl = gb
            .get(zl.as_tensor())
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap();
        assert!(max_diff(dz, &dzl) <= 1e-6, "{gran:?} input gradient");
    }
    // The last axis must hold the channels.
    let q = random_quantizer(Granularity::PerVector, 7);
    let err = q
        .forward_channels_last(&randn(&[2, 16, 4, 4], 1), &mut Step::eval())
        .unwrap_err();
    assert!(err.to_string().contains("channels last"), "{err}");
}

/// Each output vector is `project_out(e_k)` of the chosen codebook, `k` the brute-force argmin
/// of the projected input; losses are non-negative; selection counts add up.
#[test]
fn invariants_per_vector_and_per_image() {
    for gran in [Granularity::PerVector, Granularity::PerImage] {
        let q = random_quantizer(gran, 3);
        let z = randn(&[3, 16, 4, 5], 1);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // No EMA update, so the codebooks read below are the ones the forward pass used.
        let mut step = Step {
            update_codebooks: false,
            selection: Selection::Gumbel {
                tau: 2.0,
                hard: true,
                rng: &mut rng,
            },
        };
        let out = q.forward(&z, &mut step).unwrap();
        assert_eq!(out.z_q.dims(), &[3, 16, 4, 5]);
        assert!(out.loss.to_scalar::<f32>().unwrap() >= 0.0);
        assert!(flat(&out.codebook_losses).iter().all(|&l| l >= 0.0));
        let counts = flat(&out.selection_counts);
        let units = if gran == Granularity::PerVector {
            60.0
        } else {
            3.0
        };
        assert_eq!(counts.iter().sum::<f32>(), units);
        let book = out.codes.codebook.to_vec3::<u32>().unwrap();
        let index = out.codes.index.to_vec3::<u32>().unwrap();
        let zq = flat(&out.z_q); // [3, 16, 4, 5] row-major
        let zin = flat(&z);
        let at =
            |v: &[f32], b: usize, c: usize, h: usize, w: usize| v[((b * 16 + c) * 4 + h) * 5 + w];
        for b in 0..3 {
            for h in 0..4 {
                for w in 0..5 {
                    let cb = book[b][h][w] as usize;
                    if gran == Granularity::PerImage {
                        assert_eq!(cb, book[b][0][0] as usize, "one codebook per image");
                    }
                    let pq = &q.books()[cb];
                    let x: Vec<f32> = (0..16).map(|c| at(&zin, b, c, h, w)).collect();
                    let xt = Tensor::from_vec(x, (1, 16), &Device::Cpu).unwrap();
                    let code = pq.quantizer().unwrap().codebook().unwrap();
                    let d = code.dim(1).unwrap();
                    let p_in = flat(&pq.project(&xt).unwrap());
                    let want_index = nearest_row(&p_in, &flat(&code), d);
                    assert_eq!(index[b][h][w], want_index, "argmin at {b},{h},{w}");
                    let want = flat(
                        &pq.decode(&Tensor::new(&[index[b][h][w]], &Device::Cpu).unwrap(), &[1])
                            .unwrap(),
                    );
                    let got: Vec<f32> = (0..16).map(|c| at(&zq, b, c, h, w)).collect();
                    // Same linear layer on 1 row vs 60 rows: equal up to GEMM rounding.
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() < 1e-5,
                            "z_q is the selected codeword at {b},{h},{w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn encode_decode_round_trip_and_eval_is_deterministic() {
    let q = random_quantizer(Granularity::PerVector, 4);
    let z = randn(&[2, 16, 3, 3], 2);
    let a = q.forward(&z, &mut Step::eval()).unwrap();
    let b = q.forward(&z, &mut Step::eval()).unwrap();
    assert_eq!(flat(&a.z_q), flat(&b.z_q));
    let codes = q.encode(&z).unwrap();
    assert_eq!(codes.codebook.dims(), &[2, 3, 3]);
    let back = q.decode(&codes).unwrap();
    assert_eq!(flat(&back), flat(&a.z_q));
}

#[test]
fn fixed_pool_of_one_has_no_selector() {
    let cfg = AdaptiveConfig::fixed(16, 64, 8).validate().unwrap();
    let vm = SeededVarMap::new(1);
    let q = AdaptiveQuantizer::new(&cfg, vm.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let names: Vec<String> = vm.named_vars().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.iter().all(|n| !n.starts_with("selector")),
        "{names:?}"
    );
    assert!(names.contains(&"books.0.quantizer.embedding".to_string()));
    let z = randn(&[2, 16, 2, 2], 5);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let out = q.forward(&z, &mut Step::train(1.0, &mut rng)).unwrap();
    assert_eq!(flat(&out.selection_counts), vec![8.0]);
    assert!(out.logits.is_none());
    assert_eq!(
        out.codes
            .codebook
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap(),
        vec![0; 8]
    );
}

/// Central finite differences against autograd on smooth objectives:
/// the VQ loss w.r.t. `project_in`, and Σ R ⊙ z_q with the *soft* relaxation w.r.t.
/// `project_out`, the keys and both attention projections.
///
/// For `project_in`: the loss is `β(‖sg[p] − e‖² + α‖p − sg[e]‖²)` with equal values of both
/// norms, so its finite difference is `(1 + α)/α` times the autograd gradient, which by design
/// flows through the commitment term only (stop-gradient on `p` in the codebook term).
#[test]
fn gradients_match_finite_differences() {
    let (q, vm) = reference_quantizer(SelectionLogits::LogAttention);
    let z = z_e_var();
    let g = noise();
    let r = Tensor::from_vec(f(2 * C * 4, 50.0, 1.0, false), (2, C, 2, 2), &Device::Cpu).unwrap();
    let objective = |soft_part: bool| -> Tensor {
        let mut step = Step {
            update_codebooks: false,
            selection: Selection::GumbelWithNoise {
                tau: 0.5,
                hard: false,
                noise: &g,
            },
        };
        let out = q.forward(z.as_tensor(), &mut step).unwrap();
        if soft_part {
            (out.z_q * &r).unwrap().sum_all().unwrap()
        } else {
            out.loss
        }
    };
    let cases = [
        ("books.0.project_in.weight", false),
        ("books.2.project_in.bias", false),
        ("books.1.project_out.weight", true),
        ("selector.keys", true),
        ("selector.q_proj.weight", true),
        ("selector.k_proj.bias", true),
    ];
    let alpha = 0.25f32;
    for (name, soft) in cases {
        let scale = if soft { 1.0 } else { alpha / (1.0 + alpha) };
        let var = vm
            .varmap()
            .data()
            .lock()
            .unwrap()
            .get(name)
            .unwrap()
            .clone();
        let grads = objective(soft).backward().unwrap();
        let ag = flat(grads.get(var.as_tensor()).unwrap());
        let base = flat(var.as_tensor());
        let shape = var.as_tensor().dims().to_vec();
        let h = 1e-2f32;
        for i in (0..base.len()).step_by(3) {
            let eval = |delta: f32| -> f32 {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap())
                    .unwrap();
                objective(soft).to_scalar::<f32>().unwrap()
            };
            let fd = scale * (eval(h) - eval(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), shape.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
            assert!(
                (fd - ag[i]).abs() <= 3e-3 + 1e-2 * ag[i].abs(),
                "{name}[{i}]: fd {fd} vs autograd {}",
                ag[i]
            );
        }
    }
}

/// With `L(z) = ½‖z − y‖²` (decoder = identity) the two gradients are `z_e − y` and `z_q − y`,
/// so the gap is `‖z_e − z_q‖₂` and its mean absolute value: computed by hand here.
#[test]
fn gradient_gap_by_hand() {
    let cfg = vq_core::VqConfig {
        num_embeddings: 2,
        embedding_dim: 2,
        codebook: vq_core::CodebookConfig::authors(),
    };
    let cfg = vq_core::VqConfig {
        num_embeddings: 3,
        ..cfg
    }
    .validate()
    .unwrap();
    let dev = Device::Cpu;
    let mut ts = std::collections::HashMap::new();
    let e = Tensor::from_slice(&[0f32, 0., 1., 1., 3., 0.], (3, 2), &dev).unwrap();
    ts.insert("embedding".to_string(), e.clone());
    ts.insert("ema_w".to_string(), e);
    ts.insert(
        "ema_cluster_size".to_string(),
        Tensor::ones(3, DType::F32, &dev).unwrap(),
    );
    let vq = vq_core::VectorQuantizer::new(
        &cfg,
        candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev),
    )
    .unwrap();
    // z_e rows (0.5,0.25) → e0 (diff (0.5,0.25)); (1.25,0.75) → e1 (diff (0.25,-0.25)).
    let z_e = Tensor::from_slice(&[0.5f32, 0.25, 1.25, 0.75], (2, 2), &dev).unwrap();
    let y = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.4], (2, 2), &dev).unwrap();
    let gap = gradient_gap(
        &z_e,
        |z| Ok(vq.forward(z, false)?.quantized),
        |z| Ok((z - &y)?.sqr()?.sum_all()?.affine(0.5, 0.0)?),
    )
    .unwrap();
    let want_l2 = (0.25f64 + 0.0625 + 0.0625 + 0.0625).sqrt();
    let want_mean = (0.5 + 0.25 + 0.25 + 0.25) / 4.0;
    assert!((gap.l2 - want_l2).abs() < 1e-6, "{gap:?}");
    assert!((gap.mean_abs - want_mean).abs() < 1e-6, "{gap:?}");
}

#[test]
fn config_errors_name_the_problem() {
    let base = AdaptiveConfig::adaptive(128, 65536);
    assert_eq!(base.validate().unwrap().pool().len(), 8);
    let e = AdaptiveConfig {
        pool: PoolConfig {
            structures: vec![[512, 64].into()],
            ..base.pool.clone()
        },
        ..base.clone()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        e,
        ConfigError::CapacityMismatch {
            n: 512,
            d: 64,
            w: 65536
        }
    );
    let e = AdaptiveConfig {
        pool: PoolConfig {
            capacity: Some(4096),
            structures: vec![[64, 64].into()],
            ..base.pool.clone()
        },
        ..base.clone()
    }
    .validate()
    .unwrap_err();
    assert_eq!(e, ConfigError::NotMoreEmbeddingsThanDims { n: 64, d: 64 });
    assert!(AdaptiveConfig {
        pool: PoolConfig {
            capacity: Some(4096),
            structures: vec![[64, 64].into()],
            allow_n_le_d: true,
            ..base.pool.clone()
        },
        ..base.clone()
    }
    .validate()
    .is_ok());
    let e = AdaptiveConfig {
        pool: PoolConfig {
            capacity: None,
            structures: vec![],
            ..base.pool.clone()
        },
        ..base.clone()
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("pool"), "{e}");
    let e = AdaptiveConfig {
        pool: PoolConfig {
            heads: 3,
            ..base.pool.clone()
        },
        ..base.clone()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        e,
        ConfigError::HeadsDoNotDivide {
            heads: 3,
            channels: 128
        }
    );
    let mut cb = base.clone();
    cb.pool.codebook.decay = 1.0;
    assert_eq!(
        cb.validate().unwrap_err(),
        ConfigError::DecayOutOfRange(1.0)
    );
    let mut cb = base.clone();
    cb.pool.codebook.commitment = -1.0;
    assert!(cb
        .validate()
        .unwrap_err()
        .to_string()
        .contains("commitment"));
    let e = AdaptiveConfig {
        pool: PoolConfig {
            capacity: Some(1000),
            ..base.pool
        },
        ..base
    }
    .validate()
    .unwrap_err();
    assert_eq!(e, ConfigError::CapacityNotPowerOfTwo(1000));
}

/// The min-error router on a pool worked by hand. C = 2; book 0 is `[4, 2]` with identity
/// projections and codewords (k, k), k = 0..3; book 1 is `[8, 1]` projecting onto the first
/// coordinate and back as (q, 0), codewords 0..7.
/// - x = (2.9, 0.1): book 0 gives (2, 2), error 0.81 + 3.61 = 4.42; book 1 gives 3 → (3, 0),
///   error 0.01 + 0.01 = 0.02 → book 1.
/// - x = (1.0, 1.1): book 0 gives (1, 1), error 0.01; book 1 gives 1 → (1, 0), error 1.21
///   → book 0.
///
/// Losses (α = 0.25, β = 1): book 0's VQ loss is 1.25 · (4.42 + 0.01)/4 = 1.384375 and its
/// back-projection term (4.42 + 0.01)/4 = 1.1075; book 1's VQ loss 1.25 · (0.01 + 0)/2 =
/// 0.00625 and back-projection (0.02 + 1.21)/4 = 0.3075; the pool's loss is their mean,
/// (2.491875 + 0.31375)/2 = 1.4028125. Per image, the errors add up: book 0 (0.01 + 4.42 =
/// 4.43) against book 1 (0.02 + 1.21 = 1.23) → book 1 for both.
#[test]
fn min_error_router_by_hand() {
    use std::collections::HashMap;
    let dev = Device::Cpu;
    let build = |granularity: Granularity, vq_loss: PoolLoss| {
        let cfg = AdaptiveConfig {
            channels: 2,
            pool: PoolConfig {
                capacity: None,
                structures: vec![[4, 2].into(), [8, 1].into()],
                router: vq_core::Router::MinError,
                granularity,
                vq_loss,
                codebook: vq_core::CodebookConfig::authors(),
                ..PoolConfig::default()
            },
        }
        .validate()
        .unwrap();
        let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &dev).unwrap();
        let mut ts: HashMap<String, Tensor> = HashMap::new();
        let cb0 = [0f32, 0., 1., 1., 2., 2., 3., 3.];
        let cb1: Vec<f32> = (0..8).map(|k| k as f32).collect();
        for (name, v) in [
            ("books.0.project_in.weight", t(&[1., 0., 0., 1.], &[2, 2])),
            ("books.0.project_in.bias", t(&[0., 0.], &[2])),
            ("books.0.project_out.weight", t(&[1., 0., 0., 1.], &[2, 2])),
            ("books.0.project_out.bias", t(&[0., 0.], &[2])),
            ("books.0.quantizer.embedding", t(&cb0, &[4, 2])),
            ("books.0.quantizer.ema_w", t(&cb0, &[4, 2])),
            ("books.0.quantizer.ema_cluster_size", t(&[1.; 4], &[4])),
            ("books.1.project_in.weight", t(&[1., 0.], &[1, 2])),
            ("books.1.project_in.bias", t(&[0.], &[1])),
            ("books.1.project_out.weight", t(&[1., 0.], &[2, 1])),
            ("books.1.project_out.bias", t(&[0., 0.], &[2])),
            ("books.1.quantizer.embedding", t(&cb1, &[8, 1])),
            ("books.1.quantizer.ema_w", t(&cb1, &[8, 1])),
            ("books.1.quantizer.ema_cluster_size", t(&[1.; 8], &[8])),
        ] {
            ts.insert(name.to_string(), v);
        }
        AdaptiveQuantizer::new(
            &cfg,
            candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev),
        )
        .unwrap()
    };
    let x = Tensor::from_slice(&[2.9f32, 0.1, 1.0, 1.1], (2, 2), &dev).unwrap();
    let q = build(Granularity::PerVector, PoolLoss::Mean);
    // Two images of one position each; no noise is drawn (Argmax and Gumbel agree).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let out = q
        .forward_flat(&x, &[2, 1], &mut Step::validate(&mut rng))
        .unwrap();
    assert_eq!(flat_u32(&out.codes.codebook), vec![1, 0]);
    assert_eq!(flat_u32(&out.codes.index), vec![3, 1]);
    assert_eq!(flat(&out.z_q), vec![3., 0., 1., 1.]);
    assert!(out.logits.is_none());
    assert_eq!(flat(&out.selection_counts), vec![1., 1.]);
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!((loss - 1.402_812_5).abs() < 1e-6, "{loss}");
    let per_book = flat(&out.codebook_losses);
    assert!((per_book[0] - 2.491_875).abs() < 1e-6 && (per_book[1] - 0.313_75).abs() < 1e-6);
    // One image of two positions: the summed errors pick book 1 for both.
    let q = build(Granularity::PerImage, PoolLoss::Mean);
    let out = q.forward_flat(&x, &[1, 2], &mut Step::eval()).unwrap();
    assert_eq!(flat_u32(&out.codes.codebook), vec![1, 1]);
    assert_eq!(flat(&out.z_q), vec![3., 0., 1., 0.]);
    // The selected pool loss: each vector's VQ loss in its chosen codebook only. x1 → book 1:
    // z = 2.9, e = 3, 1.25 · 0.01 = 0.0125; x2 → book 0: z = (1.0, 1.1), e = (1, 1),
    // 1.25 · (0 + 0.01)/2 = 0.00625; over T = 2 vectors 0.009375, plus the mean of the
    // back-projection terms (1.1075 + 0.3075)/2 = 0.7075: 0.716875. The per-codebook losses
    // reported stay the unweighted ones.
    let q = build(Granularity::PerVector, PoolLoss::Selected);
    let out = q
        .forward_flat(&x, &[2, 1], &mut Step::validate(&mut rng))
        .unwrap();
    assert_eq!(flat_u32(&out.codes.codebook), vec![1, 0]);
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!((loss - 0.716_875).abs() < 1e-6, "{loss}");
    let per_book = flat(&out.codebook_losses);
    assert!((per_book[0] - 2.491_875).abs() < 1e-6 && (per_book[1] - 0.313_75).abs() < 1e-6);
    // Per image both vectors take book 1: x1 0.0125, x2 z = 1.0 = e, 0; (0.0125 + 0)/2 +
    // 0.7075 = 0.71375.
    let q = build(Granularity::PerImage, PoolLoss::Selected);
    let out = q.forward_flat(&x, &[1, 2], &mut Step::eval()).unwrap();
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!((loss - 0.713_75).abs() < 1e-6, "{loss}");
    // Its gradient reaches x through the chosen codebook only: the commitment term
    // β·α·mean_d (z − sg[e])² / T gives 2·β·α·(z − e)/(D·T). x1 (book 1, projecting onto the
    // first coordinate): 2 · 0.25 · (2.9 − 3)/(1 · 2) = −0.025 and 0; x2 (book 0, identity):
    // 2 · 0.25 · (1.0 − 1, 1.1 − 1)/(2 · 2) = (0, 0.0125). Under the mean loss book 0 would also
    // pull x1 toward (2, 2). (The back-projection terms compare detached values: no gradient to
    // x.)
    let xv = candle_core::Var::from_tensor(&x).unwrap();
    let q = build(Granularity::PerVector, PoolLoss::Selected);
    let out = q
        .forward_flat(xv.as_tensor(), &[2, 1], &mut Step::eval())
        .unwrap();
    let grads = out.loss.backward().unwrap();
    let g = flat(grads.get(xv.as_tensor()).unwrap());
    let want = [-0.025f32, 0.0, 0.0, 0.0125];
    for (a, b) in g.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{g:?} vs {want:?}");
    }
}

fn flat_u32(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<u32>().unwrap()
}

/// A pool of two members on C = 1 with identity projections, member 0 a VQ codebook with these
/// codewords (EMA statistics matching them), routed by the min-error router with the authors'
/// codebook settings; `lfq` is the LFQ loss where member 1 is LFQ.
fn identity_pair(
    second: vq_core::PoolMember,
    codewords: &[f32],
    lfq: vq_core::LfqLoss,
) -> AdaptiveQuantizer {
    use std::collections::HashMap;
    let dev = Device::Cpu;
    let n = codewords.len();
    let cfg = AdaptiveConfig {
        channels: 1,
        pool: PoolConfig {
            capacity: None,
            structures: vec![[n, 1].into(), second],
            heads: 1,
            router: vq_core::Router::MinError,
            codebook: vq_core::CodebookConfig::authors(),
            lfq,
            ..PoolConfig::default()
        },
    }
    .validate()
    .unwrap();
    assert_eq!(cfg.pool(), vec![[n, 1], [n, 1]]);
    let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &dev).unwrap();
    let mut ts: HashMap<String, Tensor> = HashMap::new();
    for b in 0..2 {
        for (name, v) in [
            ("project_in.weight", t(&[1.], &[1, 1])),
            ("project_in.bias", t(&[0.], &[1])),
            ("project_out.weight", t(&[1.], &[1, 1])),
            ("project_out.bias", t(&[0.], &[1])),
        ] {
            ts.insert(format!("books.{b}.{name}"), v);
        }
    }
    ts.insert("books.0.quantizer.embedding".into(), t(codewords, &[n, 1]));
    ts.insert("books.0.quantizer.ema_w".into(), t(codewords, &[n, 1]));
    ts.insert(
        "books.0.quantizer.ema_cluster_size".into(),
        t(&vec![1.; n], &[n]),
    );
    let q = AdaptiveQuantizer::new(
        &cfg,
        candle_nn::VarBuilder::from_tensors(ts, DType::F32, &dev),
    )
    .unwrap();
    assert!(q.books()[1].quantizer().is_none());
    q
}

/// A pool that mixes kinds at equal rate: a VQ codebook [3, 1] (codewords −2, 0.5, 3) and FSQ
/// with 3 levels (codes −1, 0, 1; `bound(z) = 1.001·tanh z`), identity projections on C = 1,
/// the min-error router. By hand:
/// - x = 0.6: VQ 0.5 (error 0.01), FSQ 1.001·tanh 0.6 = 0.538 → 1 (error 0.16) → VQ, index 1;
/// - x = 1.2: VQ 0.5 (0.49), FSQ 0.834 → 1 (0.04) → FSQ, index 2 (digit of code 1);
/// - x = −1.1: VQ −2 (0.81), FSQ −0.801 → −1 (0.01) → FSQ, index 0.
///
/// Losses (α = 0.25, β = 1): VQ 1.25·(0.01 + 0.49 + 0.81)/3 = 0.545833 plus its back-projection
/// term 0.436667; FSQ has no VQ loss and its back-projection term is (0.16 + 0.04 + 0.01)/3 =
/// 0.07; the pool's loss is the mean, (0.9825 + 0.07)/2 = 0.52625.
#[test]
fn mixed_vq_and_fsq_pool_by_hand() {
    let q = identity_pair(
        vq_core::PoolMember::fsq(&[3]),
        &[-2., 0.5, 3.],
        Default::default(),
    );
    let x = Tensor::new(&[[0.6f32], [1.2], [-1.1]], &Device::Cpu).unwrap();
    let out = q.forward_flat(&x, &[3], &mut Step::eval()).unwrap();
    assert_eq!(flat_u32(&out.codes.codebook), vec![0, 1, 1]);
    assert_eq!(flat_u32(&out.codes.index), vec![1, 2, 0]);
    assert_eq!(flat(&out.z_q), vec![0.5, 1.0, -1.0]);
    assert_eq!(flat(&out.selection_counts), vec![1., 2.]);
    let per_book = flat(&out.codebook_losses);
    assert!((per_book[0] - 0.9825).abs() < 1e-6 && (per_book[1] - 0.07).abs() < 1e-6);
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!((loss - 0.52625).abs() < 1e-6, "{loss}");
    // Decoding the codes gives the same latents, FSQ rows from their indices alone.
    let back = q.decode(&out.codes).unwrap();
    assert_eq!(flat(&back), vec![0.5, 1.0, -1.0]);
}

/// A VQ [2, 1] (codewords −0.5, 3) and LFQ with 1 bit (codes ±1) in one pool, identity
/// projections on C = 1, the min-error router, LFQ at β = 0.25 (so `P(bit = 1) = σ(x)`). By
/// hand, for x = (0.6, 2.5, −0.2):
/// - x = 0.6: VQ −0.5 (error 1.21), LFQ 1 (0.16) → LFQ, index 1;
/// - x = 2.5: VQ 3 (0.25), LFQ 1 (2.25) → VQ, index 1;
/// - x = −0.2: VQ −0.5 (0.09), LFQ −1 (0.64) → VQ, index 0.
///
/// Losses: VQ 1.25·1.55/3 plus its back-projection term 1.55/3 = 1.1625. LFQ: back-projection
/// term (0.16 + 2.25 + 0.64)/3 = 1.016667 plus 0.1·(H_sample − H_codebook), with
/// `q = σ(x)` = (0.645656, 0.924142, 0.450166), H_sample = mean H_b(q) = 0.535600 and
/// H_codebook = H_b(mean q) = 0.631801 (Python `math`): −0.0096201, so 1.007047. The pool's
/// loss is the mean, 1.084773.
#[test]
fn mixed_vq_and_lfq_pool_by_hand() {
    let q = identity_pair(
        vq_core::PoolMember::lfq(1),
        &[-0.5, 3.],
        vq_core::LfqLoss {
            inv_temperature: 0.25,
            ..Default::default()
        },
    );
    let x = Tensor::new(&[[0.6f32], [2.5], [-0.2]], &Device::Cpu).unwrap();
    let out = q.forward_flat(&x, &[3], &mut Step::eval()).unwrap();
    assert_eq!(flat_u32(&out.codes.codebook), vec![1, 0, 0]);
    assert_eq!(flat_u32(&out.codes.index), vec![1, 1, 0]);
    assert_eq!(flat(&out.z_q), vec![1.0, 3.0, -0.5]);
    assert_eq!(flat(&out.selection_counts), vec![2., 1.]);
    let per_book = flat(&out.codebook_losses);
    assert!(
        (per_book[0] - 1.1625).abs() < 1e-6 && (per_book[1] - 1.0070466).abs() < 1e-6,
        "{per_book:?}"
    );
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!((loss - 1.0847733).abs() < 1e-6, "{loss}");
    let back = q.decode(&out.codes).unwrap();
    assert_eq!(flat(&back), vec![1.0, 3.0, -0.5]);
}
