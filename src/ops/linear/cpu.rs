//! Fully connected layer `out [N, OUT] = inp [N, IN] · weightᵀ + bias`, weight `[OUT, IN]` (torch layout), on the
//! parallel GEMM.

use super::gemm::gemm_strided;
use super::LinearShape;
use super::Linear;
use crate::error::Result;
use rayon::prelude::*;

/// Outputs per task of the bias gradient.
const DB_COLS: usize = 64;

/// Linear forward: `out [N, OUT] = inp [N, IN] · weight [OUT, IN]ᵀ (+ bias [OUT])` (overwrites `out`).
pub fn linear_forward(out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: &LinearShape) -> Result<()> {
    let s = *shape;
    s.check_forward(out.len(), inp.len(), weight.len(), bias.map(|b| b.len()))?;
    if let Some(b) = bias {
        out.par_chunks_mut(s.out_f).for_each(|row| row.copy_from_slice(b));
    }
    // out [N, OUT] (+)= inp [N, IN] · weightᵀ: weight element (i, o) at o*IN + i
    gemm_strided(out, s.out_f, 1, inp, s.in_f, 1, weight, 1, s.in_f, s.n, s.out_f, s.in_f, 1.0, bias.is_some(), true);
    Ok(())
}

/// Linear backward: `dinp [N, IN] += dout · weight` (skipped when `None`), `dweight [OUT, IN] += doutᵀ · inp`,
/// `dbias [OUT] += Σ_n dout` (skipped when `None`). `dout: [N, OUT]`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(dinp: Option<&mut [f32]>, dweight: &mut [f32], dbias: Option<&mut [f32]>, dout: &[f32], inp: &[f32], weight: &[f32], shape: &LinearShape) -> Result<()> {
    let s = *shape;
    s.check_backward(dinp.as_ref().map(|d| d.len()), dweight.len(), dbias.as_ref().map(|d| d.len()), dout.len(), inp.len(), weight.len())?;
    if let Some(dx) = dinp {
        // dx [N, IN] += dout [N, OUT] · weight [OUT, IN]
        gemm_strided(dx, s.in_f, 1, dout, s.out_f, 1, weight, s.in_f, 1, s.n, s.in_f, s.out_f, 1.0, true, true);
    }
    // dweight [OUT, IN] += doutᵀ [OUT, N] · inp [N, IN]
    gemm_strided(dweight, s.in_f, 1, dout, 1, s.out_f, inp, s.in_f, 1, s.out_f, s.in_f, s.n, 1.0, true, true);
    if let Some(db) = dbias {
        // dbias [OUT] += Σ_n dout[n, :]: per block of DB_COLS outputs, the rows in order (each element's sum runs
        // over n = 0, 1, ... as a per-element loop would), the contiguous row segments added lane-wise
        db.par_chunks_mut(DB_COLS).enumerate().for_each(|(blk, d)| {
            let o0 = blk * DB_COLS;
            let mut acc = [0.0f32; DB_COLS];
            let acc = &mut acc[..d.len()];
            for row in dout.chunks_exact(s.out_f) {
                acc.iter_mut().zip(&row[o0..o0 + d.len()]).for_each(|(a, v)| *a += v);
            }
            d.iter_mut().zip(acc.iter()).for_each(|(d, a)| *d += a);
        });
    }
    Ok(())
}

impl Linear for crate::device::CpuDevice {
    fn linear_forward(&mut self, out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: &LinearShape) -> Result<()> {
        linear_forward(out, inp, weight, bias, shape)
    }
    fn linear_backward(&mut self, dinp: Option<&mut [f32]>, dweight: &mut [f32], dbias: Option<&mut [f32]>, dout: &[f32], inp: &[f32], weight: &[f32], shape: &LinearShape) -> Result<()> {
        linear_backward(dinp, dweight, dbias, dout, inp, weight, shape)
    }
}
