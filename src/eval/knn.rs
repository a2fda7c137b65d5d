//! Weighted k-nearest-neighbour monitor, as in the MoCo CIFAR-10 demo notebook.
//!
//! The bank holds the train features `[M, D]` with their labels, the queries are test features `[Q, D]`. Both
//! are L2-normalised **here** (callers pass raw encoder outputs; a zero row stays zero), so the similarity is the
//! cosine `q̂ · b̂ᵀ`. For every query the `k` most similar bank rows vote for their class with weight
//! `exp(sim / t)`; the class with the largest summed weight is the prediction.
//!
//! Implementation (CPU), [`KnnBank::predict`]:
//! - queries are taken in blocks of `b` rows ([`SIM_BUDGET`] / M by default, so `sim` stays at 16 MiB); for each
//!   block **one GEMM against the whole bank** gives `sim [b, M] = q̂ · b̂ᵀ` (the crate's GEMM,
//!   [`crate::ops::linear::cpu::linear_forward`], parallel inside);
//! - every row then selects its top k in parallel, in two vectorised passes: the maxima of `G = min(4k, M)`
//!   interleaved groups give a threshold `tau` (their k-th largest; k distinct elements reach it, so it is a lower
//!   bound of the row's k-th largest), then the elements `>= tau` (a few more than k on real data) are collected
//!   and `select_nth_unstable` keeps the best k. Exact, with the tie rule below;
//! - the weights `exp((sim - sim_max) / t)` are summed per class in 2^-63 fixed point: the per-query factor
//!   `exp(-sim_max / t)` does not change the argmax but keeps small temperatures from overflowing, and integer
//!   sums make the vote independent of the order in which the neighbours were found.
//!
//! [`KnnBank::predict_reference`] is the former path (query blocks in parallel, the bank streamed in slabs of
//! [`BANK_SLAB`] rows through a min-heap per query), kept for comparison: the same neighbours and the same vote,
//! so the same predictions whenever both GEMM shapes give the same similarities.
//!
//! Tie rules (documented because f32 rounding decides near-ties differently across implementations):
//! - at the k-th neighbour, equal similarities are broken towards the **smaller bank index**;
//! - equal class scores are broken towards the **smaller class index** (the notebook takes the first entry of
//!   a descending `argsort`, whose order on exact ties is unspecified in torch; the first class is the usual
//!   outcome). With f32 features exact ties are rare; near-ties (the k-th and (k+1)-th similarity within f32
//!   rounding, or two class scores within ~1e-6 relative) may be decided differently from PyTorch.

use std::cmp::Ordering;

use crate::ops::linear::{cpu::linear_forward, LinearShape};
use super::{check_dims, check_labels, check_row_count, check_rows};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The op name of the kNN monitor's errors.
const OP: &str = "knn";

/// Bank rows per similarity slab of [`KnnBank::predict_reference`]: one GEMM computes `sim [block, BANK_SLAB]`.
pub const BANK_SLAB: usize = 4096;

/// Values of the similarity block `sim [b, M]` of [`KnnBank::predict`] (16 MiB of f32); a block has at least one
/// row, so the bound is `max(SIM_BUDGET, M)`.
pub const SIM_BUDGET: usize = 1 << 22;

/// Hyperparameters of the kNN monitor. Defaults are the notebook's: `k = 200`, `t = 0.1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnConfig {
    /// Neighbours that vote; clamped to the bank size M. Must be >= 1.
    pub k: usize,
    /// Temperature of the vote weights `exp(sim / t)`. Must be finite and > 0.
    pub t: f32,
    /// Queries per block: per GEMM in [`KnnBank::predict`] (0: [`SIM_BUDGET`] / M), per parallel task in
    /// [`KnnBank::predict_reference`] (0: from Q and the rayon pool size, at most 128).
    pub block: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self { k: 200, t: 0.1, block: 0 }
    }
}

