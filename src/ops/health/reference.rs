//! The f64 reference of the health statistics, written from the papers' definitions (Wang & Isola 2020 for
//! alignment and uniformity, Garrido et al. 2023 for RankMe) over the whole matrices, with no tiling, no Gram
//! matrix and no host eigensolver: the singular values come from one-sided (Hestenes) Jacobi on q̂ itself.

/// The statistics in f64 (the fields of [`super::HealthStats`]) and the effective rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthRef {
    /// `(1/N) Σ ‖q̂_i − k̂_i‖²`.
    pub alignment: f64,
    /// `log mean_{i<j} exp(−2 ‖q̂_i − q̂_j‖²)`; NaN when N = 1.
    pub uniformity: f64,
    /// Mean over the dimensions of the unbiased std over the batch; NaN when N = 1.
    pub dim_std: f64,
    /// Mean positive cosine.
    pub pos_mean: f64,
    /// Mean negative cosine.
    pub neg_mean: f64,
    /// Largest negative cosine.
    pub neg_max: f64,
    /// Mean of the rows' largest negative cosines.
    pub neg_row_max_mean: f64,
    /// `pos_mean − neg_row_max_mean`.
    pub gap: f64,
    /// RankMe of q̂ ([`effective_rank`]).
    pub effective_rank: f64,
}

impl HealthRef {
    /// The eight statistics in the order of [`super::HealthStats`].
    pub fn words(&self) -> [f64; 8] {
        [self.alignment, self.uniformity, self.dim_std, self.pos_mean, self.neg_mean, self.neg_max, self.neg_row_max_mean, self.gap]
    }
}

/// The statistics of `q_hat, k_hat: [n, d]` (as given, not normalised again) against `queue: [K, d]`.
pub fn health(q_hat: &[f32], k_hat: &[f32], queue: &[f32], n: usize, d: usize) -> HealthRef {
    statistics(q_hat, k_hat, queue, n, d, false)
}

/// The statistics with MoCo v3's in-batch negatives: the negatives of row `i` are the rows `k̂_j`, `j ≠ i`, of
/// `k_hat` (the logit statistics are NaN when `n = 1`).
pub fn health_in_batch(q_hat: &[f32], k_hat: &[f32], n: usize, d: usize) -> HealthRef {
    statistics(q_hat, k_hat, k_hat, n, d, true)
}

fn statistics(q_hat: &[f32], k_hat: &[f32], queue: &[f32], n: usize, d: usize, skip_diagonal: bool) -> HealthRef {
    let rows = |x: &[f32]| -> Vec<Vec<f64>> { x.chunks_exact(d).map(|r| r.iter().map(|&v| v as f64).collect()).collect() };
    let (qr, kr, keys) = (rows(q_hat), rows(k_hat), rows(queue));
    let q = |i: usize| qr[i].as_slice();
    let kk = |i: usize| kr[i].as_slice();
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
    fn sqdist(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
    }
    let nf = n as f64;

    // alignment: E ||f(x) - f(y)||^2 over the positive pairs
    let alignment = (0..n).map(|i| sqdist(q(i), kk(i))).sum::<f64>() / nf;
    // uniformity: log E exp(-2 ||f(x) - f(y)||^2) over the pairs i < j of the batch
    let uniformity = if n < 2 {
        f64::NAN
    } else {
        let mut s = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                s += (-2.0 * sqdist(q(i), q(j))).exp();
            }
        }
        (s / (nf * (nf - 1.0) / 2.0)).ln()
    };
    // mean over dimensions of the unbiased std over the batch
    let dim_std = if n < 2 {
        f64::NAN
    } else {
        (0..d)
            .map(|c| {
                let col: Vec<f64> = (0..n).map(|i| q_hat[i * d + c] as f64).collect();
                let mean = col.iter().sum::<f64>() / nf;
                (col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (nf - 1.0)).sqrt()
            })
            .sum::<f64>()
            / d as f64
    };
    // logits at temperature 1
    let pos_mean = (0..n).map(|i| dot(q(i), kk(i))).sum::<f64>() / nf;
    // the negatives of each row: every key, or in-batch every other key
    let logits: Vec<Vec<f64>> = (0..n).map(|i| keys.iter().enumerate().filter(|&(j, _)| !(skip_diagonal && j == i)).map(|(_, u)| dot(q(i), u)).collect()).collect();
    let count = logits.iter().map(Vec::len).sum::<usize>();
    let (neg_mean, neg_max, neg_row_max_mean) = if count == 0 {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        (
            logits.iter().flatten().sum::<f64>() / count as f64,
            logits.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max),
            logits.iter().map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max)).sum::<f64>() / nf,
        )
    };
    let x: Vec<f64> = q_hat.iter().map(|&v| v as f64).collect();
    HealthRef {
        alignment,
        uniformity,
        dim_std,
        pos_mean,
        neg_mean,
        neg_max,
        neg_row_max_mean,
        gap: pos_mean - neg_row_max_mean,
        effective_rank: effective_rank(&x, n, d),
    }
}

/// RankMe of `x: [n, d]`: `exp(−Σ p_k log p_k)`, `p_k = σ_k / Σ σ`, σ the singular values of x ([`singular_values`]);
/// singular values below `σ_max · 1e-12` count as 0 (f64 rounding), `0 log 0 = 0`.
pub fn effective_rank(x: &[f64], n: usize, d: usize) -> f64 {
    let s = singular_values(x, n, d);
    let smax = s.iter().copied().fold(0.0, f64::max);
    let s: Vec<f64> = s.into_iter().map(|v| if v > smax * 1e-12 { v } else { 0.0 }).collect();
    super::rankme(&s)
}

/// The `min(n, d)` singular values of `x: [n, d]` by one-sided Jacobi: the columns of x (or of xᵀ when n < d)
/// rotated in pairs until orthogonal; the singular values are their norms.
pub fn singular_values(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    // cols[c] = column c of the tall orientation (m rows, p <= m columns)
    let cols: Vec<Vec<f64>> = if n >= d { (0..d).map(|c| (0..n).map(|i| x[i * d + c]).collect()).collect() } else { (0..n).map(|i| x[i * d..(i + 1) * d].to_vec()).collect() };
    let mut a = cols;
    let p = a.len();
    for _sweep in 0..100 {
        let mut rotated = false;
        for i in 0..p {
            for j in i + 1..p {
                let alpha: f64 = a[i].iter().map(|v| v * v).sum();
                let beta: f64 = a[j].iter().map(|v| v * v).sum();
                let gamma: f64 = a[i].iter().zip(&a[j]).map(|(u, v)| u * v).sum();
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (ai, aj) = (a[i].clone(), a[j].clone());
                for r in 0..ai.len() {
                    a[i][r] = c * ai[r] - s * aj[r];
                    a[j][r] = s * ai[r] + c * aj[r];
                }
            }
        }
        if !rotated {
            break;
        }
    }
    a.iter().map(|col| col.iter().map(|v| v * v).sum::<f64>().sqrt()).collect()
}

/// `‖θ_k − θ_q‖ / ‖θ_q‖` in f64.
pub fn drift(theta_k: &[f32], theta_q: &[f32]) -> f64 {
    let diff: f64 = theta_k.iter().zip(theta_q).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let norm: f64 = theta_q.iter().map(|&b| (b as f64).powi(2)).sum();
    diff.sqrt() / norm.sqrt()
}
