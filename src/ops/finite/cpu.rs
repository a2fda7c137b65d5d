//! The non-finite count on the CPU (rayon): the reference of the GPU kernels.

use super::{Finite, FiniteShape};
use crate::device::CpuDevice;
use crate::error::Result;
use rayon::prelude::*;

/// `count[0] += ` the number of NaN or ±inf elements of `x`.
pub fn count_nonfinite(count: &mut [u32], x: &[f32], shape: &FiniteShape) -> Result<()> {
    shape.check(count.len(), x.len())?;
    let bad = x.par_chunks(1 << 14).map(|c| c.iter().filter(|v| !v.is_finite()).count()).sum::<usize>();
    count[0] = count[0].wrapping_add(bad as u32);
    Ok(())
}

impl Finite for CpuDevice {
    fn count_nonfinite(&mut self, count: &mut [u32], x: &[f32], shape: &FiniteShape) -> Result<()> {
        count_nonfinite(count, x, shape)
    }
}
