//! `HF_HOME` decides where the Hub cache is looked up (its own test binary: it sets the
//! process environment).

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageFormat};
use vq_data::hub::write_image_parquet;
use vq_data::{load, DataConfig};

#[test]
fn hf_home_cache_is_used_without_network() {
    let home = tempfile::tempdir().unwrap();
    let repo = home
        .path()
        .join("hub")
        .join("datasets--zalando-datasets--fashion_mnist");
    let hash = "fedcba9876543210fedcba9876543210fedcba98";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), hash).unwrap();
    let snap = repo.join("snapshots").join(hash).join("fashion_mnist");
    std::fs::create_dir_all(&snap).unwrap();
    let mut png = Vec::new();
    DynamicImage::ImageLuma8(GrayImage::from_fn(28, 28, |x, y| {
        image::Luma([(x + y) as u8])
    }))
    .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
    .unwrap();
    write_image_parquet(
        &snap.join("train-00000-of-00001.parquet"),
        &[(png.clone(), 1), (png.clone(), 2)],
    )
    .unwrap();
    write_image_parquet(&snap.join("test-00000-of-00001.parquet"), &[(png, 7)]).unwrap();
    // This test binary has a single test: nothing else reads the environment meanwhile.
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    // `fashion-mnist` without a path: its default repo, found in $HF_HOME/hub.
    let d = load(&DataConfig {
        name: "fashion-mnist".parse().unwrap(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!((d.train.len(), d.val.len()), (2, 1));
    let s = d.val.get(0).unwrap();
    assert_eq!(s.label, 7);
    assert_eq!(s.image[3 * 28 + 5], 8);
    assert!(
        d.source.contains("zalando-datasets/fashion_mnist"),
        "{}",
        d.source
    );
}
