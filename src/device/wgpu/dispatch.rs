//! Recording dispatches: one compute pass per dispatch, the parameter block as a uniform (see `recorder`).

use super::{GpuSlice, Wgpu};
use crate::error::Result;
use crate::device::kernel_family::{Grid, KernelFamily};

/// One dispatch: pipeline, bind-group entries (binding, buffer range), a uniform parameter block, and a grid.
pub(crate) struct Dispatch<'a> {
    pub pipeline: wgpu::ComputePipeline,
    pub buffers: Vec<(u32, GpuSlice<'a>)>,
    pub grid: (u32, u32, u32),
}

/// Records the dispatches in order, one compute pass each (so storage writes are visible to the next), with
/// their parameter blocks bound at binding 0; submits unless the device defers. Errors of the recording surface
/// here on an immediate device, at the submission on a deferred one.
pub(crate) fn submit(ctx: &Wgpu, params: &[(&[u8], Dispatch)]) -> Result<()> {
    let mut rec = ctx.recorder();
    for (p, d) in params {
        rec.dispatch(ctx, &d.pipeline, p, &d.buffers, d.grid)?;
    }
    rec.end_op(ctx)
}

/// One dispatch of a family's entry point: the entry, its parameter block, its buffers by binding, its grid.
pub(crate) struct Launch<'a> {
    pub entry: &'static str,
    pub params: Vec<u8>,
    pub buffers: Vec<(u32, GpuSlice<'a>)>,
    pub grid: Grid,
    /// `QUEUE_DTYPE` of the pipeline, for entry points that read a queue ([`crate::ops::queue::QueueDType::code`]).
    pub dtype: Option<u32>,
}

impl<'a> Launch<'a> {
    /// Entry point `entry` with parameter block `params` over `grid`.
    pub fn new<P: bytemuck::Pod>(entry: &'static str, params: &P, buffers: Vec<(u32, GpuSlice<'a>)>, grid: Grid) -> Self {
        Self { entry, params: bytemuck::bytes_of(params).to_vec(), buffers, grid, dtype: None }
    }
    /// The same launch on the pipeline specialised for a queue stored as `dtype`.
    pub fn with_queue_dtype(self, dtype: u32) -> Self {
        Self { dtype: Some(dtype), ..self }
    }
}

impl Wgpu {
    /// Records `launches` of `family` in order (one compute pass each) and submits them, inside an error scope.
    pub(crate) fn run(&self, family: &KernelFamily, launches: Vec<Launch<'_>>) -> Result<()> {
        self.scoped(|| {
            let steps: Vec<(&[u8], Dispatch)> = launches
                .iter()
                .map(|l| (&l.params[..], Dispatch { pipeline: family.wgpu_pipeline(self, l.entry, l.dtype), buffers: l.buffers.clone(), grid: l.grid }))
                .collect();
            submit(self, &steps)
        })
    }
}
