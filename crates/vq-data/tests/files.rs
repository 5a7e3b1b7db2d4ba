//! Image-folder layouts, CIFAR-10 files and the Hub cache, each built by the test in a temporary
//! folder, plus the bad inputs each must reject with the file (and row) named.

use std::io::Cursor as IoCursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, RgbImage};
use vq_data::folder::{load_celeba, load_class_folders, load_retinopathy, load_tiny_imagenet};
use vq_data::hub::{write_image_parquet, HubSource};
use vq_data::{load, DataConfig, Dataset, ImageSpec};

fn png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let mut img = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            img.put_pixel(x, y, image::Rgb(f(x, y)));
        }
    }
    let mut out = Vec::new();
    DynamicImage::ImageRgb8(img)
        .write_to(&mut IoCursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

const RGB8: ImageSpec = ImageSpec {
    size: 8,
    channels: 3,
};

#[test]
fn class_folders_with_and_without_split() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (c, name) in ["cat", "dog"].iter().enumerate() {
        for i in 0..10 {
            write(
                &root.join(name).join(format!("{i}.png")),
                &png(8, 8, |_, _| [c as u8 * 100, i, 0]),
            );
        }
    }
    write(&root.join("dog").join("notes.txt"), b"not an image");
    let s = load_class_folders(root, RGB8, 0.2, 1).unwrap();
    assert_eq!(s.classes, vec!["cat", "dog"]);
    assert_eq!((s.train.len(), s.val.len()), (16, 4));
    // Class-proportional: 2 validation images of each class.
    let val_labels: Vec<u32> = (0..4).map(|i| s.val.get(i).unwrap().label).collect();
    assert_eq!(val_labels.iter().filter(|&&l| l == 0).count(), 2);
    let img = s.train.get(0).unwrap();
    assert_eq!(img.image.len(), 3 * 64);

    let split = tempfile::tempdir().unwrap();
    for part in ["train", "val"] {
        for name in ["a", "b"] {
            write(&split.path().join(part).join(name).join("x.jpg"), &{
                let mut out = Vec::new();
                DynamicImage::ImageRgb8(RgbImage::new(10, 6))
                    .write_to(&mut IoCursor::new(&mut out), ImageFormat::Jpeg)
                    .unwrap();
                out
            });
        }
    }
    let s = load_class_folders(split.path(), RGB8, 0.2, 1).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (2, 2));
    assert_eq!(s.val.get(1).unwrap().label, 1);
}

#[test]
fn empty_folder_and_bad_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_class_folders(dir.path(), RGB8, 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no class folders") && e.contains(&dir.path().display().to_string()),
        "{e}"
    );
    std::fs::create_dir_all(dir.path().join("c")).unwrap();
    let e = load_class_folders(dir.path(), RGB8, 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no .png/.jpg/.jpeg image"), "{e}");
    write(&dir.path().join("c").join("zero.png"), b"");
    write(
        &dir.path().join("c").join("junk.png"),
        b"\x89PNG\r\n\x1a\n garbage",
    );
    let s = load_class_folders(dir.path(), RGB8, 0.0, 0).unwrap();
    let errs: Vec<String> = (0..2)
        .map(|i| s.train.get(i).unwrap_err().to_string())
        .collect();
    assert!(
        errs.iter()
            .any(|e| e.contains("zero.png") && e.contains("0 bytes")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("junk.png") && e.contains("cannot decode")),
        "{errs:?}"
    );
}

#[test]
fn tiny_imagenet_layout() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for w in ["n01", "n02"] {
        for i in 0..3 {
            write(
                &r.join("train")
                    .join(w)
                    .join("images")
                    .join(format!("{w}_{i}.JPEG")),
                &png(8, 8, |_, _| [1, 2, 3]),
            );
        }
    }
    write(
        &r.join("val/images/val_0.JPEG"),
        &png(8, 8, |_, _| [0, 0, 0]),
    );
    write(
        &r.join("val/images/val_1.JPEG"),
        &png(8, 8, |_, _| [0, 0, 0]),
    );
    write(
        &r.join("val/val_annotations.txt"),
        b"val_0.JPEG\tn02\t0\t0\t8\t8\nval_1.JPEG\tn01\t0\t0\t8\t8\n",
    );
    let s = load_tiny_imagenet(r, RGB8).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (6, 2));
    assert_eq!(s.val.get(0).unwrap().label, 1);
    write(
        &r.join("val/val_annotations.txt"),
        b"val_0.JPEG\tn02\nval_9.JPEG\tn01\n",
    );
    let e = load_tiny_imagenet(r, RGB8).unwrap_err().to_string();
    assert!(
        e.contains("val_annotations.txt: row 2") && e.contains("val_9.JPEG"),
        "{e}"
    );
    write(&r.join("val/val_annotations.txt"), b"val_0.JPEG\tn99\n");
    let e = load_tiny_imagenet(r, RGB8).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("n99"), "{e}");
}

