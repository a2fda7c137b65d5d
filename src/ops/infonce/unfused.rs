//! The unfused path, step by step as PyTorch runs it: normalise, GEMM, concat, /T, softmax cross-entropy,
//! backward through each step, materialising the `N x (1+K)` logits and their gradient. It exists so the benches
//! can show what fusion buys and so tests can check fused against unfused.

use super::{InfoNceShape, InfoNceStats, SymmetricShape};
use crate::error::Result;
use crate::ops::normalize::{cpu::normalize_unchecked, NORM_EPS};
use rayon::prelude::*;

fn par_gemm(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, b_transposed: bool) {
    // dst [m, n] = a [m, k] · (b_transposed ? b[n, k]ᵀ : b[k, n])
    let (b_cs, b_rs) = if b_transposed { (k as isize, 1) } else { (1, n as isize) };
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= n * k);
    // SAFETY: the assert keeps every index inside the slices.
    unsafe {
        gemm::gemm(m, n, k, dst.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, b.as_ptr(), b_cs, b_rs, 1.0, 1.0, false, false, false, gemm::Parallelism::Rayon(0));
    }
}

/// Backward of the row normalisation: `dx = (dx̂ - x̂ (x̂·dx̂)) / ||x||` per row.
fn normalize_backward(dx: &mut [f32], dxh: &[f32], xh: &[f32], inv_norm: &[f32], c: usize) {
    dx.par_chunks_mut(c).enumerate().for_each(|(i, d)| {
        let (g, x) = (&dxh[i * c..(i + 1) * c], &xh[i * c..(i + 1) * c]);
        let dot: f32 = g.iter().zip(x).map(|(a, b)| a * b).sum();
        let projected = inv_norm[i] < 1.0 / NORM_EPS;
        for ch in 0..c {
            d[ch] = if projected { (g[ch] - x[ch] * dot) * inv_norm[i] } else { g[ch] * inv_norm[i] };
        }
    });
}

/// Softmax cross-entropy over `logits: [N, W]` with targets; overwrites logits with `dL/dlogits` of the mean
/// loss (times `scale`) and writes `row_loss: [N]`.
fn cross_entropy_backward(logits: &mut [f32], row_loss: &mut [f32], targets: &[usize], w: usize, scale: f32) {
    let n = row_loss.len();
    logits.par_chunks_mut(w).zip(row_loss.par_iter_mut()).enumerate().for_each(|(i, (row, loss))| {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = row.iter().map(|v| (v - m).exp()).sum();
        *loss = z.ln() + m - row[targets[i]];
        for v in row.iter_mut() {
            *v = (*v - m).exp() / z * scale / n as f32;
        }
        row[targets[i]] -= scale / n as f32;
    });
}

/// Unfused InfoNCE forward + backward. Same contract as [`super::cpu::infonce`], f32 queue only.
pub fn infonce(dq: &mut [f32], row_loss: &mut [f32], q: &[f32], k: &[f32], queue: &[f32], shape: &InfoNceShape) -> Result<InfoNceStats> {
    shape.check_inputs(q.len(), k.len(), queue.len())?;
    shape.check_outputs(dq.len(), row_loss.len())?;
    let (n, c, kk, t) = (shape.n, shape.c, shape.k, shape.temperature);
    let (mut qh, mut kh, mut qi, mut ki) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    normalize_unchecked(&mut qh, &mut qi, q, c);
    normalize_unchecked(&mut kh, &mut ki, k, c);
    // l_pos [N, 1], l_neg [N, K]
    let l_pos: Vec<f32> = (0..n).map(|i| qh[i * c..(i + 1) * c].iter().zip(&kh[i * c..(i + 1) * c]).map(|(a, b)| a * b).sum()).collect();
    let mut l_neg = vec![0.0; n * kk];
    par_gemm(&mut l_neg, &qh, queue, n, kk, c, true);
    // logits = cat([l_pos, l_neg], 1) / T: [N, 1+K]
    let mut logits = vec![0.0; n * (kk + 1)];
    logits.par_chunks_mut(kk + 1).enumerate().for_each(|(i, row)| {
        row[0] = l_pos[i];
        row[1..].copy_from_slice(&l_neg[i * kk..(i + 1) * kk]);
    });
    logits.par_iter_mut().for_each(|v| *v /= t);
    let (mut top1, mut top5) = (0, 0);
    for i in 0..n {
        let rank = logits[i * (kk + 1) + 1..(i + 1) * (kk + 1)].iter().filter(|&&v| v > logits[i * (kk + 1)]).count();
        top1 += (rank < 1) as u32;
        top5 += (rank < 5) as u32;
    }
    cross_entropy_backward(&mut logits, row_loss, &vec![0; n], kk + 1, 1.0);
    // dlogits / T, then dq̂ = dl_neg · queue + dl_pos k̂
    logits.par_iter_mut().for_each(|v| *v /= t);
    let dl_neg: Vec<f32> = logits.par_chunks(kk + 1).flat_map(|r| r[1..].to_vec()).collect();
    let mut dqh = vec![0.0; n * c];
    par_gemm(&mut dqh, &dl_neg, queue, n, c, kk, false);
    for i in 0..n {
        let g0 = logits[i * (kk + 1)];
        for ch in 0..c {
            dqh[i * c + ch] += g0 * kh[i * c + ch];
        }
    }
    normalize_backward(dq, &dqh, &qh, &qi, c);
    let loss = row_loss.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    Ok(InfoNceStats { loss: loss as f32, top1, top5 })
}

fn v3_half(dq: &mut [f32], q: &[f32], k: &[f32], n: usize, c: usize, t: f32) -> f32 {
    let (mut qh, mut kh, mut qi, mut ki) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    normalize_unchecked(&mut qh, &mut qi, q, c);
    normalize_unchecked(&mut kh, &mut ki, k, c);
    let mut logits = vec![0.0; n * n];
    par_gemm(&mut logits, &qh, &kh, n, n, c, true);
    logits.par_iter_mut().for_each(|v| *v /= t);
    let mut row_loss = vec![0.0; n];
    let targets: Vec<usize> = (0..n).collect();
    cross_entropy_backward(&mut logits, &mut row_loss, &targets, n, 2.0 * t);
    logits.par_iter_mut().for_each(|v| *v /= t);
    let mut dqh = vec![0.0; n * c];
    par_gemm(&mut dqh, &logits, &kh, n, c, n, false);
    normalize_backward(dq, &dqh, &qh, &qi, c);
    (2.0 * t as f64 * row_loss.iter().map(|&v| v as f64).sum::<f64>() / n as f64) as f32
}

/// Unfused MoCo v3 loss: materialises both `N x N` logit matrices. Same contract as the fused op.
pub fn moco_v3_loss(dq1: &mut [f32], dq2: &mut [f32], q1: &[f32], q2: &[f32], k1: &[f32], k2: &[f32], shape: &SymmetricShape) -> Result<f32> {
    shape.check(&[("q1", q1.len()), ("q2", q2.len()), ("k1", k1.len()), ("k2", k2.len()), ("dq1", dq1.len()), ("dq2", dq2.len())])?;
    let (n, c, t) = (shape.n, shape.c, shape.temperature);
    Ok(v3_half(dq1, q1, k2, n, c, t) + v3_half(dq2, q2, k1, n, c, t))
}
