//! Weighted k-nearest-neighbour monitor, as in the MoCo CIFAR-10 demo notebook.
//!
//! The bank holds the train features `[M, D]` with their labels, the queries are test features `[Q, D]`. Both
//! are L2-normalised **here** (callers pass raw encoder outputs; a zero row stays zero), so the similarity is the
//! cosine `q̂ · b̂ᵀ`. For every query the `k` most similar bank rows vote for their class with weight
//! `exp(sim / t)`; the class with the largest summed weight is the prediction.
//!
//! Implementation (CPU):
//! - queries are split into blocks of `block` rows, processed in parallel with rayon;
//! - each block streams the bank in slabs of [`BANK_SLAB`] rows: `sim [block, slab] = q̂ · b̂ᵀ` on the crate's GEMM
//!   ([`crate::backend::cpu::nn::linear_forward`]), then every row updates a size-`k` min-heap of its best
//!   `(sim, index)` pairs. Memory is `O(block * (slab + k))` per task, never `O(Q * M)`;
//! - votes are summed in f64 as `exp((sim - sim_max) / t)`: the per-query factor `exp(-sim_max / t)` does not
//!   change the argmax but keeps small temperatures from overflowing.
//!
//! Tie rules (documented because f32 rounding decides near-ties differently across implementations):
//! - at the k-th neighbour, equal similarities are broken towards the **smaller bank index**;
//! - equal class scores are broken towards the **smaller class index** (the notebook takes the first entry of
//!   a descending `argsort`, whose order on exact ties is unspecified in torch; the first class is the usual
//!   outcome). With f32 features exact ties are rare; near-ties (the k-th and (k+1)-th similarity within f32
//!   rounding, or two class scores within ~1e-6 relative) may be decided differently from PyTorch.

use crate::backend::cpu::nn::{linear_forward, LinearShape};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Bank rows per similarity slab: one GEMM computes `sim [block, BANK_SLAB]`.
pub const BANK_SLAB: usize = 4096;

/// Hyperparameters of the kNN monitor. Defaults are the notebook's: `k = 200`, `t = 0.1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnConfig {
    /// Neighbours that vote; clamped to the bank size M. Must be >= 1.
    pub k: usize,
    /// Temperature of the vote weights `exp(sim / t)`. Must be finite and > 0.
    pub t: f32,
    /// Queries per parallel block; 0 picks one from Q and the rayon pool size (at most 128).
    pub block: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self { k: 200, t: 0.1, block: 0 }
    }
}

impl KnnConfig {
    fn validate(&self) -> Result<()> {
        let op = "knn";
        if self.k == 0 {
            return Err(Error::shape(op, "k >= 1", "k = 0"));
        }
        if !(self.t.is_finite() && self.t > 0.0) {
            return Err(Error::shape(op, "temperature t finite and > 0", format!("t = {}", self.t)));
        }
        Ok(())
    }
}

/// Result of [`KnnBank::evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct KnnReport {
    /// Top-1 accuracy in [0, 1]: `correct / total`.
    pub top1: f64,
    /// Queries whose prediction equals their label.
    pub correct: usize,
    /// Number of queries Q.
    pub total: usize,
    /// The predicted class of every query, when asked for.
    pub predictions: Option<Vec<u32>>,
}

/// The labelled feature bank of the kNN monitor: L2-normalised rows `[M, D]` and labels `[M]`.
#[derive(Clone, Debug)]
pub struct KnnBank {
    /// Normalised bank rows, `[M, D]`.
    feats: Vec<f32>,
    labels: Vec<u32>,
    d: usize,
    num_classes: usize,
}

/// Checks that `x` holds whole rows of length `d` and only finite values; returns the row count.
fn check_rows(what: &str, x: &[f32], d: usize) -> Result<usize> {
    let op = "knn";
    if x.len() % d != 0 {
        return Err(Error::shape(op, format!("{what} of length rows * D (D = {d})"), format!("length {}", x.len())));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::shape(op, format!("finite {what}"), format!("{} at index {i}", x[i])));
    }
    Ok(x.len() / d)
}

