//! The f64 reference: plain loops, one thread, no tiling, no online softmax. Every backend is tested against
//! these. Inputs are f32 as the ops take them; all arithmetic is f64.

use crate::ops::normalize::reference::normalize;

/// f64 result of InfoNCE.
#[derive(Clone, Debug)]
pub struct InfoNceRef {
    /// Mean loss.
    pub loss: f64,
    /// Per-row loss `[N]`.
    pub row_loss: Vec<f64>,
    /// Gradient w.r.t. raw q `[N, C]`.
    pub dq: Vec<f64>,
    /// Per row, the number of negatives whose logit is strictly greater than the positive's.
    pub rank: Vec<usize>,
    /// Per row, the number of negatives within 1e-5 (in cosine) of the positive: a float backend may rank these
    /// either side.
    pub near_ties: Vec<usize>,
}


fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Backward of `x̂ = x / max(||x||, eps)` for one row.
fn normalize_backward(dxh: &[f64], xh: &[f64], norm: f64) -> Vec<f64> {
    if norm <= 1e-12 {
        return dxh.iter().map(|g| g / 1e-12).collect();
    }
    let d = dot(dxh, xh);
    dxh.iter().zip(xh).map(|(g, x)| (g - x * d) / norm).collect()
}

/// `l_pos: [N]`, `l_neg: [N, K]` in f64. `queue: [K, C]` given as f32 values.
pub fn logits(q: &[f32], k: &[f32], queue: &[f32], n: usize, c: usize, kk: usize) -> (Vec<f64>, Vec<f64>) {
    let (qh, _) = normalize(q, c);
    let (kh, _) = normalize(k, c);
    let l_pos = (0..n).map(|i| dot(&qh[i * c..(i + 1) * c], &kh[i * c..(i + 1) * c])).collect();
    let mut l_neg = vec![0.0; n * kk];
    for i in 0..n {
        for j in 0..kk {
            l_neg[i * kk + j] = (0..c).map(|ch| qh[i * c + ch] * queue[j * c + ch] as f64).sum();
        }
    }
    (l_pos, l_neg)
}

/// Cross-entropy of one row of logits (already / T) with target `target`; returns (loss, softmax).
fn ce_row(logits: &[f64], target: usize) -> (f64, Vec<f64>) {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|v| (v - m).exp()).sum();
    let p = logits.iter().map(|v| (v - m).exp() / z).collect();
    (z.ln() + m - logits[target], p)
}

/// InfoNCE of MoCo v1/v2 in f64, the formulation of facebookresearch/moco's builder.py.
pub fn infonce(q: &[f32], k: &[f32], queue: &[f32], n: usize, c: usize, kk: usize, t: f64) -> InfoNceRef {
    let (qh, qn) = normalize(q, c);
    let (kh, _) = normalize(k, c);
    let (l_pos, l_neg) = logits(q, k, queue, n, c, kk);
    let mut out = InfoNceRef { loss: 0.0, row_loss: vec![0.0; n], dq: vec![0.0; n * c], rank: vec![0; n], near_ties: vec![0; n] };
    for i in 0..n {
        let mut row = vec![l_pos[i] / t];
        row.extend(l_neg[i * kk..(i + 1) * kk].iter().map(|v| v / t));
        let (loss, p) = ce_row(&row, 0);
        out.row_loss[i] = loss;
        out.loss += loss / n as f64;
        out.rank[i] = l_neg[i * kk..(i + 1) * kk].iter().filter(|&&v| v > l_pos[i]).count();
        out.near_ties[i] = l_neg[i * kk..(i + 1) * kk].iter().filter(|&&v| (v - l_pos[i]).abs() <= 1e-5).count();
        // dL/dq̂ = (1/(T N)) ((p0 - 1) k̂ + Σ_j p_j queue_j)
        let mut g: Vec<f64> = (0..c).map(|ch| (p[0] - 1.0) * kh[i * c + ch]).collect();
        for j in 0..kk {
            for ch in 0..c {
                g[ch] += p[1 + j] * queue[j * c + ch] as f64;
            }
        }
        g.iter_mut().for_each(|v| *v /= t * n as f64);
        let d = normalize_backward(&g, &qh[i * c..(i + 1) * c], qn[i]);
        out.dq[i * c..(i + 1) * c].copy_from_slice(&d);
    }
    out
}

/// InfoNCE loss alone in f64 on f64 inputs (for finite differences).
pub fn infonce_loss_f64(q: &[f64], k: &[f64], queue: &[f64], n: usize, c: usize, kk: usize, t: f64) -> f64 {
    let nrm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    let mut total = 0.0;
    for i in 0..n {
        let qr = &q[i * c..(i + 1) * c];
        let kr = &k[i * c..(i + 1) * c];
        let (nq, nk) = (nrm(qr), nrm(kr));
        let mut row = vec![dot(qr, kr) / (nq * nk * t)];
        for j in 0..kk {
            row.push(dot(qr, &queue[j * c..(j + 1) * c]) / (nq * t));
        }
        total += ce_row(&row, 0).0;
    }
    total / n as f64
}

/// One term of MoCo v3 in f64: `2T · CE(q̂ k̂ᵀ / T, arange(N))` and its gradient w.r.t. raw q.
fn v3_half(q: &[f32], k: &[f32], n: usize, c: usize, t: f64) -> (f64, Vec<f64>) {
    let (qh, qn) = normalize(q, c);
    let (kh, _) = normalize(k, c);
    let mut loss = 0.0;
    let mut dq = vec![0.0; n * c];
    for i in 0..n {
        let row: Vec<f64> = (0..n).map(|j| dot(&qh[i * c..(i + 1) * c], &kh[j * c..(j + 1) * c]) / t).collect();
        let (l, p) = ce_row(&row, i);
        loss += 2.0 * t * l / n as f64;
        let mut g = vec![0.0; c];
        for j in 0..n {
            let w = p[j] - if j == i { 1.0 } else { 0.0 };
            for ch in 0..c {
                g[ch] += w * kh[j * c + ch];
            }
        }
        g.iter_mut().for_each(|v| *v *= 2.0 / n as f64);
        let d = normalize_backward(&g, &qh[i * c..(i + 1) * c], qn[i]);
        dq[i * c..(i + 1) * c].copy_from_slice(&d);
    }
    (loss, dq)
}

/// MoCo v3 symmetric loss in f64: `(loss, dq1, dq2)`.
pub fn moco_v3_loss(q1: &[f32], q2: &[f32], k1: &[f32], k2: &[f32], n: usize, c: usize, t: f64) -> (f64, Vec<f64>, Vec<f64>) {
    let (a, d1) = v3_half(q1, k2, n, c, t);
    let (b, d2) = v3_half(q2, k1, n, c, t);
    (a + b, d1, d2)
}

/// MoCo v3 loss alone in f64 on f64 inputs (for finite differences).
pub fn moco_v3_loss_f64(q1: &[f64], q2: &[f64], k1: &[f64], k2: &[f64], n: usize, c: usize, t: f64) -> f64 {
    let half = |q: &[f64], k: &[f64]| {
        let nrm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        let mut total = 0.0;
        for i in 0..n {
            let qr = &q[i * c..(i + 1) * c];
            let row: Vec<f64> = (0..n).map(|j| dot(qr, &k[j * c..(j + 1) * c]) / (nrm(qr) * nrm(&k[j * c..(j + 1) * c]) * t)).collect();
            total += ce_row(&row, i).0;
        }
        2.0 * t * total / n as f64
    };
    half(q1, k2) + half(q2, k1)
}

