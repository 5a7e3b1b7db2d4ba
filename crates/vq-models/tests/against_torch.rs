//! The default model against the project's PyTorch reference (`bench/torch_reference.py`, the
//! one `cargo xtask bench --compare-torch` times) on shared weights: the same latents, quantized
//! latents, reconstructions and chosen codebooks. Runs wherever `python3` imports torch; skipped
//! with a notice otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use vq_core::{SeededVarMap, Step};
use vq_models::{ModelConfig, QuantizerSpec, VqVae};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/torch_reference.py")
}

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Largest absolute difference over all elements, and the largest magnitude of `a`.
fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (d, a.iter().map(|x| x.abs()).fold(0f32, f32::max))
}

/// Builds the default model with `quantizer`, gives its codebooks data (k-means initialisation
/// and one EMA update on the batch, as the first training step does), and compares its
/// evaluation forward (argmax routing) with the reference's on the saved weights.
fn agree(quantizer: QuantizerSpec, dir: &Path) {
    let cfg = ModelConfig {
        quantizer: quantizer.clone(),
        ..ModelConfig::default()
    };
    let valid = cfg.validate(1).unwrap();
    let vm = SeededVarMap::new(11);
    let dev = Device::Cpu;
    let model = VqVae::new(&valid, vm.var_builder(DType::F32, &dev)).unwrap();
    // 16 images 28×28 with strokes of varying brightness on a dark background (in the centred
    // [-0.5, 0.5] pixel scale), so that the latents spread over several codewords and codebooks.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut px = vec![-0.5f32; 16 * 28 * 28];
    for img in px.chunks_mut(28 * 28) {
        for _ in 0..6 {
            let (r, c0, len) = (
                rng.random_range(2..26),
                rng.random_range(0..14),
                rng.random_range(4..14),
            );
            let v = rng.random_range(-0.2f32..0.5);
            for c in c0..(c0 + len).min(28) {
                img[r * 28 + c] = v;
                img[c * 28 + r] = v.max(img[c * 28 + r]);
            }
        }
    }
    let x = Tensor::from_vec(px, (16, 1, 28, 28), &dev).unwrap();
    let mut noise = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    model
        .forward(&x, &mut Step::train(1.0, &mut noise))
        .unwrap();
    let ours = model.forward(&x, &mut Step::eval()).unwrap();

    let (weights, input, out) = (
        dir.join("model.safetensors"),
        dir.join("x.safetensors"),
        dir.join("out.safetensors"),
    );
    vm.varmap().save(&weights).unwrap();
    x.save_safetensors("x", &input).unwrap();
    let run = Command::new("python3")
        .arg(reference())
        .arg("forward")
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .env("ADQ_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs = candle_core::safetensors::load(&out, &dev).unwrap();

    // The encoder: the same convolutions in another order of summation, f32 rounding only.
    let (d, scale) = max_diff(&ours.z_e, &theirs["z_e"]);
    assert!(
        d <= 1e-4 * scale.max(1.0),
        "z_e differs by {d} (max |z_e| {scale})"
    );
    // The routing: the same codebook at every latent position.
    let ours_book = ours
        .quant
        .codes
        .codebook
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let their_book = theirs["codebook"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(ours_book, their_book, "chosen codebooks differ");
    let used: std::collections::BTreeSet<u32> = ours_book.iter().map(|&b| b as u32).collect();
    // The codewords. The k-means-initialised codebooks hold near-duplicates (more codewords
    // than the batch has vectors), so where the two nearest codewords tie to rounding torch may
    // take the other: every position whose index differs must be such a tie in our distances.
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let our_index = flat(&ours.quant.codes.index.to_dtype(DType::F32).unwrap());
    let their_index = flat(&theirs["index"]);
    let (b, c, h, w) = ours.z_e.dims4().unwrap();
    let z_flat = ours
        .z_e
        .permute((0, 2, 3, 1))
        .unwrap()
        .reshape((b * h * w, c))
        .unwrap();
    let mut differing = 0;
    for &k in &used {
        let book = &model.quantizer().books()[k as usize];
        let z = book.project(&z_flat).unwrap().to_vec2::<f32>().unwrap();
        let e = book
            .quantizer()
            .unwrap()
            .codebook()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let dist = |t: usize, i: usize| -> f32 {
            z[t].iter().zip(&e[i]).map(|(p, q)| (p - q) * (p - q)).sum()
        };
        for t in 0..z.len() {
            if ours_book[t] as u32 != k {
                continue;
            }
            let (i, j) = (our_index[t] as usize, their_index[t] as usize);
            if i != j {
                differing += 1;
                // Both sides search with ‖z‖² − 2 z·e + ‖e‖², whose rounding is relative to
                // the squared norms, not to the (here near-zero) distance.
                let (di, dj) = (dist(t, i), dist(t, j));
                let norm2 = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
                let rounding = norm2(&z[t]) + norm2(&e[i]).max(norm2(&e[j]));
                assert!(
                    (di - dj).abs() <= 1e-5 * rounding,
                    "position {t}: codeword {i} (distance {di}) here, {j} ({dj}) in torch"
                );
            }
        }
    }
    // Where the codewords agree, z_q agrees to rounding; the reconstruction as a whole too (a
    // tie changes its position's z_q by the tiny distance between the near-duplicates).
    let (zq_ours, zq_theirs) = (flat(&ours.quant.z_q), flat(&theirs["z_q"]));
    let scale = zq_ours.iter().map(|x| x.abs()).fold(0f32, f32::max);
    for t in (0..b * h * w).filter(|&t| our_index[t] == their_index[t]) {
        let (bi, p) = (t / (h * w), t % (h * w));
        for ch in 0..c {
            let k = (bi * c + ch) * h * w + p;
            let d = (zq_ours[k] - zq_theirs[k]).abs();
            assert!(
                d <= 1e-5 * scale,
                "z_q at position {t}, channel {ch}: {d} apart"
            );
        }
    }
    let (d, rscale) = max_diff(&ours.reconstruction, &theirs["reconstruction"]);
    assert!(
        d <= 1e-3 * rscale,
        "reconstructions {d} apart (max {rscale})"
    );
    println!(
        "{quantizer:?}: codebooks used {used:?}; {differing} of {} codewords differ, all at \
         ties; reconstruction max diff {d}",
        b * h * w
    );
}

#[test]
fn forward_agrees_with_the_torch_reference() {
    if !torch_available() {
        println!(
            "NOTICE: python3 cannot import torch; skipping the comparison with {} \
             (pip install torch)",
            reference().display()
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("vq-against-torch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    agree(QuantizerSpec::Fixed { n: 512, d: 128 }, &dir);
    agree(QuantizerSpec::Adaptive, &dir);
    std::fs::remove_dir_all(&dir).ok();
}
