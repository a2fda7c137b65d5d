//! MoCo's augmentations with torchvision's semantics, on u8 CHW input, producing f32 CHW normalised output.
//!
//! The pipeline of one view (the order of `main_moco.py`; [`AugmentConfig::grayscale_before_jitter`] gives v1's):
//!
//! 1. `RandomResizedCrop(size, scale, ratio)`: [`sample_crop`] (torchvision's `get_params`: 10 attempts, then a
//!    centre crop), then [`resized_crop`] (bilinear with antialias, PIL's separable triangle filter);
//! 2. `RandomApply([ColorJitter(b, c, s, h)], p)`: [`sample_jitter`] draws a random order of the four ops
//!    and their factors, [`ImageF32::color_jitter`] applies them (torchvision's tensor formulas, hue via HSV);
//! 3. `RandomGrayscale(p)`: [`ImageF32::to_grayscale`] (luma 0.2989 R + 0.587 G + 0.114 B, 3 channels);
//! 4. `RandomApply([GaussianBlur(sigma in [0.1, 2])], p)`: [`ImageF32::gaussian_blur`];
//! 5. `RandomApply([Solarize()], p)` (MoCo v3's second view): [`ImageF32::solarize`] at [`SOLARIZE_THRESHOLD`];
//! 6. `RandomHorizontalFlip()`: [`ImageF32::hflip`];
//! 7. `ToTensor()` + `Normalize(mean, std)`: [`ImageF32::normalize_into`].
//!
//! MoCo v3 augments the two views of a pair differently (`augmentation1` / `augmentation2`): see [`ViewPair`].
//!
//! Pixels are kept in f32 in `[0, 1]` throughout (torchvision's tensor path); the PIL path of the official code
//! rounds to u8 after each step, which this does not imitate. The blur is an exact, normalised Gaussian of radius
//! `ceil(3 sigma)` with edge clamping, where moco's PIL `GaussianBlur` uses PIL's box-filter approximation.
//!
//! All randomness comes from a [`CounterRng`] keyed by `(seed, epoch, index, view)`: see [`augment_pair`].

use super::rng::CounterRng;
use crate::error::{Error, Result};

/// CIFAR-10 channel means used by the official MoCo CIFAR-10 colab.
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 channel standard deviations used by the official MoCo CIFAR-10 colab.
pub const CIFAR_STD: [f32; 3] = [0.2023, 0.1994, 0.2010];
/// ImageNet channel means (`main_moco.py`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (`main_moco.py`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Threshold of MoCo v3's `Solarize` (PIL's `ImageOps.solarize(img)`, threshold 128 of 255) on `[0, 1]` pixels:
/// `x >= 128 / 255` becomes `1 - x` (torchvision's `solarize`: `where(img >= threshold, invert(img), img)`).
pub const SOLARIZE_THRESHOLD: f32 = 128.0 / 255.0;

/// Luma weights of torchvision's `rgb_to_grayscale` (ITU-R 601-2).
const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

/// `ColorJitter(brightness, contrast, saturation, hue)` strengths, as torchvision takes them: brightness,
/// contrast and saturation factors are drawn from `[max(0, 1 - x), 1 + x]`, the hue shift from `[-hue, hue]`;
/// a strength of 0 switches that op off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorJitter {
    /// Brightness strength (>= 0).
    pub brightness: f32,
    /// Contrast strength (>= 0).
    pub contrast: f32,
    /// Saturation strength (>= 0).
    pub saturation: f32,
    /// Hue strength, in `[0, 0.5]`.
    pub hue: f32,
}

impl ColorJitter {
    /// The same strength `x` for brightness, contrast and saturation, and `hue` for the hue.
    pub fn new(brightness: f32, contrast: f32, saturation: f32, hue: f32) -> Self {
        ColorJitter {
            brightness,
            contrast,
            saturation,
            hue,
        }
    }

    /// No jitter at all.
    pub fn none() -> Self {
        ColorJitter::new(0.0, 0.0, 0.0, 0.0)
    }
}

/// Everything that defines the augmentation of one view; see the module docs for the order of the steps.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Output side: every view is `[3, size, size]`.
    pub size: usize,
    /// `true`: `RandomResizedCrop`; `false`: resize the whole image to `size` (no crop).
    pub random_crop: bool,
    /// Range of the crop's area as a fraction of the image's area.
    pub crop_scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub crop_ratio: (f64, f64),
    /// Colour jitter strengths.
    pub jitter: ColorJitter,
    /// Probability of applying the colour jitter.
    pub jitter_p: f64,
    /// Probability of converting the view to grey (3 equal channels).
    pub grayscale_p: f64,
    /// `true`: grayscale, then jitter (MoCo v1's order); `false`: jitter, then grayscale (v2 and the colab).
    pub grayscale_before_jitter: bool,
    /// Probability of a Gaussian blur.
    pub blur_p: f64,
    /// Range of the blur's sigma, in output pixels.
    pub blur_sigma: (f64, f64),
    /// Probability of solarizing (after the blur, before the flip), at [`SOLARIZE_THRESHOLD`].
    pub solarize_p: f64,
    /// Probability of a horizontal flip.
    pub flip_p: f64,
    /// Per-channel mean subtracted at the end.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by at the end.
    pub std: [f32; 3],
}

