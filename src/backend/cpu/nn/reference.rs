//! The f64 reference of the layers: plain loops, one thread, no im2col, no fusion tricks. The tests compare the
//! f32 kernels against these, and these backward functions against central finite differences of these forward
//! functions. Inputs are f64 (so a test can perturb them); shapes are the kernels' validated shape types.

pub use super::vit::reference::*;
use super::{BatchNormShape, Conv2dShape, GlobalAvgPoolShape, LinearShape, MaxPool2dShape};

/// Converts f32 values to f64.
pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Conv2d forward: `out [N, C_out, OH, OW]` from `inp [N, C_in, H, W]`, `weight [C_out, C_in, KH, KW]`.
pub fn conv2d_forward(inp: &[f64], weight: &[f64], s: &Conv2dShape) -> Vec<f64> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut out = vec![0.0; s.n * s.c_out * oh * ow];
    for n in 0..s.n {
        for co in 0..s.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..s.c_in {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let iy = (oy * s.stride + ki) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kj) as isize - s.pad as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let x = inp[((n * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize];
                                acc += x * weight[((co * s.c_in + ci) * s.kh + ki) * s.kw + kj];
                            }
                        }
                    }
                    out[((n * s.c_out + co) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    out
}

/// Conv2d backward: `(dinp [N, C_in, H, W], dweight [C_out, C_in, KH, KW])` for upstream `dout [N, C_out, OH, OW]`.
pub fn conv2d_backward(dout: &[f64], inp: &[f64], weight: &[f64], s: &Conv2dShape) -> (Vec<f64>, Vec<f64>) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut dinp = vec![0.0; inp.len()];
    let mut dweight = vec![0.0; weight.len()];
    for n in 0..s.n {
        for co in 0..s.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dout[((n * s.c_out + co) * oh + oy) * ow + ox];
                    for ci in 0..s.c_in {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let iy = (oy * s.stride + ki) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kj) as isize - s.pad as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xi = ((n * s.c_in + ci) * s.h + iy as usize) * s.w + ix as usize;
                                let wi = ((co * s.c_in + ci) * s.kh + ki) * s.kw + kj;
                                dinp[xi] += g * weight[wi];
                                dweight[wi] += g * inp[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (dinp, dweight)
}

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

/// ReLU forward.
pub fn relu_forward(inp: &[f64]) -> Vec<f64> {
    inp.iter().map(|&x| if x < 0.0 { 0.0 } else { x }).collect()
}

/// ReLU backward: `dout · (out > 0)`.
pub fn relu_backward(dout: &[f64], out: &[f64]) -> Vec<f64> {
    dout.iter().zip(out).map(|(&d, &y)| if y > 0.0 { d } else { 0.0 }).collect()
}

/// Max pooling forward: `(out, argmax)` with the index `ih*W + iw` inside the plane (first maximum in scan order).
pub fn maxpool2d_forward(inp: &[f64], s: &MaxPool2dShape) -> (Vec<f64>, Vec<u32>) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut out = vec![0.0; s.n * s.c * oh * ow];
    let mut idx = vec![0u32; out.len()];
    for p in 0..s.n * s.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f64::NEG_INFINITY;
                let mut bi = usize::MAX;
                for ki in 0..s.k {
                    for kj in 0..s.k {
                        let iy = (oy * s.stride + ki) as isize - s.pad as isize;
                        let ix = (ox * s.stride + kj) as isize - s.pad as isize;
                        if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                            continue;
                        }
                        let i = iy as usize * s.w + ix as usize;
                        let v = inp[p * s.h * s.w + i];
                        if bi == usize::MAX || v > best {
                            best = v;
                            bi = i;
                        }
                    }
                }
                out[(p * oh + oy) * ow + ox] = best;
                idx[(p * oh + oy) * ow + ox] = bi as u32;
            }
        }
    }
    (out, idx)
}

/// Max pooling backward: the gradient routed to the maxima (recomputed from `inp`).
pub fn maxpool2d_backward(dout: &[f64], inp: &[f64], s: &MaxPool2dShape) -> Vec<f64> {
    let (_, idx) = maxpool2d_forward(inp, s);
    let ohw = s.out_h() * s.out_w();
    let mut dinp = vec![0.0; inp.len()];
    for (o, (&g, &i)) in dout.iter().zip(&idx).enumerate() {
        dinp[o / ohw * s.h * s.w + i as usize] += g;
    }
    dinp
}

/// Global average pooling forward `[N, C, HW] -> [N, C]`.
pub fn global_avgpool_forward(inp: &[f64], s: &GlobalAvgPoolShape) -> Vec<f64> {
    inp.chunks(s.hw).map(|x| x.iter().sum::<f64>() / s.hw as f64).collect()
}

/// Global average pooling backward.
pub fn global_avgpool_backward(dout: &[f64], s: &GlobalAvgPoolShape) -> Vec<f64> {
    dout.iter().flat_map(|&g| std::iter::repeat_n(g / s.hw as f64, s.hw)).collect()
}

/// Linear forward `out [N, OUT] = inp [N, IN] · weightᵀ + bias`.
pub fn linear_forward(inp: &[f64], weight: &[f64], bias: Option<&[f64]>, s: &LinearShape) -> Vec<f64> {
    let mut out = vec![0.0; s.n * s.out_f];
    for r in 0..s.n {
        for o in 0..s.out_f {
            out[r * s.out_f + o] = bias.map_or(0.0, |b| b[o]) + (0..s.in_f).map(|i| inp[r * s.in_f + i] * weight[o * s.in_f + i]).sum::<f64>();
        }
    }
    out
}

/// Linear backward: `(dinp [N, IN], dweight [OUT, IN], dbias [OUT])`.
pub fn linear_backward(dout: &[f64], inp: &[f64], weight: &[f64], s: &LinearShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dinp, mut dweight, mut dbias) = (vec![0.0; inp.len()], vec![0.0; weight.len()], vec![0.0; s.out_f]);
    for r in 0..s.n {
        for o in 0..s.out_f {
            let g = dout[r * s.out_f + o];
            dbias[o] += g;
            for i in 0..s.in_f {
                dinp[r * s.in_f + i] += g * weight[o * s.in_f + i];
                dweight[o * s.in_f + i] += g * inp[r * s.in_f + i];
            }
        }
    }
    (dinp, dweight, dbias)
}

/// Residual add forward `a + b` (its backward passes `dout` to both inputs).
pub fn add_forward(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
