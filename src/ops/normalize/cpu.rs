//! Row L2 normalisation on the CPU, a row per rayon task.

use super::{Normalize, NormalizeShape, NORM_EPS};
use crate::device::CpuDevice;
use crate::error::Result;
use rayon::prelude::*;

/// `out[r, :] = x[r, :] / max(||x[r, :]||, eps)`, `inv_norm[r] = 1 / max(||x[r, :]||, eps)`. `x, out: [rows, c]`,
/// `inv_norm: [rows]` with `rows = inv_norm.len()`.
pub fn normalize_rows(out: &mut [f32], inv_norm: &mut [f32], x: &[f32], c: usize) -> Result<()> {
    NormalizeShape::new(inv_norm.len(), c)?.check(x.len(), out.len(), inv_norm.len())?;
    normalize_unchecked(out, inv_norm, x, c);
    Ok(())
}

/// [`normalize_rows`] for callers that validated the lengths.
pub(crate) fn normalize_unchecked(out: &mut [f32], inv_norm: &mut [f32], x: &[f32], c: usize) {
    out.par_chunks_mut(c).zip(inv_norm.par_iter_mut()).zip(x.par_chunks(c)).for_each(|((o, inv), xr)| {
        let ss = dot(xr, xr);
        let r = 1.0 / ss.sqrt().max(NORM_EPS);
        *inv = r;
        for (ov, xv) in o.iter_mut().zip(xr) {
            *ov = xv * r;
        }
    });
}

/// `a · b` summed in 8 lanes (no serial dependency chain, so it vectorises), then across the lanes.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 8;
    let body = a.len().min(b.len()) / L * L;
    let mut lanes = [0.0f32; L];
    for (x, y) in a[..body].chunks_exact(L).zip(b[..body].chunks_exact(L)) {
        for l in 0..L {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a[body..].iter().zip(&b[body..]).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

impl Normalize for CpuDevice {
    fn normalize_rows(&mut self, x_hat: &mut [f32], inv_norm: &mut [f32], x: &[f32], shape: &NormalizeShape) -> Result<()> {
        shape.check(x.len(), x_hat.len(), inv_norm.len())?;
        normalize_unchecked(x_hat, inv_norm, x, shape.c());
        Ok(())
    }
}
