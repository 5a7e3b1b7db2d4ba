//! CIFAR-10 binary batches: 1 label byte + 3072 bytes (R, G, B planes of 32×32) per image.

use std::path::{Path, PathBuf};

use crate::dataset::InMemoryDataset;
use crate::error::{read_file, DataError, Result};

/// Bytes of one CIFAR-10 record.
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// Parses one binary batch (`data_batch_N.bin`, `test_batch.bin`) into labels and CHW pixels.
pub fn parse_cifar(bytes: &[u8], path: &Path) -> Result<(Vec<u32>, Vec<u8>)> {
    if bytes.is_empty() {
        return Err(DataError::format(path, "empty CIFAR-10 file"));
    }
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::format(
            path,
            format!(
                "size {} is not a multiple of the 3073-byte CIFAR-10 record ({} whole records, {} bytes left)",
                bytes.len(),
                bytes.len() / RECORD,
                bytes.len() % RECORD
            ),
        ));
    }
    let n = bytes.len() / RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(DataError::row(
                path,
                i,
                format!("label {} is not a CIFAR-10 class (0-9)", rec[0]),
            ));
        }
        labels.push(rec[0] as u32);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((labels, pixels))
}

fn read_batches(files: &[PathBuf]) -> Result<InMemoryDataset> {
    let mut labels = Vec::new();
    let mut pixels = Vec::new();
    for f in files {
        let (l, p) = parse_cifar(&read_file(f)?, f)?;
        labels.extend(l);
        pixels.extend(p);
    }
    Ok(InMemoryDataset::new([3, 32, 32], pixels, labels))
}

/// Loads `data_batch_{1..5}.bin` (train) and `test_batch.bin` (test) from `dir` or from its
/// `cifar-10-batches-bin/` subfolder.
pub fn load_cifar_dir(dir: &Path) -> Result<(InMemoryDataset, InMemoryDataset)> {
    let base = if dir.join("cifar-10-batches-bin").is_dir() {
        dir.join("cifar-10-batches-bin")
    } else {
        dir.to_path_buf()
    };
    let train: Vec<PathBuf> = (1..=5)
        .map(|i| base.join(format!("data_batch_{i}.bin")))
        .filter(|p| p.is_file())
        .collect();
    let test = base.join("test_batch.bin");
    if train.is_empty() || !test.is_file() {
        return Err(DataError::Empty {
            path: base,
            reason: "expected data_batch_1..5.bin and test_batch.bin (CIFAR-10 binary version)"
                .into(),
        });
    }
    Ok((read_batches(&train)?, read_batches(&[test])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_rejects_bad_sizes() {
        let mut b = vec![3u8];
        b.extend((0..3072).map(|i| (i % 251) as u8));
        b.push(9);
        b.extend(vec![1u8; 3072]);
        let (l, p) = parse_cifar(&b, Path::new("x.bin")).unwrap();
        assert_eq!(l, vec![3, 9]);
        assert_eq!(p.len(), 2 * 3072);
        // Green plane of image 0 starts at byte 1024: value 1024 % 251 = 20.
        assert_eq!(p[1024], 20);
        let e = parse_cifar(&b[..5000], Path::new("x.bin"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a multiple of the 3073") && e.contains("x.bin"),
            "{e}"
        );
        b[0] = 10;
        let e = parse_cifar(&b, Path::new("x.bin")).unwrap_err().to_string();
        assert!(e.contains("row 0") && e.contains("label 10"), "{e}");
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..2_000 {
            let len = rng.random_range(0..3 * RECORD);
            let v: Vec<u8> = (0..len).map(|_| rng.random_range(0..12)).collect();
            let _ = parse_cifar(&v, Path::new("fuzz"));
        }
    }
}
