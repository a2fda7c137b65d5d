//! The row gather on the CPU: the reference of the GPU kernels.

use super::{Gather, GatherShape};
use crate::device::CpuDevice;
use crate::error::{Error, Result};

/// `out[r, :] = x[idx[r], :]`; an index at or past `src_rows` is an error (nothing is written).
pub fn gather_rows(out: &mut [f32], idx: &[u32], x: &[f32], shape: &GatherShape) -> Result<()> {
    let s = shape.revalidate()?;
    s.check(out.len(), idx.len(), x.len())?;
    if let Some((r, &i)) = idx.iter().enumerate().find(|(_, &i)| i as usize >= s.src_rows) {
        return Err(Error::shape("gather_rows", format!("indices below src_rows = {}", s.src_rows), format!("idx[{r}] = {i}")));
    }
    for (dst, &i) in out.chunks_exact_mut(s.row).zip(idx) {
        let i = i as usize;
        dst.copy_from_slice(&x[i * s.row..(i + 1) * s.row]);
    }
    Ok(())
}

impl Gather for CpuDevice {
    fn gather_rows(&mut self, out: &mut [f32], idx: &[u32], x: &[f32], shape: &GatherShape) -> Result<()> {
        gather_rows(out, idx, x, shape)
    }
}
