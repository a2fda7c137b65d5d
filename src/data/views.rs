//! A PNG contact sheet of augmented pairs, so a person can look at what the encoder is trained on.

use std::path::Path;

use super::augment::denormalize_to_u8;
use super::loader::PairBatch;
use crate::error::{Error, Result};

/// Pairs per row of the sheet.
const PAIRS_PER_ROW: usize = 8;
/// Gap between the two views of a pair, and around the sheet, in pixels.
const GAP: usize = 2;
/// Gap between two pairs, in pixels.
const PAIR_GAP: usize = 8;
/// Background grey.
const BACKGROUND: u8 = 128;

/// Writes the first `n` pairs of `batch` (all if fewer) as a PNG grid at `path`: each pair is `q | k`,
/// 8 pairs per row, pixels un-normalised with `mean` and `std` back to 0..255. Returns the image's
/// `(width, height)`. An error for an empty selection, a malformed batch, or a failed write.
pub fn save_views(
    path: impl AsRef<Path>,
    batch: &PairBatch,
    n: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<(u32, u32)> {
    let path = path.as_ref();
    let s = batch.size;
    let per = 3 * s * s;
    let count = n.min(batch.batch_size);
    if count == 0 || s == 0 {
        return Err(Error::shape(
            "save_views",
            "at least one pair of non-empty views",
            format!("{count} pairs of {s}x{s}"),
        ));
    }
    if batch.x_q.len() < count * per || batch.x_k.len() < count * per {
        return Err(Error::shape(
            "save_views",
            format!("x_q and x_k of at least {count}x3x{s}x{s} values"),
            format!("{} and {}", batch.x_q.len(), batch.x_k.len()),
        ));
    }
    let cols = count.min(PAIRS_PER_ROW);
    let rows = count.div_ceil(PAIRS_PER_ROW);
    let pair_w = 2 * s + GAP;
    let width = 2 * GAP + cols * pair_w + (cols - 1) * PAIR_GAP;
    let height = 2 * GAP + rows * s + (rows - 1) * PAIR_GAP;
    let mut pixels = vec![BACKGROUND; width * height * 3];
    for p in 0..count {
        let (row, col) = (p / PAIRS_PER_ROW, p % PAIRS_PER_ROW);
        let y0 = GAP + row * (s + PAIR_GAP);
        for (v, views) in [&batch.x_q, &batch.x_k].into_iter().enumerate() {
            let chw = denormalize_to_u8(&views[p * per..(p + 1) * per], mean, std)?;
            let x0 = GAP + col * (pair_w + PAIR_GAP) + v * (s + GAP);
            for y in 0..s {
                for x in 0..s {
                    let o = ((y0 + y) * width + x0 + x) * 3;
                    for c in 0..3 {
                        pixels[o + c] = chw[c * s * s + y * s + x];
                    }
                }
            }
        }
    }
    let (w32, h32) = (width as u32, height as u32);
    let img = image::RgbImage::from_raw(w32, h32, pixels)
        .ok_or_else(|| Error::shape("save_views", "a consistent pixel buffer", "a short buffer"))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| match e {
            image::ImageError::IoError(source) => Error::io(path, source),
            other => Error::bad_file(path, format!("cannot write PNG: {other}")),
        })?;
    Ok((w32, h32))
}
