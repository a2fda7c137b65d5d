//! Linear probe: a linear classifier `logits = x · Wᵀ + b` (`W: [C, D]`, `b: [C]`) trained on frozen features with
//! softmax cross-entropy, reporting train and test top-1.
//!
//! Choices, and why:
//! - **Features are standardised by default** ([`FeatureNorm::Standardize`]): every dimension is centred and
//!   scaled by the train set's mean and standard deviation (the test set uses the train statistics). This is what
//!   MoCo v3 / DINO get from a `BatchNorm1d(affine=False)` in front of the classifier, and it makes one learning
//!   rate work across encoders whose feature scales differ by orders of magnitude. The MoCo v1/v2 recipe (raw
//!   features, lr 30) only works for the feature scale of a ResNet-50 average pool; on small data and other
//!   encoders it diverges or crawls. [`FeatureNorm::L2`] and [`FeatureNorm::None`] are there for comparison.
//! - **SGD with momentum 0.9** (PyTorch form: `v = μ v + g`, `w -= lr v`), weight decay on `W` only, a cosine
//!   learning rate `lr_t = lr · ½ (1 + cos(π t / T))` over the `T = epochs × batches` steps, mini-batches from a
//!   seeded shuffle of the train set every epoch. `W` and `b` start at zero (the problem is convex), so the seed
//!   only drives the shuffle and the run is deterministic for a seed.
//! - Matrix products use the crate's GEMM ([`crate::ops::linear::cpu::linear_forward`] / `linear_backward`).

use crate::ops::linear::{cpu::{linear_backward, linear_forward}, LinearShape};
use super::{check_dims, check_labels, check_row_count, check_rows};
use crate::error::{Error, Result};

const OP: &str = "linear_probe";

/// How features are normalised before the classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FeatureNorm {
    /// Per-dimension z-score with the train set's mean and standard deviation (`1 / sqrt(var + 1e-5)`).
    #[default]
    Standardize,
    /// Every row divided by its L2 norm (`max(norm, 1e-12)`).
    L2,
    /// Raw features.
    None,
}

/// Hyperparameters of [`linear_probe`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Passes over the train set (>= 1). Default 100.
    pub epochs: usize,
    /// Mini-batch size (>= 1; the last batch of an epoch may be smaller). Default 256.
    pub batch_size: usize,
    /// Peak learning rate of the cosine schedule (finite, > 0). Default 0.1.
    pub lr: f32,
    /// SGD momentum in [0, 1). Default 0.9.
    pub momentum: f32,
    /// L2 weight decay on `W` (finite, >= 0). Default 0.
    pub weight_decay: f32,
    /// Seed of the per-epoch shuffle. Default 0.
    pub seed: u64,
    /// Feature normalisation. Default [`FeatureNorm::Standardize`].
    pub norm: FeatureNorm,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self { epochs: 100, batch_size: 256, lr: 0.1, momentum: 0.9, weight_decay: 0.0, seed: 0, norm: FeatureNorm::Standardize }
    }
}

impl ProbeConfig {
    fn validate(&self) -> Result<()> {
        let op = OP;
        if self.epochs == 0 {
            return Err(Error::shape(op, "epochs >= 1", "epochs = 0"));
        }
        if self.batch_size == 0 {
            return Err(Error::shape(op, "batch_size >= 1", "batch_size = 0"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::shape(op, "lr finite and > 0", format!("lr = {}", self.lr)));
        }
        if !(self.momentum >= 0.0 && self.momentum < 1.0) {
            return Err(Error::shape(op, "momentum in [0, 1)", format!("momentum = {}", self.momentum)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::shape(op, "weight_decay finite and >= 0", format!("weight_decay = {}", self.weight_decay)));
        }
        Ok(())
    }
}

/// A trained linear classifier with the normalisation it was trained under.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearClassifier {
    /// Weights `[C, D]` (torch `nn.Linear` layout), applied to normalised features.
    pub weight: Vec<f32>,
    /// Bias `[C]`.
    pub bias: Vec<f32>,
    /// Feature normalisation applied before the classifier.
    pub norm: FeatureNorm,
    /// Per-dimension train mean `[D]` (zeros unless [`FeatureNorm::Standardize`]).
    pub mean: Vec<f32>,
    /// Per-dimension `1 / sqrt(var + 1e-5)` `[D]` (ones unless [`FeatureNorm::Standardize`]).
    pub inv_std: Vec<f32>,
    /// Feature dimension D.
    pub d: usize,
    /// Number of classes C.
    pub num_classes: usize,
}

/// Result of [`linear_probe`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// Top-1 accuracy on the train set after training, in [0, 1].
    pub train_top1: f64,
    /// Top-1 accuracy on the test set; NaN when the test set is empty.
    pub test_top1: f64,
    /// Mean train cross-entropy of every epoch (computed during the epoch, before each step).
    pub epoch_loss: Vec<f64>,
    /// The trained classifier.
    pub classifier: LinearClassifier,
}

