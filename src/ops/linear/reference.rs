//! The f64 reference of the linear layer: plain loops, one thread, the textbook formulas. The tests compare the f32
//! kernels against it, and its backward against central finite differences of its forward. Inputs are f64 (so a
//! test can perturb them).

use super::LinearShape;

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
