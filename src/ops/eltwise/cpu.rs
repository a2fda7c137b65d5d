//! Element-wise layers: ReLU and the residual add.

use super::EltwiseShape;
use super::Eltwise;
use crate::device::vector::vectorized;
use crate::ops::fastmath::{fast_erf, fast_exp};
use crate::error::Result;
use rayon::prelude::*;

/// Element-wise work is split into chunks of this many elements.
const CHUNK: usize = 1 << 14;

/// ReLU with PyTorch's NaN semantics: `relu(NaN) = NaN` (`f32::max(NaN, 0)` would give 0 and hide it).
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// ReLU forward: `out = max(inp, 0)`, NaN propagated (as torch).
pub fn relu_forward(out: &mut [f32], inp: &[f32], shape: &EltwiseShape) -> Result<()> {
    shape.check(&[("out", out.len()), ("inp", inp.len())])?;
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y = relu(*x)));
    Ok(())
}

/// ReLU backward: `dinp += dout · (out > 0)`, with `out` the forward's output (torch's `threshold_backward`).
pub fn relu_backward(dinp: &mut [f32], dout: &[f32], out: &[f32], shape: &EltwiseShape) -> Result<()> {
    shape.check(&[("dinp", dinp.len()), ("dout", dout.len()), ("out", out.len())])?;
    dinp.par_chunks_mut(CHUNK).zip(dout.par_chunks(CHUNK)).zip(out.par_chunks(CHUNK)).for_each(|((dx, dy), y)| {
        dx.iter_mut().zip(dy).zip(y).for_each(|((dx, &dy), &y)| *dx += mask_pos(dy, y))
    });
    Ok(())
}

/// Residual add forward: `out = a + b`. Its backward is the identity: `da += dout` and `db += dout` (no kernel
/// needed; the batch norm backward with an [`crate::ops::batchnorm::EpilogueGrad`] covers the ResNet block's add).
pub fn add_forward(out: &mut [f32], a: &[f32], b: &[f32], shape: &EltwiseShape) -> Result<()> {
    shape.check(&[("out", out.len()), ("a", a.len()), ("b", b.len())])?;
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((y, a), b)| {
        y.iter_mut().zip(a).zip(b).for_each(|((y, a), b)| *y = a + b)
    });
    Ok(())
}

/// Backward of [`add_forward`]: `da += dout`, `db += dout` (a residual branch and its skip).
pub fn add_backward(da: &mut [f32], db: &mut [f32], dout: &[f32], shape: &EltwiseShape) -> Result<()> {
    shape.check(&[("da", da.len()), ("db", db.len()), ("dout", dout.len())])?;
    da.par_chunks_mut(CHUNK).zip(db.par_chunks_mut(CHUNK)).zip(dout.par_chunks(CHUNK)).for_each(|((da, db), g)| {
        da.iter_mut().zip(db.iter_mut()).zip(g).for_each(|((a, b), g)| {
            *a += g;
            *b += g;
        })
    });
    Ok(())
}

/// `d` where `y > 0`, else 0, without a branch (a branch on the random sign of `y` mispredicts half the time).
#[inline(always)]
pub(crate) fn mask_pos(d: f32, y: f32) -> f32 {
    f32::from_bits(d.to_bits() & ((y > 0.0) as u32).wrapping_neg())
}


const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `gelu(x) = 0.5·x·(1 + erf(x/√2))`, torch's default (`approximate='none'`), with the vectorisable
/// [`fast_erf`].
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub(crate) fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * FRAC_1_SQRT_2PI * fast_exp(-0.5 * x * x)
}

/// GELU forward (exact erf form): `out = 0.5·inp·(1 + erf(inp/√2))`. Any layout. Runs on the widest vector unit.
pub fn gelu_forward(out: &mut [f32], inp: &[f32], shape: &super::EltwiseShape) -> Result<()> {
    shape.check(&[("out", out.len()), ("inp", inp.len())])?;
    // plain loops in an inlined closure: the body must compile inside `vectorized`'s AVX-512/AVX2 function
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(y, x)| {
        vectorized(#[inline(always)] || {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = gelu(x);
            }
        })
    });
    Ok(())
}

/// GELU backward: `dinp += dout·(Φ(inp) + inp·φ(inp))`, `inp` the forward's input. Runs on the widest vector unit.
pub fn gelu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32], shape: &super::EltwiseShape) -> Result<()> {
    shape.check(&[("dinp", dinp.len()), ("dout", dout.len()), ("inp", inp.len())])?;
    dinp.par_chunks_mut(CHUNK).zip(dout.par_chunks(CHUNK)).zip(inp.par_chunks(CHUNK)).for_each(|((dx, dy), x)| {
        vectorized(#[inline(always)] || {
            for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                *dx += dy * gelu_grad(x);
            }
        })
    });
    Ok(())
}

impl Eltwise for crate::device::CpuDevice {
    fn relu_forward(&mut self, out: &mut [f32], inp: &[f32], shape: &EltwiseShape) -> Result<()> {
        relu_forward(out, inp, shape)
    }
    fn relu_backward(&mut self, dinp: &mut [f32], dout: &[f32], out: &[f32], shape: &EltwiseShape) -> Result<()> {
        relu_backward(dinp, dout, out, shape)
    }
    fn gelu_forward(&mut self, out: &mut [f32], inp: &[f32], shape: &EltwiseShape) -> Result<()> {
        gelu_forward(out, inp, shape)
    }
    fn gelu_backward(&mut self, dinp: &mut [f32], dout: &[f32], inp: &[f32], shape: &EltwiseShape) -> Result<()> {
        gelu_backward(dinp, dout, inp, shape)
    }
    fn add_forward(&mut self, out: &mut [f32], a: &[f32], b: &[f32], shape: &EltwiseShape) -> Result<()> {
        add_forward(out, a, b, shape)
    }
    fn add_backward(&mut self, da: &mut [f32], db: &mut [f32], dout: &[f32], shape: &EltwiseShape) -> Result<()> {
        add_backward(da, db, dout, shape)
    }
}
