//! Element-wise layers: ReLU and the residual add.

use super::check;
use crate::error::Result;
use rayon::prelude::*;

/// Element-wise work is split into chunks of this many elements.
const CHUNK: usize = 1 << 14;

/// A validated element-wise problem over `len` elements (any layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EltwiseShape {
    /// Number of elements.
    pub len: usize,
}

impl EltwiseShape {
    /// Validates `len >= 1` and `len <= i32::MAX`.
    pub fn new(len: usize) -> Result<Self> {
        check::positive("eltwise", "len", len)?;
        check::elems("eltwise", "tensor", &[len])?;
        Ok(Self { len })
    }
    fn check(&self, what: &[(&str, usize)]) -> Result<()> {
        for &(name, got) in what {
            check::len("eltwise", name, self.len, got)?;
        }
        Ok(())
    }
}

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
        dx.iter_mut().zip(dy).zip(y).for_each(|((dx, &dy), &y)| *dx += super::norm::mask_pos(dy, y))
    });
    Ok(())
}

/// Residual add forward: `out = a + b`. Its backward is the identity: `da += dout` and `db += dout` (no kernel
/// needed; the fused [`super::batchnorm_add_relu_backward`] covers the ResNet block's add).
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
