//! An embedded, procedural dataset: 10 classes that differ in shape and texture, never in colour alone.
//!
//! Classes: 0 disc, 1 ring, 2 square, 3 cross, 4 triangle (shapes, with random centre, size and rotation),
//! 5 horizontal stripes, 6 vertical stripes, 7 checkerboard, 8 diagonal stripes, 9 dots (textures over the whole
//! image, with random period, phase and a rotation jitter of +-15 degrees, so stripe directions stay apart).
//! Foreground and background colours are drawn from the same distribution for every class, and Gaussian pixel
//! noise is added, so a model has to look at structure, and augmentations matter.
//!
//! Image `i` of a split is a pure function of `(seed, split, i)` through a [`CounterRng`]; its label is
//! `i % 10`, so every class is present as soon as there are 10 images.

use rayon::prelude::*;

use super::dataset::Dataset;
use super::rng::CounterRng;
use crate::error::{Error, Result};

/// Class names of the synthetic dataset, in label order.
pub const SYNTHETIC_CLASSES: [&str; 10] = [
    "disc",
    "ring",
    "square",
    "cross",
    "triangle",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
    "diagonal_stripes",
    "dots",
];

/// Sizes and seed of the synthetic dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Number of training images.
    pub train: usize,
    /// Number of test images.
    pub test: usize,
    /// Image side (32 by default; >= 8).
    pub size: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Standard deviation of the additive pixel noise, in 0..255 units.
    pub noise: f32,
}

impl Default for SyntheticConfig {
    /// 2,000 train and 500 test images of 32x32, seed 0, noise 12.
    fn default() -> Self {
        SyntheticConfig {
            train: 2000,
            test: 500,
            size: 32,
            seed: 0,
            noise: 12.0,
        }
    }
}

/// Coverage (0 or 1) of class `class`'s pattern at point `(u, v)` of the shape frame (pixels, origin at the
/// shape's centre, already rotated); `r` is the shape's radius, `period` and `phase` the texture's.
fn coverage(class: usize, u: f32, v: f32, r: f32, period: f32, phase: f32) -> bool {
    let frac = |x: f32| x - x.floor();
    match class {
        0 => u * u + v * v <= r * r,
        1 => {
            let d = (u * u + v * v).sqrt();
            d <= r && d >= 0.55 * r
        }
        2 => u.abs().max(v.abs()) <= 0.8 * r,
        3 => {
            let arm = 0.3 * r;
            (u.abs() <= arm && v.abs() <= r) || (v.abs() <= arm && u.abs() <= r)
        }
        4 => {
            // Equilateral triangle, circumradius r: three half-planes at distance r / 2.
            (0..3).all(|k| {
                let a = std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::TAU / 3.0;
                u * a.cos() + v * a.sin() <= 0.5 * r
            })
        }
        5 => frac(v / period + phase) < 0.5,
        6 => frac(u / period + phase) < 0.5,
        7 => {
            ((u / period + phase).floor() as i64 + (v / period + phase).floor() as i64)
                .rem_euclid(2)
                == 0
        }
        8 => frac((u + v) * std::f32::consts::FRAC_1_SQRT_2 / period + phase) < 0.5,
        _ => {
            let (du, dv) = (
                frac(u / period + phase) - 0.5,
                frac(v / period + phase) - 0.5,
            );
            du * du + dv * dv <= 0.09
        }
    }
}

/// A random colour whose components are uniform in 0..255.
fn colour(rng: &mut CounterRng) -> [f32; 3] {
    [
        rng.uniform(0.0, 255.0) as f32,
        rng.uniform(0.0, 255.0) as f32,
        rng.uniform(0.0, 255.0) as f32,
    ]
}

/// Renders image `index` of split `split` (0 train, 1 test): `[3, size, size]` u8 and its label.
pub fn synthetic_image(cfg: &SyntheticConfig, split: u64, index: u64) -> (Vec<u8>, u16) {
    let class = (index % 10) as usize;
    let mut rng = CounterRng::new(cfg.seed, split, index, 0x5f_4e_7d);
    let s = cfg.size as f32;
    // Colours: same distribution for every class; foreground redrawn until it stands out from the background.
    let bg = colour(&mut rng);
    let mut fg = colour(&mut rng);
    for _ in 0..16 {
        let d2: f32 = (0..3).map(|c| (fg[c] - bg[c]).powi(2)).sum();
        if d2 >= 90.0 * 90.0 {
            break;
        }
        fg = colour(&mut rng);
    }
    let texture = class >= 5;
    let (cx, cy) = if texture {
        (s / 2.0, s / 2.0)
    } else {
        (
            rng.uniform(0.35, 0.65) as f32 * s,
            rng.uniform(0.35, 0.65) as f32 * s,
        )
    };
    let r = rng.uniform(0.2, 0.34) as f32 * s;
    let theta = if texture {
        rng.uniform(-15.0, 15.0).to_radians() as f32
    } else {
        rng.uniform(0.0, std::f64::consts::TAU) as f32
    };
    let period = match class {
        7 => rng.uniform(0.14, 0.24) as f32 * s,
        9 => rng.uniform(0.2, 0.3) as f32 * s,
        _ => rng.uniform(0.14, 0.25) as f32 * s,
    };
    let phase = rng.uniform(0.0, 1.0) as f32;
    let (cos, sin) = (theta.cos(), theta.sin());
    let n = cfg.size;
    let plane = n * n;
    let mut img = vec![0u8; 3 * plane];
    const SUB: [f32; 2] = [0.25, 0.75]; // 2x2 supersampling
    for y in 0..n {
        for x in 0..n {
            let mut cover = 0.0f32;
            for sy in SUB {
                for sx in SUB {
                    let (dx, dy) = (x as f32 + sx - cx, y as f32 + sy - cy);
                    let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
                    if coverage(class, u, v, r, period, phase) {
                        cover += 0.25;
                    }
                }
            }
            for c in 0..3 {
                let noise = rng.normal() as f32 * cfg.noise;
                let val = bg[c] * (1.0 - cover) + fg[c] * cover + noise;
                img[c * plane + y * n + x] = val.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    (img, class as u16)
}

fn split(cfg: &SyntheticConfig, split: u64, count: usize) -> Result<Dataset> {
    let rendered: Vec<(Vec<u8>, u16)> = (0..count as u64)
        .into_par_iter()
        .map(|i| synthetic_image(cfg, split, i))
        .collect();
    let mut images = Vec::with_capacity(count * 3 * cfg.size * cfg.size);
    let mut labels = Vec::with_capacity(count);
    for (img, l) in rendered {
        images.extend_from_slice(&img);
        labels.push(l);
    }
    let names = SYNTHETIC_CLASSES.iter().map(|s| s.to_string()).collect();
    Dataset::new(images, labels, cfg.size, cfg.size, 10, Some(names))
}

/// Builds `(train, test)`; identical for identical configs on any number of threads.
/// An error when `size < 8` or the noise is negative or not finite.
pub fn synthetic(cfg: &SyntheticConfig) -> Result<(Dataset, Dataset)> {
    if cfg.size < 8 {
        return Err(Error::shape("synthetic", "size >= 8", cfg.size.to_string()));
    }
    if !(cfg.noise.is_finite() && cfg.noise >= 0.0) {
        return Err(Error::shape(
            "synthetic",
            "noise >= 0",
            cfg.noise.to_string(),
        ));
    }
    Ok((split(cfg, 0, cfg.train)?, split(cfg, 1, cfg.test)?))
}