/// SplitMix64: a small, seedable generator for the shuffle (the crate has no runtime `rand`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; bias below 2^-40 for the sizes used here).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    fn shuffle(&mut self, v: &mut [u32]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Rows evaluated per GEMM call in [`LinearClassifier::predict`].
const EVAL_ROWS: usize = 4096;

impl LinearClassifier {
    /// Normalises `x [N, D]` in place as the classifier expects.
    fn normalise(&self, x: &mut [f32]) {
        let d = self.d;
        match self.norm {
            FeatureNorm::None => {}
            FeatureNorm::L2 => {
                for r in x.chunks_mut(d) {
                    let ss: f64 = r.iter().map(|&v| v as f64 * v as f64).sum();
                    let inv = 1.0 / ss.sqrt().max(1e-12);
                    r.iter_mut().for_each(|v| *v = (*v as f64 * inv) as f32);
                }
            }
            FeatureNorm::Standardize => {
                for r in x.chunks_mut(d) {
                    for ((v, m), s) in r.iter_mut().zip(&self.mean).zip(&self.inv_std) {
                        *v = (*v - m) * s;
                    }
                }
            }
        }
    }

    /// Predicted class of every row of raw features `x [N, D]` (normalised here as in training); ties go to the
    /// smaller class index. Errors when `x` or the classifier's own buffers do not fit `D` and `C`.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<u32>> {
        let op = OP;
        if self.d == 0 || self.num_classes == 0 {
            return Err(Error::shape(op, "D >= 1 and C >= 1", format!("D = {}, C = {}", self.d, self.num_classes)));
        }
        if self.norm == FeatureNorm::Standardize && (self.mean.len() != self.d || self.inv_std.len() != self.d) {
            return Err(Error::shape(op, format!("mean and inv_std of length D = {}", self.d), format!("lengths {} and {}", self.mean.len(), self.inv_std.len())));
        }
        let n = check_rows(OP, "features", x, self.d)?;
        let mut xn = x.to_vec();
        self.normalise(&mut xn);
        self.predict_normalised(&xn, n)
    }

    fn predict_normalised(&self, xn: &[f32], n: usize) -> Result<Vec<u32>> {
        let (d, c) = (self.d, self.num_classes);
        let mut preds = Vec::with_capacity(n);
        let mut logits = vec![0.0f32; EVAL_ROWS.min(n) * c];
        for r0 in (0..n).step_by(EVAL_ROWS) {
            let b = EVAL_ROWS.min(n - r0);
            let shape = LinearShape::new(b, d, c)?;
            linear_forward(&mut logits[..b * c], &xn[r0 * d..(r0 + b) * d], &self.weight, Some(&self.bias), &shape)?;
            preds.extend(logits[..b * c].chunks(c).map(|row| argmax(row) as u32));
        }
        Ok(preds)
    }
}

/// Index of the largest value; ties (and NaN) resolve to the smaller index.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn accuracy(preds: &[u32], labels: &[u32]) -> f64 {
    if labels.is_empty() {
        return f64::NAN;
    }
    preds.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64
}