impl AugmentConfig {
    /// MoCo v1 (`main_moco.py` without `--aug-plus`): `RandomResizedCrop(size, scale=(0.2, 1))`,
    /// `RandomGrayscale(0.2)`, `ColorJitter(0.4, 0.4, 0.4, 0.4)` (always), `RandomHorizontalFlip()`.
    /// Normalised with the CIFAR-10 statistics; use [`AugmentConfig::with_normalization`] for others.
    pub fn v1(size: usize) -> Self {
        AugmentConfig {
            size,
            random_crop: true,
            crop_scale: (0.2, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            jitter: ColorJitter::new(0.4, 0.4, 0.4, 0.4),
            jitter_p: 1.0,
            grayscale_p: 0.2,
            grayscale_before_jitter: true,
            blur_p: 0.0,
            blur_sigma: (0.1, 2.0),
            solarize_p: 0.0,
            flip_p: 0.5,
            mean: CIFAR_MEAN,
            std: CIFAR_STD,
        }
    }

    /// MoCo v2 (`main_moco.py --aug-plus`): `RandomResizedCrop(size, scale=(0.2, 1))`,
    /// `RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`, `RandomGrayscale(0.2)`,
    /// `RandomApply([GaussianBlur([0.1, 2])], p=0.5)`, `RandomHorizontalFlip()`. The blur is switched off for
    /// `size <= 32`, as the CIFAR-10 colab does. Normalised with the CIFAR-10 statistics.
    pub fn v2(size: usize) -> Self {
        AugmentConfig {
            jitter: ColorJitter::new(0.4, 0.4, 0.4, 0.1),
            jitter_p: 0.8,
            grayscale_before_jitter: false,
            blur_p: if size <= 32 { 0.0 } else { 0.5 },
            ..AugmentConfig::v1(size)
        }
    }

    /// The official CIFAR-10 colab: `RandomResizedCrop(32)` (torchvision's default `scale=(0.08, 1)`),
    /// `RandomHorizontalFlip(0.5)`, `RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`,
    /// `RandomGrayscale(0.2)`, `Normalize(CIFAR_MEAN, CIFAR_STD)`; no blur.
    pub fn colab_cifar() -> Self {
        AugmentConfig {
            crop_scale: (0.08, 1.0),
            ..AugmentConfig::v2(32)
        }
    }

    /// MoCo v3's first view (`main_moco.py` `augmentation1`, BYOL's recipe): `RandomResizedCrop(size,
    /// scale=(0.08, 1))` (the `--crop-min` default; the ResNet-50 recipes of `CONFIG.md` pass 0.2),
    /// `RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)`, `RandomGrayscale(0.2)`,
    /// `RandomApply([GaussianBlur([0.1, 2])], p=1.0)`, `RandomHorizontalFlip()`. Unlike [`AugmentConfig::v2`] the
    /// blur stays on at any size. Normalised with the CIFAR-10 statistics (`main_moco.py` uses ImageNet's:
    /// [`AugmentConfig::with_normalization`]).
    pub fn mocov3_view1(size: usize) -> Self {
        AugmentConfig {
            crop_scale: (0.08, 1.0),
            jitter: ColorJitter::new(0.4, 0.4, 0.2, 0.1),
            jitter_p: 0.8,
            grayscale_before_jitter: false,
            blur_p: 1.0,
            solarize_p: 0.0,
            ..AugmentConfig::v1(size)
        }
    }

    /// MoCo v3's second view (`augmentation2`): [`AugmentConfig::mocov3_view1`] with the blur at `p=0.1` and
    /// `RandomApply([Solarize()], p=0.2)` after it.
    pub fn mocov3_view2(size: usize) -> Self {
        AugmentConfig {
            blur_p: 0.1,
            solarize_p: 0.2,
            ..AugmentConfig::mocov3_view1(size)
        }
    }

    /// No augmentation: resize to `size` if needed, then normalise (what [`eval_view`] does with any config).
    pub fn eval(size: usize) -> Self {
        AugmentConfig {
            random_crop: false,
            jitter: ColorJitter::none(),
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            solarize_p: 0.0,
            flip_p: 0.0,
            ..AugmentConfig::v1(size)
        }
    }

    /// The same config with another normalisation (e.g. [`IMAGENET_MEAN`], [`IMAGENET_STD`]).
    pub fn with_normalization(mut self, mean: [f32; 3], std: [f32; 3]) -> Self {
        self.mean = mean;
        self.std = std;
        self
    }

    /// The same config with another output size.
    pub fn with_size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    /// The pipeline in torchvision's terms, in the order it runs, e.g. for [`AugmentConfig::colab_cifar`]:
    /// `RandomResizedCrop(32, scale=(0.08, 1)) > RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8) >
    /// RandomGrayscale(0.2) > RandomHorizontalFlip(0.5) > Normalize(CIFAR-10 mean/std)`.
    pub fn describe(&self) -> String {
        let mut steps = Vec::new();
        if self.random_crop {
            steps.push(format!("RandomResizedCrop({}, scale=({}, {}))", self.size, self.crop_scale.0, self.crop_scale.1));
        } else {
            steps.push(format!("Resize({})", self.size));
        }
        let j = self.jitter;
        let jitter = (self.jitter_p > 0.0 && (j.brightness, j.contrast, j.saturation, j.hue) != (0.0, 0.0, 0.0, 0.0))
            .then(|| format!("RandomApply(ColorJitter({}, {}, {}, {}), p={})", j.brightness, j.contrast, j.saturation, j.hue, self.jitter_p));
        let gray = (self.grayscale_p > 0.0).then(|| format!("RandomGrayscale({})", self.grayscale_p));
        let (first, second) = if self.grayscale_before_jitter { (gray, jitter) } else { (jitter, gray) };
        steps.extend(first);
        steps.extend(second);
        if self.blur_p > 0.0 {
            steps.push(format!("RandomApply(GaussianBlur(sigma=({}, {})), p={})", self.blur_sigma.0, self.blur_sigma.1, self.blur_p));
        }
        if self.solarize_p > 0.0 {
            steps.push(format!("RandomApply(Solarize(threshold=128/255), p={})", self.solarize_p));
        }
        // the flip runs last here; it commutes with the per-pixel jitter and grayscale (the colab flips second)
        if self.flip_p > 0.0 {
            steps.push(format!("RandomHorizontalFlip({})", self.flip_p));
        }
        let stats = if self.mean == CIFAR_MEAN && self.std == CIFAR_STD { "CIFAR-10 mean/std".to_string() } else { format!("mean {:?}, std {:?}", self.mean, self.std) };
        steps.push(format!("Normalize({stats})"));
        steps.join(" > ")
    }

    /// Checks every field: size > 0, ranges ordered and positive, probabilities in `[0, 1]`,
    /// jitter strengths >= 0 (hue <= 0.5), std > 0, everything finite.
    pub fn validate(&self) -> Result<()> {
        // `Err` naming the field, what it must be and what it is, unless `ok`
        let ensure = |ok: bool, expected: String, got: String| if ok { Ok(()) } else { Err(Error::settings("augmentation (AugmentConfig)", expected, got)) };
        ensure(self.size > 0, "size > 0".into(), "0".into())?;
        let range_ok = |(lo, hi): (f64, f64)| lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi;
        for (name, range) in [("crop_scale", self.crop_scale), ("crop_ratio", self.crop_ratio), ("blur_sigma", self.blur_sigma)] {
            ensure(range_ok(range), format!("{name} 0 < lo <= hi"), format!("{range:?}"))?;
        }
        for (name, p) in [("jitter_p", self.jitter_p), ("grayscale_p", self.grayscale_p), ("blur_p", self.blur_p), ("solarize_p", self.solarize_p), ("flip_p", self.flip_p)] {
            ensure((0.0..=1.0).contains(&p), format!("{name} in [0, 1]"), format!("{p}"))?;
        }
        let j = self.jitter;
        for (name, x) in [("brightness", j.brightness), ("contrast", j.contrast), ("saturation", j.saturation)] {
            ensure(x.is_finite() && x >= 0.0, format!("jitter {name} >= 0"), format!("{x}"))?;
        }
        ensure((0.0..=0.5).contains(&j.hue), "jitter hue in [0, 0.5]".into(), format!("{}", j.hue))?;
        let stats_ok = (0..3).all(|c| self.mean[c].is_finite() && self.std[c].is_finite() && self.std[c] > 0.0);
        ensure(stats_ok, "finite mean and std > 0".into(), format!("mean {:?} std {:?}", self.mean, self.std))?;
        Ok(())
    }
}

/// A crop box in pixels, as `RandomResizedCrop.get_params` returns it (`top, left, height, width`), plus what
/// was sampled to get it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Number of rows.
    pub height: usize,
    /// Number of columns.
    pub width: usize,
    /// `true` when all 10 attempts were rejected and the centre crop was used.
    pub fallback: bool,
    /// The sampled area fraction of the accepted attempt (the box's own fraction after a fallback).
    pub scale: f64,
    /// The sampled aspect ratio of the accepted attempt (the box's own ratio after a fallback).
    pub ratio: f64,
}