#[test]
fn celeba_attribute_subset() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut attr = String::from("12\nSmiling Bald Male\n");
    for i in 1..=12 {
        let name = format!("{i:06}.jpg");
        write(
            &r.join("img_align_celeba").join(&name),
            &png(10, 12, |_, _| [9, 9, 9]),
        );
        // Smiling on odd images, Bald on i % 3 == 0, Male on every image.
        let s = if i % 2 == 1 { " 1" } else { "-1" };
        let b = if i % 3 == 0 { " 1" } else { "-1" };
        attr.push_str(&format!("{name} {s} {b}  1\n"));
    }
    write(&r.join("list_attr_celeba.txt"), attr.as_bytes());
    let attrs: Vec<String> = vec!["Bald".into(), "Smiling".into()];
    // 2 images per attribute, 1 of them validation.
    let s = load_celeba(r, RGB8, &attrs, Some((2, 1)), 0.1, 0).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (2, 2));
    let name = |d: &vq_data::ImageFileDataset, i: usize| {
        d.files()[i]
            .0
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    // Bald: 000003, 000006 (first two with i%3==0); Smiling: 000001, 000005 (000003 taken).
    assert_eq!(name(&s.train, 0), "000003.jpg");
    assert_eq!(name(&s.val, 0), "000006.jpg");
    assert_eq!(name(&s.train, 1), "000001.jpg");
    assert_eq!(name(&s.val, 1), "000005.jpg");
    let e = load_celeba(r, RGB8, &["Bald".into()], Some((5, 1)), 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("only 4 unused images"), "{e}");
    let e = load_celeba(r, RGB8, &["Wings".into()], Some((1, 0)), 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no attribute `Wings`"), "{e}");
    let full = load_celeba(r, RGB8, &attrs, None, 0.25, 0).unwrap();
    assert_eq!((full.train.len(), full.val.len()), (9, 3));
}

#[test]
fn retinopathy_csv() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut csv = String::from("image,level\n");
    for i in 0..20 {
        write(
            &r.join("train").join(format!("{i}_left.jpeg")),
            &png(8, 8, |_, _| [0, 0, 0]),
        );
        csv.push_str(&format!("{i}_left,{}\n", i % 5));
    }
    write(&r.join("trainLabels.csv"), csv.as_bytes());
    let s = load_retinopathy(
        &r.join("trainLabels.csv"),
        &r.join("train"),
        RGB8,
        Some((20, 5)),
        0.1,
        0,
    )
    .unwrap();
    assert_eq!((s.train.len(), s.val.len()), (15, 5));
    let mut grades: Vec<u32> = (0..5).map(|i| s.val.get(i).unwrap().label).collect();
    grades.sort();
    assert_eq!(
        grades,
        vec![0, 1, 2, 3, 4],
        "one validation image per grade"
    );
    csv.push_str("missing_eye,2\n");
    write(&r.join("trainLabels.csv"), csv.as_bytes());
    let e = load_retinopathy(
        &r.join("trainLabels.csv"),
        &r.join("train"),
        RGB8,
        None,
        0.1,
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("trainLabels.csv: row 22") && e.contains("missing_eye"),
        "{e}"
    );
    write(&r.join("bad.csv"), b"image,level\n0_left,7\n");
    let e = load_retinopathy(&r.join("bad.csv"), &r.join("train"), RGB8, None, 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 2") && e.contains("grade"), "{e}");
    write(&r.join("nohdr.csv"), b"file,grade\n");
    let e = load_retinopathy(&r.join("nohdr.csv"), &r.join("train"), RGB8, None, 0.1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no `image` column"), "{e}");
}

#[test]
fn cifar_files() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("cifar-10-batches-bin");
    let rec = |label: u8, fill: u8| -> Vec<u8> {
        let mut v = vec![label];
        v.extend(std::iter::repeat_n(fill, 3072));
        v
    };
    write(
        &base.join("data_batch_1.bin"),
        &[rec(1, 10), rec(2, 20)].concat(),
    );
    write(&base.join("data_batch_2.bin"), &rec(3, 30));
    write(&base.join("test_batch.bin"), &rec(4, 40));
    let cfg = DataConfig {
        name: "cifar10".parse().unwrap(),
        path: Some(dir.path().into()),
        image_size: 32,
        channels: 3,
        ..Default::default()
    };
    let d = load(&cfg).unwrap();
    assert_eq!((d.train.len(), d.val.len()), (3, 1));
    assert_eq!(d.train.get(2).unwrap().label, 3);
    write(&base.join("data_batch_2.bin"), &rec(3, 30)[..3000]);
    let e = load(&cfg).err().unwrap().to_string();
    assert!(e.contains("data_batch_2.bin") && e.contains("3073"), "{e}");
}

/// A Hub cache built here (refs + snapshots layout, parquet written here) loads without network,
/// with image rows and columns kept apart: R = 8·row, G = 8·column.
#[test]
fn hub_cache_offline_and_orientation() {
    let cache = tempfile::tempdir().unwrap();
    let repo_dir = cache.path().join("datasets--tester--cifar_like");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    // A ref file with a trailing newline, as `git`-style tools write it.
    write(
        &repo_dir.join("refs").join("main"),
        format!("{hash}\n").as_bytes(),
    );
    let snap = repo_dir.join("snapshots").join(hash).join("plain_text");
    std::fs::create_dir_all(&snap).unwrap();
    let img = png(32, 32, |x, y| [(8 * y) as u8, (8 * x) as u8, 7]);
    write_image_parquet(
        &snap.join("train-00000-of-00001.parquet"),
        &[(img.clone(), 3), (img.clone(), 5)],
    )
    .unwrap();
    write_image_parquet(&snap.join("test-00000-of-00001.parquet"), &[(img, 9)]).unwrap();
    let cfg = DataConfig {
        name: "cifar10".parse().unwrap(),
        hub_repo: Some("tester/cifar_like".into()),
        hub_cache: Some(cache.path().into()),
        image_size: 32,
        channels: 3,
        ..Default::default()
    };
    let d = load(&cfg).unwrap();
    assert_eq!((d.train.len(), d.val.len()), (2, 1));
    assert_eq!(d.train.get(1).unwrap().label, 5);
    // The revision may also be the commit hash itself.
    let by_hash = DataConfig {
        hub_revision: hash.into(),
        ..cfg.clone()
    };
    assert_eq!(load(&by_hash).unwrap().train.len(), 2);
    let s = d.val.get(0).unwrap();
    for (y, x) in [(0usize, 3usize), (2, 30), (31, 1)] {
        assert_eq!(
            s.image[y * 32 + x],
            (8 * y) as u8,
            "R plane at row {y} col {x}"
        );
        assert_eq!(
            s.image[1024 + y * 32 + x],
            (8 * x) as u8,
            "G plane at row {y} col {x}"
        );
        assert_eq!(s.image[2048 + y * 32 + x], 7);
    }
}

#[test]
fn hub_errors_name_repo_file_and_cache() {
    let cache = tempfile::tempdir().unwrap();
    let hub = HubSource {
        repo: "nobody/nothing".into(),
        train_files: vec!["data/train.parquet".into()],
        val_files: vec!["data/test.parquet".into()],
        cache_dir: Some(cache.path().into()),
        // A closed local port: fails at once, like a machine without network.
        endpoint: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    };
    let e = hub.load(RGB8, (None, None)).unwrap_err().to_string();
    assert!(
        e.contains("nobody/nothing") && e.contains("data/train.parquet"),
        "{e}"
    );
    assert!(e.contains(&cache.path().display().to_string()), "{e}");

    // A parquet file without an image column.
    let bad = cache.path().join("bad.parquet");
    write_image_parquet(&bad, &[]).unwrap();
    let noimg = tempfile::tempdir().unwrap();
    let p = noimg.path().join("labels.parquet");
    {
        use parquet::data_type::Int64Type;
        use parquet::file::writer::SerializedFileWriter;
        let schema =
            parquet::schema::parser::parse_message_type("message m { required int64 label; }")
                .unwrap();
        let f = std::fs::File::create(&p).unwrap();
        let mut w =
            SerializedFileWriter::new(f, std::sync::Arc::new(schema), Default::default()).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<Int64Type>()
            .write_batch(&[1, 2], None, None)
            .unwrap();
        c.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
    }
    let e = vq_data::hub::read_image_parquet(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("labels.parquet: row 0") && e.contains("no image column"),
        "{e}"
    );
    let e = vq_data::hub::read_image_parquet(&PathBuf::from("/no/file.parquet"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/file.parquet"), "{e}");
}
