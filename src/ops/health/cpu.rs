//! Representation health on the CPU (rayon over rows, f64 accumulation): the statistics and the Gram matrix of
//! the GPU kernels, by the same definitions (`src/ops/health/mod.rs`).

use super::{DriftShape, Health, HealthShape, HealthStats, HEALTH_WORDS};
use crate::device::CpuDevice;
use crate::error::Result;
use crate::ops::queue::{CpuQueue, QueueView};
use rayon::prelude::*;

/// `Σ a_c b_c` in f64.
fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `Σ (a_c − b_c)²` in f64.
fn dist64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum()
}

/// Writes `stats: [HEALTH_WORDS]` and `gram: [g, g]` from `q_hat, k_hat: [N, d]` and the queue `[K, d]` (f32, f16 or
/// bf16; see [`Health::health`]).
pub fn health(stats: &mut [f32], gram: &mut [f32], q_hat: &[f32], k_hat: &[f32], queue: QueueView<'_>, shape: &HealthShape) -> Result<()> {
    shape.check_kind(false)?;
    shape.check(stats.len(), gram.len(), q_hat.len(), k_hat.len(), queue.len())?;
    shape.check_queue(&queue)?;
    // the queue as f32 (borrowed for f32 storage, converted once for f16 / bf16)
    let mut scratch = Vec::new();
    let slice = queue.slice();
    let keys = slice.range_f32(0, queue.len(), &mut scratch);
    statistics(stats, gram, q_hat, k_hat, keys, shape);
    Ok(())
}

/// Writes `stats` and `gram` with MoCo v3's in-batch negatives (the rows `k̂_j`, `j ≠ i`, of `k_hat`; see
/// [`Health::health_in_batch`]).
pub fn health_in_batch(stats: &mut [f32], gram: &mut [f32], q_hat: &[f32], k_hat: &[f32], shape: &HealthShape) -> Result<()> {
    shape.check_kind(true)?;
    shape.check(stats.len(), gram.len(), q_hat.len(), k_hat.len(), k_hat.len())?;
    statistics(stats, gram, q_hat, k_hat, k_hat, shape);
    Ok(())
}

/// The statistics against `keys: [K, d]` (key `i` of row `i` skipped for an in-batch shape); lengths checked.
fn statistics(stats: &mut [f32], gram: &mut [f32], q_hat: &[f32], k_hat: &[f32], keys: &[f32], shape: &HealthShape) {
    let skip_diagonal = shape.is_in_batch();
    let (n, d) = (shape.n(), shape.d());
    fn row(x: &[f32], d: usize, i: usize) -> &[f32] {
        &x[i * d..(i + 1) * d]
    }

    // alignment and positives
    // (every parallel part is collected in order and summed serially: the result does not depend on the threads)
    let per_row: Vec<(f64, f64)> = (0..n).into_par_iter().map(|i| (dist64(row(q_hat, d, i), row(k_hat, d, i)), dot64(row(q_hat, d, i), row(k_hat, d, i)))).collect();
    let (align, pos) = per_row.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    // uniformity: pairs i < j
    let pairs: f64 = (0..n).into_par_iter().map(|i| (i + 1..n).map(|j| (-2.0 * dist64(row(q_hat, d, i), row(q_hat, d, j))).exp()).sum::<f64>()).collect::<Vec<f64>>().iter().sum();
    // per-dimension unbiased std
    let std_sum: f64 = (0..d)
        .into_par_iter()
        .map(|c| {
            let mean = (0..n).map(|i| q_hat[i * d + c] as f64).sum::<f64>() / n as f64;
            let var = (0..n).map(|i| (q_hat[i * d + c] as f64 - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
            var.sqrt()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    // negatives: each row's sum and max over the queue
    let rows: Vec<(f64, f64)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let qi = row(q_hat, d, i);
            keys.chunks_exact(d).enumerate().filter(|&(j, _)| !(skip_diagonal && j == i)).fold((0.0, f64::NEG_INFINITY), |(s, m), (_, u)| {
                let v = dot64(qi, u);
                (s + v, m.max(v))
            })
        })
        .collect();
    let neg_sum: f64 = rows.iter().map(|r| r.0).sum();
    let row_max_mean = rows.iter().map(|r| r.1).sum::<f64>() / n as f64;
    let neg_max = rows.iter().map(|r| r.1).fold(f64::NEG_INFINITY, f64::max);
    let pos_mean = pos / n as f64;
    let (nan, nf) = (f64::NAN, n as f64);
    // no negative pair (in-batch, N = 1): the four logit statistics are NaN
    let negatives = shape.negatives() as f64;
    let none = negatives == 0.0;
    let s = HealthStats {
        alignment: (align / nf) as f32,
        uniformity: (if n < 2 { nan } else { (pairs / (0.5 * nf * (nf - 1.0))).ln() }) as f32,
        dim_std: (if n < 2 { nan } else { std_sum / d as f64 }) as f32,
        pos_mean: pos_mean as f32,
        neg_mean: (if none { nan } else { neg_sum / negatives }) as f32,
        neg_max: (if none { nan } else { neg_max }) as f32,
        neg_row_max_mean: (if none { nan } else { row_max_mean }) as f32,
        gap: (if none { nan } else { pos_mean - row_max_mean }) as f32,
    };
    stats.copy_from_slice(&s.to_words()[..HEALTH_WORDS]);

    // the Gram matrix: q̂ q̂ᵀ [N, N] when N <= d, q̂ᵀ q̂ [d, d] otherwise
    let g = shape.gram_side();
    if n <= d {
        gram.par_chunks_mut(g).enumerate().for_each(|(i, out)| {
            for (j, o) in out.iter_mut().enumerate() {
                *o = dot64(row(q_hat, d, i), row(q_hat, d, j)) as f32;
            }
        });
    } else {
        gram.par_chunks_mut(g).enumerate().for_each(|(a, out)| {
            for (b, o) in out.iter_mut().enumerate() {
                *o = (0..n).map(|i| q_hat[i * d + a] as f64 * q_hat[i * d + b] as f64).sum::<f64>() as f32;
            }
        });
    }
}

/// `out[0] = ‖θ_k − θ_q‖ / ‖θ_q‖` (f64 sums) over `theta_k, theta_q: [len]`.
pub fn param_drift(out: &mut [f32], theta_k: &[f32], theta_q: &[f32], shape: &DriftShape) -> Result<()> {
    shape.check(out.len(), theta_k.len(), theta_q.len())?;
    let parts: Vec<(f64, f64)> = theta_k.par_chunks(1 << 14).zip(theta_q.par_chunks(1 << 14)).map(|(a, b)| (dist64(a, b), dot64(b, b))).collect();
    let (diff, norm) = parts.iter().fold((0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
    out[0] = (diff.sqrt() / norm.sqrt()) as f32;
    Ok(())
}

impl Health for CpuDevice {
    fn health(&mut self, stats: &mut [f32], gram: &mut [f32], q_hat: &[f32], k_hat: &[f32], queue: &CpuQueue, shape: &HealthShape) -> Result<()> {
        health(stats, gram, q_hat, k_hat, queue.view(), shape)
    }

    fn health_in_batch(&mut self, stats: &mut [f32], gram: &mut [f32], q_hat: &[f32], k_hat: &[f32], shape: &HealthShape) -> Result<()> {
        health_in_batch(stats, gram, q_hat, k_hat, shape)
    }

    fn param_drift(&mut self, out: &mut [f32], theta_k: &[f32], theta_q: &[f32], shape: &DriftShape) -> Result<()> {
        param_drift(out, theta_k, theta_q, shape)
    }
}