impl CropBox {
    /// The whole `height x width` image.
    pub fn full(height: usize, width: usize) -> Self {
        let ratio = if height > 0 {
            width as f64 / height as f64
        } else {
            1.0
        };
        CropBox {
            top: 0,
            left: 0,
            height,
            width,
            fallback: false,
            scale: 1.0,
            ratio,
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 attempts of an area fraction uniform in `scale` and
/// an aspect ratio log-uniform in `ratio`, `w = round(sqrt(area * r))`, `h = round(sqrt(area / r))` (Python's
/// round, ties to even), accepted when `0 < w <= width` and `0 < h <= height`, placed uniformly; otherwise a
/// centre crop clamped to `ratio`. The box always lies inside the image (empty only for an empty image).
pub fn sample_crop(
    rng: &mut CounterRng,
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let area = (height * width) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let s = rng.uniform(scale.0, scale.1);
        let r = rng.uniform(log_lo, log_hi).exp();
        let target = area * s;
        let w = (target * r).sqrt().round_ties_even();
        let h = (target / r).sqrt().round_ties_even();
        if w > 0.0 && w <= width as f64 && h > 0.0 && h <= height as f64 {
            let (w, h) = (w as usize, h as usize);
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return CropBox {
                top,
                left,
                height: h,
                width: w,
                fallback: false,
                scale: s,
                ratio: r,
            };
        }
    }
    // Fallback to a central crop.
    let in_ratio = if height > 0 {
        width as f64 / height as f64
    } else {
        1.0
    };
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (h, w) = if in_ratio < lo {
        (((width as f64) / lo).round_ties_even() as usize, width)
    } else if in_ratio > hi {
        (height, ((height as f64) * hi).round_ties_even() as usize)
    } else {
        (height, width)
    };
    let (h, w) = (h.min(height), w.min(width));
    let fb_scale = if area > 0.0 {
        (h * w) as f64 / area
    } else {
        0.0
    };
    let fb_ratio = if h > 0 { w as f64 / h as f64 } else { 1.0 };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
        fallback: true,
        scale: fb_scale,
        ratio: fb_ratio,
    }
}

/// Resampling weights of PIL's `precompute_coeffs` with the triangle (bilinear) filter: antialiased when
/// downsampling, plain bilinear with half-pixel centres when upsampling. Returns `(first, count)` per output
/// pixel and the weights, `ksize` per output pixel.
fn resample_coeffs(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<f32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut spans = Vec::with_capacity(out_size);
    let mut weights = vec![0.0f32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as isize).max(0) as usize; // C's truncating cast
        let xmax = ((center + support + 0.5) as isize).clamp(0, in_size as isize) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let arg = ((x + xmin) as f64 - center + 0.5) / filterscale;
            let w = (1.0 - arg.abs()).max(0.0);
            *kx = w;
            total += w;
        }
        for x in 0..n {
            weights[xx * ksize + x] = if total != 0.0 {
                (k[x] / total) as f32
            } else {
                0.0
            };
        }
        spans.push((xmin, n));
    }
    (spans, weights, ksize)
}

