//! The f64 reference of the convolution: plain loops, one thread, the textbook formulas. The tests compare the f32
//! kernels against it, and its backward against central finite differences of its forward. Inputs are f64 (so a
//! test can perturb them).

use super::Conv2dShape;
use crate::ops::window::tap;

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
                                let (Some(iy), Some(ix)) = (tap(oy, ki, s.stride, s.pad, s.h), tap(ox, kj, s.stride, s.pad, s.w)) else {
                                    continue;
                                };
                                acc += inp[((n * s.c_in + ci) * s.h + iy) * s.w + ix] * weight[((co * s.c_in + ci) * s.kh + ki) * s.kw + kj];
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
                                let (Some(iy), Some(ix)) = (tap(oy, ki, s.stride, s.pad, s.h), tap(ox, kj, s.stride, s.pad, s.w)) else {
                                    continue;
                                };
                                let xi = ((n * s.c_in + ci) * s.h + iy) * s.w + ix;
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
