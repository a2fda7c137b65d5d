//! The f64 reference of the attention core: plain loops, one thread, the textbook formulas. The tests compare the f32
//! kernels against it, and its backward against central finite differences of its forward. Inputs are f64 (so a
//! test can perturb them).

use super::AttentionShape;

/// Index of `qkv[b, t, which, h, d]` in `[B, T, 3, H, D]`.
fn qkv_at(s: &AttentionShape, b: usize, t: usize, which: usize, h: usize, d: usize) -> usize {
    (((b * s.t() + t) * 3 + which) * s.heads() + h) * s.head_dim() + d
}

/// f64 attention forward: `(out [B, T, C], att [B, H, T, T])` from `qkv [B, T, 3, H, D]`.
pub fn attention_forward(qkv: &[f64], s: &AttentionShape) -> (Vec<f64>, Vec<f64>) {
    let (bn, t, hn, dd, c) = (s.b(), s.t(), s.heads(), s.head_dim(), s.c());
    let scale = 1.0 / (dd as f64).sqrt();
    let (mut out, mut att) = (vec![0.0; bn * t * c], vec![0.0; bn * hn * t * t]);
    for b in 0..bn {
        for h in 0..hn {
            for i in 0..t {
                let sc: Vec<f64> = (0..t).map(|j| (0..dd).map(|d| qkv[qkv_at(s, b, i, 0, h, d)] * qkv[qkv_at(s, b, j, 1, h, d)]).sum::<f64>() * scale).collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|v| (v - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..t {
                    let p = e[j] / z;
                    att[((b * hn + h) * t + i) * t + j] = p;
                    for d in 0..dd {
                        out[(b * t + i) * c + h * dd + d] += p * qkv[qkv_at(s, b, j, 2, h, d)];
                    }
                }
            }
        }
    }
    (out, att)
}

/// f64 attention backward: `dqkv [B, T, 3, H, D]` for upstream `dout [B, T, C]`.
pub fn attention_backward(dout: &[f64], qkv: &[f64], s: &AttentionShape) -> Vec<f64> {
    let (bn, t, hn, dd, c) = (s.b(), s.t(), s.heads(), s.head_dim(), s.c());
    let scale = 1.0 / (dd as f64).sqrt();
    let (_, att) = attention_forward(qkv, s);
    let mut dqkv = vec![0.0; qkv.len()];
    for b in 0..bn {
        for h in 0..hn {
            let p = |i: usize, j: usize| att[((b * hn + h) * t + i) * t + j];
            for i in 0..t {
                let dy = |d: usize| dout[(b * t + i) * c + h * dd + d];
                let dp: Vec<f64> = (0..t).map(|j| (0..dd).map(|d| dy(d) * qkv[qkv_at(s, b, j, 2, h, d)]).sum()).collect();
                let rs: f64 = (0..t).map(|j| p(i, j) * dp[j]).sum();
                for j in 0..t {
                    let ds = p(i, j) * (dp[j] - rs) * scale;
                    for d in 0..dd {
                        dqkv[qkv_at(s, b, i, 0, h, d)] += ds * qkv[qkv_at(s, b, j, 1, h, d)];
                        dqkv[qkv_at(s, b, j, 1, h, d)] += ds * qkv[qkv_at(s, b, i, 0, h, d)];
                        dqkv[qkv_at(s, b, j, 2, h, d)] += p(i, j) * dy(d);
                    }
                }
            }
        }
    }
    dqkv
}
