//! Images/s from disk to a batched `[64, C, H, W]` tensor: IDX (the embedded Fashion-MNIST
//! subset, gzip inflate + parse + batch) and a PNG class folder (decode on access + batch).

use std::io::Cursor as IoCursor;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::{DynamicImage, GrayImage, ImageFormat};
use vq_data::folder::load_class_folders;
use vq_data::{load, Batcher, BatcherConfig, Cursor, DataConfig, ImageSpec, Normalization};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("disk_to_batch");
    g.sample_size(10);
    // IDX: load (inflate + parse) the 7,000-image subset and batch one epoch of it.
    g.throughput(Throughput::Elements(6_000));
    g.bench_function("idx_embedded_load_and_epoch", |b| {
        b.iter(|| {
            let data = load(&DataConfig::default()).unwrap();
            let batcher = Batcher::new(
                data.train,
                BatcherConfig::default(),
                Normalization::center(1),
            )
            .unwrap();
            batcher
                .stream(Cursor::default(), true)
                .map(|b| b.unwrap().indices.len())
                .sum::<usize>()
        })
    });
    // PNG folder: 1,280 28×28 grayscale PNGs in 10 class folders, decoded per batch.
    let dir = tempfile::tempdir().unwrap();
    let data = load(&DataConfig::default()).unwrap();
    for i in 0..1280 {
        let s = data.train.get(i).unwrap();
        let mut png = Vec::new();
        DynamicImage::ImageLuma8(GrayImage::from_raw(28, 28, s.image).unwrap())
            .write_to(&mut IoCursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let p = dir
            .path()
            .join(s.label.to_string())
            .join(format!("{i}.png"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, png).unwrap();
    }
    let spec = ImageSpec {
        size: 28,
        channels: 1,
    };
    let splits = load_class_folders(dir.path(), spec, 0.0, 0).unwrap();
    let batcher = Batcher::new(
        Arc::new(splits.train),
        BatcherConfig::default(),
        Normalization::center(1),
    )
    .unwrap();
    g.throughput(Throughput::Elements(1_280));
    g.bench_function("png_folder_epoch", |b| {
        b.iter(|| {
            batcher
                .stream(Cursor::default(), true)
                .map(|b| b.unwrap().indices.len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
