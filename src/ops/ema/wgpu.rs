//! EMA update on wgpu (`shaders/ema.wgsl`): the parameter block and grid of the CUDA launch (256-thread groups,
//! grid-stride).

use super::params::EmaParams;
use super::{Ema, EmaShape, KERNELS};
use crate::device::wgpu::{submit, Dispatch, GpuSlice, Wgpu};
use crate::error::Result;

/// `k = m*k + (1-m)*q` over the `shape.len()` f32 elements of the two views (each exactly that long).
pub fn ema_update(ctx: &Wgpu, k: GpuSlice<'_>, q: GpuSlice<'_>, shape: &EmaShape) -> Result<()> {
    shape.check(q.len(), k.len())?;
    let (p, grid) = EmaParams::launch(shape);
    ctx.scoped(|| {
        let pipeline = KERNELS.wgpu_pipeline(ctx, "ema_update", None);
        submit(ctx, &[(bytemuck::bytes_of(&p), Dispatch { pipeline, buffers: vec![(1, q), (2, k)], grid })])
    })
}

impl Ema for Wgpu {
    fn ema_update(&mut self, k: GpuSlice<'_>, q: GpuSlice<'_>, shape: &EmaShape) -> Result<()> {
        ema_update(self, k, q, shape)
    }
}
