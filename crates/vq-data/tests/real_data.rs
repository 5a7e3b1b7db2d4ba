//! The real datasets in `../shared/data` (when present) and the embedded subset: counts, shapes,
//! label histograms and pixel statistics against the figures in `../shared/data/README.md`.

use std::path::PathBuf;

use vq_data::{load, DataConfig, Dataset, DatasetName, InMemoryDataset};

fn shared(name: &str) -> Option<PathBuf> {
    // $VQ_SHARED_DIR (see xtask/src/paths.rs), else `shared` beside the repository.
    let shared = std::env::var_os("VQ_SHARED_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let p = shared.join("data").join(name);
    if p.is_dir() {
        Some(p)
    } else {
        println!(
            "NOTICE: {} not found; skipping the real-data checks for {name}",
            p.display()
        );
        None
    }
}

fn histogram(ds: &dyn Dataset) -> Vec<usize> {
    let mut h = vec![0usize; 10];
    for i in 0..ds.len() {
        h[ds.get(i).unwrap().label as usize] += 1;
    }
    h
}

/// Mean and std of all pixels in [0, 1].
fn pixel_stats(ds: &InMemoryDataset) -> (f64, f64) {
    let (mut s, mut s2, mut n) = (0f64, 0f64, 0f64);
    for img in ds.pixels() {
        for &p in img {
            let v = p as f64 / 255.0;
            s += v;
            s2 += v * v;
            n += 1.0;
        }
    }
    let m = s / n;
    (m, (s2 / n - m * m).sqrt())
}

fn as_memory(ds: &dyn Dataset) -> InMemoryDataset {
    let [c, h, w] = ds.shape();
    let mut px = Vec::with_capacity(ds.len() * c * h * w);
    let mut labels = Vec::with_capacity(ds.len());
    for i in 0..ds.len() {
        let s = ds.get(i).unwrap();
        px.extend(s.image);
        labels.push(s.label);
    }
    InMemoryDataset::new([c, h, w], px, labels)
}

#[test]
fn fashion_mnist_full_set() {
    let Some(path) = shared("fashion-mnist") else {
        return;
    };
    let cfg = DataConfig {
        name: "fashion-mnist".parse().unwrap(),
        path: Some(path),
        ..Default::default()
    };
    let data = load(&cfg).unwrap();
    assert_eq!(data.train.len(), 60_000);
    assert_eq!(data.val.len(), 10_000);
    assert_eq!(data.train.shape(), [1, 28, 28]);
    assert_eq!(histogram(data.train.as_ref()), vec![6000; 10]);
    assert_eq!(histogram(data.val.as_ref()), vec![1000; 10]);
    // The known statistics of Fashion-MNIST's training set: mean 0.2860, std 0.3530.
    let (m, s) = pixel_stats(&as_memory(data.train.as_ref()));
    assert!((m - 0.2860).abs() < 5e-4, "mean {m}");
    assert!((s - 0.3530).abs() < 5e-4, "std {s}");
}

#[test]
fn mnist_10k() {
    let Some(path) = shared("mnist-10k") else {
        return;
    };
    let cfg = DataConfig {
        name: "mnist".parse().unwrap(),
        path: Some(path),
        ..Default::default()
    };
    let data = load(&cfg).unwrap();
    // shared/data/README.md: 7,996 train + 2,004 test; train mean 0.1309, std 0.3084.
    assert_eq!((data.train.len(), data.val.len()), (7_996, 2_004));
    // Label counts read from the IDX files with Python (gzip + bytes.count).
    assert_eq!(
        histogram(data.train.as_ref()),
        vec![800, 901, 792, 825, 784, 690, 811, 856, 755, 782]
    );
    assert_eq!(
        histogram(data.val.as_ref()),
        vec![201, 226, 199, 207, 196, 173, 203, 214, 189, 196]
    );
    let (m, s) = pixel_stats(&as_memory(data.train.as_ref()));
    assert!((m - 0.1309).abs() < 5e-4, "mean {m}");
    assert!((s - 0.3084).abs() < 5e-4, "std {s}");
}

#[test]
fn embedded_subset_is_balanced_fashion_mnist() {
    let data = load(&DataConfig::default()).unwrap();
    assert_eq!((data.train.len(), data.val.len()), (6_000, 1_000));
    assert_eq!(histogram(data.train.as_ref()), vec![600; 10]);
    assert_eq!(histogram(data.val.as_ref()), vec![100; 10]);
    let (m, _) = pixel_stats(&as_memory(data.train.as_ref()));
    // Computed from the subset files with Python when they were cut: 0.28382.
    assert!((m - 0.28382).abs() < 1e-4, "mean {m}");
    // The same images as the full set's prefix, when the full set is here.
    if let Some(path) = shared("fashion-mnist") {
        let full = load(&DataConfig {
            name: "fashion-mnist".parse().unwrap(),
            path: Some(path),
            ..Default::default()
        })
        .unwrap();
        for i in [0, 1234, 5999] {
            assert_eq!(data.train.get(i).unwrap(), full.train.get(i).unwrap());
        }
    }
}

#[test]
fn resize_and_channels_on_load() {
    let cfg = DataConfig {
        image_size: 32,
        channels: 3,
        max_train: Some(10),
        max_val: Some(5),
        ..Default::default()
    };
    let data = load(&cfg).unwrap();
    assert_eq!(data.train.shape(), [3, 32, 32]);
    assert_eq!((data.train.len(), data.val.len()), (10, 5));
    let s = data.train.get(0).unwrap();
    // Gray replicated to RGB: the three planes are equal.
    assert_eq!(&s.image[..1024], &s.image[1024..2048]);
}

#[test]
fn unknown_names_and_missing_paths() {
    let e = "imagenet".parse::<DatasetName>().unwrap_err().to_string();
    assert!(
        e.contains("unknown dataset `imagenet`") && e.contains("tiny-imagenet, celeba"),
        "{e}"
    );
    // The same name in a config file: serde names the field's accepted values.
    let e = toml::from_str::<DataConfig>(r#"name = "imagenet""#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown variant `imagenet`") && e.contains("fashion-mnist"),
        "{e}"
    );
    let e = load(&DataConfig {
        name: "mnist".parse().unwrap(),
        path: Some("/no/such/dir".into()),
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("/no/such/dir") && e.contains("does not exist"),
        "{e}"
    );
    let e = load(&DataConfig {
        name: "celeba".parse().unwrap(),
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("data.path"), "{e}");
    let e = load(&DataConfig {
        channels: 2,
        ..Default::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("channels"), "{e}");
}
