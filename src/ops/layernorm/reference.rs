//! The f64 reference of the layer norm: plain loops, one thread, the textbook formulas. The tests compare the f32
//! kernels against it, and its backward against central finite differences of its forward. Inputs are f64 (so a
//! test can perturb them).

use super::LayerNormShape;

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
