//! Image decoding and the resize / center-crop / channel conversion every loader applies.

use std::path::Path;

use image::{imageops::FilterType, DynamicImage, GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{read_file, DataError, Result};

/// The shape every image of a dataset is brought to: `channels × size × size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Side of the square output image.
    pub size: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
}

impl ImageSpec {
    /// Checks `size ≥ 1` and `channels ∈ {1, 3}`.
    pub fn new(size: usize, channels: usize) -> Result<Self> {
        if size == 0 {
            return Err(DataError::config("image_size", "must be ≥ 1"));
        }
        if channels != 1 && channels != 3 {
            return Err(DataError::config(
                "channels",
                format!("must be 1 (grayscale) or 3 (RGB), got {channels}"),
            ));
        }
        Ok(Self { size, channels })
    }

    /// `[C, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.size, self.size]
    }

    /// Bytes per image.
    pub fn numel(&self) -> usize {
        self.channels * self.size * self.size
    }
}

/// Decodes PNG/JPEG bytes; `path` names the source in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(DataError::Image {
            path: path.into(),
            reason: "the file is empty (0 bytes)".into(),
        });
    }
    image::load_from_memory(bytes).map_err(|e| DataError::Image {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Reads and decodes an image file and brings it to `spec` (CHW bytes).
pub fn load_image_file(path: &Path, spec: &ImageSpec) -> Result<Vec<u8>> {
    let bytes = read_file(path)?;
    Ok(to_spec(decode_image(&bytes, path)?, spec))
}

/// Center-crops to a square, resizes to `spec.size` (triangle filter; no-op when already that
/// size) and converts channels (luma `0.299R + 0.587G + 0.114B` per the image crate, or gray
/// replicated to RGB). Returns CHW bytes.
pub fn to_spec(img: DynamicImage, spec: &ImageSpec) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    let side = w.min(h);
    let img = if w != h {
        img.crop_imm((w - side) / 2, (h - side) / 2, side, side)
    } else {
        img
    };
    let s = spec.size as u32;
    let img = if side != s {
        img.resize_exact(s, s, FilterType::Triangle)
    } else {
        img
    };
    match spec.channels {
        1 => img.to_luma8().into_raw(),
        _ => {
            let rgb = img.to_rgb8();
            hwc_to_chw(rgb.as_raw(), spec.size, spec.size, 3)
        }
    }
}

/// `[H, W, C]` → `[C, H, W]`.
pub fn hwc_to_chw(hwc: &[u8], h: usize, w: usize, c: usize) -> Vec<u8> {
    let mut out = vec![0u8; hwc.len()];
    for y in 0..h {
        for x in 0..w {
            for k in 0..c {
                out[(k * h + y) * w + x] = hwc[(y * w + x) * c + k];
            }
        }
    }
    out
}

/// Brings a CHW `u8` image of `[c, h, w]` (c ∈ {1, 3}) to `spec`; returns it unchanged when it
/// already has that shape.
pub fn convert_chw(pixels: &[u8], shape: [usize; 3], spec: &ImageSpec) -> Vec<u8> {
    let [c, h, w] = shape;
    if shape == spec.shape() {
        return pixels.to_vec();
    }
    let img = if c == 1 {
        DynamicImage::ImageLuma8(
            GrayImage::from_raw(w as u32, h as u32, pixels.to_vec()).expect("size checked"),
        )
    } else {
        let mut hwc = vec![0u8; pixels.len()];
        for k in 0..3 {
            for i in 0..h * w {
                hwc[i * 3 + k] = pixels[k * h * w + i];
            }
        }
        DynamicImage::ImageRgb8(RgbImage::from_raw(w as u32, h as u32, hwc).expect("size checked"))
    };
    to_spec(img, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_layout_and_orientation() {
        // A 2-row × 3-column RGB image: pixel (y, x) = (10y + x, 100 + 10y + x, 200 + x).
        let mut img = RgbImage::new(3, 2);
        for y in 0..2u32 {
            for x in 0..3u32 {
                img.put_pixel(
                    x,
                    y,
                    image::Rgb([
                        (10 * y + x) as u8,
                        (100 + 10 * y + x) as u8,
                        (200 + x) as u8,
                    ]),
                );
            }
        }
        let chw = hwc_to_chw(img.as_raw(), 2, 3, 3);
        // Channel 0 row 1 = [10, 11, 12]; channel 1 row 0 = [100, 101, 102].
        assert_eq!(&chw[3..6], &[10, 11, 12]);
        assert_eq!(&chw[6..9], &[100, 101, 102]);
        // Center crop of 3×2 → the middle 2×2 columns 0..2 (offset (3-2)/2 = 0).
        let out = to_spec(
            DynamicImage::ImageRgb8(img),
            &ImageSpec {
                size: 2,
                channels: 3,
            },
        );
        assert_eq!(
            out,
            vec![0, 1, 10, 11, 100, 101, 110, 111, 200, 201, 200, 201]
        );
    }

    #[test]
    fn gray_to_rgb_and_back() {
        let px = vec![0u8, 50, 100, 250];
        let rgb = convert_chw(
            &px,
            [1, 2, 2],
            &ImageSpec {
                size: 2,
                channels: 3,
            },
        );
        assert_eq!(rgb, [px.clone(), px.clone(), px.clone()].concat());
        let gray = convert_chw(
            &rgb,
            [3, 2, 2],
            &ImageSpec {
                size: 2,
                channels: 1,
            },
        );
        assert_eq!(gray, px);
    }

    #[test]
    fn empty_and_corrupt_images_are_errors() {
        let p = Path::new("x.png");
        assert!(decode_image(&[], p)
            .unwrap_err()
            .to_string()
            .contains("0 bytes"));
        let e = decode_image(b"\x89PNG\r\n\x1a\nnot really", p).unwrap_err();
        assert!(e.to_string().contains("x.png"), "{e}");
    }
}
