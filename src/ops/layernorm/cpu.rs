//! layernorm on the CPU (rayon).

use super::LayerNormShape;
use super::LayerNorm;
use crate::error::Result;
use rayon::prelude::*;

/// Rows per task in the layer-norm kernels (and per partial sum of `dgamma`/`dbeta`: the partials are added in a
/// fixed order, so the result does not depend on the thread count).
const LN_ROWS: usize = 32;

/// Layer norm forward: `out [R, C] = (inp - mean)·rstd·gamma + beta` per row; writes `mean, rstd: [R]` for the
/// backward. Statistics are accumulated in f64 (two passes: mean, then Σ(x - mean)²).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], gamma: &[f32], beta: &[f32], shape: &LayerNormShape) -> Result<()> {
    let s = *shape;
    s.check_forward(out.len(), mean.len(), rstd.len(), inp.len(), gamma.len(), beta.len())?;
    let c = s.c;
    out.par_chunks_mut(LN_ROWS * c)
        .zip(inp.par_chunks(LN_ROWS * c))
        .zip(mean.par_chunks_mut(LN_ROWS).zip(rstd.par_chunks_mut(LN_ROWS)))
        .for_each(|((y, x), (mu, rs))| {
            for (r, (y, x)) in y.chunks_mut(c).zip(x.chunks(c)).enumerate() {
                let m = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = x.iter().map(|&v| (v as f64 - m) * (v as f64 - m)).sum::<f64>() / c as f64;
                let rr = 1.0 / (var + s.eps as f64).sqrt();
                let (mf, rf) = (m as f32, rr as f32);
                mu[r] = mf;
                rs[r] = rf;
                for i in 0..c {
                    y[i] = (x[i] - mf) * rf * gamma[i] + beta[i];
                }
            }
        });
    Ok(())
}

/// Layer norm backward, with `x̂ = (inp - mean)·rstd` and `g = dout·gamma` per row:
/// `dinp += rstd·(g - mean_C(g) - x̂·mean_C(g·x̂))`, `dgamma += Σ_rows dout·x̂`, `dbeta += Σ_rows dout`.
/// `mean, rstd: [R]` as saved by [`layernorm_forward`].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(dinp: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32], dout: &[f32], inp: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], shape: &LayerNormShape) -> Result<()> {
    let s = *shape;
    s.check_backward(dinp.len(), dgamma.len(), dbeta.len(), dout.len(), inp.len(), gamma.len(), mean.len(), rstd.len())?;
    let c = s.c;
    // per block of LN_ROWS rows: dinp in place, and the block's partial (dgamma, dbeta)
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dinp
        .par_chunks_mut(LN_ROWS * c)
        .zip(dout.par_chunks(LN_ROWS * c))
        .zip(inp.par_chunks(LN_ROWS * c))
        .zip(mean.par_chunks(LN_ROWS).zip(rstd.par_chunks(LN_ROWS)))
        .map(|(((dx, dy), x), (mu, rs))| {
            let (mut dg, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
            for (r, ((dx, dy), x)) in dx.chunks_mut(c).zip(dy.chunks(c)).zip(x.chunks(c)).enumerate() {
                let (m, rr) = (mu[r], rs[r]);
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for i in 0..c {
                    let xh = (x[i] - m) * rr;
                    let g = dy[i] * gamma[i];
                    sg += g as f64;
                    sgx += (g * xh) as f64;
                    dg[i] += dy[i] * xh;
                    db[i] += dy[i];
                }
                let (mg, mgx) = ((sg / c as f64) as f32, (sgx / c as f64) as f32);
                for i in 0..c {
                    let xh = (x[i] - m) * rr;
                    dx[i] += rr * (dy[i] * gamma[i] - mg - xh * mgx);
                }
            }
            (dg, db)
        })
        .collect();
    for (dg, db) in &partials {
        dgamma.iter_mut().zip(dg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
    Ok(())
}

impl LayerNorm for crate::device::CpuDevice {
    fn layernorm_forward(&mut self, out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], gamma: &[f32], beta: &[f32], shape: &LayerNormShape) -> Result<()> {
        layernorm_forward(out, mean, rstd, inp, gamma, beta, shape)
    }
    fn layernorm_backward(&mut self, dinp: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32], dout: &[f32], inp: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], shape: &LayerNormShape) -> Result<()> {
        layernorm_backward(dinp, dgamma, dbeta, dout, inp, gamma, mean, rstd, shape)
    }
}