fn check_labels(what: &str, labels: &[u32], rows: usize, num_classes: usize) -> Result<()> {
    let op = "knn";
    if labels.len() != rows {
        return Err(Error::shape(op, format!("{what} of length {rows}"), format!("length {}", labels.len())));
    }
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= num_classes) {
        return Err(Error::shape(op, format!("{what} < num_classes = {num_classes}"), format!("label {l}")));
    }
    Ok(())
}

/// `out[r] = x[r] / max(||x[r]||, 1e-12)` row by row (the same eps as `torch.nn.functional.normalize`).
fn l2_normalise_into(out: &mut [f32], x: &[f32], d: usize) {
    for (o, r) in out.chunks_mut(d).zip(x.chunks(d)) {
        let ss: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / ss.sqrt().max(1e-12);
        for (ov, &xv) in o.iter_mut().zip(r) {
            *ov = (xv as f64 * inv) as f32;
        }
    }
}

/// Min-heap of the best `k` `(sim, bank index)` pairs seen so far. "Worse" means lower similarity, or equal
/// similarity and a larger bank index, so the kept set is the top k under a total order.
struct TopK {
    items: Vec<(f32, u32)>,
    k: usize,
}

#[inline]
fn worse(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 > b.1)
}

impl TopK {
    fn new(k: usize) -> Self {
        Self { items: Vec::with_capacity(k), k }
    }

    fn clear(&mut self) {
        self.items.clear();
    }

    #[inline]
    fn push(&mut self, cand: (f32, u32)) {
        if self.items.len() < self.k {
            self.items.push(cand);
            // sift up
            let mut i = self.items.len() - 1;
            while i > 0 {
                let p = (i - 1) / 2;
                if worse(self.items[i], self.items[p]) {
                    self.items.swap(i, p);
                    i = p;
                } else {
                    break;
                }
            }
        } else if worse(self.items[0], cand) {
            self.items[0] = cand;
            self.sift_down();
        }
    }

    fn sift_down(&mut self) {
        let n = self.items.len();
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < n && worse(self.items[l], self.items[m]) {
                m = l;
            }
            if r < n && worse(self.items[r], self.items[m]) {
                m = r;
            }
            if m == i {
                break;
            }
            self.items.swap(i, m);
            i = m;
        }
    }
}

impl KnnBank {
    /// Builds the bank from raw features `[M, D]` (row-major, normalised here) and labels `[M]` in
    /// `0..num_classes`. Errors on `D = 0`, `M = 0`, lengths that do not fit, non-finite values or labels out of
    /// range.
    pub fn new(features: &[f32], labels: &[u32], d: usize, num_classes: usize) -> Result<Self> {
        let op = "knn";
        if d == 0 {
            return Err(Error::shape(op, "feature dimension D >= 1", "D = 0"));
        }
        if num_classes == 0 {
            return Err(Error::shape(op, "num_classes >= 1", "num_classes = 0"));
        }
        let m = check_rows("bank features", features, d)?;
        if m == 0 {
            return Err(Error::shape(op, "a bank of M >= 1 rows", "M = 0"));
        }
        if m > u32::MAX as usize {
            return Err(Error::shape(op, format!("M <= {}", u32::MAX), format!("M = {m}")));
        }
        // Slabs of BANK_SLAB rows go through one GEMM each; its shape check bounds the slab's element count.
        LinearShape::new(1, d, m.min(BANK_SLAB))?;
        check_labels("bank labels", labels, m, num_classes)?;
        let mut feats = vec![0.0f32; features.len()];
        feats.par_chunks_mut(d * 256).zip(features.par_chunks(d * 256)).for_each(|(o, x)| l2_normalise_into(o, x, d));
        Ok(Self { feats, labels: labels.to_vec(), d, num_classes })
    }

