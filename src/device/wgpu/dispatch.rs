//! Recording and submitting dispatches: one compute pass per dispatch, the parameter block as a uniform.

use super::{GpuSlice, Wgpu};
use crate::error::Result;
use crate::device::kernel_family::{Grid, KernelFamily};

/// One dispatch: pipeline, bind-group entries (binding, buffer range), a uniform parameter block, and a grid.
pub(crate) struct Dispatch<'a> {
    pub pipeline: wgpu::ComputePipeline,
    pub buffers: Vec<(u32, GpuSlice<'a>)>,
    pub grid: (u32, u32, u32),
}

/// Records the dispatches in one compute pass each (so storage writes are visible to the next) and submits.
/// `params` is the uniform block bound at binding 0 of every dispatch.
pub(crate) fn submit(ctx: &Wgpu, params: &[(&[u8], Dispatch)]) {
    let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("moco") });
    let mut keep = Vec::new();
    for (p, d) in params {
        let ubuf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("moco params"),
            size: (p.len() as u64).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut padded = p.to_vec();
        padded.resize(ubuf.size() as usize, 0);
        ctx.queue().write_buffer(&ubuf, 0, &padded);
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() }];
        for (b, buf) in &d.buffers {
            entries.push(wgpu::BindGroupEntry { binding: *b, resource: buf.binding() });
        }
        let bg = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &d.pipeline.get_bind_group_layout(0), entries: &entries });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(d.grid.0, d.grid.1, d.grid.2);
        }
        keep.push(ubuf);
    }
    ctx.queue().submit([enc.finish()]);
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
            submit(self, &steps);
            Ok(())
        })
    }
}
