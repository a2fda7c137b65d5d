//! The f64 reference of the batch norm: plain loops, one thread, the textbook formulas. The tests compare the f32
//! kernels against it, and its backward against central finite differences of its forward. Inputs are f64 (so a
//! test can perturb them).

use super::BatchNormShape;

/// f64 batch-norm forward in training mode.
#[derive(Clone, Debug)]
pub struct BatchNormRef {
    /// Output `[N, C, HW]` (after the epilogue).
    pub out: Vec<f64>,
    /// Batch mean per (group, channel) `[G, C]`.
    pub mean: Vec<f64>,
    /// `1/sqrt(biased var + eps)` per (group, channel) `[G, C]`.
    pub rstd: Vec<f64>,
    /// Updated running mean `[C]`.
    pub running_mean: Vec<f64>,
    /// Updated running variance `[C]`.
    pub running_var: Vec<f64>,
}

/// Batch norm forward, training mode, with groups (sample n in group n % G, as moco's `SplitBatchNorm`), then
/// `+ identity` when given and ReLU when `relu`. `gamma, beta: [C]` or `None`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train(inp: &[f64], gamma: Option<&[f64]>, beta: Option<&[f64]>, running_mean: &[f64], running_var: &[f64], identity: Option<&[f64]>, relu: bool, s: &BatchNormShape) -> BatchNormRef {
    let (c, hw, g) = (s.c, s.hw, s.groups);
    let m = (s.n / g * hw) as f64;
    let mut mean = vec![0.0; g * c];
    let mut var = vec![0.0; g * c];
    for n in 0..s.n {
        for ch in 0..c {
            for i in 0..hw {
                mean[(n % g) * c + ch] += inp[(n * c + ch) * hw + i] / m;
            }
        }
    }
    for n in 0..s.n {
        for ch in 0..c {
            for i in 0..hw {
                let d = inp[(n * c + ch) * hw + i] - mean[(n % g) * c + ch];
                var[(n % g) * c + ch] += d * d / m;
            }
        }
    }
    let rstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + s.eps as f64).sqrt()).collect();
    let mut out = vec![0.0; inp.len()];
    for n in 0..s.n {
        for ch in 0..c {
            let gc = (n % g) * c + ch;
            for i in 0..hw {
                let idx = (n * c + ch) * hw + i;
                let mut y = (inp[idx] - mean[gc]) * rstd[gc] * gamma.map_or(1.0, |v| v[ch]) + beta.map_or(0.0, |v| v[ch]);
                if let Some(id) = identity {
                    y += id[idx];
                }
                out[idx] = if relu && y < 0.0 { 0.0 } else { y };
            }
        }
    }
    // torch: each of the G copies gets (1-m) r + m stat; the running statistic is their mean
    let mom = s.momentum as f64;
    let mut rm = vec![0.0; c];
    let mut rv = vec![0.0; c];
    for ch in 0..c {
        for gi in 0..g {
            rm[ch] += ((1.0 - mom) * running_mean[ch] + mom * mean[gi * c + ch]) / g as f64;
            rv[ch] += ((1.0 - mom) * running_var[ch] + mom * var[gi * c + ch] * m / (m - 1.0)) / g as f64;
        }
    }
    BatchNormRef { out, mean, rstd, running_mean: rm, running_var: rv }
}

/// Batch norm forward, eval mode (running statistics), then `+ identity` when given and ReLU when `relu`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval(inp: &[f64], gamma: Option<&[f64]>, beta: Option<&[f64]>, running_mean: &[f64], running_var: &[f64], identity: Option<&[f64]>, relu: bool, s: &BatchNormShape) -> Vec<f64> {
    let (c, hw) = (s.c, s.hw);
    let mut out = vec![0.0; inp.len()];
    for n in 0..s.n {
        for ch in 0..c {
            for i in 0..hw {
                let idx = (n * c + ch) * hw + i;
                let mut y = (inp[idx] - running_mean[ch]) / (running_var[ch] + s.eps as f64).sqrt() * gamma.map_or(1.0, |v| v[ch]) + beta.map_or(0.0, |v| v[ch]);
                if let Some(id) = identity {
                    y += id[idx];
                }
                out[idx] = if relu && y < 0.0 { 0.0 } else { y };
            }
        }
    }
    out
}

/// f64 gradients of the training-mode batch norm.
#[derive(Clone, Debug)]
pub struct BatchNormGrads {
    /// `[N, C, HW]`.
    pub dinp: Vec<f64>,
    /// `[C]` (zeros without affine parameters).
    pub dgamma: Vec<f64>,
    /// `[C]`.
    pub dbeta: Vec<f64>,
    /// `[N, C, HW]`: gradient of the residual input (the masked upstream gradient; zeros without identity).
    pub didentity: Vec<f64>,
}

/// Analytic backward of [`batchnorm_forward_train`] (recomputes the forward): textbook formula
/// `dx = gamma·rstd/M · (M·dy - Σdy - x̂·Σ(dy·x̂))` per (group, channel), `dy` masked by `out > 0` after ReLU.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(dout: &[f64], inp: &[f64], gamma: Option<&[f64]>, beta: Option<&[f64]>, identity: Option<&[f64]>, relu: bool, s: &BatchNormShape) -> BatchNormGrads {
    let zeros = vec![0.0; s.c];
    let f = batchnorm_forward_train(inp, gamma, beta, &zeros, &zeros, identity, relu, s);
    let (c, hw, g) = (s.c, s.hw, s.groups);
    let m = (s.n / g * hw) as f64;
    let dy: Vec<f64> = dout.iter().zip(&f.out).map(|(&d, &y)| if relu && y <= 0.0 { 0.0 } else { d }).collect();
    let (mut sdy, mut sdyx) = (vec![0.0; g * c], vec![0.0; g * c]);
    for n in 0..s.n {
        for ch in 0..c {
            let gc = (n % g) * c + ch;
            for i in 0..hw {
                let idx = (n * c + ch) * hw + i;
                sdy[gc] += dy[idx];
                sdyx[gc] += dy[idx] * (inp[idx] - f.mean[gc]) * f.rstd[gc];
            }
        }
    }
    let mut dinp = vec![0.0; inp.len()];
    let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
    for n in 0..s.n {
        for ch in 0..c {
            let gc = (n % g) * c + ch;
            let gm = gamma.map_or(1.0, |v| v[ch]);
            for i in 0..hw {
                let idx = (n * c + ch) * hw + i;
                let xh = (inp[idx] - f.mean[gc]) * f.rstd[gc];
                dinp[idx] = gm * f.rstd[gc] / m * (m * dy[idx] - sdy[gc] - xh * sdyx[gc]);
            }
        }
    }
    for gi in 0..g {
        for ch in 0..c {
            if gamma.is_some() {
                dgamma[ch] += sdyx[gi * c + ch];
            }
            if beta.is_some() {
                dbeta[ch] += sdy[gi * c + ch];
            }
        }
    }
    let didentity = if identity.is_some() { dy } else { vec![0.0; inp.len()] };
    BatchNormGrads { dinp, dgamma, dbeta, didentity }
}
