//! Row normalisation on wgpu (`shaders/normalize.wgsl`).

use super::params::NormalizeParams;
use super::{Normalize, NormalizeShape, KERNELS};
use crate::device::wgpu::{submit, Dispatch, GpuSlice, Wgpu};
use crate::error::Result;

/// The dispatch of `normalize_rows` for `x -> (x_hat, inv_norm)`, with its parameter block, for a caller that
/// records it with its own (the fused losses, the enqueue).
pub(crate) fn dispatch<'a>(ctx: &Wgpu, x_hat: GpuSlice<'a>, inv_norm: GpuSlice<'a>, x: GpuSlice<'a>, shape: &NormalizeShape) -> (Vec<u8>, Dispatch<'a>) {
    let (p, grid) = NormalizeParams::launch(shape);
    let pipeline = KERNELS.wgpu_pipeline(ctx, "normalize_rows", None);
    (bytemuck::bytes_of(&p).to_vec(), Dispatch { pipeline, buffers: vec![(1, x), (2, x_hat), (3, inv_norm)], grid })
}

/// `x_hat[r, :] = x[r, :] / max(||x[r, :]||, 1e-12)`, `inv_norm[r] = 1 / max(||x[r, :]||, 1e-12)`.
pub fn normalize_rows(ctx: &Wgpu, x_hat: GpuSlice<'_>, inv_norm: GpuSlice<'_>, x: GpuSlice<'_>, shape: &NormalizeShape) -> Result<()> {
    shape.check(x.len(), x_hat.len(), inv_norm.len())?;
    ctx.scoped(|| {
        let (p, d) = dispatch(ctx, x_hat, inv_norm, x, shape);
        submit(ctx, &[(&p[..], d)])
    })
}

impl Normalize for Wgpu {
    fn normalize_rows(&mut self, x_hat: GpuSlice<'_>, inv_norm: GpuSlice<'_>, x: GpuSlice<'_>, shape: &NormalizeShape) -> Result<()> {
        normalize_rows(self, x_hat, inv_norm, x, shape)
    }
}
