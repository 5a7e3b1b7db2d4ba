//! MNIST / Fashion-MNIST IDX files (`*-idx3-ubyte[.gz]`, `*-idx1-ubyte[.gz]`).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dataset::InMemoryDataset;
use crate::error::{read_file, DataError, Result};

/// A parsed IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    /// Dimensions from the header.
    pub dims: Vec<usize>,
    /// Row-major data, exactly `Π dims` bytes.
    pub data: Vec<u8>,
}

/// Inflates `bytes` when they start with the gzip magic; errors if `path` ends in `.gz` and they
/// do not, or if the stream is truncated or corrupt.
pub fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    let is_gz = bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
    let named_gz = path.extension().is_some_and(|e| e == "gz");
    if !is_gz {
        if named_gz {
            return Err(DataError::Gzip {
                path: path.into(),
                reason: "the file ends in .gz but does not start with the gzip magic 1f 8b".into(),
            });
        }
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 3);
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| DataError::Gzip {
            path: path.into(),
            reason: e.to_string(),
        })?;
    Ok(out)
}

/// Parses IDX bytes (already inflated). Only the unsigned-byte element type (0x08) is accepted;
/// `expected_rank` checks the number of dimensions.
pub fn parse_idx(bytes: &[u8], path: &Path, expected_rank: usize) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!("IDX header truncated: {} bytes", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::format(
            path,
            format!(
                "wrong IDX magic {:02x} {:02x} {:02x} {:02x} (expected 00 00 08 0{expected_rank})",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::format(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    if rank != expected_rank {
        return Err(DataError::format(
            path,
            format!("IDX has {rank} dimensions, expected {expected_rank}"),
        ));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            "IDX header truncated inside the dimensions",
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("IDX dimensions {dims:?} overflow")))?;
    let body = bytes.len() - header;
    if body != count {
        return Err(DataError::format(
            path,
            format!(
                "IDX dimensions {dims:?} need {count} data bytes but the file has {body} ({})",
                if body < count {
                    "truncated"
                } else {
                    "trailing bytes"
                }
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file from disk (gzip or raw).
pub fn read_idx(path: &Path, expected_rank: usize) -> Result<IdxArray> {
    let bytes = maybe_gunzip(read_file(path)?, path)?;
    parse_idx(&bytes, path, expected_rank)
}

/// Builds a dataset from image (rank 3) and label (rank 1) IDX bytes.
pub fn idx_dataset(images: (&[u8], &Path), labels: (&[u8], &Path)) -> Result<InMemoryDataset> {
    let img = parse_idx(images.0, images.1, 3)?;
    let lab = parse_idx(labels.0, labels.1, 1)?;
    if img.dims[0] != lab.dims[0] {
        return Err(DataError::format(
            labels.1,
            format!(
                "{} labels but {} has {} images",
                lab.dims[0],
                images.1.display(),
                img.dims[0]
            ),
        ));
    }
    let labels = lab.data.iter().map(|&l| l as u32).collect();
    Ok(InMemoryDataset::new(
        [1, img.dims[1], img.dims[2]],
        img.data,
        labels,
    ))
}

/// Finds `<prefix>-{images-idx3,labels-idx1}-ubyte[.gz]` in `dir` for the first prefix present.
pub fn find_split(dir: &Path, prefixes: &[&str]) -> Result<(PathBuf, PathBuf)> {
    for p in prefixes {
        for ext in [".gz", ""] {
            let img = dir.join(format!("{p}-images-idx3-ubyte{ext}"));
            let lab = dir.join(format!("{p}-labels-idx1-ubyte{ext}"));
            if img.is_file() && lab.is_file() {
                return Ok((img, lab));
            }
        }
    }
    Err(DataError::Empty {
        path: dir.into(),
        reason: format!(
            "no IDX pair {{{}}}-images-idx3-ubyte[.gz] + -labels-idx1-ubyte[.gz] found",
            prefixes.join(",")
        ),
    })
}

/// Loads the train (`train-*`) and test (`t10k-*` or `test-*`) splits of an MNIST-style folder.
pub fn load_idx_dir(dir: &Path) -> Result<(InMemoryDataset, InMemoryDataset)> {
    if !dir.is_dir() {
        return Err(DataError::Empty {
            path: dir.into(),
            reason: "is not a folder".into(),
        });
    }
    let load = |(img, lab): (PathBuf, PathBuf)| -> Result<InMemoryDataset> {
        let ib = maybe_gunzip(read_file(&img)?, &img)?;
        let lb = maybe_gunzip(read_file(&lab)?, &lab)?;
        idx_dataset((&ib, &img), (&lb, &lab))
    };
    let train = load(find_split(dir, &["train"])?)?;
    let test = load(find_split(dir, &["t10k", "test"])?)?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, rank];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("t.idx");
        let a = parse_idx(&idx(3, &[2, 1, 2], &[1, 2, 3, 4]), p, 3).unwrap();
        assert_eq!(a.dims, vec![2, 1, 2]);
        assert_eq!(a.data, vec![1, 2, 3, 4]);
        let e = parse_idx(&idx(3, &[2, 1, 2], &[1, 2, 3]), p, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated") && e.contains("t.idx"), "{e}");
        let e = parse_idx(&idx(3, &[1, 1, 2], &[1, 2, 3]), p, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing"), "{e}");
        let e = parse_idx(&idx(1, &[4], &[1, 2, 3, 4]), p, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 dimensions, expected 3"), "{e}");
        let mut bad = idx(1, &[1], &[0]);
        bad[0] = 0x12;
        assert!(parse_idx(&bad, p, 1)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut f32ty = idx(1, &[1], &[0, 0, 0, 0]);
        f32ty[2] = 0x0d;
        assert!(parse_idx(&f32ty, p, 1)
            .unwrap_err()
            .to_string()
            .contains("unsigned byte"));
        assert!(parse_idx(&[0, 0], p, 1)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn gzip_checks() {
        let p = Path::new("a.gz");
        let e = maybe_gunzip(vec![1, 2, 3], p).unwrap_err().to_string();
        assert!(e.contains("gzip magic"), "{e}");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &[7u8; 1000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(maybe_gunzip(gz.clone(), p).unwrap(), vec![7u8; 1000]);
        let e = maybe_gunzip(gz[..gz.len() / 2].to_vec(), p).unwrap_err();
        assert!(matches!(e, DataError::Gzip { .. }), "{e}");
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let img = idx(3, &[2, 1, 1], &[1, 2]);
        let lab = idx(1, &[3], &[0, 1, 2]);
        let e = idx_dataset((&img, Path::new("imgs")), (&lab, Path::new("labs")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("labs") && e.contains("imgs") && e.contains("3 labels"),
            "{e}"
        );
    }

    /// Random bytes never panic the parser (a bounded fuzz; `cargo xtask fuzz` runs longer).
    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for i in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if i % 2 == 0 && v.len() >= 4 {
                v[0] = 0;
                v[1] = 0;
                v[2] = 8;
                v[3] = rng.random_range(0..4);
            }
            let _ = parse_idx(&v, Path::new("fuzz"), 3);
            let _ = parse_idx(&v, Path::new("fuzz"), 1);
            let _ = maybe_gunzip(v, Path::new("fuzz.gz"));
        }
    }
}
