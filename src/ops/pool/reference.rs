//! The f64 reference of the pooling layers: plain loops, one thread, the textbook formulas. The tests compare the f32
//! kernels against it, and its backward against central finite differences of its forward. Inputs are f64 (so a
//! test can perturb them).

use super::{GlobalAvgPoolShape, MaxPool2dShape};
use crate::ops::window::tap;

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
                        let (Some(iy), Some(ix)) = (tap(oy, ki, s.stride, s.pad, s.h), tap(ox, kj, s.stride, s.pad, s.w)) else {
                            continue;
                        };
                        let i = iy * s.w + ix;
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