/// Trains a linear classifier on frozen `train_x [N, D]` / `train_y [N]` and reports train and test top-1 on
/// `test_x [Q, D]` / `test_y [Q]` (`Q = 0` allowed: test top-1 is then NaN). Features are raw; they are
/// normalised as `cfg.norm` says, with statistics from the train set only. Labels lie in `0..num_classes`.
pub fn linear_probe(
    train_x: &[f32],
    train_y: &[u32],
    test_x: &[f32],
    test_y: &[u32],
    d: usize,
    num_classes: usize,
    cfg: &ProbeConfig,
) -> Result<ProbeReport> {
    cfg.validate()?;
    check_dims(OP, d, num_classes)?;
    let n = check_rows(OP, "train features", train_x, d)?;
    if n == 0 {
        return Err(Error::shape(OP, "N >= 1 train rows", "N = 0"));
    }
    check_row_count(OP, "N", n)?;
    check_labels(OP, "train labels", train_y, n, num_classes)?;
    let q = check_rows(OP, "test features", test_x, d)?;
    check_labels(OP, "test labels", test_y, q, num_classes)?;
    let c = num_classes;
    let bs = cfg.batch_size.min(n);

    // Normalisation statistics from the train set.
    let (mut mean, mut inv_std) = (vec![0.0f32; d], vec![1.0f32; d]);
    if cfg.norm == FeatureNorm::Standardize {
        let mut s = vec![0.0f64; d];
        for r in train_x.chunks(d) {
            s.iter_mut().zip(r).for_each(|(a, &v)| *a += v as f64);
        }
        s.iter_mut().for_each(|a| *a /= n as f64);
        let mut var = vec![0.0f64; d];
        for r in train_x.chunks(d) {
            var.iter_mut().zip(r).zip(&s).for_each(|((a, &v), m)| *a += (v as f64 - m).powi(2));
        }
        for j in 0..d {
            mean[j] = s[j] as f32;
            inv_std[j] = (1.0 / (var[j] / n as f64 + 1e-5).sqrt()) as f32;
        }
    }
    let mut clf = LinearClassifier { weight: vec![0.0; c * d], bias: vec![0.0; c], norm: cfg.norm, mean, inv_std, d, num_classes: c };
    let mut xn = train_x.to_vec();
    clf.normalise(&mut xn);

    let (mut vw, mut vb) = (vec![0.0f32; c * d], vec![0.0f32; c]); // momentum buffers
    let (mut gw, mut gb) = (vec![0.0f32; c * d], vec![0.0f32; c]); // gradients
    let mut xb = vec![0.0f32; bs * d]; // [B, D] gathered batch
    let mut logits = vec![0.0f32; bs * c]; // [B, C], then dlogits in place
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = SplitMix64(cfg.seed);
    let batches = n.div_ceil(bs);
    let total_steps = (cfg.epochs * batches) as f64;
    let mut step = 0usize;
    let mut epoch_loss = Vec::with_capacity(cfg.epochs);
    for _epoch in 0..cfg.epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0f64;
        for idx in order.chunks(bs) {
            let b = idx.len();
            for (dst, &i) in xb.chunks_mut(d).zip(idx) {
                dst.copy_from_slice(&xn[i as usize * d..(i as usize + 1) * d]);
            }
            let shape = LinearShape::new(b, d, c)?;
            let (xb, lg) = (&xb[..b * d], &mut logits[..b * c]);
            linear_forward(lg, xb, &clf.weight, Some(&clf.bias), &shape)?;
            // softmax cross-entropy; lg becomes dlogits = (softmax - onehot) / B
            for (row, y) in lg.chunks_mut(c).zip(idx.iter().map(|&i| train_y[i as usize])) {
                let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut z = 0.0f64;
                for v in row.iter_mut() {
                    let e = ((*v - mx) as f64).exp();
                    *v = e as f32;
                    z += e;
                }
                let py = row[y as usize] as f64 / z;
                loss_sum -= py.max(f64::MIN_POSITIVE).ln();
                let inv = 1.0 / (z * b as f64);
                for v in row.iter_mut() {
                    *v = (*v as f64 * inv) as f32;
                }
                row[y as usize] -= 1.0 / b as f32;
            }
            gw.fill(0.0);
            gb.fill(0.0);
            linear_backward(None, &mut gw, Some(&mut gb), lg, xb, &clf.weight, &shape)?;
            let lr = (0.5 * cfg.lr as f64 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps).cos())) as f32;
            for ((w, v), g) in clf.weight.iter_mut().zip(vw.iter_mut()).zip(&gw) {
                *v = cfg.momentum * *v + g + cfg.weight_decay * *w;
                *w -= lr * *v;
            }
            for ((w, v), g) in clf.bias.iter_mut().zip(vb.iter_mut()).zip(&gb) {
                *v = cfg.momentum * *v + g;
                *w -= lr * *v;
            }
            step += 1;
        }
        epoch_loss.push(loss_sum / n as f64);
    }

    let train_top1 = accuracy(&clf.predict_normalised(&xn, n)?, train_y);
    let test_top1 = if q == 0 { f64::NAN } else { accuracy(&clf.predict(test_x)?, test_y) };
    Ok(ProbeReport { train_top1, test_top1, epoch_loss, classifier: clf })
}