/// `resized_crop` of torchvision: crop `src: [3, height, width]` (u8) to `crop`, resize it to
/// `[3, out_h, out_w]` with bilinear antialiased resampling, and return it as f32 in `[0, 1]` (`ToTensor`).
/// An error if `src` has the wrong length, the box leaves the image or a size is 0.
pub fn resized_crop(
    src: &[u8],
    height: usize,
    width: usize,
    crop: &CropBox,
    out_h: usize,
    out_w: usize,
) -> Result<ImageF32> {
    const OP: &str = "resized_crop";
    if src.len() != 3 * height * width {
        return Err(Error::shape(
            OP,
            format!("src of 3x{height}x{width} = {}", 3 * height * width),
            src.len().to_string(),
        ));
    }
    if crop.height == 0
        || crop.width == 0
        || crop.top.saturating_add(crop.height) > height
        || crop.left.saturating_add(crop.width) > width
    {
        return Err(Error::shape(
            OP,
            format!("a non-empty box inside {height}x{width}"),
            format!("{crop:?}"),
        ));
    }
    if out_h == 0 || out_w == 0 {
        return Err(Error::shape(
            OP,
            "output size > 0",
            format!("{out_h}x{out_w}"),
        ));
    }
    let (ch, cw) = (crop.height, crop.width);
    let plane = height * width;
    let mut out = vec![0.0f32; 3 * out_h * out_w];
    if ch == out_h && cw == out_w {
        // Identity resampling: a plain copy (the weights would be exactly 1 and 0).
        for c in 0..3 {
            for y in 0..ch {
                let s = &src[c * plane + (crop.top + y) * width + crop.left..][..cw];
                let d = &mut out[(c * out_h + y) * out_w..][..out_w];
                for (d, &s) in d.iter_mut().zip(s) {
                    *d = s as f32 / 255.0;
                }
            }
        }
        return ImageF32::new(out, out_h, out_w);
    }
    let (hspans, hw, hk) = resample_coeffs(cw, out_w);
    let (vspans, vw, vk) = resample_coeffs(ch, out_h);
    // Horizontal pass: [3, ch, out_w].
    let mut tmp = vec![0.0f32; 3 * ch * out_w];
    let mut row = vec![0.0f32; cw];
    for c in 0..3 {
        for y in 0..ch {
            let s = &src[c * plane + (crop.top + y) * width + crop.left..][..cw];
            for (r, &s) in row.iter_mut().zip(s) {
                *r = s as f32 / 255.0;
            }
            let t = &mut tmp[(c * ch + y) * out_w..][..out_w];
            for (ox, t) in t.iter_mut().enumerate() {
                let (x0, n) = hspans[ox];
                let w = &hw[ox * hk..][..n];
                *t = row[x0..x0 + n].iter().zip(w).map(|(a, b)| a * b).sum();
            }
        }
    }
    // Vertical pass: [3, out_h, out_w].
    for c in 0..3 {
        for oy in 0..out_h {
            let (y0, n) = vspans[oy];
            let w = &vw[oy * vk..][..n];
            let d = &mut out[(c * out_h + oy) * out_w..][..out_w];
            d.iter_mut().for_each(|v| *v = 0.0);
            for (k, &wk) in w.iter().enumerate() {
                let t = &tmp[(c * ch + y0 + k) * out_w..][..out_w];
                for (d, &t) in d.iter_mut().zip(t) {
                    *d += wk * t;
                }
            }
        }
    }
    ImageF32::new(out, out_h, out_w)
}

