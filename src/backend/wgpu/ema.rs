//! EMA update on wgpu (`shaders/ema.wgsl`).

use super::context::{GpuSlice, sources, submit, Dispatch, WgpuContext};
use crate::error::{Error, Result};
use crate::shape::EmaShape;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EmaParams {
    len: u32,
    stride: u32,
    momentum: f32,
    one_minus_m: f32,
}

/// Workgroups of the grid-stride EMA dispatch (256 threads each).
const EMA_WORKGROUPS: u32 = 1024;

/// `k = m*k + (1-m)*q` over `shape.len` f32 elements of the two buffers.
pub fn ema_update(ctx: &WgpuContext, k: &wgpu::Buffer, q: &wgpu::Buffer, shape: &EmaShape) -> Result<()> {
    let need = shape.len as u64 * 4;
    if k.size() < need || q.size() < need {
        return Err(Error::shape("ema", format!("q and k buffers of at least {need} bytes"), format!("q {} bytes, k {} bytes", q.size(), k.size())));
    }
    let groups = (shape.len as u32).div_ceil(256).clamp(1, EMA_WORKGROUPS);
    let (m, one_minus_m) = shape.weights();
    let p = EmaParams { len: shape.len as u32, stride: groups * 256, momentum: m, one_minus_m };
    ctx.scoped(|| {
        let pipeline = ctx.pipeline("ema", sources::EMA, "ema_update", None);
        submit(ctx, &[(bytemuck::bytes_of(&p), Dispatch { pipeline, buffers: vec![(1, GpuSlice::from(q)), (2, GpuSlice::from(k))], grid: (groups, 1, 1) })]);
        Ok(())
    })
}
