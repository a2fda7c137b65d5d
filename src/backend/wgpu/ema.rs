//! EMA update on wgpu (`shaders/ema.wgsl`).

use super::context::{GpuSlice, sources, submit, Dispatch, WgpuContext};
use crate::error::{Error, Result};
use crate::backend::plan::EmaParams;
use crate::shape::EmaShape;

/// `k = m*k + (1-m)*q` over `shape.len` f32 elements of the two buffers.
pub fn ema_update(ctx: &WgpuContext, k: &wgpu::Buffer, q: &wgpu::Buffer, shape: &EmaShape) -> Result<()> {
    let need = shape.len as u64 * 4;
    if k.size() < need || q.size() < need {
        return Err(Error::shape("ema", format!("q and k buffers of at least {need} bytes"), format!("q {} bytes, k {} bytes", q.size(), k.size())));
    }
    // the same parameter block and grid as the CUDA launch (256-thread groups, grid-stride)
    let (p, grid) = EmaParams::launch(shape);
    ctx.scoped(|| {
        let pipeline = ctx.pipeline("ema", sources::EMA, "ema_update", None);
        submit(ctx, &[(bytemuck::bytes_of(&p), Dispatch { pipeline, buffers: vec![(1, GpuSlice::from(q)), (2, GpuSlice::from(k))], grid })]);
        Ok(())
    })
}