impl KnnConfig {
    pub(super) fn validate(&self) -> Result<()> {
        let op = OP;
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
    pub(super) feats: Vec<f32>,
    pub(super) labels: Vec<u32>,
    pub(super) d: usize,
    pub(super) num_classes: usize,
}

/// `out[r] = x[r] / max(||x[r]||, 1e-12)` row by row (the same eps as `torch.nn.functional.normalize`).
pub(super) fn l2_normalise_into(out: &mut [f32], x: &[f32], d: usize) {
    for (o, r) in out.chunks_mut(d).zip(x.chunks(d)) {
        let ss: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / ss.sqrt().max(1e-12);
        for (ov, &xv) in o.iter_mut().zip(r) {
            *ov = (xv as f64 * inv) as f32;
        }
    }
}

/// `Less` when `a` ranks before `b`: higher similarity, or equal similarity (`-0.0 == 0.0`) and a smaller bank
/// index. A total order on finite similarities.
#[inline]
fn rank(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    if a.0 > b.0 {
        Ordering::Less
    } else if a.0 < b.0 {
        Ordering::Greater
    } else {
        a.1.cmp(&b.1)
    }
}

/// Top-k selection of one similarity row in two passes (see the module docs). Scratch reused across rows.
struct TopK {
    /// Maxima of the `G` interleaved groups, `[G]`.
    maxes: Vec<f32>,
    /// Candidates `(sim, bank index)`.
    buf: Vec<(f32, u32)>,
    k: usize,
}

/// Similarities compared at once against the threshold.
const LANES: usize = 16;

/// Descending order on finite similarities (`-0.0 == 0.0`).
#[inline]
fn desc(a: &f32, b: &f32) -> Ordering {
    if a > b {
        Ordering::Less
    } else if a < b {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

impl TopK {
    fn new(k: usize) -> Self {
        Self { maxes: Vec::with_capacity(4 * k), buf: Vec::with_capacity(2 * k), k }
    }

    /// The best `min(k, row.len())` `(sim, index)` of `row` under [`rank`], in no particular order. `row` finite.
    fn select(&mut self, row: &[f32]) -> &[(f32, u32)] {
        let m = row.len();
        let k = self.k.min(m);
        self.buf.clear();
        if k == 0 {
            return &self.buf;
        }
        // Pass 1: the maxima of G = min(4k, M) groups (index mod G). Their k-th largest, tau, is <= the row's k-th
        // largest (k distinct elements reach it), so the top k all lie in {v >= tau}.
        let g = (4 * k).min(m);
        self.maxes.clear();
        self.maxes.extend_from_slice(&row[..g]);
        for chunk in row[g..].chunks(g) {
            for (mx, &v) in self.maxes.iter_mut().zip(chunk) {
                *mx = if v > *mx { v } else { *mx }; // vectorises (no NaN here)
            }
        }
        let (_, &mut tau, _) = self.maxes.select_nth_unstable_by(k - 1, desc);
        // Pass 2: the candidates, a few more than k on real data; a vectorised count skips chunks without one.
        for (c, chunk) in row.chunks(LANES).enumerate() {
            let hits = chunk.iter().fold(0u32, |h, &v| h + u32::from(v >= tau));
            if hits > 0 {
                let base = c * LANES;
                self.buf.extend(chunk.iter().enumerate().filter(|(_, &v)| v >= tau).map(|(i, &v)| (v, (base + i) as u32)));
            }
        }
        if self.buf.len() > k {
            self.buf.select_nth_unstable_by(k - 1, rank);
            self.buf.truncate(k);
        }
        &self.buf
    }
}

/// Fixed-point scale of the vote weights: a weight `exp((sim - sim_max) / t)` in `[0, 1]` counts as
/// `floor(w * 2^63)`, so class scores are integer sums that do not depend on the order of the neighbours.
const VOTE_SCALE: f64 = (1u64 << 63) as f64;

/// The weighted vote of the neighbours `items` (`(sim, bank index)`, any order): class scores
/// `sum exp((sim - sim_max) / t)` (`inv_t = 1 / t`) in fixed point ([`VOTE_SCALE`]), argmax with ties to the
/// smaller class. `scores` is `[C]` scratch.
pub(super) fn vote(items: &[(f32, u32)], labels: &[u32], scores: &mut [u128], inv_t: f64) -> u32 {
    let smax = items.iter().map(|it| it.0).fold(f32::NEG_INFINITY, f32::max) as f64;
    scores.fill(0);
    for &(v, idx) in items {
        let w = ((v as f64 - smax) * inv_t).exp(); // in [0, 1]
        scores[labels[idx as usize] as usize] += (w * VOTE_SCALE) as u128;
    }
    // argmax, ties to the smaller class index (strict > keeps the first maximum)
    let mut best = 0usize;
    for c in 1..scores.len() {
        if scores[c] > scores[best] {
            best = c;
        }
    }
    best as u32
}

impl KnnBank {
    /// Builds the bank from raw features `[M, D]` (row-major, normalised here) and labels `[M]` in
    /// `0..num_classes`. Errors on `D = 0`, `M = 0`, lengths that do not fit, non-finite values or labels out of
    /// range.
    pub fn new(features: &[f32], labels: &[u32], d: usize, num_classes: usize) -> Result<Self> {
        check_dims(OP, d, num_classes)?;
        let m = check_rows(OP, "bank features", features, d)?;
        if m == 0 {
            return Err(Error::shape(OP, "a bank of M >= 1 rows", "M = 0"));
        }
        check_row_count(OP, "M", m)?;
        // Slabs of BANK_SLAB rows go through one GEMM each; its shape check bounds the slab's element count.
        LinearShape::new(1, d, m.min(BANK_SLAB))?;
        check_labels(OP, "bank labels", labels, m, num_classes)?;
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

    /// Validates `cfg` and the query features `[Q, D]`; returns Q.
    pub(super) fn query_rows(&self, queries: &[f32], cfg: &KnnConfig) -> Result<usize> {
        cfg.validate()?;
        check_rows(OP, "query features", queries, self.d)
    }

    /// The predicted class of every query row of `queries [Q, D]` (raw features; normalised here).
    /// `Q = 0` gives an empty vector.
    ///
    /// Blocks of queries go one after another: the block is normalised, one GEMM computes its similarity to the
    /// whole bank, `sim [b, M]` (parallel inside the GEMM), then every row selects its top k and votes (parallel
    /// over rows). The block is `cfg.block` rows (0: [`SIM_BUDGET`] / M, at most Q), capped so that `sim` holds at
    /// most `max(SIM_BUDGET, M)` values. The same neighbours and vote as [`KnnBank::predict_reference`]. An error
    /// when the bank has more than `i32::MAX` values (the GEMM's shape limit).
    pub fn predict(&self, queries: &[f32], cfg: &KnnConfig) -> Result<Vec<u32>> {
        let q = self.query_rows(queries, cfg)?;
        let mut preds = vec![0u32; q];
        if q == 0 {
            return Ok(preds);
        }
        let (d, m) = (self.d, self.len());
        let k = cfg.k.min(m);
        let cap = (SIM_BUDGET / m).max(1);
        let block = if cfg.block > 0 { cfg.block.min(cap) } else { cap }.min(q);
        let inv_t = 1.0 / cfg.t as f64;
        let mut qn = vec![0.0f32; block * d]; // [block, D] normalised queries
        let mut sim = vec![0.0f32; block * m]; // [block, M]
        for (pred, qraw) in preds.chunks_mut(block).zip(queries.chunks(block * d)) {
            let b = pred.len();
            let (qn, sim) = (&mut qn[..b * d], &mut sim[..b * m]);
            qn.par_chunks_mut(d * 64).zip(qraw.par_chunks(d * 64)).for_each(|(o, x)| l2_normalise_into(o, x, d));
            // sim [b, M] = q̂ [b, D] · bank [M, D]ᵀ
            linear_forward(sim, qn, &self.feats, None, &LinearShape::new(b, d, m)?)?;
            pred.par_chunks_mut(8).zip(sim.par_chunks(8 * m)).for_each_init(
                || (TopK::new(k), vec![0u128; self.num_classes]),
                |(top, scores), (p8, s8)| {
                    for (p, row) in p8.iter_mut().zip(s8.chunks(m)) {
                        *p = vote(top.select(row), &self.labels, scores, inv_t);
                    }
                },
            );
        }
        Ok(preds)
    }

    /// Top-1 accuracy of the kNN predictions of `queries [Q, D]` against `labels [Q]`; keeps the predictions
    /// when `keep_predictions`. Errors on `Q = 0` (accuracy undefined) as well as on bad shapes.
    pub fn evaluate(&self, queries: &[f32], labels: &[u32], cfg: &KnnConfig, keep_predictions: bool) -> Result<KnnReport> {
        let q = self.query_rows(queries, cfg)?;
        if q == 0 {
            return Err(Error::shape(OP, "Q >= 1 queries", "Q = 0"));
        }
        check_labels(OP, "query labels", labels, q, self.num_classes)?;
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