/// The drawn parameters of one `ColorJitter` call: the order of the four ops (0 brightness, 1 contrast,
/// 2 saturation, 3 hue) and each factor (`None` when that op is off).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterParams {
    /// A permutation of `[0, 1, 2, 3]` (torchvision's `randperm(4)`).
    pub order: [u8; 4],
    /// Brightness factor.
    pub brightness: Option<f32>,
    /// Contrast factor.
    pub contrast: Option<f32>,
    /// Saturation factor.
    pub saturation: Option<f32>,
    /// Hue shift, as a fraction of the hue circle.
    pub hue: Option<f32>,
}

/// torchvision's `ColorJitter.get_params`: a random order, then each factor uniform in its range.
pub fn sample_jitter(rng: &mut CounterRng, j: &ColorJitter) -> JitterParams {
    let mut order = [0u8, 1, 2, 3];
    rng.shuffle(&mut order);
    let mut factor = |x: f32| {
        if x > 0.0 {
            Some(rng.uniform((1.0 - x as f64).max(0.0), 1.0 + x as f64) as f32)
        } else {
            None
        }
    };
    let brightness = factor(j.brightness);
    let contrast = factor(j.contrast);
    let saturation = factor(j.saturation);
    let hue = if j.hue > 0.0 {
        Some(rng.uniform(-(j.hue as f64), j.hue as f64) as f32)
    } else {
        None
    };
    JitterParams {
        order,
        brightness,
        contrast,
        saturation,
        hue,
    }
}

/// A 3-channel f32 image `[3, height, width]`, row-major planes, values in `[0, 1]` until normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageF32 {
    data: Vec<f32>,
    height: usize,
    width: usize,
}

/// torchvision's `_rgb2hsv` for one pixel.
#[inline]
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let d = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / d, (maxc - g) / d, (maxc - b) / d);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let h = (h / 6.0 + 1.0) % 1.0;
    (h, s, maxc)
}

/// torchvision's `_hsv2rgb` for one pixel.
#[inline]
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

impl ImageF32 {
    /// Wraps `data: [3, height, width]`; an error if the length does not match.
    pub fn new(data: Vec<f32>, height: usize, width: usize) -> Result<Self> {
        if data.len() != 3 * height * width {
            return Err(Error::shape(
                "ImageF32::new",
                format!("3x{height}x{width} = {} values", 3 * height * width),
                data.len().to_string(),
            ));
        }
        Ok(ImageF32 {
            data,
            height,
            width,
        })
    }