    /// Bank size M.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Always false: a bank has at least one row.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Feature dimension D.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Number of classes C.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The predicted class of every query row of `queries [Q, D]` (raw features; normalised here).
    /// `Q = 0` gives an empty vector.
    pub fn predict(&self, queries: &[f32], cfg: &KnnConfig) -> Result<Vec<u32>> {
        cfg.validate()?;
        let q = check_rows("query features", queries, self.d)?;
        let mut preds = vec![0u32; q];
        if q == 0 {
            return Ok(preds);
        }
        let block = if cfg.block > 0 {
            cfg.block
        } else {
            q.div_ceil(4 * rayon::current_num_threads().max(1)).clamp(8, 128)
        };
        let d = self.d;
        let m = self.len();
        let k = cfg.k.min(m);
        let slab = m.min(BANK_SLAB);
        // Checked once here so the per-block GEMM shapes below cannot fail.
        LinearShape::new(block.min(q), d, slab)?;
        let inv_t = 1.0 / cfg.t as f64;
        preds.par_chunks_mut(block).zip(queries.par_chunks(block * d)).try_for_each(|(pred, qraw)| -> Result<()> {
            let b = pred.len();
            let mut qn = vec![0.0f32; b * d]; // [b, D] normalised queries
            l2_normalise_into(&mut qn, qraw, d);
            let mut sim = vec![0.0f32; b * slab]; // [b, slab]
            let mut heaps: Vec<TopK> = (0..b).map(|_| TopK::new(k)).collect();
            for s0 in (0..m).step_by(slab) {
                let s = slab.min(m - s0);
                let shape = LinearShape::new(b, d, s)?;
                // sim [b, s] = q̂ [b, D] · bank[s0..s0+s] [s, D]ᵀ
                linear_forward(&mut sim[..b * s], &qn, &self.feats[s0 * d..(s0 + s) * d], None, &shape)?;
                for (r, heap) in heaps.iter_mut().enumerate() {
                    for (j, &v) in sim[r * s..(r + 1) * s].iter().enumerate() {
                        heap.push((v, (s0 + j) as u32));
                    }
                }
            }
            let mut scores = vec![0.0f64; self.num_classes];
            for (p, heap) in pred.iter_mut().zip(heaps.iter_mut()) {
                let smax = heap.items.iter().map(|it| it.0).fold(f32::NEG_INFINITY, f32::max) as f64;
                scores.fill(0.0);
                for &(v, idx) in &heap.items {
                    scores[self.labels[idx as usize] as usize] += ((v as f64 - smax) * inv_t).exp();
                }
                // argmax, ties to the smaller class index (strict > keeps the first maximum)
                let mut best = 0usize;
                for c in 1..scores.len() {
                    if scores[c] > scores[best] {
                        best = c;
                    }
                }
                *p = best as u32;
                heap.clear();
            }
            Ok(())
        })?;
        Ok(preds)
    }

    /// Top-1 accuracy of the kNN predictions of `queries [Q, D]` against `labels [Q]`; keeps the predictions
    /// when `keep_predictions`. Errors on `Q = 0` (accuracy undefined) as well as on bad shapes.
    pub fn evaluate(&self, queries: &[f32], labels: &[u32], cfg: &KnnConfig, keep_predictions: bool) -> Result<KnnReport> {
        cfg.validate()?;
        let q = check_rows("query features", queries, self.d)?;
        if q == 0 {
            return Err(Error::shape("knn", "Q >= 1 queries", "Q = 0"));
        }
        check_labels("query labels", labels, q, self.num_classes)?;
        let preds = self.predict(queries, cfg)?;
        let correct = preds.iter().zip(labels).filter(|(p, l)| p == l).count();
        Ok(KnnReport {
            top1: correct as f64 / q as f64,
            correct,
            total: q,
            predictions: keep_predictions.then_some(preds),
        })
    }
}

/// One-call kNN top-1: builds a [`KnnBank`] from `bank_features [M, D]`, `bank_labels [M]` and evaluates
/// `query_features [Q, D]` against `query_labels [Q]`. Features are raw (normalised inside).
pub fn knn_top1(
    bank_features: &[f32],
    bank_labels: &[u32],
    query_features: &[f32],
    query_labels: &[u32],
    d: usize,
    num_classes: usize,
    cfg: &KnnConfig,
) -> Result<f64> {
    let bank = KnnBank::new(bank_features, bank_labels, d, num_classes)?;
    Ok(bank.evaluate(query_features, query_labels, cfg, false)?.top1)
}
