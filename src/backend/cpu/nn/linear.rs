//! Fully connected layer `out [N, OUT] = inp [N, IN] · weightᵀ + bias`, weight `[OUT, IN]` (torch layout), on the
//! parallel GEMM.

use super::check;
use crate::backend::cpu::gemm::gemm_strided;
use crate::error::Result;
use rayon::prelude::*;

/// A validated linear problem: `inp [N, IN]`, `weight [OUT, IN]`, `bias [OUT]`, `out [N, OUT]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows N.
    pub n: usize,
    /// Input features IN.
    pub in_f: usize,
    /// Output features OUT.
    pub out_f: usize,
}

impl LinearShape {
    /// Validates N, IN, OUT >= 1 and sizes within `i32::MAX` elements.
    pub fn new(n: usize, in_f: usize, out_f: usize) -> Result<Self> {
        let op = "linear";
        for (what, v) in [("N", n), ("IN", in_f), ("OUT", out_f)] {
            check::positive(op, what, v)?;
        }
        check::elems(op, "inp", &[n, in_f])?;
        check::elems(op, "out", &[n, out_f])?;
        check::elems(op, "weight", &[out_f, in_f])?;
        Ok(Self { n, in_f, out_f })
    }
}

/// Linear forward: `out [N, OUT] = inp [N, IN] · weight [OUT, IN]ᵀ (+ bias [OUT])` (overwrites `out`).
pub fn linear_forward(out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: &LinearShape) -> Result<()> {
    let s = *shape;
    check::len("linear", "inp [N*IN]", s.n * s.in_f, inp.len())?;
    check::len("linear", "weight [OUT*IN]", s.out_f * s.in_f, weight.len())?;
    check::len("linear", "out [N*OUT]", s.n * s.out_f, out.len())?;
    check::opt_len("linear", "bias [OUT]", s.out_f, bias.map(|b| b.len()))?;
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
    check::len("linear", "inp [N*IN]", s.n * s.in_f, inp.len())?;
    check::len("linear", "weight [OUT*IN]", s.out_f * s.in_f, weight.len())?;
    check::len("linear", "dout [N*OUT]", s.n * s.out_f, dout.len())?;
    check::len("linear", "dweight [OUT*IN]", s.out_f * s.in_f, dweight.len())?;
    check::opt_len("linear", "dinp [N*IN]", s.n * s.in_f, dinp.as_ref().map(|d| d.len()))?;
    check::opt_len("linear", "dbias [OUT]", s.out_f, dbias.as_ref().map(|d| d.len()))?;
    if let Some(dx) = dinp {
        // dx [N, IN] += dout [N, OUT] · weight [OUT, IN]
        gemm_strided(dx, s.in_f, 1, dout, s.out_f, 1, weight, s.in_f, 1, s.n, s.in_f, s.out_f, 1.0, true, true);
    }
    // dweight [OUT, IN] += doutᵀ [OUT, N] · inp [N, IN]
    gemm_strided(dweight, s.in_f, 1, dout, 1, s.out_f, inp, s.in_f, 1, s.out_f, s.in_f, s.n, 1.0, true, true);
    if let Some(db) = dbias {
        db.par_iter_mut().enumerate().for_each(|(o, d)| *d += (0..s.n).map(|r| dout[r * s.out_f + o]).sum::<f32>());
    }
    Ok(())
}