    /// `ToTensor`: u8 `[3, height, width]` to f32 `x / 255`.
    pub fn from_u8(src: &[u8], height: usize, width: usize) -> Result<Self> {
        ImageF32::new(
            src.iter().map(|&v| v as f32 / 255.0).collect(),
            height,
            width,
        )
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The values, `[3, height, width]`.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, `[3, height, width]`, by value.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Back to u8: `round(clamp(x, 0, 1) * 255)`.
    pub fn to_u8(&self) -> Vec<u8> {
        self.data
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }

    fn plane(&self) -> usize {
        self.height * self.width
    }

    /// torchvision's `_blend(img, other, ratio)` with a per-pixel `other`.
    fn blend_with(&mut self, ratio: f32, other: impl Fn(usize) -> f32) {
        let n = self.plane();
        for c in 0..3 {
            for (i, x) in self.data[c * n..(c + 1) * n].iter_mut().enumerate() {
                *x = (ratio * *x + (1.0 - ratio) * other(i)).clamp(0.0, 1.0);
            }
        }
    }

    fn luma(&self) -> Vec<f32> {
        let n = self.plane();
        let (r, rest) = self.data.split_at(n);
        let (g, b) = rest.split_at(n);
        r.iter()
            .zip(g)
            .zip(b)
            .map(|((&r, &g), &b)| LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)
            .collect()
    }

    /// `adjust_brightness`: `clamp(f * x, 0, 1)`.
    pub fn adjust_brightness(&mut self, factor: f32) {
        self.blend_with(factor, |_| 0.0);
    }

    /// `adjust_contrast`: blend with the mean of the grey image, `clamp(f * x + (1 - f) * mean, 0, 1)`.
    pub fn adjust_contrast(&mut self, factor: f32) {
        let luma = self.luma();
        let mean = if luma.is_empty() {
            0.0
        } else {
            luma.iter().sum::<f32>() / luma.len() as f32
        };
        self.blend_with(factor, |_| mean);
    }

    /// `adjust_saturation`: blend with the grey image, `clamp(f * x + (1 - f) * grey, 0, 1)`.
    pub fn adjust_saturation(&mut self, factor: f32) {
        let luma = self.luma();
        self.blend_with(factor, |i| luma[i]);
    }

    /// `adjust_hue`: RGB to HSV, `h = (h + shift) mod 1`, back to RGB.
    pub fn adjust_hue(&mut self, shift: f32) {
        let n = self.plane();
        let (r, rest) = self.data.split_at_mut(n);
        let (g, b) = rest.split_at_mut(n);
        for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
            let (h, s, v) = rgb_to_hsv(*r, *g, *b);
            let h = (h + shift).rem_euclid(1.0);
            (*r, *g, *b) = hsv_to_rgb(h, s, v);
        }
    }

    /// Applies drawn jitter parameters in their order.
    pub fn color_jitter(&mut self, p: &JitterParams) {
        for op in p.order {
            match op {
                0 => p.brightness.map(|f| self.adjust_brightness(f)),
                1 => p.contrast.map(|f| self.adjust_contrast(f)),
                2 => p.saturation.map(|f| self.adjust_saturation(f)),
                _ => p.hue.map(|f| self.adjust_hue(f)),
            };
        }
    }

    /// `rgb_to_grayscale(num_output_channels=3)`: every channel becomes `0.2989 R + 0.587 G + 0.114 B`.
    pub fn to_grayscale(&mut self) {
        let luma = self.luma();
        let n = self.plane();
        for c in 0..3 {
            self.data[c * n..(c + 1) * n].copy_from_slice(&luma);
        }
    }

