//! The embedded real image set: the 1,797 handwritten digits of the UCI "Optical Recognition of Handwritten
//! Digits" set (via scikit-learn, BSD-3-Clause; see `src/data/DIGITS-LICENSE.txt`), stored in the crate at their
//! native 8x8 resolution (65 bytes a record, 117 KB) and upsampled at load time.
//!
//! The split is fixed: 1,497 training images and 300 test images that training never sees. [`digits`] returns
//! them at any side (8 and up), upsampled bilinearly with half-pixel centres and clamped edges (PIL's and torch's
//! `align_corners=False` upsampling), values `v * 255 / 16` rounded, the grey copied into three channels. At side 32
//! this is byte for byte the CIFAR-10-format copy `train.bin` / `test.bin` that [`write_cifar_bin`] writes and
//! `scripts/moco_torch_reference.py` reads.
//!
//! ```
//! let (train, test) = moco::data::digits(32).unwrap();
//! assert_eq!((train.len(), test.len(), train.height()), (1497, 300, 32));
//! ```
//!
//! [`write_cifar_bin`]: super::write_cifar_bin

use super::dataset::Dataset;
use crate::error::{Error, Result};

static RAW: &[u8] = include_bytes!("digits8x8.bin");

/// Native side of the digits.
pub const DIGITS_NATIVE_SIDE: usize = 8;
/// Images in the training split.
pub const DIGITS_TRAIN: usize = 1497;
/// Images in the test split.
pub const DIGITS_TEST: usize = 300;
/// Largest pixel value of the native images (full ink).
pub const DIGITS_MAX: u8 = 16;
const RECORD: usize = 1 + DIGITS_NATIVE_SIDE * DIGITS_NATIVE_SIDE;

/// The native images: labels `[1797]` and pixels `[1797, 8, 8]` in `0..=16`, training split first.
pub fn digits_native() -> Result<(Vec<u16>, Vec<u8>)> {
    let n = DIGITS_TRAIN + DIGITS_TEST;
    let bad = |reason: String| Error::BadFile { path: "src/data/digits8x8.bin (embedded)".into(), reason };
    if RAW.len() != n * RECORD {
        return Err(bad(format!("{} bytes, expected {n} records of {RECORD}", RAW.len())));
    }
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    for (i, rec) in RAW.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 || rec[1..].iter().any(|&v| v > DIGITS_MAX) {
            return Err(bad(format!("record {i}: label {} or a pixel above {DIGITS_MAX}", rec[0])));
        }
        labels.push(rec[0] as u16);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((labels, pixels))
}

/// Bilinear interpolation weights from `n` to `m` pixels: half-pixel centres, source coordinate clamped to the
/// image (`align_corners=False`).
fn weights(n: usize, m: usize) -> Vec<(usize, usize, f64)> {
    (0..m)
        .map(|j| {
            let src = ((j as f64 + 0.5) * n as f64 / m as f64 - 0.5).clamp(0.0, (n - 1) as f64);
            let i0 = src.floor() as usize;
            (i0, (i0 + 1).min(n - 1), src - i0 as f64)
        })
        .collect()
}

/// One native image (`0..=16`) upsampled to `side x side` u8 values.
fn upsample(img: &[u8], side: usize) -> Vec<u8> {
    let n = DIGITS_NATIVE_SIDE;
    let w = weights(n, side);
    let val = |r: usize, c: usize| img[r * n + c] as f64 * 255.0 / DIGITS_MAX as f64;
    let mut out = Vec::with_capacity(side * side);
    for &(r0, r1, fr) in &w {
        for &(c0, c1, fc) in &w {
            let top = val(r0, c0) * (1.0 - fc) + val(r0, c1) * fc;
            let bottom = val(r1, c0) * (1.0 - fc) + val(r1, c1) * fc;
            out.push((top * (1.0 - fr) + bottom * fr).round_ties_even().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

fn build(labels: &[u16], pixels: &[u8], side: usize) -> Result<Dataset> {
    let plane = side * side;
    let mut images = Vec::with_capacity(labels.len() * 3 * plane);
    for img in pixels.chunks_exact(DIGITS_NATIVE_SIDE * DIGITS_NATIVE_SIDE) {
        let up = upsample(img, side);
        for _ in 0..3 {
            images.extend_from_slice(&up);
        }
    }
    let names = (0..10).map(|d| d.to_string()).collect();
    Dataset::new(images, labels.to_vec(), side, side, 10, Some(names))
}

/// The embedded digits as `(train, test)`, 1,497 and 300 images of `side x side` (`side >= 8`), 10 classes.
pub fn digits(side: usize) -> Result<(Dataset, Dataset)> {
    if side < DIGITS_NATIVE_SIDE {
        return Err(Error::shape("digits", format!("an image side >= {DIGITS_NATIVE_SIDE} (the native side)"), side.to_string()));
    }
    let (labels, pixels) = digits_native()?;
    let cut = DIGITS_TRAIN * DIGITS_NATIVE_SIDE * DIGITS_NATIVE_SIDE;
    Ok((build(&labels[..DIGITS_TRAIN], &pixels[..cut], side)?, build(&labels[DIGITS_TRAIN..], &pixels[cut..], side)?))
}
