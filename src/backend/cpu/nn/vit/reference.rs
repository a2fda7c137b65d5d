//! f64 references of the ViT layers: plain loops, one thread, the textbook formulas (softmax via exp/sum, layer
//! norm via mean/variance). Re-exported by [`super::super::reference`]. Inputs are f64 so a test can perturb them.

use super::{AttentionShape, LayerNormShape, PatchShape, PosEmbedShape};

/// f64 layer norm forward: `(out [R, C], mean [R], rstd [R])`.
pub fn layernorm_forward(inp: &[f64], gamma: &[f64], beta: &[f64], s: &LayerNormShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (r, c) = (s.rows(), s.c());
    let (mut out, mut mean, mut rstd) = (vec![0.0; r * c], vec![0.0; r], vec![0.0; r]);
    for i in 0..r {
        let x = &inp[i * c..(i + 1) * c];
        let m = x.iter().sum::<f64>() / c as f64;
        let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c as f64;
        let rs = 1.0 / (var + s.eps() as f64).sqrt();
        mean[i] = m;
        rstd[i] = rs;
        for j in 0..c {
            out[i * c + j] = (x[j] - m) * rs * gamma[j] + beta[j];
        }
    }
    (out, mean, rstd)
}

/// f64 layer norm backward: `(dinp [R, C], dgamma [C], dbeta [C])` for upstream `dout [R, C]` (statistics
/// recomputed from `inp`).
pub fn layernorm_backward(dout: &[f64], inp: &[f64], gamma: &[f64], s: &LayerNormShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (r, c) = (s.rows(), s.c());
    let (_, mean, rstd) = layernorm_forward(inp, gamma, &vec![0.0; c], s);
    let (mut dx, mut dg, mut db) = (vec![0.0; r * c], vec![0.0; c], vec![0.0; c]);
    for i in 0..r {
        let xh: Vec<f64> = (0..c).map(|j| (inp[i * c + j] - mean[i]) * rstd[i]).collect();
        let g: Vec<f64> = (0..c).map(|j| dout[i * c + j] * gamma[j]).collect();
        let mg = g.iter().sum::<f64>() / c as f64;
        let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / c as f64;
        for j in 0..c {
            dx[i * c + j] = rstd[i] * (g[j] - mg - xh[j] * mgx);
            dg[j] += dout[i * c + j] * xh[j];
            db[j] += dout[i * c + j];
        }
    }
    (dx, dg, db)
}

/// f64 exact GELU `0.5·x·(1 + erf(x/√2))` (`libm::erf`, correctly rounded to within 1 ulp).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

/// f64 GELU derivative `Φ(x) + x·φ(x)`.
pub fn gelu_grad(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// f64 GELU forward over a tensor.
pub fn gelu_forward(inp: &[f64]) -> Vec<f64> {
    inp.iter().map(|&x| gelu(x)).collect()
}

/// f64 GELU backward: `dout·gelu'(inp)`.
pub fn gelu_backward(dout: &[f64], inp: &[f64]) -> Vec<f64> {
    dout.iter().zip(inp).map(|(&g, &x)| g * gelu_grad(x)).collect()
}

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

/// f64 2-D sin-cos position embedding `[1 + P, D]`, written directly from moco-v3's code: `meshgrid` ('ij') of
/// `arange(w)` and `arange(h)`, flattened, so `grid_w.flatten()[m] = m / h` and `grid_h.flatten()[m] = m % h`;
/// `cat([sin(out_w), cos(out_w), sin(out_h), cos(out_h)])`; a zero cls row first.
pub fn sincos_pos_embed_2d(s: &PosEmbedShape) -> Vec<f64> {
    let (h, w, dim) = (s.grid_h(), s.grid_w(), s.dim());
    let q = dim / 4;
    // torch.meshgrid(arange(w), arange(h)) with indexing='ij': outputs [w, h], first[i][j] = i, second[i][j] = j
    let mut grid_w = Vec::new();
    let mut grid_h = Vec::new();
    for i in 0..w {
        for j in 0..h {
            grid_w.push(i as f64);
            grid_h.push(j as f64);
        }
    }
    let omega: Vec<f64> = (0..q).map(|k| 1.0 / 10000f64.powf(k as f64 / q as f64)).collect();
    let mut out = vec![0.0; dim];
    for m in 0..h * w {
        out.extend(omega.iter().map(|o| (grid_w[m] * o).sin()));
        out.extend(omega.iter().map(|o| (grid_w[m] * o).cos()));
        out.extend(omega.iter().map(|o| (grid_h[m] * o).sin()));
        out.extend(omega.iter().map(|o| (grid_h[m] * o).cos()));
    }
    out
}

/// f64 patch embedding: the strided conv `tokens [B, P, D]` (row-major grid order) from `images [B, C, H, W]`,
/// `weight [D, C, p, p]`, `bias [D]`, computed as a convolution (no im2col), so it checks the im2col layout.
pub fn patch_embed_forward(images: &[f64], weight: &[f64], bias: &[f64], dim: usize, s: &PatchShape) -> Vec<f64> {
    let (p, (gh, gw)) = (s.patch(), s.grid());
    let mut out = vec![0.0; s.b() * gh * gw * dim];
    for b in 0..s.b() {
        for py in 0..gh {
            for px in 0..gw {
                for o in 0..dim {
                    let mut acc = bias[o];
                    for ci in 0..s.c() {
                        for ky in 0..p {
                            for kx in 0..p {
                                acc += images[((b * s.c() + ci) * s.h() + py * p + ky) * s.w() + px * p + kx] * weight[((o * s.c() + ci) * p + ky) * p + kx];
                            }
                        }
                    }
                    out[((b * gh + py) * gw + px) * dim + o] = acc;
                }
            }
        }
    }
    out
}