    /// Separable Gaussian blur of standard deviation `sigma` pixels (radius `ceil(3 sigma)`, edges clamped,
    /// weights summing to 1, so a constant image stays constant). `sigma <= 0` or non-finite does nothing.
    pub fn gaussian_blur(&mut self, sigma: f32) {
        if !(sigma.is_finite() && sigma > 0.0) || self.data.is_empty() {
            return;
        }
        let radius = ((3.0 * sigma).ceil() as usize).max(1);
        let mut k: Vec<f32> = (0..=2 * radius)
            .map(|i| (-((i as f32 - radius as f32).powi(2)) / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f32 = k.iter().sum();
        k.iter_mut().for_each(|v| *v /= total);
        let (h, w) = (self.height, self.width);
        let r = radius as isize;
        let mut tmp = vec![0.0f32; self.data.len()];
        // Horizontal.
        for (src, dst) in self.data.chunks(w).zip(tmp.chunks_mut(w)) {
            for (x, d) in dst.iter_mut().enumerate() {
                let mut acc = 0.0;
                for (i, &kv) in k.iter().enumerate() {
                    let xx = (x as isize + i as isize - r).clamp(0, w as isize - 1) as usize;
                    acc += kv * src[xx];
                }
                *d = acc;
            }
        }
        // Vertical.
        let n = h * w;
        for c in 0..3 {
            let src = &tmp[c * n..(c + 1) * n];
            let dst = &mut self.data[c * n..(c + 1) * n];
            for y in 0..h {
                let d = &mut dst[y * w..(y + 1) * w];
                d.iter_mut().for_each(|v| *v = 0.0);
                for (i, &kv) in k.iter().enumerate() {
                    let yy = (y as isize + i as isize - r).clamp(0, h as isize - 1) as usize;
                    for (d, &s) in d.iter_mut().zip(&src[yy * w..(yy + 1) * w]) {
                        *d += kv * s;
                    }
                }
            }
        }
    }

    /// torchvision's `solarize(img, threshold)` on `[0, 1]` pixels: every value `x >= threshold` becomes
    /// `1 - x`, the others stay. MoCo v3 uses [`SOLARIZE_THRESHOLD`].
    pub fn solarize(&mut self, threshold: f32) {
        for x in self.data.iter_mut() {
            if *x >= threshold {
                *x = 1.0 - *x;
            }
        }
    }

    /// Mirrors every row (`hflip`).
    pub fn hflip(&mut self) {
        if self.width == 0 {
            return;
        }
        for row in self.data.chunks_mut(self.width) {
            row.reverse();
        }
    }

    /// `Normalize(mean, std)`: writes `(x - mean[c]) / std[c]` into `out` (same length as the image).
    pub fn normalize_into(&self, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) -> Result<()> {
        if out.len() != self.data.len() {
            return Err(Error::shape(
                "normalize_into",
                format!("out of {}", self.data.len()),
                out.len().to_string(),
            ));
        }
        let n = self.plane();
        for c in 0..3 {
            for (o, &x) in out[c * n..(c + 1) * n]
                .iter_mut()
                .zip(&self.data[c * n..(c + 1) * n])
            {
                *o = (x - mean[c]) / std[c];
            }
        }
        Ok(())
    }
}

/// Undoes `Normalize` and `ToTensor`: `round(clamp(x * std[c] + mean[c], 0, 1) * 255)` for `x: [3, H*W]`
/// (any length that is a multiple of 3).
pub fn denormalize_to_u8(x: &[f32], mean: [f32; 3], std: [f32; 3]) -> Result<Vec<u8>> {
    if x.len() % 3 != 0 {
        return Err(Error::shape(
            "denormalize_to_u8",
            "3 equal channel planes",
            format!("{} values", x.len()),
        ));
    }
    let n = x.len() / 3;
    Ok(x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i / n.max(1);
            ((v * std[c] + mean[c]).clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect())
}

fn check_io(
    op: &'static str,
    cfg: &AugmentConfig,
    src: &[u8],
    height: usize,
    width: usize,
    out: &[f32],
) -> Result<()> {
    if height == 0 || width == 0 || src.len() != 3 * height * width {
        return Err(Error::shape(
            op,
            format!("a non-empty u8 image 3x{height}x{width}"),
            format!("{} bytes", src.len()),
        ));
    }
    let want = 3 * cfg.size * cfg.size;
    if out.len() != want {
        return Err(Error::shape(
            op,
            format!("out of 3x{0}x{0} = {want}", cfg.size),
            out.len().to_string(),
        ));
    }
    Ok(())
}

/// One augmented view of `src: [3, height, width]` (u8) into `out: [3, size, size]` (normalised f32), drawing
/// from `rng`. Call [`AugmentConfig::validate`] once beforehand; this checks only the buffer lengths.
pub fn augment_view(
    cfg: &AugmentConfig,
    src: &[u8],
    height: usize,
    width: usize,
    rng: &mut CounterRng,
    out: &mut [f32],
) -> Result<()> {
    check_io("augment_view", cfg, src, height, width, out)?;
    let crop = if cfg.random_crop {
        sample_crop(rng, height, width, cfg.crop_scale, cfg.crop_ratio)
    } else {
        CropBox::full(height, width)
    };
    let mut img = resized_crop(src, height, width, &crop, cfg.size, cfg.size)?;
    let jitter = rng.bernoulli(cfg.jitter_p);
    let jitter_params = sample_jitter(rng, &cfg.jitter);
    let gray = rng.bernoulli(cfg.grayscale_p);
    if cfg.grayscale_before_jitter && gray {
        img.to_grayscale();
    }
    if jitter {
        img.color_jitter(&jitter_params);
    }
    if !cfg.grayscale_before_jitter && gray {
        img.to_grayscale();
    }
    let blur = rng.bernoulli(cfg.blur_p);
    let sigma = rng.uniform(cfg.blur_sigma.0, cfg.blur_sigma.1) as f32;
    if blur {
        img.gaussian_blur(sigma);
    }
    let flip = rng.bernoulli(cfg.flip_p);
    // Drawn after the flip so that every config without solarize keeps its stream; solarize is per pixel and
    // commutes with the flip, so applying it first is main_moco.py's order.
    let solarize = rng.bernoulli(cfg.solarize_p);
    if solarize {
        img.solarize(SOLARIZE_THRESHOLD);
    }
    if flip {
        img.hflip();
    }
    img.normalize_into(cfg.mean, cfg.std, out)
}

/// The evaluation transform: no randomness, resize to `size` when the image is another size (bilinear,
/// antialiased), then `ToTensor` and `Normalize`.
pub fn eval_view(
    cfg: &AugmentConfig,
    src: &[u8],
    height: usize,
    width: usize,
    out: &mut [f32],
) -> Result<()> {
    check_io("eval_view", cfg, src, height, width, out)?;
    let img = resized_crop(
        src,
        height,
        width,
        &CropBox::full(height, width),
        cfg.size,
        cfg.size,
    )?;
    img.normalize_into(cfg.mean, cfg.std, out)
}

/// The augmentations of the two views of a pair: view 1 makes the query `x_q`, view 2 the key `x_k`.
/// MoCo v1/v2 and the colab use one config for both ([`ViewPair::same`], or `From<AugmentConfig>`); MoCo v3
/// uses `augmentation1` / `augmentation2` ([`ViewPair::mocov3`]). Both views must have the same output size.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewPair {
    /// The first view's (query's) augmentation.
    pub view1: AugmentConfig,
    /// The second view's (key's) augmentation.
    pub view2: AugmentConfig,
}

impl ViewPair {
    /// Two views of one config (MoCo v1/v2, the colab).
    pub fn same(cfg: AugmentConfig) -> Self {
        ViewPair { view1: cfg.clone(), view2: cfg }
    }

    /// MoCo v3's asymmetric pair: [`AugmentConfig::mocov3_view1`] and [`AugmentConfig::mocov3_view2`].
    pub fn mocov3(size: usize) -> Self {
        ViewPair { view1: AugmentConfig::mocov3_view1(size), view2: AugmentConfig::mocov3_view2(size) }
    }

    /// The output side S of both views.
    pub fn size(&self) -> usize {
        self.view1.size
    }

    /// Both configs valid ([`AugmentConfig::validate`]) and of the same output size.
    pub fn validate(&self) -> Result<()> {
        self.view1.validate()?;
        self.view2.validate()?;
        if self.view1.size != self.view2.size {
            return Err(Error::settings(
                "views (ViewPair)",
                "two views of the same size",
                format!("{} and {}", self.view1.size, self.view2.size),
            ));
        }
        Ok(())
    }

    /// [`AugmentConfig::describe`] of the shared config, or `view 1: ... | view 2: ...` when they differ.
    pub fn describe(&self) -> String {
        if self.view1 == self.view2 {
            self.view1.describe()
        } else {
            format!("view 1: {} | view 2: {}", self.view1.describe(), self.view2.describe())
        }
    }
}

impl From<AugmentConfig> for ViewPair {
    fn from(cfg: AugmentConfig) -> Self {
        ViewPair::same(cfg)
    }
}

/// The two views of a MoCo pair for sample `index` at `epoch` with one config per view: view 0 (query,
/// `views.view1`) from `CounterRng::new(seed, epoch, index, 0)`, view 1 (key, `views.view2`) from
/// `CounterRng::new(seed, epoch, index, 1)`. The result depends only on these numbers, never on threads or
/// call order. Checks the buffer lengths only; call [`ViewPair::validate`] once beforehand.
#[allow(clippy::too_many_arguments)]
pub fn augment_pair_views(views: &ViewPair, src: &[u8], height: usize, width: usize, seed: u64, epoch: u64, index: u64, out_q: &mut [f32], out_k: &mut [f32]) -> Result<()> {
    augment_two_views([&views.view1, &views.view2], src, (height, width), (seed, epoch, index), [out_q, out_k])
}

/// View `v` (0, 1) of `cfgs` into `outs[v]`, drawing from `CounterRng::new(seed, epoch, index, v)`: what
/// [`augment_pair_views`] and [`augment_pair`] both do.
fn augment_two_views(cfgs: [&AugmentConfig; 2], src: &[u8], (height, width): (usize, usize), (seed, epoch, index): (u64, u64, u64), outs: [&mut [f32]; 2]) -> Result<()> {
    for (view, (cfg, out)) in cfgs.into_iter().zip(outs).enumerate() {
        augment_view(cfg, src, height, width, &mut CounterRng::new(seed, epoch, index, view as u64), out)?;
    }
    Ok(())
}

/// The two views of a MoCo pair for sample `index` at `epoch`: view 0 (query) from
/// `CounterRng::new(seed, epoch, index, 0)`, view 1 (key) from `CounterRng::new(seed, epoch, index, 1)`.
/// The result depends only on these numbers, never on threads or call order. [`augment_pair_views`] with
/// the same config for both views.
#[allow(clippy::too_many_arguments)]
pub fn augment_pair(cfg: &AugmentConfig, src: &[u8], height: usize, width: usize, seed: u64, epoch: u64, index: u64, out_q: &mut [f32], out_k: &mut [f32]) -> Result<()> {
    augment_two_views([cfg, cfg], src, (height, width), (seed, epoch, index), [out_q, out_k])
}
